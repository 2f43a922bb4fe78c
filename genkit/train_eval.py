"""Judging a run while it trains: FD & co of generated samples, the best checkpoint, and which way each metric improves.

The scores are measured in genkit's shipped feature network for the data set (`fd`, not FID: FID is Inception's), and
`generation_protocol` states what they were measured with, for metrics.json.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Iterator

from .config import ConfigError  # no torch at import: TrainConfig.validate (the CLI) checks its keys here

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import TrainConfig
    from .families import Family

# what genkit.evaluation.evaluate_generation returns that is worth judging a model by (floors are references, not scores)
GENERATION_METRICS = ("fd", "kid", "precision", "recall", "density", "coverage", "class_accuracy")
LOWER_IS_BETTER = {"fd", "fid", "kid", "loss", "mse", "nll", "bpd", "error"}
RENAMED = {"fid": "fd"}  # genkit's space is not Inception's: its Fréchet distance is no FID
HIGHER_IS_BETTER = {"precision", "recall", "density", "coverage", "accuracy", "psnr", "elbo", "auroc"}


def metric_mode(name: str, mode: str | None = None) -> str:
    """'min' or 'max' for a metric: `mode` when given, else inferred from the words of its name (eval_loss: min, fd: min)."""
    if mode:
        return mode
    words = set(name.lower().split("_"))
    if words & LOWER_IS_BETTER and not words & HIGHER_IS_BETTER:
        return "min"
    if words & HIGHER_IS_BETTER and not words & LOWER_IS_BETTER:
        return "max"
    raise ConfigError(f"cannot tell whether {name!r} improves up or down; set its mode (save_best_mode / early_stopping_mode: min or max)")


def is_generation_metric(name: str) -> bool:
    """Whether `name` is computed by the generation evaluation rather than the family's per-batch evaluation."""
    return name in GENERATION_METRICS


def check_config(config: TrainConfig) -> None:
    """Raise ConfigError for inconsistent evaluation / best-checkpoint / early-stopping keys."""
    if config.eval_generation_samples < 2:
        raise ConfigError(f"eval_generation_samples must be >= 2, got {config.eval_generation_samples}")
    if config.export_best and not config.save_best:
        raise ConfigError("export_best needs save_best: the metric that picks the checkpoint to export (e.g. save_best: fd)")
    for key in ["save_best", "early_stopping_metric"]:
        name = getattr(config, key)
        if name in RENAMED:
            raise ConfigError(f"{key}={name!r}: genkit's scores are measured in its own feature network, not Inception, so the Fréchet "
                              f"distance is called {RENAMED[name]!r} now; set {key}: {RENAMED[name]}")
        if name and is_generation_metric(name) and not config.eval_generation_every:
            raise ConfigError(f"{key}={name!r} is a generation metric: set eval_generation_every (steps) to compute it while training")
    if config.save_best:
        metric_mode(config.save_best, config.save_best_mode)
    if config.early_stopping_patience:
        metric_mode(config.early_stopping_metric, config.early_stopping_mode)


def prepare(config: TrainConfig, family_cls: type[Family]) -> None:
    """Before the run's Accelerator exists: check the family generates, and load genkit's shipped network for the data (or,
    for data sets without one, train the machine-local classifier).

    Every process calls this, so a machine-local classifier's own training run is an ordinary (multi-process) run; later
    the main process only loads it, and no training starts inside the training loop.
    """
    if not config.eval_generation_every:
        return
    from .families.base import Family

    if family_cls.generate is Family.generate:
        raise ConfigError(f"eval_generation_every: the {family_cls.name} family does not generate images; use eval_every metrics instead")
    from accelerate.state import PartialState

    from .evaluation import get_classifier, real_pair

    get_classifier(config.data)
    real_pair(config.data, config.eval_generation_samples)  # too few evaluation images: a ConfigError now, not at the first evaluation
    # the classifier's run ended by tearing the process group down; forget it, so this run's Accelerator starts a new one
    PartialState._reset_state()


def generation_protocol(config: TrainConfig, state: dict[str, Any]) -> dict[str, Any]:
    """What the generation scores in metrics.json were measured with (N, reference split, feature network + version, sampler
    and NFE, guidance, seed, training CPU seconds); empty when the run had no generation evaluation."""
    if not config.eval_generation_every:
        return {}
    from .evaluation.generation import run_protocol

    result = run_protocol(config, config.eval_generation_samples, config.seed)
    result["train_cpu_seconds"] = round(state.get("train_cpu_seconds", 0.0), 2)
    return result


def due(config: TrainConfig, step: int, at_end: bool) -> bool:
    """Whether this step has a generation evaluation (every `eval_generation_every` steps, and at the end)."""
    return bool(config.eval_generation_every) and (step % config.eval_generation_every == 0 or at_end)


def generation_metrics(family: Family, config: TrainConfig, accelerator: Accelerator) -> dict[str, float]:
    """FD (and the other scores of `evaluate_generation`) of freshly generated samples: the main process computes them,
    the others wait and receive them, so every process takes the same early-stopping and checkpoint decisions."""
    import torch

    from . import evaluation

    metrics = None
    if accelerator.is_main_process:
        started = time.perf_counter()
        for model in family.models.values():
            model.eval()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _alone(accelerator.num_processes > 1):  # fork: the training RNG stream stays as is
            result = evaluation.evaluate_generation(family, num_samples=config.eval_generation_samples, device=accelerator.device, seed=config.seed)
        for model in family.models.values():
            model.train()
        metrics = {k: float(v) for k, v in result.items() if k != "num_samples" and isinstance(v, (int, float))}
        metrics["generation_eval_seconds"] = round(time.perf_counter() - started, 2)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        metrics = broadcast_object_list([metrics])[0]
    return metrics


@contextlib.contextmanager
def _alone(multi_process: bool) -> Iterator[None]:
    """torchmetrics metrics made in this block compute on this process's data only: by default they gather from every
    process when torch.distributed is up, which would wait forever for the processes that do not evaluate."""
    if not multi_process:
        yield
        return
    import torchmetrics.metric

    original = torchmetrics.metric.jit_distributed_available  # read by each Metric as its distributed_available_fn
    torchmetrics.metric.jit_distributed_available = lambda: False
    try:
        yield
    finally:
        torchmetrics.metric.jit_distributed_available = original


def update_best(state: dict[str, Any], metrics: dict[str, float], config: TrainConfig) -> bool:
    """Record a new best `save_best` value (with its step) in the trainer state; True when this evaluation set one."""
    name = config.save_best
    if not name or name not in metrics:
        return False
    value, best = metrics[name], state.get("best_checkpoint")
    if best is not None and best.get("metric") == name:
        better = value < best["value"] if metric_mode(name, config.save_best_mode) == "min" else value > best["value"]
        if not better:
            return False
    state["best_checkpoint"] = {"metric": name, "value": value, "step": state["step"]}
    return True


def best_step(state: dict[str, Any]) -> int | None:
    """The step of the best checkpoint so far (kept out of keep_last rotation), if any."""
    best = state.get("best_checkpoint")
    return best["step"] if best else None
