"""Experiment trackers through Accelerate: which ones to start, the precision the launcher asked for, and images to each.

accelerate logs scalars to every tracker itself; images it logs only for some (`log_images`), so the others get them
through their own API (`accelerator.get_tracker(name, unwrap=True)`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
from accelerate import Accelerator, PartialState
from PIL import Image

from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

PRECISIONS = ["no", "fp16", "bf16"]


def resolve_mixed_precision(config: TrainConfig, resumed_run: Path | None = None) -> str:
    """The precision the run really trains in: what `requested_precision` says, except fp16 on the CPU, which is `no`.

    accelerate silently trains fp16 runs in fp32 on the CPU (no autocast, no loss scaler there); the run records what ran.
    """
    value = requested_precision(config, resumed_run)
    if value == "fp16" and PartialState().device.type == "cpu":
        if PartialState().is_main_process:
            print("genkit: mixed_precision=fp16 does not apply on the CPU (accelerate trains in fp32 there); training and recording "
                  "mixed_precision=no (bf16 does apply on the CPU)", file=sys.stderr, flush=True)
        return "no"
    return value


def requested_precision(config: TrainConfig, resumed_run: Path | None = None) -> str:
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


# What usually makes a tracker fail to start, and the fix (the error itself is quoted too)
TRACKER_FIXES = {
    "mlflow": "give mlflow a tracking store, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db (a database file) or the URL of an mlflow server",
    "wandb": "log in with `wandb login` (or WANDB_API_KEY=...), or set WANDB_MODE=offline",
    "comet_ml": "set COMET_API_KEY, or COMET_MODE=offline",
    "clearml": "run `clearml-init` (or set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY)",
    "aim": "point aim at a writable repository (`aim init` in the run's folder)",
}


def start_trackers(accelerator: Accelerator, run_dir: Path, config: dict) -> None:
    """accelerator.init_trackers, with a tracker that fails to start (no login, no store, no server) named in one line with its fix."""
    try:
        accelerator.init_trackers("genkit", config=config, init_kwargs=tracker_init_kwargs(run_dir))
    except Exception as err:
        names = [str(t) for t in accelerator.log_with]
        name = names[min(len(accelerator.trackers), len(names) - 1)] if names else "the tracker"
        for tracker in accelerator.trackers:  # the ones that did start
            try:
                tracker.finish()
            except Exception:
                pass
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        fix = TRACKER_FIXES.get(name, f"check {name}'s own set-up")
        raise ConfigError(f"log_with: {name} failed to start ({type(err).__name__}: {reason}); {fix}; or train without it: "
                          f"--set log_with={','.join(n for n in names if n != name) or 'none'}") from None


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
