"""Publishing to the Hugging Face Hub: a run (exactly the files needed to load it, a real model card, no local paths)
and a Space that serves genkit models."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, TrainConfig
from .data import BUILTIN
from .runs import check_finished, export_files
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


def model_card(run_dir: Path, repo_id: str) -> str:
    """README.md for the Hub: YAML metadata, sample grid, metrics, usage and the (portable) training config."""
    config = portable_config(TrainConfig.load(run_dir))
    family = config.family
    conditional = bool(config.model.get("class_conditional") or config.model.get("conditional"))
    source = config.data.source
    dataset = BUILTIN[source][0] if source in BUILTIN else (source if HUB_ID.match(source) else None)
    meta = {"library_name": "diffusers" if family == "diffusion" else "genkit", "license": "apache-2.0",
            "tags": ["genkit", family, *(["class-conditional"] if conditional else []),
                     *(["diffusers:DDPMPipeline"] if family == "diffusion" and not conditional and not config.model.get("autoencoder") else [])],
            "pipeline_tag": PIPELINE_TAGS.get(family, "other")}
    if dataset:
        meta["datasets"] = [dataset]
    metrics = json.loads((run_dir / "metrics.json").read_text())["final"] if (run_dir / "metrics.json").is_file() else {}
    evaluation = json.loads((run_dir / "eval_results.json").read_text()) if (run_dir / "eval_results.json").is_file() else {}
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in {**metrics, **evaluation}.items() if v is not None)
    sections = [
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---",
        f"# {repo_id.split('/')[-1]}\n\nA genkit **{family}** model trained on `{dataset or 'a local image dataset'}` "
        f"({config.data.image_size}x{config.data.image_size}, {config.data.channels} channel{'s' if config.data.channels > 1 else ''}).",
    ]
    if (run_dir / "samples.png").is_file():
        sections.append("![samples](samples.png)")
    if rows:
        sections.append(f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}")
    sections.append(f"## Usage\n\n```python\n{usage(family, repo_id, conditional, bool(config.model.get('autoencoder')))}\n```")
    sections.append(f"## Training config\n\n```yaml\n{yaml.safe_dump(config.to_dict(), sort_keys=False)}```\n\nTrained with "
                    f"`genkit train` (see the genkit README); `training_config.json` in this repo reproduces the run.")
    return "\n\n".join(sections) + "\n"


def usage(family: str, repo_id: str, conditional: bool, latent: bool) -> str:
    """The shortest working snippet that loads this model from the Hub."""
    if family == "diffusion" and not conditional and not latent:
        return (f"from diffusers import DDPMPipeline\n\npipe = DDPMPipeline.from_pretrained(\"{repo_id}\")\nimages = pipe(batch_size=8).images\n\n"
                f"# or any scheduler, with genkit:\nimport torch\nfrom genkit.runs import load_family\n"
                f"images = load_family(\"{repo_id}\").generate(8, torch.Generator().manual_seed(0), scheduler=\"dpm++\", steps=25)")
    if family == "diffusion" and not latent:
        return (f"from genkit.pipelines import GenkitDiffusionPipeline\n\npipe = GenkitDiffusionPipeline.from_pretrained(\"{repo_id}\")\n"
                f"images = pipe(class_labels=[0, 1, 2, 3], guidance_scale=2.0, num_inference_steps=25).images")
    return (f"import torch\nfrom genkit.runs import load_family\n\nfamily = load_family(\"{repo_id}\")  # models, config and class names\n"
            + ("x = torch.rand(4, 1, 28, 28)\nreconstructions = family.models[\"model\"].reconstruct(x)" if family == "autoencoder"
               else "images = family.generate(8, torch.Generator().manual_seed(0))"))


def prepare_upload(run_dir: str | Path, repo_id: str, folder: str | Path) -> list[str]:
    """Write into `folder` exactly what would be uploaded; return the relative paths."""
    run_dir, folder = Path(run_dir), Path(folder)
    if not (run_dir / "training_config.json").is_file():
        raise ConfigError(f"{run_dir} is not a genkit run directory (no training_config.json)")
    require_empty(folder, "for the dry run")
    config = TrainConfig.load(run_dir)
    check_finished(run_dir, config)
    for rel in export_files(run_dir, config.family):  # an allow-list: nothing else in the folder can leak
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, folder / rel)
    portable_config(config).save(folder / "training_config.json")
    (folder / "README.md").write_text(model_card(run_dir, repo_id))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo and upload the run's weights, configs, grid and card; returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        prepare_upload(run_dir, repo_id, staging)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload genkit run {Path(run_dir).name}")
    return str(getattr(info, "commit_url", info))


def require_empty(folder: Path, purpose: str) -> None:
    """Refuse to write into a folder that already holds something (nothing there is overwritten or mixed in)."""
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty; choose an empty folder {purpose}")


def check_repo_id(repo_id: str) -> None:
    """Refuse anything but a plain owner/name (no paths, no URLs)."""
    if not HUB_ID.match(repo_id):
        raise ConfigError(f"repo id must look like owner/name (letters, digits, '-', '_', '.'), got {repo_id!r}")


# ---- Spaces -----------------------------------------------------------------------------------------------

SPACE_APP = Path(__file__).resolve().parents[1] / "spaces" / "app.py"


def space_requirements() -> list[str]:
    """genkit's own dependencies, for the Space's requirements.txt (gradio comes with the Space's SDK)."""
    required = importlib.metadata.requires("genkit") or []
    return [r for r in required if "extra ==" not in r and not re.match(r"^gradio\b", r)]


def space_card(repo_id: str, models: list[str], allow_hub: bool) -> str:
    """README.md of the Space: front matter the Hub reads, then what the Space does and which models it serves."""
    import gradio

    meta = {"title": repo_id.split("/")[-1], "emoji": "🎨", "colorFrom": "indigo", "colorTo": "gray", "sdk": "gradio",
            "sdk_version": gradio.__version__, "app_file": "app.py", "pinned": False, "license": "apache-2.0"}
    if models:
        meta["models"] = list(models)
    served = "\n".join(f"- [{m}](https://huggingface.co/{m})" for m in models) or "- (none listed)"
    hub = "Visitors may also enter the Hub id of any public genkit model, within the limits in `genkit/safe_load.py`." if allow_hub else \
        "Only the models above are served."
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n# {meta['title']}\n\n"
            f"Sample, denoise and explore the latents of genkit models, made with `genkit space`.\n\n## Models\n\n{served}\n\n{hub}\n")


def prepare_space(repo_id: str, models: list[str], folder: str | Path, allow_hub: bool = True) -> list[str]:
    """Write into `folder` the exact Space: app, the genkit package it imports, requirements, card and model list."""
    folder = Path(folder)
    check_repo_id(repo_id)
    for model in models:
        if not HUB_ID.match(model):
            raise ConfigError(f"--model must be a Hub model id owner/name, got {model!r}")
    if not SPACE_APP.is_file():
        raise ConfigError(f"the Gradio app is not installed next to genkit ({SPACE_APP}); run `genkit space` from a source checkout")
    require_empty(folder, "for the Space")
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):  # the Space imports genkit from here: no index or git URL needed
        target = folder / "genkit" / source.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    shutil.copy2(SPACE_APP, folder / "app.py")
    (folder / "requirements.txt").write_text("\n".join(space_requirements()) + "\n")
    (folder / "space.json").write_text(json.dumps({"models": list(models), "allow_hub": allow_hub}, indent=2) + "\n")
    (folder / "README.md").write_text(space_card(repo_id, models, allow_hub))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_space(repo_id: str, models: list[str], allow_hub: bool = True, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) the Gradio Space and upload the folder `prepare_space` writes; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        prepare_space(repo_id, models, staging, allow_hub)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="space", space_sdk="gradio")
        info = api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="space", commit_message="Upload genkit Space")
    return str(getattr(info, "commit_url", info))
