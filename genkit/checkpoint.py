"""Checkpoints named by step, written atomically (temp folder + rename), checked before a resume, pruned to the last N."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete


class CheckpointError(ValueError):
    """A checkpoint to resume from is missing or incomplete."""


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(run_dir: str | Path, resume: str, run_id: str | None = None) -> Path:
    """`latest` -> the newest complete checkpoint; otherwise a checkpoint path that must be complete. Either must belong to
    the run `run_id` (read from JSON alone) before any of its files is opened, and then load."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(f"--resume {resume}: not a complete genkit checkpoint (no {STATE_FILE})")
        check_belongs(path, run_id)
        damage = damaged_file(path)
        if damage:
            raise CheckpointError(f"--resume {resume}: the checkpoint is damaged: {damage}; resume from another one")
        return path
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"--resume latest: no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    for path in found:  # every one: the advice below may name an older one
        check_belongs(path, run_id)
    damage = damaged_file(found[-1])
    if damage:  # refused rather than skipped: resuming an older step silently would redo (and hide) lost training
        intact = next((p for p in reversed(found[:-1]) if damaged_file(p) is None), None)
        advice = (f"{intact} is intact: continue from it with `genkit train --config {Path(run_dir) / 'training_config.json'} --resume {intact}`"
                  if intact else "no earlier checkpoint is intact; start again with --overwrite")
        raise CheckpointError(f"--resume latest: the latest checkpoint {found[-1]} is damaged: {damage}. {advice}")
    return found[-1]


def damaged_file(checkpoint: Path) -> str | None:
    """The first file of `checkpoint` that does not load, with the reason; None when every file loads."""
    for path in sorted(p for p in Path(checkpoint).iterdir() if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                check_safetensors(path)
            elif path.name.startswith("random_states"):
                check_rng_state(path)
            elif path.suffix in (".bin", ".pkl", ".pt"):  # torch's restricted unpickler: tensors and plain data, no code runs
                _torch_load(path, weights_only=True)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except pickle.UnpicklingError:
            return f"{path.name} ({'empty file' if path.stat().st_size == 0 else 'unreadable: not a torch file'})"
        except Exception as err:
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            return f"{path.name} ({'empty file' if path.stat().st_size == 0 else reason})"
    return None


def check_safetensors(path: Path) -> dict[str, Any]:
    """The header of a whole safetensors file; ValueError unless it parses and the data is as long as it declares."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise ValueError(f"truncated: {size} bytes, no complete safetensors header")
        header = json.loads(f.read(length))
    try:
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):
        raise ValueError("the header is not a safetensors header") from None
    if 8 + length + end != size:
        raise ValueError(f"truncated: {size} bytes, its header describes {8 + length + end}")
    return header


def check_rng_state(path: Path) -> None:
    """Raise unless `path` holds RNG states that Python, NumPy and torch accept (accelerate skips bad ones silently)."""
    import random

    import numpy as np
    import torch

    states = _torch_load(path, weights_only=True)
    try:  # set into fresh generators: the process's own are untouched
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        if not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in states.get("torch_cuda_manual_seed", [])):
            raise ValueError("a CUDA state is not a byte tensor")
    except Exception as err:
        raise ValueError(f"not a valid RNG state: {type(err).__name__}: {err}") from None


def _torch_load(path: Path, weights_only: bool):
    from accelerate.utils.other import load  # accelerate's own loader: the same allow-list of numpy types

    return load(path, map_location="cpu", weights_only=weights_only)


def usual_permissions(root: Path) -> None:
    """Give every file under `root` the mode a plain open() would (0644 under umask 022); safetensors writes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def check_belongs(checkpoint: Path, run_id: str | None) -> None:
    """Refuse a checkpoint written by another run than the one in the output directory (its trainer_state.json says whose)."""
    try:
        state = read_state(checkpoint)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{checkpoint}: {STATE_FILE} is unreadable ({err}); resume from another checkpoint") from None
    owner = state.get("run_id") if isinstance(state, dict) else None
    if run_id is not None and owner != run_id:
        raise CheckpointError(f"{checkpoint} belongs to another run than the one in this output directory "
                              f"(run id {owner} vs {run_id}); resume from one of this run's checkpoints. Nothing in it was loaded")


def temp_dir(run_dir: str | Path, step: int) -> Path:
    """The temporary folder next to the final one (same filesystem, so the rename is atomic)."""
    return Path(run_dir) / "checkpoints" / f".tmp-step-{step:07d}"


def clear(tmp: Path) -> None:
    """Remove what a killed run left in `tmp` and make sure its parent exists."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)


def finalize(tmp: Path, run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write the trainer state, move the checkpoint into place and drop the oldest beyond `keep_last` (never the best one)."""
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    usual_permissions(tmp)
    final = checkpoint_dir(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    best = (state.get("best_checkpoint") or {}).get("step")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if best is None or old != checkpoint_dir(run_dir, best):
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state saved with a checkpoint."""
    return json.loads((checkpoint / STATE_FILE).read_text())


# ---- genkit's own training state: the EMA weights and the lr schedules, in formats that run no code when read ----

EMA_FILE = "ema.safetensors"
SCHEDULES_FILE = "lr_schedules.json"
LEGACY_STATE = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # what accelerate's register_for_checkpointing wrote (older genkit)


def save_training_state(folder: Path, ema: Any, schedulers: dict[str, Any]) -> None:
    """Write the EMA weights (safetensors, its settings as metadata) and the schedules' states (JSON) into `folder`."""
    from safetensors.torch import save_file

    if ema is not None:
        settings = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        tensors = {f"shadow.{i:05d}": p.detach().to("cpu").contiguous() for i, p in enumerate(ema.shadow_params)}
        save_file(tensors, str(Path(folder) / EMA_FILE), metadata={"genkit_ema": json.dumps(settings)})
    states = {part: scheduler.state_dict() for part, scheduler in schedulers.items()}
    (Path(folder) / SCHEDULES_FILE).write_text(json.dumps(states, indent=1) + "\n")


def load_training_state(accelerator: Any, checkpoint: Path, ema: Any, schedulers: dict[str, Any]) -> None:
    """Restore what `save_training_state` and accelerate's save_state wrote (models, optimizers, RNG) from `checkpoint`.

    A checkpoint of an older genkit holds the EMA and schedules as accelerate's custom_checkpoint_*.pkl, which accelerate
    reads with the full unpickler: they are read here with torch's restricted one, and accelerate sees the rest.
    """
    checkpoint = Path(checkpoint)
    legacy = sorted((p for p in checkpoint.iterdir() if LEGACY_STATE.match(p.name)), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if legacy:
        expected = [ema] if ema is not None else []
        expected += list(schedulers.values())
        if len(legacy) != len(expected):
            raise CheckpointError(f"{checkpoint} holds {len(legacy)} training-state files for {len(expected)} objects "
                                  "(EMA and schedules): the config's ema_decay differs from the run's")
        for obj, path in zip(expected, legacy):
            obj.load_state_dict(_torch_load(path, weights_only=True))
        with tempfile.TemporaryDirectory() as view:  # the checkpoint without those files, for accelerate
            for path in checkpoint.iterdir():
                if not LEGACY_STATE.match(path.name):
                    os.symlink(path.resolve(), Path(view) / path.name)
            accelerator.load_state(view)
        return
    accelerator.load_state(str(checkpoint))
    if (ema is not None) != (checkpoint / EMA_FILE).is_file():
        raise CheckpointError(f"{checkpoint} was saved {'without' if ema is not None else 'with'} EMA weights: the config's ema_decay differs from the run's")
    if ema is not None:
        from safetensors import safe_open

        with safe_open(str(checkpoint / EMA_FILE), "pt") as f:
            settings = json.loads((f.metadata() or {}).get("genkit_ema", "{}"))
            shadow = [f.get_tensor(key) for key in sorted(f.keys())]
        if len(shadow) != len(ema.shadow_params) or any(a.shape != b.shape for a, b in zip(shadow, ema.shadow_params)):
            raise CheckpointError(f"{checkpoint / EMA_FILE} does not match the model's parameters")
        device = ema.shadow_params[0].device if ema.shadow_params else "cpu"
        ema.load_state_dict({**settings, "shadow_params": [t.to(device) for t in shadow]})
    states = json.loads((checkpoint / SCHEDULES_FILE).read_text())
    if set(states) != set(schedulers):
        raise CheckpointError(f"{checkpoint / SCHEDULES_FILE} holds the schedules of {sorted(states)}, this run has {sorted(schedulers)}")
    for part, scheduler in schedulers.items():
        scheduler.load_state_dict(states[part])
