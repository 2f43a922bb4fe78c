"""Classification Accuracy Score (Ravuri & Vinyals 2019) and the augmentation gain of generated images."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import ConfigError, DataConfig, TrainConfig
from ..data import ImageTensors, load_split
from ..eval_classifier import class_accuracy, classifier_data_config
from ..synthetic import export
from .reference import real_images, to_unit


def save_image_tensors(data: ImageTensors, folder: str | Path) -> Path:
    """Write uint8 images and labels as a `datasets` save_to_disk folder (split `train`) that genkit can train on."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=data.class_names)})
    arrays = data.images.permute(0, 2, 3, 1).numpy()
    images = [a[..., 0] if a.shape[2] == 1 else a for a in arrays]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images, "label": data.labels.tolist()}, features=features)}).save_to_disk(str(folder))
    return Path(folder)


def _folder_config(folder: Path, like: DataConfig) -> DataConfig:
    """A saved image set, shaped like `like`'s data (its held-out share evaluates; the real test split is scored apart)."""
    return DataConfig(source=str(folder), eval_split=None, image_size=like.image_size, resize=like.resize, channels=like.channels)


def train_and_test_classifier(folder: Path, like: DataConfig, test: ImageTensors, steps: int, seed: int = 0, batch_size: int = 128) -> float:
    """Train genkit's evaluation classifier on the images in `folder` for `steps` steps; its accuracy on `test`."""
    from ..engine import train
    from ..runs import load_family

    data = _folder_config(folder, like)
    run = folder.parent / f"{folder.name}-classifier"
    config = TrainConfig(family="classifier", data=data, output_dir=str(run), max_steps=steps, batch_size=batch_size, learning_rate=1e-3,
                         seed=seed, log_with="none", progress_bar=False, keep_last=1, eval_batches=5, checkpoint_every=steps)
    with torch.enable_grad():
        train(config, overwrite=True)
    classifier = load_family(str(run)).models["model"]
    return class_accuracy(to_unit(test), test.labels, classifier)


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """Point genkit's cache at `folder` for the duration of the block."""
    previous = os.environ.get("GENKIT_CACHE")
    os.environ["GENKIT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GENKIT_CACHE", None)
        else:
            os.environ["GENKIT_CACHE"] = previous


def classification_accuracy_score(family, num_images: int = 10000, real_subset: int = 1000, steps: int = 1500, seed: int = 0,
                                  test_images: int = 10000, **options) -> dict[str, float]:
    """CAS: a classifier trained on generated images, tested on the real test split, beside one trained on as many real
    images; and the augmentation gain: a small real subset alone vs the same subset plus the generated images.

    Every classifier gets the same architecture and the same number of optimizer steps.
    """
    if not family.conditional:
        raise ConfigError("the Classification Accuracy Score needs a class-conditional model (it asks for each class)")
    data = family.config.data
    test = real_images(data, data.eval_split or "test", test_images)
    train_pool = load_split(classifier_data_config(data), data.split)
    order = torch.randperm(len(train_pool), generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix="genkit-cas-") as tmp, _cache_in(Path(tmp) / "cache"):  # temporary sets: no cache entries left behind
        root = Path(tmp)
        export(family, root / "generated", num_images, "save_to_disk", seed=seed, progress=False, **options)
        generated = load_split(_folder_config(root / "generated", data), "train")
        real = train_pool.select(order[:num_images])
        small = train_pool.select(order[:real_subset])
        both = ImageTensors(torch.cat([small.images, generated.images]), torch.cat([small.labels, generated.labels]), small.class_names)
        accuracy = {}
        for name, images in [("generated", generated), ("real", real), ("real_subset", small), ("real_subset_plus_generated", both)]:
            batch = min(128, max(1, len(images) // 4))  # small sets (the real subset) still give whole batches
            accuracy[name] = train_and_test_classifier(save_image_tensors(images, root / name), data, test, steps, seed, batch)
    return {"cas": accuracy["generated"], "cas_real_baseline": accuracy["real"], "cas_ratio": accuracy["generated"] / accuracy["real"],
            "cas_num_images": num_images, "augment_real_only": accuracy["real_subset"], "augment_real_plus_generated": accuracy["real_subset_plus_generated"],
            "augment_gain": accuracy["real_subset_plus_generated"] - accuracy["real_subset"], "augment_real_images": real_subset,
            "cas_classifier_steps": steps}
