"""Labelled synthetic data sets from a trained generator: generated in batches, streamed to disk, loadable by `datasets`.

Conditional models are asked for each class in turn (balanced by default); images of unconditional models are
labelled by genkit's evaluation classifier for that data set, and the data set's info says which it was.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import ConfigError
from .families import Family
from .hub import MODEL_LICENSE, check_repo_id, hub_dataset, source_file, write_atomically

FORMATS = ("save_to_disk", "imagefolder", "parquet")
INFO_FILE = "genkit_generation.json"
MAX_IMAGES = 10_000_000


def plan_labels(family: Family, n: int, class_label: str | None) -> torch.Tensor | None:
    """The label of each image to generate: one class, or every class in turn (conditional); None for unconditional models."""
    if not family.conditional:
        if class_label is not None:
            raise ConfigError(f"this {family.name} run is not class-conditional: --class-label needs a conditional run")
        return None
    return family.class_labels(class_label or "all", n)


def generate_batches(family: Family, n: int, seed: int = 0, batch_size: int = 250, class_label: str | None = None,
                     progress: bool = True, **options: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images (B, C, H, W), labels (B,)) batch after batch, seeded; unconditional images labelled by the classifier."""
    from .eval_classifier import get_classifier

    labels = plan_labels(family, n, class_label)
    classifier = None if labels is not None else get_classifier(family.config.data, "cpu")
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=n, desc="generating", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            wanted = None if labels is None else labels[start : start + count]
            images = family.generate(count, generator, wanted, **options).float().cpu().clamp(0, 1)
            if wanted is None:
                with torch.no_grad():
                    wanted = classifier(images).argmax(1)
            yield (images * 255).round().to(torch.uint8), wanted.cpu()
            bar.update(count)


def _png(image: torch.Tensor) -> bytes:
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def generation_info(family: Family, source: str, n: int, seed: int, class_label: str | None, options: dict[str, Any],
                    source_model: str | None = None) -> dict[str, Any]:
    """What made the data set: the run (its Hub id when it has one), what it was trained on, sampler settings, seed and labels."""
    diffusion = family.name == "diffusion"
    return {
        "generated_by": "genkit", "run": source, "source_model": source_model, "trained_on": hub_dataset(family.config.data.source),
        "family": family.name, "num_images": n, "seed": seed,
        "scheduler": options.get("scheduler") or (family.sampler if diffusion else None),
        "steps": options.get("steps") or (family.option("sample_steps") if diffusion else None),
        "guidance_scale": options.get("guidance_scale") if options.get("guidance_scale") is not None else
        (family.option("guidance_scale") if diffusion and family.conditional else None),
        "x0": (options.get("x0") or family.x0_handling().mode) if diffusion else None,
        "labels": ("requested from the conditional model: " + (f"class {class_label!r}" if class_label else "balanced over the classes"))
        if family.conditional else "assigned by genkit's evaluation classifier (the model is unconditional)",
        "class_names": family.info.class_names, "image_size": family.info.image_size, "channels": family.info.channels,
    }


def export(family: Family, out: str | Path, n: int, fmt: str = "save_to_disk", seed: int = 0, batch_size: int = 250,
           class_label: str | None = None, source: str = "", progress: bool = True, source_model: str | None = None, **options: Any) -> dict[str, Any]:
    """Generate `n` labelled images into `out` as a `datasets` data set (split `train`); returns the generation info.

    `source`: the run's name for the card (no local path); `source_model`: its Hub id, when it has one (linked in the card)."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"--n must be between 1 and {MAX_IMAGES}, got {n}")
    plan_labels(family, 1, class_label)  # a wrong class label fails before any work
    info = generation_info(family, source, n, seed, class_label, options, source_model)
    names = family.info.class_names
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    batches = generate_batches(family, n, seed, batch_size, class_label, progress, **options)

    def fill(data: Path) -> None:  # a sibling of `out`, renamed into place when complete: no half-written data set
        if fmt == "imagefolder":  # class sub-folders: datasets orders the classes by folder name
            folders = _folder_names(names)
            index = 0
            for images, labels in batches:
                for image, label in zip(images, labels.tolist()):
                    target = data / "train" / folders[label]
                    target.mkdir(parents=True, exist_ok=True)
                    (target / f"{index:07d}.png").write_bytes(_png(image))
                    index += 1
        else:
            from datasets.arrow_writer import ArrowWriter

            with tempfile.TemporaryDirectory(prefix=".genkit-generate-", dir=data.parent) as scratch:  # same disk, outside the data set
                arrow = Path(scratch) / "train.arrow"
                with ArrowWriter(features=features, path=str(arrow)) as writer:  # rows go to disk as they come: no whole-set tensor
                    for images, labels in batches:
                        for image, label in zip(images, labels.tolist()):
                            writer.write(features.encode_example({"image": {"bytes": _png(image), "path": None}, "label": label}))
                    writer.finalize()
                dataset = datasets.Dataset.from_file(str(arrow), info=datasets.DatasetInfo(description=json.dumps(info), features=features))
                if fmt == "save_to_disk":
                    datasets.DatasetDict({"train": dataset}).save_to_disk(str(data))
                else:
                    dataset.to_parquet(str(data / "train-00000-of-00001.parquet"))
                del dataset
        (data / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (data / "README.md").write_text(dataset_card(info, fmt))

    write_atomically(out, "for the data set", fill)
    return info


def _folder_names(names: list[str]) -> list[str]:
    """Class names usable as folder names ('T-shirt/top' -> 'T-shirt-top'), kept distinct."""
    folders = [name.replace("/", "-").replace("\\", "-").strip(". ") or f"class_{i}" for i, name in enumerate(names)]
    if len(set(folders)) != len(folders):
        folders = [f"{i:03d}_{f}" for i, f in enumerate(folders)]
    return folders


def dataset_card(info: dict[str, Any], fmt: str) -> str:
    """README.md for the data set: YAML metadata (features, class names, the parquet split for the Hub) and provenance."""
    import yaml

    meta: dict[str, Any] = {"license": MODEL_LICENSE, "tags": ["genkit", "synthetic", info["family"]], "task_categories": ["image-classification"],
                            "size_categories": [_size_category(info["num_images"])]}
    if info.get("trained_on"):
        meta["source_datasets"] = [info["trained_on"]]  # what the generating model learnt from
    if fmt == "parquet":
        meta["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": "train-*.parquet"}]}]
        meta["dataset_info"] = {"features": [{"name": "image", "dtype": "image"},
                                             {"name": "label", "dtype": {"class_label": {"names": dict(enumerate(info["class_names"]))}}}]}
    settings = "\n".join(f"| {k} | {v} |" for k, v in info.items() if k != "class_names" and v is not None)
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# Synthetic images from a genkit {info['family']} model\n\n"
            f"{info['num_images']} generated {info['image_size']}x{info['image_size']} images with labels "
            f"({', '.join(info['class_names'])}). Labels were {info['labels']}.\n\n{provenance(info)}\n\n| setting | value |\n|---|---|\n{settings}\n\n"
            "Load it with `datasets` and train on it with `genkit train --set data.source=THIS_FOLDER` (or the Hub id).\n")


def provenance(info: dict[str, Any]) -> str:
    """The card's source paragraph: the generating model (linked when on the Hub), its training data, and the license."""
    model = f"[{info['source_model']}](https://huggingface.co/{info['source_model']})" if info.get("source_model") else \
        f"the local run `{info['run']}` (not on the Hub)"
    data = f", trained on [{info['trained_on']}](https://huggingface.co/datasets/{info['trained_on']})" if info.get("trained_on") else ""
    return (f"**Source model**: {model}{data}. **License**: {MODEL_LICENSE}, as the model's card; the images are derived from a model "
            "trained on that data set, so its own terms apply as well.")


def _size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]:
        if n < limit:
            return name
    return "1M<n<10M"


def push_dataset(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a parquet export (data files and card) as a dataset repo; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_repo_id(repo_id)
    if not list(folder.glob("train-*.parquet")):
        raise ConfigError(f"{folder} holds no parquet export: generate with --format parquet to push to the Hub")
    for path in [*folder.glob("train-*.parquet"), folder / "README.md", folder / INFO_FILE]:
        if path.exists() or path.is_symlink():
            source_file(folder, path.name)  # no symbolic link is followed into the upload
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="dataset")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                             allow_patterns=["train-*.parquet", "README.md", INFO_FILE], commit_message="Upload genkit synthetic data set")
    return str(getattr(info, "commit_url", info))

