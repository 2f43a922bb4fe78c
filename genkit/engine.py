"""The one training loop, on Accelerate, shared by every family. Read it top to bottom: `train` is the whole story."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from torch import nn

from . import checkpoint as ckpt
from . import runs, train_eval
from .clock import TrainingClock, advance, budget_report, training_bar
from .config import ConfigError, TrainConfig
from .data import ImageTensors, ShardedBatches, load_train_eval, make_batch
from .families import DataInfo, Family, get_family
from .families.base import unwrap
from .optim import apply_optimizer_settings, make_lr_scheduler, make_optimizer
from .plots import save_grid, save_loss_curve
from .progress import say, stage
from .runs import RunDirError
from .tracking import available_trackers, log_image, resolve_mixed_precision, start_trackers

logger = logging.getLogger(__name__)

# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"epochs", "max_steps", "progress_bar", "log_every", "eval_every", "sample_every", "checkpoint_every", "keep_last",
                     "early_stopping_patience", "push_to_hub", "hub_model_id", "hub_private", "log_with", "output_dir",
                     # optimizer hyper-parameters: applied over the saved optimizer state (the usual fix after a divergence)
                     "learning_rate", "weight_decay", "betas", "max_grad_norm", "mixed_precision",
                     # speed only: the same computation, laid out or compiled differently
                     "compile", "channels_last", "allow_tf32", "fused_optimizer", "data.storage", "data.decode_workers",
                     # training-time evaluation: when and how much to evaluate, which checkpoint to keep and export
                     "early_stopping_metric", "early_stopping_mode", "eval_generation_every", "eval_generation_samples", "save_best",
                     "save_best_mode", "export_best",
                     # the budgets: a run stopped by its clock continues when its budget is raised
                     "max_train_seconds", "max_train_cpu_seconds"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False, lock: bool = True) -> dict[str, Any]:
    """Train `config.family` on `config.data`; write the model, metrics, plots and checkpoints into `config.output_dir`.

    `lock=False` trains without the run directory's lock, for filesystems that have no file locks (some network mounts).
    """
    config.validate()  # a bad config creates no output directory
    with runs.run_lock(Path(config.output_dir), required=lock):  # one trainer per run directory
        return _train(config, resume, overwrite)


def _train(config: TrainConfig, resume: str | None, overwrite: bool) -> dict[str, Any]:
    config.data.resolve_paths()
    config.mixed_precision = resolve_mixed_precision(config, Path(config.output_dir) if resume else None)  # recorded: a resume trains the same way
    family_cls = get_family(config.family)
    family_cls.check_config(config)
    run_dir = Path(config.output_dir)
    _check_run_dir(run_dir, config, resume, overwrite)
    _check_writable(run_dir)
    train_eval.prepare(config, family_cls)  # the evaluation network (a machine-local one is trained) before this run's Accelerator exists

    log_with = available_trackers(config) or None
    # train() may run several times in one process (notebooks, tests) with other precision settings
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with=log_with,
                              project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")))
    set_seed(config.seed)  # the same on every process, so replicas start identical

    if accelerator.device.type == "cuda" and config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- data: decoded once per node into the cache; small splits then live on the device, large ones stay mapped ----
    with accelerator.local_main_process_first():
        train_data, eval_data = load_train_eval(config.data, config.seed)
    train_data, eval_data = (data if data.mapped else data.to(accelerator.device) for data in (train_data, eval_data))
    info = DataInfo(config.data.channels, config.data.image_size, train_data.class_names, config.data.value_range)
    batches = ShardedBatches(len(train_data), config.batch_size, config.seed, accelerator.num_processes, accelerator.process_index)
    accum = config.gradient_accumulation_steps
    steps_per_epoch = max(1, batches.per_epoch // accum)
    max_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    sample_every = config.sample_every or eval_every
    checkpoint_every = config.checkpoint_every or steps_per_epoch

    # ---- models, optional fine-tuning start, optimizers, schedules, EMA ----------------------------------
    try:
        family = family_cls(config, info)
    except (TypeError, ValueError) as err:  # a model option of the right type but an impossible value
        raise ConfigError(f"cannot build the {config.family} model from model={config.model}: {err}") from None
    if config.init_from:
        family.models = _init_from(family_cls, config.init_from)
        if config.trainable_layers:
            for part in family.parts:
                freeze_all_but_last(family.models[part], config.trainable_layers)
    optimizers = {part: make_optimizer(config, family.models[part], accelerator.device) for part in family.parts}
    clock = TrainingClock(accelerator, config.max_train_seconds, config.max_train_cpu_seconds)  # a budget's schedule runs on it
    schedulers = {part: make_lr_scheduler(config, opt, max_steps, clock) for part, opt in optimizers.items()}
    for part in family.parts:
        if config.channels_last:
            family.models[part].to(memory_format=torch.channels_last)
        family.models[part], optimizers[part] = accelerator.prepare(family.models[part], optimizers[part])
        if config.compile:  # compiles __call__ in place: parameter names, checkpoints and exports are unchanged
            family.models[part].compile()
    ema = None
    if config.ema_decay:
        ema = EMAModel(unwrap(family.models[family.ema_part]).parameters(), decay=config.ema_decay)
        ema.to(accelerator.device)
    # the EMA and the schedules (stepped by us, not `prepare`d) are saved by genkit in safetensors / JSON, not pickled by accelerate

    # ---- resume -----------------------------------------------------------------------------------------
    state = {"step": 0, "history": [], "best": None, "evals_without_improvement": 0, "images_seen": 0, "train_seconds": 0.0,
             "train_cpu_seconds": 0.0}
    if resume:
        path = ckpt.resolve_resume(run_dir, resume, runs.run_id(run_dir))  # whose it is (JSON) before anything is loaded
        state = ckpt.read_state(path)
        ckpt.load_training_state(accelerator, path, ema, schedulers)
        state.setdefault("train_cpu_seconds", 0.0)  # checkpoints of an older genkit
        clock.resume(state["train_seconds"], state["train_cpu_seconds"])
        apply_optimizer_settings(config, optimizers, schedulers)
        accelerator.print(f"resumed from {path} at step {state['step']}")
    if accelerator.is_main_process:  # run_dir exists: _check_writable made it
        if overwrite and not resume:  # start clean: old checkpoints would otherwise be pruned, or resumed, as if they were this run's
            runs.clear_outputs(run_dir)
        if log_with:  # before the run is saved: a tracker that fails to start leaves no half-made run behind
            start_trackers(accelerator, run_dir, {k: v for k, v in _flat(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
        if not resume:
            state["run_id"] = runs.new_run_id(run_dir)
        config.save(run_dir / "training_config.json")
        info.save(run_dir)
    state["run_id"] = _broadcast_run_id(accelerator, state.get("run_id"))

    eval_batches = list(_eval_batches(eval_data, config, accelerator.device))
    sample_generator = torch.Generator(device="cpu")

    # ---- the loop -----------------------------------------------------------------------------------------
    with interrupt_flag() as interrupted:  # Ctrl-C: finish the step, save a checkpoint, stop
        show = config.progress_bar and accelerator.is_local_main_process
        progress = training_bar(config, clock, max_steps, state["step"], show)
        running: dict[str, torch.Tensor] = {}  # loss sums since the last log, kept on the device (no sync per step)
        since_log = 0
        stop_reason = "max_steps"
        for model in family.models.values():
            model.train()
        while state["step"] < max_steps and not clock.exhausted:
            step, step_started, cpu_started = state["step"], time.perf_counter(), time.process_time()
            for part in family.parts:
                model, optimizer = family.models[part], optimizers[part]
                optimizer.zero_grad(set_to_none=True)  # also clears what another part's loss left here (GAN: D during the G step)
                for micro in range(accum):
                    batch = make_batch(train_data, batches(step * accum + micro), config.data, device=accelerator.device, augment=True)
                    if config.channels_last:
                        batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
                    sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        loss, logs = family.loss(part, batch)
                        accelerator.backward(loss / accum)
                    for key, value in {"loss": loss, **logs}.items():
                        name = key if len(family.parts) == 1 else f"{part}_{key}"
                        running[name] = running.get(name, 0) + value.detach().float() / accum
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow steps leave the schedule alone
                    schedulers[part].step()
            if ema is not None:
                ema.step(unwrap(family.models[family.ema_part]).parameters())
            state["step"] = step = step + 1
            state["train_seconds"] += time.perf_counter() - step_started
            state["train_cpu_seconds"] += time.process_time() - cpu_started
            clock.update(state["train_seconds"], state["train_cpu_seconds"])
            since_log += 1
            state["images_seen"] += config.batch_size * accum * accelerator.num_processes
            advance(progress, clock, step)

            at_log, at_eval, at_ckpt = step % config.log_every == 0, step % eval_every == 0, step % checkpoint_every == 0
            at_end = step == max_steps or clock.exhausted
            if at_log or at_eval or at_ckpt or at_end:  # never let a non-finite loss reach a metric or a checkpoint
                row = {k: v.item() / since_log for k, v in running.items()}
                _check_finite(row, step, config)
            if at_log or at_end:
                row.update(step=step, lr=schedulers[family.parts[0]].get_last_lr()[0])
                state["history"].append(row)
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
                progress.set_postfix({**({"step": step} if clock.timed else {}), **{k: f"{v:.4g}" for k, v in row.items() if "loss" in k}})
                running, since_log = {}, 0
            judged: dict[str, float] = {}  # this step's evaluation figures: early stopping and the best checkpoint read them
            if at_end:  # the bar stands still from here on: close it and say what takes the time
                progress.close()
                say(f"training ended at step {step}; final evaluation, samples, checkpoint and export follow", show)
            if at_eval or at_end:
                with ema_weights(ema, family), stage(f"evaluating on the whole {'evaluation split' if at_end else 'evaluation batches'}",
                                                     show and at_end):
                    # the last evaluation covers the whole evaluation split: the final figures are test-set figures
                    metrics = evaluate(family, _eval_batches(eval_data, config, accelerator.device, whole=True) if at_end else eval_batches)
                    if accelerator.is_main_process and (step % sample_every == 0 or at_end):
                        say(f"sampling {config.num_samples} images for samples.png", show and at_end)
                        sample_generator.manual_seed(config.seed)
                        images, nrow = family.sample_grid(eval_batches[0], sample_generator)
                        save_grid(images, run_dir / "samples" / f"step-{step:07d}.png", nrow)
                        save_grid(images, run_dir / "samples.png", nrow)
                        log_image(accelerator, "samples", run_dir / "samples.png", step)
                state["history"].append({"step": step, **metrics})
                accelerator.log(metrics, step=step)
                judged.update(metrics)
            if train_eval.due(config, step, at_end):
                with ema_weights(ema, family), stage(f"generation metrics (FD & co) of {config.eval_generation_samples} samples", show):
                    generated = train_eval.generation_metrics(family, config, accelerator)
                state["history"].append({"step": step, **generated})
                accelerator.log(generated, step=step)
                judged.update(generated)
            if judged and _early_stop(state, judged, config):
                stop_reason = f"early stopping: no {config.early_stopping_metric} improvement in {config.early_stopping_patience} evaluations"
            new_best = bool(judged) and train_eval.update_best(state, judged, config)
            if not at_end and _agree(accelerator, interrupted.is_set()):
                stop_reason = "interrupted"
            if clock.exhausted and step < max_steps:
                stop_reason = clock.spent()
            if at_ckpt or at_end or new_best or stop_reason != "max_steps":
                save_checkpoint(accelerator, run_dir, state, config.keep_last, ema, schedulers)
            if stop_reason != "max_steps":
                accelerator.print(stop_reason)
                break
        progress.close()
        if stop_reason == "max_steps" and clock.exhausted and state["step"] < max_steps:  # resumed with the budget already spent
            stop_reason = clock.spent()
            say(f"{stop_reason} before this resume: nothing to train (raise the budget with --set, it may change on resume); exporting "
                f"step {state['step']}", accelerator.is_local_main_process)
    if stop_reason == "interrupted":  # a checkpoint, no export: the run is resumed, not finished
        accelerator.end_training()
        return {"step": state["step"], "stop_reason": stop_reason, "checkpoint": str(ckpt.checkpoint_dir(run_dir, state["step"]))}

    # ---- export -------------------------------------------------------------------------------------------
    summary = {"step": state["step"], "stop_reason": stop_reason, "train_seconds": round(state["train_seconds"], 2),
               "train_cpu_seconds": round(state["train_cpu_seconds"], 2),
               "images_per_second": round(state["images_seen"] / max(state["train_seconds"], 1e-9), 1),
               "num_processes": accelerator.num_processes, "best": state["best"],
               **{k: v for row in state["history"] for k, v in row.items() if k.startswith("eval_") or train_eval.is_generation_metric(k)}}
    if config.eval_generation_every:  # what the generation scores were measured with, beside them in metrics.json
        summary["generation_protocol"] = train_eval.generation_protocol(config, state)
    if state.get("best_checkpoint"):
        summary["best_checkpoint"] = state["best_checkpoint"]
    if config.export_best and train_eval.best_step(state) is not None:  # every process: load_state is collective
        ckpt.load_training_state(accelerator, ckpt.checkpoint_dir(run_dir, train_eval.best_step(state)), ema, schedulers)
        summary["exported_step"] = train_eval.best_step(state)
    accelerator.wait_for_everyone()
    if "budget spent" in stop_reason:
        summary["budget"] = budget_report(config, clock, state["step"], max_steps, accelerator.device)
        say(summary["budget"]["message"], accelerator.is_local_main_process)
    if accelerator.is_main_process:
        try:
            with ema_weights(ema, family), stage(f"exporting the model into {run_dir}", show):
                runs.save_export(family, run_dir)  # temp folder, then each file renamed into place
            save_loss_curve(state["history"], run_dir / "loss_curve.png")
            log_image(accelerator, "loss_curve", run_dir / "loss_curve.png", state["step"])
            runs.finish(run_dir, {"final": summary, "history": state["history"]})  # last: only now is the run finished
        except OSError as err:
            raise RunDirError(f"cannot write the trained model into {run_dir}: {_os_reason(err)}. The checkpoints are intact: "
                              "free some space, then `--resume latest` exports the model without training further") from None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if config.push_to_hub and accelerator.is_main_process:
        from .hub import push_run

        push_run(run_dir, config.hub_model_id, private=config.hub_private)
    return summary


# ---- pieces of the loop ---------------------------------------------------------------------------------


def evaluate(family: Family, eval_batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of the family's metrics over the evaluation batches (models in eval mode, then back)."""
    for model in family.models.values():
        model.eval()
    totals: dict[str, float] = {}
    count = 0
    for batch in eval_batches:  # weighted by batch size: the last batch may be short
        for key, value in family.evaluate(batch).items():
            totals[key] = totals.get(key, 0.0) + value * len(batch["image"])
        count += len(batch["image"])
    for model in family.models.values():
        model.train()
    return {key: total / count for key, total in totals.items()}


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, family: Family) -> Iterator[None]:
    """Swap the EMA weights into the EMA part for the duration of the block."""
    if ema is None:
        yield
        return
    params = list(unwrap(family.models[family.ema_part]).parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict[str, Any], keep_last: int, ema: EMAModel | None,
                    schedulers: dict[str, Any]) -> None:
    """All processes write into a temp folder; the main one renames it into place once everyone is done.

    A failed write (full or read-only disk) removes the temp folder and leaves the last complete checkpoint as it was.
    """
    tmp = ckpt.temp_dir(run_dir, state["step"])
    try:
        if accelerator.is_main_process:
            ckpt.clear(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            ckpt.save_training_state(tmp, ema, schedulers)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.finalize(tmp, run_dir, state["step"], state, keep_last)
        accelerator.wait_for_everyone()
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        found = ckpt.list_checkpoints(run_dir)
        kept = f"the last complete checkpoint ({found[-1].name}) is intact" if found else "no earlier checkpoint exists"
        raise RunDirError(f"cannot write the checkpoint of step {state['step']} into {run_dir}: {_os_reason(err)}; {kept}. "
                          "Free some space (or fix the permissions) and continue with --resume latest") from None


def freeze_all_but_last(model: nn.Module, n: int) -> list[str]:
    """Freeze every parameter except those of the last `n` layers (modules that own parameters); return their names."""
    layers = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if n > len(layers):
        raise ConfigError(f"trainable_layers={n} but the model has only {len(layers)} layers with parameters")
    model.requires_grad_(False)
    for _, layer in layers[-n:]:
        layer.requires_grad_(True)
    return [name for name, _ in layers[-n:]]


def _init_from(family_cls: type[Family], source: str) -> dict[str, nn.Module]:
    path = Path(source)
    try:
        with runs.quiet_loading():
            return family_cls.load_models(path if path.exists() else source)
    except Exception as err:
        raise ConfigError(f"init_from={source!r}: cannot load {family_cls.name} weights from it ({type(err).__name__}: {err})") from None


def _eval_batches(eval_data: ImageTensors, config: TrainConfig, device: torch.device, whole: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed evaluation batches (corruption drawn from a seeded generator), the same at every evaluation; made lazily."""
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    n = len(eval_data) if whole else min(len(eval_data), config.eval_batches * config.batch_size)
    for chunk in torch.arange(n).split(config.batch_size):
        yield make_batch(eval_data, chunk, config.data, generator, device=device)


def _check_finite(row: dict[str, float], step: int, config: TrainConfig) -> None:
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"{', '.join(bad)} became {row[bad[0]]} by step {step}. The run is stopped; checkpoints already saved are intact. "
            "Continue from the last one with a lower learning rate or clipping, e.g. "
            f"`genkit train --config {Path(config.output_dir) / 'training_config.json'} "
            f"--resume latest --set learning_rate={config.learning_rate / 10:g} max_grad_norm=1.0`"
            + (" mixed_precision=bf16" if config.mixed_precision == "fp16" else "")
            + " (learning_rate, weight_decay, betas, max_grad_norm and mixed_precision may change on resume).")


def _check_writable(run_dir: Path) -> None:
    """Fail before loading anything when the output directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunDirError(f"cannot write into output_dir {run_dir}: {_os_reason(err)}") from None


def _os_reason(err: OSError) -> str:
    """A short reason for a failed write, naming a full disk plainly."""
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    return "the disk is full" if full else (err.strerror or str(err))


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (a second one stops at once); the previous handler is back afterwards."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread can take signals
        yield event
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        event.set()
        signal.signal(signal.SIGINT, previous)
        print("\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when any process has `flag` (a Ctrl-C may reach only some of them)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), reduction="sum").item())


def _broadcast_run_id(accelerator: Accelerator, run_id: str | None) -> str | None:
    """The main process's run id on every process."""
    if accelerator.num_processes == 1:
        return run_id
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([run_id])[0]


def _early_stop(state: dict[str, Any], metrics: dict[str, float], config: TrainConfig) -> bool:
    value = metrics.get(config.early_stopping_metric)
    if value is None:
        # a family metric missing from a family evaluation is a typo; a generation metric waits for its evaluation
        family_eval = any(k.startswith("eval_") for k in metrics)
        if config.early_stopping_patience and family_eval and not train_eval.is_generation_metric(config.early_stopping_metric):
            raise ConfigError(f"early_stopping_metric {config.early_stopping_metric!r} is not computed; available: {sorted(metrics)}")
        return False
    if state.setdefault("best_metric", config.early_stopping_metric) != config.early_stopping_metric:  # changed on resume: start over
        state["best"], state["evals_without_improvement"], state["best_metric"] = None, 0, config.early_stopping_metric
    mode = train_eval.metric_mode(config.early_stopping_metric, config.early_stopping_mode)
    better = state["best"] is None or (value < state["best"] if mode == "min" else value > state["best"])
    if better:
        state["best"], state["evals_without_improvement"] = value, 0
    else:
        state["evals_without_improvement"] += 1
    return bool(config.early_stopping_patience) and state["evals_without_improvement"] >= config.early_stopping_patience


def _check_run_dir(run_dir: Path, config: TrainConfig, resume: str | None, overwrite: bool) -> None:
    saved = run_dir / "training_config.json"
    if resume:
        if not saved.is_file():
            raise RunDirError(f"--resume: {run_dir} holds no run to resume (no training_config.json)")
        saved_config = TrainConfig.load(saved)
        saved_config.data.resolve_paths()
        before = _flat(saved_config.to_dict())
        now = _flat(config.to_dict())
        changed = sorted(k for k in set(before) | set(now)
                         if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES and k.split(".")[0] not in RESUMABLE_CHANGES)
        if changed:
            raise RunDirError(f"--resume: the config differs from the saved run in {', '.join(changed)}; "
                              f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming")
        if config.mixed_precision == "fp16" != saved_config.mixed_precision:
            raise RunDirError("--resume: a run trained without fp16 has no loss-scaler state to continue in fp16; resume with mixed_precision "
                              f"{saved_config.mixed_precision!r} or bf16")
    elif saved.is_file() and not overwrite:
        raise RunDirError(f"{run_dir} already holds a run. Use --resume latest to continue it, another output_dir, "
                          "or --overwrite to start it again from scratch (everything genkit wrote there is removed)")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
