"""Checkpoints named by step, written atomically (temp folder + rename) and pruned to the last N."""

from __future__ import annotations

import json
import re
import shutil
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


def resolve_resume(run_dir: str | Path, resume: str) -> Path:
    """`latest` -> the newest complete checkpoint; otherwise a checkpoint path that must be complete."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"--resume latest: no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a complete genkit checkpoint (no {STATE_FILE})")
    return path


def check_belongs(checkpoint: Path, state: dict[str, Any], run_id: str | None) -> None:
    """Refuse a checkpoint written by another run than the one in the output directory."""
    if run_id is not None and state.get("run_id") != run_id:
        raise CheckpointError(f"{checkpoint} belongs to another run than the one in this output directory "
                              f"(run id {state.get('run_id')} vs {run_id}); resume from one of this run's checkpoints")


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
