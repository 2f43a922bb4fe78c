"""Publishing to the Hugging Face Hub: a run (exactly the files needed to load it, a real model card, no local paths)
and a Space that serves genkit models."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from .config import ConfigError, TrainConfig
from .data import BUILTIN
from .extras import require
from .families import get_family
from .runs import HUB_RECORD, check_finished, export_files, exported_code, file_sha256
from .safe_load import HUB_ID

PIPELINE_TAGS = {"diffusion": "unconditional-image-generation", "gan": "unconditional-image-generation", "vae": "unconditional-image-generation",
                 "rbm": "unconditional-image-generation", "autoencoder": "image-to-image", "classifier": "image-classification"}


def portable_config(config: TrainConfig) -> TrainConfig:
    """The config with this machine's paths removed: local folders become their bare names, data_dir is dropped."""
    values = config.to_dict()
    values["output_dir"] = f"runs/{Path(config.output_dir).name}"
    values["data"]["data_dir"] = None
    values["data"]["source"] = bare(config.data.source)
    values["init_from"] = bare(config.init_from)
    values["model"] = {key: bare(value) for key, value in config.model.items()}  # latent diffusion's autoencoder run
    return TrainConfig.from_dict(values)


def bare(value: Any) -> Any:
    """A local path -> its last component; anything else unchanged."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", ".")) or Path(value).exists()):
        return Path(value).name
    return value


# What loads a pushed folder, per family: the stock loader (module class or pipeline) named in the card and the README
LOADERS = {"autoencoder": "genkit.families.autoencoder", "vae": "genkit.families.vae:VAE", "gan": "genkit.families.gan:Generator",
           "rbm": "genkit.families.rbm:BernoulliRBM", "classifier": "genkit.families.classifier:SmallCNN"}
DISTRIBUTION = "hf-genkit"  # genkit's distribution name ("genkit" on PyPI is Google's unrelated SDK, same import name)
ON_PYPI = False  # True once hf-genkit is uploaded (tests/test_distribution.py builds and checks the wheel): cards then install it by name
INSTALL = (f"pip install {DISTRIBUTION}  # `pip install genkit` installs an unrelated project" if ON_PYPI else
           "# genkit is not on PyPI yet: install it from a source checkout (`pip install -e .` in a clone of the genkit repository);\n"
           "# `pip install genkit` installs Google's unrelated Genkit SDK")


def base_model(init_from: str | None) -> tuple[str | None, str]:
    """The Hub id a fine-tune started from (None when it is not on the Hub), and a sentence for the card."""
    if not init_from:
        return None, ""
    repo_id, label = hub_source(init_from)
    return repo_id, f"Fine-tuned from {label}."


def hub_source(source: str) -> tuple[str | None, str]:
    """A run folder or Hub id -> its Hub id (None when it is not on the Hub) and markdown naming it, linked when on the Hub."""
    path = Path(source).expanduser()
    if path.exists():
        repo_id = pushed_repo_id(path) or cached_repo_id(path)
        if repo_id and valid_repo_id(repo_id):
            return repo_id, f"[{repo_id}](https://huggingface.co/{repo_id})"
        return None, f"a local run (`{path.name}`) that is not on the Hub"
    if valid_repo_id(source):
        return source, f"[{source}](https://huggingface.co/{source})"
    return None, f"`{bare(source)}` (not a Hub model)"


def pushed_repo_id(run_dir: Path) -> str | None:
    """The repo id `genkit push` recorded in a run folder (hub.json), else None."""
    try:
        record = json.loads((run_dir / HUB_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record.get("repo_id") if isinstance(record, dict) else None


def cached_repo_id(path: Path) -> str | None:
    """owner/name of a snapshot in the Hugging Face cache (.../models--owner--name/snapshots/<sha>), else None."""
    for part in path.resolve().parts:
        if part.startswith("models--") and part.count("--") == 2:
            return part[len("models--"):].replace("--", "/")
    return None


GENERATION_KEYS = ("fd", "kid", "precision", "recall", "density", "coverage")  # genkit's space: named with the network on cards
PROTOCOL_KEYS = ("num_samples", "reference_split", "reference_selection", "feature_network", "sampler", "nfe", "guidance", "seed",
                 "train_cpu_seconds")


def metric_label(key: str, network: str | None) -> str:
    """A card's name for a score: genkit-space scores carry their network (FD_genkit-mnist-v1), Inception's FD is FID."""
    base, _, floor = key.partition("_") if key.split("_", 1)[0] in GENERATION_KEYS else (key, "", "")
    if network and base in GENERATION_KEYS:
        return f"{base.upper() if base in ('fd', 'kid') else base}_{network}{'_' + floor if floor else ''}"
    if key == "inception_fid":
        return "FID"
    return key


def eval_results(run_dir: Path, config: TrainConfig, dataset: str | None, task: str) -> list[EvalResult]:
    """The run's evaluation on its held-out split (metrics.json's eval_* and `genkit eval`'s eval_results.json) for model-index.

    Generation scores carry their protocol (N, reference split, feature network, sampler and NFE, guidance, seed, training
    CPU seconds) as metric_args, and genkit-space scores are named with their network: `FD_genkit-mnist-v1`, never FID.
    """
    final = json.loads((run_dir / "metrics.json").read_text()).get("final", {}) if (run_dir / "metrics.json").is_file() else {}
    offline = json.loads((run_dir / "eval_results.json").read_text()) if (run_dir / "eval_results.json").is_file() else {}
    scores = {**{k: v for k, v in final.items() if k.startswith("eval_")}, **offline}
    protocol = {**(final.get("generation_protocol") or {}), **{k: offline[k] for k in PROTOCOL_KEYS if k in offline}}
    if "train_cpu_seconds" in final:
        protocol.setdefault("train_cpu_seconds", final["train_cpu_seconds"])
    network = offline.get("feature_network") or protocol.get("feature_network")
    data = config.data
    name = dataset or bare(data.source)
    split = data.eval_split or f"{data.split} (held-out {data.eval_fraction:g})"
    results = []
    for key, value in scores.items():
        if not (isinstance(value, float) and math.isfinite(value)):  # metrics, not counts or flags
            continue
        label = metric_label(key, network)
        generation = label != key or key.startswith(("inception_", "dinov2_", "clip_"))
        args = {k: protocol[k] for k in PROTOCOL_KEYS if protocol.get(k) is not None} if generation else None
        results.append(EvalResult(task_type=task, dataset_type=name, dataset_name=name, dataset_split=split, metric_type=label, metric_name=label,
                                  metric_value=value, metric_args=args or None))
    return results


def protocol_line(results: list[EvalResult]) -> str:
    """One sentence of the protocol behind a card's generation scores (empty when it has none)."""
    args = next((r.metric_args for r in results if r.metric_args), None)
    if not args:
        return ""
    words = {"num_samples": "N", "reference_split": "reference split", "feature_network": "feature network", "nfe": "NFE",
             "train_cpu_seconds": "training CPU s"}
    return "Protocol of the generation scores: " + ", ".join(f"{words.get(k, k.replace('_', ' '))} {v}" for k, v in args.items()) + "."


def model_card(run_dir: Path, repo_id: str) -> str:
    """README.md for the Hub: YAML metadata (model-index, base_model), sample grid, metrics, usage and the (portable) training config."""
    raw = TrainConfig.load(run_dir)
    config = portable_config(raw)
    family = config.family
    conditional = bool(config.model.get("class_conditional") or config.model.get("conditional"))
    latent = bool(config.model.get("autoencoder"))
    flow = config.model.get("objective") == "flow_matching"
    source = config.data.source
    dataset = hub_dataset(source)
    task = pipeline_tag(family, conditional)
    results = eval_results(run_dir, config, dataset, task)
    parent, provenance = base_model(raw.init_from)
    provenance = " ".join(filter(None, [provenance, latent_sentence(raw)]))
    meta = ModelCardData(library_name=library_name(family), license=MODEL_LICENSE, pipeline_tag=task,
                         tags=["genkit", family, *(["class-conditional"] if conditional else []), *(["flow-matching"] if flow else []),
                               *(["latent-diffusion"] if latent else []),
                               *(["model_hub_mixin", "pytorch_model_hub_mixin"] if family != "diffusion" else [])],
                         datasets=[dataset] if dataset else None, base_model=parent, model_name=repo_id.split("/")[-1],
                         eval_results=results or None)
    rows = "\n".join(f"| {r.metric_name} | {r.metric_value:.4g} |" for r in results)
    sections = [
        f"---\n{meta.to_yaml()}\n---",
        f"# {repo_id.split('/')[-1]}\n\nA genkit **{family}** model trained on `{dataset or 'a local image dataset'}` "
        f"({config.data.image_size}x{config.data.image_size}, {config.data.channels} channel{'s' if config.data.channels > 1 else ''}). "
        f"{provenance}".rstrip(),
    ]
    if (run_dir / "samples.png").is_file():
        sections.append("![samples](samples.png)")
    if rows:
        table = f"On the `{results[0].dataset_split}` split:\n\n| metric | value |\n|---|---|\n{rows}"
        sections.append(f"## Metrics\n\n{table}\n\n{protocol_line(results)}".rstrip())
    snippet = usage(run_dir, family, repo_id, conditional)
    sections.append(f"## Usage\n\n```bash\n{install_block(family)}\n```\n\n```python\n{snippet}\n```")
    sections.append(f"## Training config\n\n```yaml\n{yaml.safe_dump(config.to_dict(), sort_keys=False)}```\n\nTrained with "
                    f"`genkit train` (see the genkit README); `training_config.json` in this repo reproduces the run.")
    return "\n\n".join(sections) + "\n"


# ---- what a card says besides its metrics: task, library, install line, provenance, the run's sampling settings ----

MODEL_LICENSE = "apache-2.0"  # what genkit's model cards declare, and so the data sets generated from them


def hub_dataset(source: str) -> str | None:
    """The Hub id of a data source (built-in names map to theirs), None for local data."""
    source = bare(source)
    return BUILTIN[source][0] if source in BUILTIN else (source if HUB_ID.fullmatch(source) else None)


def pipeline_tag(family: str, conditional: bool) -> str:
    """The Hub task: class-conditional generators have no task of their own on the Hub (`other`), they are not unconditional."""
    task = PIPELINE_TAGS.get(family, "other")
    return "other" if conditional and task == "unconditional-image-generation" else task


def library_name(family: str) -> str | None:
    """diffusers for diffusion pipelines; none for genkit's PyTorchModelHubMixin modules, as the mixin writes it (its tags say
    what they are): the Hub has no `genkit` library, and that name is Google's."""
    return "diffusers" if family == "diffusion" else None


def requirement(name: str) -> str:
    """`name` as genkit's own metadata requires it (e.g. diffusers>=0.32); the bare name when genkit is not installed."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if re.match(rf"{re.escape(name)}\s*(?:[<>=!~(\[]|$)", spec.strip(), re.I) and "extra" not in marker:
            return spec.strip().replace(" ", "")
    return name


def install_block(family: str) -> str:
    """What loading the artifact needs: torch + diffusers for a diffusion pipeline (its code travels with it); genkit for the rest."""
    if family == "diffusion":
        from .pipelines import DIFFUSERS_TESTED  # the range tests/test_diffusers_range.py loads and samples the pipeline with

        oldest, newest = DIFFUSERS_TESTED
        return (f'pip install torch "{requirement("diffusers")}"  # pipeline.py travels with the model: genkit itself is not needed; '
                f"tested with diffusers {oldest} to {newest}")
    return INSTALL


def latent_sentence(raw: TrainConfig) -> str:
    """Which autoencoder a latent diffusion run denoises the codes of, linked when it is on the Hub."""
    source = raw.model.get("autoencoder") if raw.family == "diffusion" else None
    if not source:
        return ""
    _, label = hub_source(str(source))
    return (f"Latent diffusion: the UNet denoises the latent codes of the autoencoder {label}; its weights travel with this model "
            "(`autoencoder/`, and the decoder the pipeline uses in `decoder/`).")


def sampling_defaults(config: TrainConfig) -> dict[str, Any]:
    """The run's own sampler, steps and guidance (`genkit sample`'s defaults), for the card's snippet."""
    from .families.diffusion import DEFAULT_SAMPLER, DiffusionFamily

    options = {**DiffusionFamily.model_options(), **config.model}
    return {"sampler": options["sampler"] or DEFAULT_SAMPLER[options["objective"]], "steps": int(options["sample_steps"]),
            "guidance": float(options["guidance_scale"])}


def usage(run_dir: Path, family: str, repo_id: str, conditional: bool) -> str:
    """The shortest working snippet that loads this model from the Hub with its stock loader (tests run it); every diffusion
    run loads with `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` (its own pipeline.py)."""
    load = f"\n\n# every family, with its config and class names:\nfrom genkit.runs import load_family\n\nfamily = load_family(\"{repo_id}\")"
    run = sampling_defaults(TrainConfig.load(run_dir)) if family == "diffusion" else {}
    if family == "diffusion":  # the pipeline class travels with the run as pipeline.py
        call = f"class_labels=[0, 1, 2, 3], guidance_scale={run['guidance']:g}" if conditional else "batch_size=4"
        return (f"from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained(\"{repo_id}\", trust_remote_code=True)\n"
                f"images = pipe({call}, num_inference_steps={run['steps']}).images  # the run's own sampler ({run['sampler']}), steps"
                f"{' and guidance' if conditional else ''}")
    module, _, name = LOADERS.get(family, "genkit.runs:").partition(":")
    if family == "autoencoder":
        config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
        name = "ConvAutoencoder" if "width" in config and "hidden_dims" not in config else "MLPAutoencoder"
        shape = config.get("image_shape", [1, 28, 28])
        return (f"import torch\nfrom {module} import {name}\n\nmodel = {name}.from_pretrained(\"{repo_id}\").eval()\n"
                f"x = torch.rand(4, {', '.join(map(str, shape))})  # images in [0, 1]\nreconstructions = model.reconstruct(x)")
    if family == "gan":
        labels = ", torch.arange(8) % generator.num_classes" if conditional else ""
        return (f"import torch\nfrom {module} import {name}\n\ngenerator = {name}.from_pretrained(\"{repo_id}\").eval()\n"
                f"z = torch.randn(8, generator.latent_dim)\nimages = (generator(z{labels}) + 1) / 2  # in [0, 1]")
    if family in ("vae", "rbm"):
        return (f"import torch\nfrom {module} import {name}\n\nmodel = {name}.from_pretrained(\"{repo_id}\")  # the module alone{load}\n"
                f"images = family.generate(8, torch.Generator().manual_seed(0))")
    return f"import torch{load}"


def source_file(run_dir: Path, rel: str, allow_hard_links: bool = False, links_inside: dict[tuple[int, int], int] | None = None) -> Path:
    """run_dir/rel, refused when it or a folder on its way is a symbolic link or resolves outside the run (it could point
    anywhere), or when it is a hard link whose other names lie outside the run (the same file as one elsewhere)."""
    path = run_dir / rel
    for part in [path, *path.relative_to(run_dir).parents]:
        link = run_dir / part
        if link != run_dir and link.is_symlink():
            raise ConfigError(f"{rel} in {run_dir} is a symbolic link ({link.relative_to(run_dir)}); genkit publishes no links: copy the file in")
    if not path.resolve().is_relative_to(run_dir.resolve()) or not path.is_file():
        raise ConfigError(f"{rel} in {run_dir} is not a regular file inside the run; refusing to publish it")
    info = path.stat()
    if info.st_nlink > 1 and not allow_hard_links:
        inside = (links_inside if links_inside is not None else hard_links_inside(run_dir)).get((info.st_dev, info.st_ino), 1)
        if info.st_nlink > inside:
            raise ConfigError(f"{rel} in {run_dir} is a hard link: the same file has {info.st_nlink - inside} other name(s) outside the run, "
                              "so it may not be what genkit wrote. Replace it with a copy (cp --remove-destination SOURCE "
                              f"{path}), or publish it as it is with --allow-hard-links")
    return path


def hard_links_inside(run_dir: Path) -> dict[tuple[int, int], int]:
    """How many names each multiply linked file has inside `run_dir` (by device and inode); symbolic links are not followed."""
    counts: dict[tuple[int, int], int] = {}
    for folder, _, files in os.walk(run_dir):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if info.st_nlink > 1:
                key = (info.st_dev, info.st_ino)
                counts[key] = counts.get(key, 0) + 1
    return counts


def check_code(run_dir: Path, rel: str, path: Path, allow_edited_code: bool = False) -> None:
    """Refuse a code file (pipeline.py) whose bytes are not those genkit wrote at export (its hash in run.json, or, for
    runs without a record, genkit's own pipeline source): it runs wherever the model is loaded with trust_remote_code."""
    if allow_edited_code:
        return
    recorded = exported_code(run_dir)
    expected = recorded.get(rel) if recorded is not None else file_sha256(Path(__file__).with_name("pipelines.py"))
    actual = file_sha256(path)
    if actual != expected:
        origin = "the file genkit wrote when it exported the run" if recorded is not None else "genkit's own pipeline code (the run records no hash)"
        raise ConfigError(f"{rel} in {run_dir} differs from {origin} (sha256 {actual[:12]}, expected {str(expected)[:12]}): it runs on every "
                          "machine that loads the model with trust_remote_code=True. Restore it (`genkit train --config "
                          f"{run_dir / 'training_config.json'} --resume latest` exports the run again), or publish it as it is with --allow-edited-code")


def write_atomically(folder: str | Path, purpose: str, fill: Callable[[Path], Any]) -> Any:
    """Run fill(staging) in a fresh sibling of `folder`, then rename it into place: a failure leaves no partial folder and names the file."""
    folder = Path(folder)
    require_empty(folder, purpose)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder(folder.parent, f".{folder.name}.partial-")  # same disk: the rename is atomic
    try:
        result = fill(staging)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        staging.rename(folder)
        return result
    except OSError as err:
        name = Path(err.filename) if err.filename else None
        if name is not None and name.is_relative_to(staging):
            name = folder / name.relative_to(staging)
        raise ConfigError(f"cannot write {folder}: {err.strerror or err}{f' ({name})' if name else ''}; nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def new_folder(parent: Path, prefix: str) -> Path:
    """A fresh, uniquely named folder in `parent` with the mode the umask gives (mkdtemp's is 0700, kept after the rename)."""
    while True:
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def prepare_upload(run_dir: str | Path, repo_id: str, folder: str | Path, card: bool = True, allow_hard_links: bool = False,
                   allow_edited_code: bool = False) -> list[str]:
    """Write into `folder` exactly what would be uploaded; return the relative paths.

    Every file must be the run's own and, for code, what genkit wrote: `allow_hard_links` and `allow_edited_code` say
    otherwise explicitly.
    """
    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    if not (run_dir / "training_config.json").is_file():
        raise ConfigError(f"{run_dir} is not a genkit run directory (no training_config.json)")
    config = TrainConfig.load(run_dir)
    check_finished(run_dir, config)
    names = export_files(run_dir, config.family)  # an allow-list: nothing else in the folder can leak
    links = hard_links_inside(run_dir)
    family = get_family(config.family)  # a GAN's generator goes to the root, once: Generator.from_pretrained(repo_id)
    sources = {}
    for rel in names:  # every file checked before anything is written
        source = sources[family.published_name(rel)] = source_file(run_dir, rel, allow_hard_links, links)
        if rel.endswith(".py"):
            check_code(run_dir, rel, source, allow_edited_code)

    def fill(staging: Path) -> list[str]:
        for rel, source in sources.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / rel, follow_symlinks=False)
        portable_config(config).save(staging / "training_config.json")
        if card:
            (staging / "README.md").write_text(model_card(run_dir, repo_id))
        return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())

    return write_atomically(folder, "for the dry run", fill)


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None,
             allow_hard_links: bool = False, allow_edited_code: bool = False) -> str:
    """Create (or reuse) the model repo and upload the run's weights, configs, grid and card; returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "upload"
        prepare_upload(run_dir, repo_id, staging, allow_hard_links=allow_hard_links, allow_edited_code=allow_edited_code)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload genkit run {Path(run_dir).name}")
    url = str(getattr(info, "commit_url", info))
    try:  # fine-tunes of this run cite it as base_model; a read-only run folder only loses that
        (Path(run_dir) / HUB_RECORD).write_text(json.dumps({"repo_id": repo_id, "commit_url": url}, indent=2) + "\n")
    except OSError:
        pass
    return url


def require_empty(folder: Path, purpose: str) -> None:
    """Refuse to write into a folder that already holds something (nothing there is overwritten or mixed in)."""
    folder = Path(folder)
    if folder.is_symlink() or folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} already exists and is not empty; choose an empty folder {purpose}")


def valid_repo_id(repo_id: Any) -> bool:
    """A plain owner/name: huggingface_hub's rules, no paths, URLs, whitespace or control characters."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not HUB_ID.fullmatch(repo_id) or any(c.isspace() or not c.isprintable() for c in repo_id):
        return False
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    """Refuse anything but a plain owner/name (no paths, no URLs, no whitespace)."""
    if not valid_repo_id(repo_id):
        raise ConfigError(f"{what} must look like owner/name (letters, digits, '-', '_', '.'), got {repo_id!r}")


# ---- Spaces -----------------------------------------------------------------------------------------------

SPACE_APP = Path(__file__).resolve().parent / "space" / "app.py"  # the Space's entry point (spaces/app.py links to it): in every wheel
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # CPU-only torch wheels (no CUDA libraries) for a CPU Space
SDK_PROVIDED = {"gradio"}  # installed by the Space's SDK at the card's sdk_version


def app_imports(app: Path = SPACE_APP) -> set[str]:
    """Top-level third-party modules the app imports when it loads, following its genkit imports (and every family it may load)."""
    package = Path(__file__).resolve().parent
    todo = [app, *sorted((package / "families").glob("*.py"))]  # families are imported by name when a model loads
    seen: set[Path] = set()
    found: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        at_import_time = {id(node) for node in _outside_functions(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names, level = [a.name for a in node.names], 0
            elif isinstance(node, ast.ImportFrom):
                names, level = [node.module or "", *(f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names)], node.level
            else:
                continue
            for name in names:
                if level or name.split(".")[0] == "genkit":  # genkit's own modules: followed, wherever the import is
                    base = path.parents[level - 1] if level else package.parent
                    target = base.joinpath(*[part for part in name.split(".") if part])
                    todo += [target.with_suffix(".py"), target / "__init__.py"]
                elif id(node) in at_import_time:  # third-party imports inside functions (plots, analysis) are not needed to serve
                    found.add(name.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"genkit", "__future__"}


def _outside_functions(node: ast.AST) -> Iterator[ast.AST]:
    """Every node run when the module is imported: all but the bodies of functions."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _outside_functions(child)


def space_python() -> str:
    """The Python the Space's pins were taken from (and resolve on): the Hub builds with 3.10 unless the card says otherwise."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def space_requirements(cpu: bool = True) -> list[str]:
    """requirements.txt of the Space: what the app imports, pinned to the versions installed here (the ones it was tested with)."""
    by_module = importlib.metadata.packages_distributions()
    dists = sorted({dist for module in app_imports() for dist in by_module.get(module, [module])} - SDK_PROVIDED, key=str.lower)
    lines = [f"--extra-index-url {CPU_TORCH_INDEX}"] if cpu else []
    for dist in dists:
        version = importlib.metadata.version(dist)
        if dist == "torch":
            version = version.split("+")[0] + ("+cpu" if cpu else "")  # the CPU build: no CUDA libraries to download
        lines.append(f"{dist}=={version}")
    return lines


def space_card(repo_id: str, models: list[str], allow_hub: bool, cpu: bool = True) -> str:
    """README.md of the Space: front matter the Hub reads, then what the Space does, which models it serves and how it installs."""
    gradio = require("gradio", "app", "`genkit space` (the card names the gradio release the app was tested with)")
    hub_models = [m for m in models if "=" not in m]
    meta = {"title": repo_id.split("/")[-1], "emoji": "🎨", "colorFrom": "indigo", "colorTo": "gray", "sdk": "gradio",
            "sdk_version": gradio.__version__, "python_version": space_python(), "app_file": "app.py", "pinned": False, "license": "apache-2.0"}
    if hub_models:
        meta["models"] = hub_models
    served = "\n".join(f"- [{m}](https://huggingface.co/{m})" if "=" not in m else f"- `{m.partition('=')[0]}` (bundled in `models/`)"
                       for m in models) or "- (none listed)"
    hub = "Visitors may also enter the Hub id of any public genkit model, within the limits in `genkit/safe_load.py`." if allow_hub else \
        "Only the models above are served."
    torch_line = (f"`requirements.txt` pins every package the app imports to the version it was built and tested with, on Python "
                  f"{meta['python_version']} (`python_version` above; the Hub's default, 3.10, is older than some pins). torch is the CPU "
                  f"build (`+cpu`, from `--extra-index-url {CPU_TORCH_INDEX}`): a CPU Space needs none of the CUDA libraries of PyPI's "
                  f"default torch wheel. On GPU hardware, rebuild with `genkit space --gpu` (PyPI's CUDA torch, no extra index).") if cpu else \
        (f"`requirements.txt` pins every package the app imports to the version it was built and tested with, on Python {meta['python_version']}; "
         "torch is PyPI's CUDA build (GPU hardware).")
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n# {meta['title']}\n\n"
            f"Sample, denoise and explore the latents of genkit models, made with `genkit space`.\n\n## Models\n\n{served}\n\n{hub}\n\n"
            f"## Install\n\n{torch_line} The `genkit/` package beside `app.py` is the genkit code the Space runs; elsewhere install genkit "
            f"{'with `pip install ' + DISTRIBUTION + '`' if ON_PYPI else 'from a source checkout (`pip install -e .`; it is not on PyPI yet)'} "
            "(not `pip install genkit`, an unrelated project).\n")


def bundle_name(run_dir: Path) -> str:
    """The name a local run is served under in a Space (its folder name, made a safe single path component)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(run_dir).resolve().name).strip(".-") or "model"
    return name[:96]


def prepare_space(repo_id: str, models: list[str], folder: str | Path, allow_hub: bool = True, cpu: bool = True) -> list[str]:
    """Write into `folder` the exact Space: app, the genkit package it imports, requirements, card, model list and bundled local runs."""
    check_repo_id(repo_id)
    local = {}
    for model in models:
        if Path(model).expanduser().is_dir():  # a local run travels inside the Space, with the push's allow-list and checks
            name = bundle_name(Path(model).expanduser())
            if name in local:
                raise ConfigError(f"two --model runs would be bundled as models/{name}; rename one of the folders")
            local[name] = Path(model).expanduser()
        else:
            check_repo_id(model, "--model (a Hub model id or a local run directory)")
    listed = [f"{bundle_name(Path(m).expanduser())}=models/{bundle_name(Path(m).expanduser())}" if Path(m).expanduser().is_dir() else m for m in models]

    def fill(staging: Path) -> list[str]:
        for name, run_dir in local.items():
            prepare_upload(run_dir, f"local/{name}", staging / "models" / name, card=False)
        package = Path(__file__).resolve().parent
        for source in sorted(set(package.rglob("*.py")) - {SPACE_APP}):  # the Space imports genkit from here: no index or git URL needed
            target = staging / "genkit" / source.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        shutil.copyfile(SPACE_APP, staging / "app.py")
        (staging / "requirements.txt").write_text("\n".join(space_requirements(cpu)) + "\n")
        (staging / "space.json").write_text(json.dumps({"models": listed, "allow_hub": allow_hub}, indent=2) + "\n")
        (staging / "README.md").write_text(space_card(repo_id, listed, allow_hub, cpu))
        return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())

    return write_atomically(folder, "for the Space", fill)


def push_space(repo_id: str, models: list[str], allow_hub: bool = True, private: bool = False, token: str | None = None, cpu: bool = True) -> str:
    """Create (or reuse) the Gradio Space and upload the folder `prepare_space` writes; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "space"
        prepare_space(repo_id, models, staging, allow_hub, cpu)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="space", space_sdk="gradio")
        info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="space", commit_message="Upload genkit Space")
    return str(getattr(info, "commit_url", info))
