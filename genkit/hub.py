"""Publishing a run to the Hugging Face Hub: exactly the files needed to load it, plus a real model card."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from .config import ConfigError, TrainConfig
from .data import BUILTIN

# what never leaves the machine: optimizer/RNG checkpoints, tensorboard logs, per-step grids
EXCLUDED_DIRS = {"checkpoints", "logs", "samples"}
EXCLUDED_FILES = {"README.md"}  # replaced by the model card written here
PIPELINE_TAGS = {"diffusion": "unconditional-image-generation", "gan": "unconditional-image-generation", "vae": "unconditional-image-generation",
                 "rbm": "unconditional-image-generation", "autoencoder": "image-to-image", "classifier": "image-classification"}


def upload_files(run_dir: Path) -> list[Path]:
    """The run's files that belong on the Hub (relative paths)."""
    files = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in EXCLUDED_DIRS and str(rel) not in EXCLUDED_FILES and not rel.name.startswith("."):
            files.append(rel)
    return files


def model_card(run_dir: Path, repo_id: str) -> str:
    """README.md for the Hub: YAML metadata, sample grid, metrics, usage and the training config."""
    config = TrainConfig.load(run_dir)
    family = config.family
    conditional = bool(config.model.get("class_conditional") or config.model.get("conditional"))
    source = config.data.source
    dataset = BUILTIN[source][0] if source in BUILTIN else (source if source.count("/") == 1 and not Path(source).exists() else None)
    meta = {"library_name": "diffusers" if family == "diffusion" else "genkit", "license": "apache-2.0",
            "tags": ["genkit", family, *(["class-conditional"] if conditional else []), *(["diffusers:DDPMPipeline"] if family == "diffusion" and not conditional and not config.model.get("autoencoder") else [])],
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
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty; choose an empty folder for the dry run")
    files = upload_files(run_dir)
    weights = [f for f in files if f.suffix == ".safetensors"]
    if not weights:
        raise ConfigError(f"{run_dir} holds no trained weights (*.safetensors): has the run finished?")
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, folder / rel)
    (folder / "README.md").write_text(model_card(run_dir, repo_id))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo and upload the run's weights, configs, grid and card; returns the commit URL."""
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1:
        raise ConfigError(f"repo id must look like owner/name, got {repo_id!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        prepare_upload(run_dir, repo_id, staging)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload genkit run {Path(run_dir).name}")
    return str(getattr(info, "commit_url", info))
