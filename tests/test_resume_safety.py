"""What a resume opens, in what order, and what it never runs; the run lock where a filesystem has none."""

import errno
import json
import os
import pickle

import torch
from conftest import killed_after_checkpoint, tiny_config
from safetensors.torch import load_file

from genkit import checkpoint as ckpt
from genkit.engine import train


class Payload:
    """Unpickling this runs os.system: the file it names appears only if the payload ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(checkpoint, marker):
    """A custom_checkpoint_*.pkl that runs a command when unpickled with the full unpickler (as accelerate reads them)."""
    with open(checkpoint / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(Payload(marker), f)
    with open(marker.parent / "probe.pkl", "wb") as f:  # the payload does run when unpickled: the test can fail
        pickle.dump(Payload(marker.parent / "probe-ran"), f)
    pickle.loads((marker.parent / "probe.pkl").read_bytes())
    assert (marker.parent / "probe-ran").exists()


def test_a_foreign_checkpoint_is_refused_before_any_of_its_files_is_opened(tiny_idx, tmp_path, capsys):
    from genkit.cli import main

    run, other = tmp_path / "run", tmp_path / "other"
    with killed_after_checkpoint(step=8):
        train(tiny_config(tiny_idx, run))
    train(tiny_config(tiny_idx, other, max_steps=4))
    foreign = other / "checkpoints" / "step-0000004"
    marker = tmp_path / "payload-ran"
    plant(foreign, marker)
    tiny_config(tiny_idx, run).save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--resume", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "Nothing in it was loaded" in err, err
    assert not marker.exists()


def test_a_planted_pickle_in_the_runs_own_checkpoint_never_runs(tiny_idx, tmp_path, capsys):
    from genkit.cli import main

    run = tmp_path / "run"
    with killed_after_checkpoint(step=8):
        train(tiny_config(tiny_idx, run))
    marker = tmp_path / "payload-ran"
    plant(run / "checkpoints" / "step-0000008", marker)  # it belongs (same run id): still, nothing may execute
    tiny_config(tiny_idx, run).save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "step-0000008 is damaged: custom_checkpoint_0.pkl" in err and "step-0000004 is intact" in err, err
    assert not marker.exists()


def test_checkpoints_hold_no_pickled_genkit_state_and_older_ones_still_resume(tiny_idx, tmp_path):
    extra = dict(ema_decay=0.9, lr_scheduler="cosine", warmup_steps=3)
    train(tiny_config(tiny_idx, tmp_path / "full", **extra))
    with killed_after_checkpoint(step=8):
        train(tiny_config(tiny_idx, tmp_path / "split", **extra))
    saved = tmp_path / "split" / "checkpoints" / "step-0000008"
    assert (saved / ckpt.EMA_FILE).is_file() and (saved / ckpt.SCHEDULES_FILE).is_file()
    assert not list(saved.glob("custom_checkpoint_*"))
    # the same checkpoint as an older genkit wrote it: EMA and schedule pickled by accelerate (plain data only)
    ema = load_file(str(saved / ckpt.EMA_FILE))
    from safetensors import safe_open

    with safe_open(str(saved / ckpt.EMA_FILE), "pt") as f:
        settings = json.loads(f.metadata()["genkit_ema"])
    torch.save({**settings, "shadow_params": [ema[k] for k in sorted(ema)]}, saved / "custom_checkpoint_0.pkl")
    torch.save(json.loads((saved / ckpt.SCHEDULES_FILE).read_text())["model"], saved / "custom_checkpoint_1.pkl")
    (saved / ckpt.EMA_FILE).unlink()
    (saved / ckpt.SCHEDULES_FILE).unlink()
    train(tiny_config(tiny_idx, tmp_path / "split", **extra), resume="latest")
    full, resumed = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)


def test_a_filesystem_without_locks_names_the_lock_file_and_the_way_out(tiny_idx, tmp_path, monkeypatch, capsys):
    import fcntl

    from genkit.cli import main

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = tmp_path / "run"
    tiny_config(tiny_idx, run, max_steps=2).save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run / ".lock") in err and "--no-lock" in err, err
    assert not (run / "training_config.json").exists()
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--no-lock"]) == 0
    assert json.loads((run / "metrics.json").read_text())["final"]["step"] == 2
