"""Experiment trackers through Accelerate: which ones to start, the precision the launcher asked for, and images to each.

accelerate logs scalars to every tracker itself; images it logs only for some (`log_images`), so the others get them
through their own API (`accelerator.get_tracker(name, unwrap=True)`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from PIL import Image

from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

PRECISIONS = ["no", "fp16", "bf16"]


def resolve_mixed_precision(config: TrainConfig, resumed_run: Path | None = None) -> str:
    """The config's mixed_precision, else the resumed run's, else the launcher's (ACCELERATE_MIXED_PRECISION), else no.

    `accelerate launch` passes its `--mixed_precision` (or the `accelerate config` file's) on in that variable.
    """
    if config.mixed_precision is not None:
        return config.mixed_precision
    saved = resumed_run / "training_config.json" if resumed_run else None
    if saved and saved.is_file():  # a resume trains as the run did unless the config says otherwise
        return TrainConfig.load(saved).mixed_precision or "no"
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if value not in PRECISIONS:
        raise ConfigError(f"the launcher asks for mixed precision {value!r} (ACCELERATE_MIXED_PRECISION); genkit trains with {', '.join(PRECISIONS)}")
    return value


def trackers(log_with: str | None) -> list[str]:
    """The trackers named by `log_with` (comma-separated; none or null: no tracker), each one accelerate knows.

    Checked here, not in TrainConfig.validate: accelerate's list imports torch, and the CLI reads configs without it.
    """
    from accelerate.utils import LoggerType

    names = [n.strip().lower() for n in (log_with or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    known = [t.value for t in LoggerType]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"log_with: unknown tracker(s) {', '.join(map(repr, unknown))}; choose from none, {', '.join(known)} (comma-separated)")
    return names


def available_trackers(config: TrainConfig) -> list[str]:
    """The trackers of `config.log_with`, each one installed (accelerate would skip a missing one without a word)."""
    from accelerate.tracking import get_available_trackers

    names = trackers(config.log_with)
    available = [str(t) for t in get_available_trackers()]
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        raise ConfigError(f"log_with={config.log_with!r}: {', '.join(missing)} is not installed here (pip install {' '.join(missing)}), "
                          f"installed trackers: {', '.join(available) or 'none'}; or set log_with=none")
    return names


def tracker_init_kwargs(run_dir: Path) -> dict[str, dict]:
    """Per-tracker start options: the run's name, and no dashboard pop-up from trackio."""
    return {"trackio": {"name": run_dir.name, "embed": False}, "wandb": {"name": run_dir.name}}


def log_image(accelerator: Accelerator, key: str, path: Path, step: int) -> None:
    """Log the PNG at `path` as image `key` to every started tracker; a tracker that fails is named, never fatal."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return
    with Image.open(path) as img:
        image = img.convert("RGB")
    for tracker in accelerator.trackers:
        try:
            _log_to(tracker, key, image, step)
        except Exception as err:  # an image is a convenience: the run goes on without it
            logger.warning("could not log image %r to %s: %s: %s", key, tracker.name, type(err).__name__, err)


def _log_to(tracker, key: str, image: Image.Image, step: int) -> None:
    if tracker.name == "tensorboard":
        tracker.log_images({key: np.asarray(image)[None]}, step=step, dataformats="NHWC")
    elif tracker.name == "trackio":
        import trackio

        tracker.tracker.log({key: trackio.Image(image)}, step=step)
    elif tracker.name == "comet_ml":
        tracker.tracker.log_image(image, name=key, step=step)
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.log_image(image, key=key, step=step)
    elif tracker.name == "dvclive":
        tracker.tracker.log_image(f"{key}.png", image)
    elif tracker.name == "aim":
        tracker.log_images({key: image}, step=step)
    elif hasattr(tracker, "log_images"):  # wandb, clearml, swanlab
        tracker.log_images({key: [image]}, step=step)
