"""Load a finished run (a run directory or a Hub repo id) back as a family with its trained models."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, TrainConfig
from .families import DataInfo, Family, get_family


def resolve(source: str) -> Path:
    """A local run directory, or the snapshot of a Hub repo id."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "training_config.json").is_file():
            raise ConfigError(f"{path} is not a genkit run directory (no training_config.json)")
        return path
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ConfigError(f"{source!r} is neither an existing run directory nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as err:
        raise ConfigError(f"cannot download {source!r} from the Hub ({type(err).__name__}: {str(err)[:200]})") from None


def load_family(source: str, device: str | torch.device = "cpu") -> Family:
    """The trained family of a run, models in eval mode on `device`."""
    path = resolve(source)
    config = TrainConfig.load(path)
    cls = get_family(config.family)
    models = cls.load_models(path)
    for model in models.values():
        model.to(device).eval()
    return cls(config, DataInfo.load(path), models)
