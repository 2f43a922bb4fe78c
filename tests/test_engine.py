import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import killed_after_checkpoint, tiny_config
from safetensors.torch import load_file

from genkit import checkpoint as ckpt
from genkit.engine import RunDirError, TrainingDiverged, freeze_all_but_last, train
from genkit.families.autoencoder import AutoencoderFamily, MLPAutoencoder


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_train_writes_a_self_describing_run(tiny_idx, tmp_path):
    summary = train(tiny_config(tiny_idx, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ["training_config.json", "config.json", "model.safetensors", "metrics.json", "data_info.json", "samples.png", "loss_curve.png"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [row["loss"] for row in metrics["history"] if "loss" in row]
    assert losses[-1] < losses[0] and summary["step"] == 12 and math.isfinite(summary["eval_loss"])
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000004", "step-0000008", "step-0000012"]
    umask = os.umask(0)
    os.umask(umask)
    for path in [run / "model.safetensors", run / "checkpoints" / "step-0000012" / "model.safetensors"]:  # safetensors alone writes 0600
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    model = MLPAutoencoder.from_pretrained(str(run))
    assert model.latent_dim == 8 and model.reconstruct(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_resume_continues_exactly(tiny_idx, tmp_path):
    # ema, warmup + cosine schedule and gradient accumulation all carry state that resume must restore
    extra = dict(ema_decay=0.9, lr_scheduler="cosine", warmup_steps=3, gradient_accumulation_steps=2, data={"corruption": "gaussian"})
    train(tiny_config(tiny_idx, tmp_path / "full", **extra))

    with killed_after_checkpoint(step=8):
        train(tiny_config(tiny_idx, tmp_path / "split", **extra))
    assert not (tmp_path / "split" / "model.safetensors").exists()
    train(tiny_config(tiny_idx, tmp_path / "split", **extra), resume="latest")
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "split")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)
    history = json.loads((tmp_path / "split" / "metrics.json").read_text())["history"]
    assert [r["step"] for r in history if "loss" in r] == [2, 4, 6, 8, 10, 12]


def test_keep_last_and_incomplete_checkpoints_are_ignored(tiny_idx, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_idx, run, keep_last=1, max_steps=8))
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000008"]
    # a run killed while writing leaves a temp folder and maybe a folder with no trainer state: neither is resumed
    (run / "checkpoints" / ".tmp-step-0000012").mkdir()
    (run / "checkpoints" / "step-0000010").mkdir()
    assert ckpt.resolve_resume(run, "latest").name == "step-0000008"
    with pytest.raises(ckpt.CheckpointError, match="not a complete"):
        ckpt.resolve_resume(run, str(run / "checkpoints" / "step-0000010"))
    train(tiny_config(tiny_idx, run, keep_last=1, max_steps=12), resume="latest")
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000012"]


def test_existing_run_is_not_overwritten_by_accident(tiny_idx, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_idx, run, max_steps=4))
    before = weights(run)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(tiny_config(tiny_idx, run, max_steps=4))
    with pytest.raises(RunDirError, match="differs from the saved run in batch_size"):
        train(tiny_config(tiny_idx, run, max_steps=8, batch_size=16), resume="latest")
    with pytest.raises(RunDirError, match="no run to resume"):
        train(tiny_config(tiny_idx, tmp_path / "empty"), resume="latest")
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_loss_stops_with_a_clear_message(tiny_idx, tmp_path, monkeypatch):
    original = AutoencoderFamily.loss
    calls = {"n": 0}

    def exploding(self, part, batch):
        calls["n"] += 1
        loss, logs = original(self, part, batch)
        return (loss * float("nan") if calls["n"] > 5 else loss), logs

    monkeypatch.setattr(AutoencoderFamily, "loss", exploding)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="became nan by step 6"):
        train(tiny_config(tiny_idx, run))
    # the checkpoint from step 4 is intact and resumable; no checkpoint holds NaN weights
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000004"]
    saved = load_file(str(ckpt.list_checkpoints(run)[0] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_early_stopping(tiny_idx, tmp_path):
    # maximising a loss never improves after the first evaluation
    summary = train(tiny_config(tiny_idx, tmp_path / "run", max_steps=200, eval_every=2, early_stopping_patience=2, early_stopping_mode="max"))
    assert summary["step"] == 6 and summary["stop_reason"].startswith("early stopping")


def test_finetune_freezes_all_but_last_layers(tiny_idx, tmp_path):
    train(tiny_config(tiny_idx, tmp_path / "base", max_steps=4))
    base = weights(tmp_path / "base")
    train(tiny_config(tiny_idx, tmp_path / "ft", max_steps=4, init_from=str(tmp_path / "base"), trainable_layers=1))
    tuned = weights(tmp_path / "ft")
    changed = sorted(k for k in base if not torch.equal(base[k], tuned[k]))
    assert changed == ["decoder.2.bias", "decoder.2.weight"]
    with pytest.raises(Exception, match="cannot load autoencoder weights"):
        train(tiny_config(tiny_idx, tmp_path / "ft2", init_from=str(tmp_path / "nowhere-run"), trainable_layers=1))


def test_freeze_all_but_last_counts_layers():
    model = MLPAutoencoder(hidden_dims=[16, 4])
    assert freeze_all_but_last(model, 2) == ["decoder.0", "decoder.2"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias"]
    with pytest.raises(Exception, match="only 4 layers"):
        freeze_all_but_last(model, 5)


def test_bf16_mixed_precision_trains(tiny_idx, tmp_path):
    summary = train(tiny_config(tiny_idx, tmp_path / "run", mixed_precision="bf16", max_steps=6, max_grad_norm=1.0))
    assert math.isfinite(summary["eval_loss"])


# ---- run directories that stay trustworthy: overwrite, resume identity, interrupts, full disks -------------------


def test_overwrite_starts_clean_and_resume_refuses_another_runs_checkpoint(tiny_idx, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    train(tiny_config(tiny_idx, run, max_steps=12))  # checkpoints at 4, 8, 12
    (run / "eval_results.json").write_text("{}")
    (run / "notes.txt").write_text("mine")  # not genkit's: kept
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    with killed_after_checkpoint():  # a killed overwrite: its first checkpoint (step 4) is older than the old run's step 12
        train(tiny_config(tiny_idx, run, max_steps=12, learning_rate=3e-3), overwrite=True)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000004"]  # the old run's are gone, not "newer"
    assert not (run / "eval_results.json").exists() and not (run / "samples" / "step-0000012.png").exists()
    assert not (run / "model.safetensors").exists() and (run / "notes.txt").read_text() == "mine"
    new_id = json.loads((run / "run.json").read_text())["run_id"]
    assert new_id != old_id and ckpt.read_state(ckpt.list_checkpoints(run)[0])["run_id"] == new_id
    summary = train(tiny_config(tiny_idx, run, max_steps=12, learning_rate=3e-3), resume="latest")
    assert summary["step"] == 12
    # a checkpoint of another run (same config) is refused by path
    train(tiny_config(tiny_idx, other, max_steps=4))
    with pytest.raises(ckpt.CheckpointError, match="belongs to another run"):
        train(tiny_config(tiny_idx, run, max_steps=16, learning_rate=3e-3), resume=str(ckpt.list_checkpoints(other)[-1]))


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_idx, tmp_path, monkeypatch):
    import signal

    original, calls = AutoencoderFamily.loss, {"n": 0}

    def interrupted_at_step_3(self, part, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # as a Ctrl-C in the terminal
        return original(self, part, batch)

    monkeypatch.setattr(AutoencoderFamily, "loss", interrupted_at_step_3)
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN where the tests run as a background job
    summary = train(tiny_config(tiny_idx, run, max_steps=12, checkpoint_every=100))
    assert summary["stop_reason"] == "interrupted" and summary["step"] == 3
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000003"] and not (run / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    monkeypatch.undo()
    from genkit.cli import main

    assert main(["sample", str(run)]) == 2  # a half-written run says how to continue
    assert train(tiny_config(tiny_idx, run, max_steps=12, checkpoint_every=100), resume="latest")["step"] == 12


def test_ctrl_c_from_the_command_line_exits_130(tiny_idx, tmp_path, monkeypatch, capsys):
    import signal

    from genkit.cli import main

    original = AutoencoderFamily.loss
    monkeypatch.setattr(AutoencoderFamily, "loss", lambda self, part, batch: (signal.raise_signal(signal.SIGINT), original(self, part, batch))[1])
    config = tiny_config(tiny_idx, tmp_path / "run")
    config.save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 1; checkpoint saved" in err and "--resume latest" in err


def test_full_disk_keeps_the_last_checkpoint_and_leaves_no_temp_folder(tiny_idx, tmp_path, monkeypatch, capsys):
    import errno

    from accelerate import Accelerator

    original = Accelerator.save_state

    def disk_full_at_step_8(self, output_dir=None, **kwargs):
        if output_dir.endswith("step-0000008"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_step_8)
    run = tmp_path / "run"
    with pytest.raises(RunDirError, match=r"step 8 .*the disk is full; the last complete checkpoint \(step-0000004\) is intact"):
        train(tiny_config(tiny_idx, run))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000004"]
    monkeypatch.undo()
    assert train(tiny_config(tiny_idx, run), resume="latest")["step"] == 12


def test_unwritable_output_dir_fails_before_any_work(tiny_idx, tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    from genkit.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    config = tiny_config(tiny_idx, tmp_path / "run")
    config.save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot write into output_dir" in err and "Read-only file system" in err and "Traceback" not in err


def test_resume_after_divergence_takes_the_advised_learning_rate(tiny_idx, tmp_path, monkeypatch):
    original, calls = AutoencoderFamily.loss, {"n": 0}

    def exploding(self, part, batch):
        calls["n"] += 1
        loss, logs = original(self, part, batch)
        return (loss * float("nan") if calls["n"] == 6 else loss), logs

    monkeypatch.setattr(AutoencoderFamily, "loss", exploding)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train(tiny_config(tiny_idx, run, lr_scheduler="cosine", weight_decay=0.0))
    monkeypatch.undo()
    advice = str(caught.value)
    assert "--resume latest --set learning_rate=0.0001 max_grad_norm=1.0" in advice
    # exactly what the message says to run
    train(tiny_config(tiny_idx, run, lr_scheduler="cosine", learning_rate=1e-4, max_grad_norm=1.0, weight_decay=0.01), resume="latest")
    history = json.loads((run / "metrics.json").read_text())["history"]
    lrs = {row["step"]: row["lr"] for row in history if "lr" in row}
    assert lrs[2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 12)))  # before: the original rate
    for step in (6, 8, 10):  # after: the cosine schedule continues with the new base rate
        assert lrs[step] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * step / 12)))


@pytest.mark.parametrize("name, damage", [("model.safetensors", "half"), ("optimizer.bin", "empty"), ("random_states_0.pkl", "garbage")])
def test_a_damaged_latest_checkpoint_is_named_and_the_intact_one_offered(tiny_idx, tmp_path, name, damage, capsys):
    from genkit.cli import main

    run = tmp_path / "run"
    with killed_after_checkpoint(step=8):
        train(tiny_config(tiny_idx, run))
    path = run / "checkpoints" / "step-0000008" / name
    data = path.read_bytes()
    if damage == "garbage" and name.startswith("random_states"):  # a readable file with nonsense inside: accelerate would skip it silently
        torch.save({"random_state": 3, "numpy_random_seed": None, "torch_manual_seed": torch.zeros(2)}, path)
    else:
        path.write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    previous = run / "checkpoints" / "step-0000004"
    tiny_config(tiny_idx, run).save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"step-0000008 is damaged: {name} (" in err and f"{previous} is intact" in err and f"--resume {previous}`" in err, err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ckpt.CheckpointError, match=f"the checkpoint is damaged: {name}"):
        train(tiny_config(tiny_idx, run), resume=str(path.parent))
    assert train(tiny_config(tiny_idx, run), resume=str(previous))["step"] == 12  # the advice works


def test_a_damaged_or_foreign_export_is_refused_by_load_and_push(tiny_idx, tmp_path, capsys):
    from safetensors.torch import save_file

    from genkit.cli import main

    run = tmp_path / "run"
    train(tiny_config(tiny_idx, run, max_steps=4))
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) - 100])
    for argv in [["reconstruct", str(run)], ["push", str(run), "--repo-id", "someone/ae", "--dry-run", str(tmp_path / "dry")]]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{run / 'model.safetensors'} is damaged (truncated:" in err and "--resume latest" in err, err
    assert not (tmp_path / "dry").exists() or not any((tmp_path / "dry").iterdir())  # nothing shipped
    save_file({"weight": torch.zeros(3)}, str(run / "model.safetensors"))  # whole, but another model's tensors
    assert main(["reconstruct", str(run)]) == 2
    assert "does not match its model" in capsys.readouterr().err


def test_a_kill_during_or_after_the_export_leaves_a_resumable_run(tiny_idx, tmp_path, monkeypatch, capsys):
    from conftest import Killed

    from genkit import runs
    from genkit.cli import main

    run = tmp_path / "run"
    original = runs.save_export

    def export_then_die(family, run_dir):
        original(family, run_dir)
        raise Killed

    monkeypatch.setattr(runs, "save_export", export_then_die)
    with pytest.raises(Killed):
        train(tiny_config(tiny_idx, run, max_steps=4))
    assert (run / "model.safetensors").is_file() and not (run / "metrics.json").exists()
    assert main(["reconstruct", str(run)]) == 2  # weights alone are not a finished run
    assert "has not finished training (last checkpoint: step 4)" in capsys.readouterr().err
    monkeypatch.undo()
    train(tiny_config(tiny_idx, run, max_steps=4), resume="latest")  # exports again, without training
    assert main(["reconstruct", str(run)]) == 0
    finished = weights(run)

    # killed halfway through writing the next export: the previous weights are whole, the run reads as unfinished
    def half_then_die(self, directory):
        (Path(directory) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 10)
        raise Killed

    monkeypatch.setattr(AutoencoderFamily, "save", half_then_die)
    with pytest.raises(Killed):
        train(tiny_config(tiny_idx, run, max_steps=8), resume="latest")
    assert all(torch.equal(finished[k], v) for k, v in weights(run).items())
    assert main(["reconstruct", str(run)]) == 2 and "has not finished training" in capsys.readouterr().err
    monkeypatch.undo()
    assert train(tiny_config(tiny_idx, run, max_steps=8), resume="latest")["step"] == 8
    assert not (run / runs.EXPORT_TMP).exists() and json.loads((run / "metrics.json").read_text())["final"]["step"] == 8


def test_a_second_trainer_on_the_same_run_is_refused_and_a_killed_ones_lock_is_gone(tiny_idx, tmp_path, capsys):
    import subprocess
    import sys

    from genkit.cli import main
    from genkit.runs import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    holder = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); "
              "print('locked', flush=True); time.sleep(120)")  # stands for a trainer that is running
    other = subprocess.Popen([sys.executable, "-c", holder, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        tiny_config(tiny_idx, run, max_steps=2).save(tmp_path / "c.yaml")
        assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
        assert f"{run} is in use by another genkit train" in capsys.readouterr().err
        assert not (run / "training_config.json").exists()  # refused before writing anything
    finally:
        other.kill()  # as a kill -9: the kernel drops its lock
        other.wait()
    assert train(tiny_config(tiny_idx, run, max_steps=2))["step"] == 2


def test_a_time_budget_stops_training_and_the_schedule_decays_over_it(tiny_idx, tmp_path, monkeypatch):
    import types

    import genkit.engine

    clock = {"now": 0.0}  # each step takes 0.1 s of the engine's clock, whatever the machine's load
    monkeypatch.setattr(genkit.engine, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"], process_time=lambda: clock["now"]))
    original = AutoencoderFamily.loss

    def slow_loss(self, part, batch):
        clock["now"] += 0.1
        return original(self, part, batch)

    monkeypatch.setattr(AutoencoderFamily, "loss", slow_loss)
    config = tiny_config(tiny_idx, tmp_path / "run", max_steps=1000, max_train_seconds=0.6, lr_scheduler="cosine", warmup_steps=1,
                         log_every=1, checkpoint_every=1000, eval_every=1000)
    summary = train(config)
    assert summary["step"] == 6 and summary["stop_reason"].startswith("time budget spent")  # 6 x 0.1 s reaches 0.6 s
    assert summary["train_seconds"] == pytest.approx(0.6)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    lrs = [row["lr"] for row in history if "lr" in row]
    # after the warm-up step the cosine follows the clock as it stood when the step began: 0 s, 0.1 s, ... of 0.6 s
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)], rel=1e-6)
    assert ckpt.list_checkpoints(tmp_path / "run")
    with pytest.raises(Exception, match="max_train_seconds"):
        train(tiny_config(tiny_idx, tmp_path / "bad", max_train_seconds=0))


def fake_clock(monkeypatch, wall_per_step: float, cpu_per_step: float) -> None:
    """Each training step takes `wall_per_step` s of the engine's wall clock and `cpu_per_step` s of its CPU clock."""
    import types

    import genkit.engine

    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(genkit.engine, "time", types.SimpleNamespace(perf_counter=lambda: clock["wall"], process_time=lambda: clock["cpu"]))
    original = AutoencoderFamily.loss

    def slow_loss(self, part, batch):
        clock["wall"] += wall_per_step
        clock["cpu"] += cpu_per_step
        return original(self, part, batch)

    monkeypatch.setattr(AutoencoderFamily, "loss", slow_loss)


def test_a_cpu_budget_stops_training_on_cpu_seconds_and_the_schedule_decays_over_them(tiny_idx, tmp_path, monkeypatch):
    fake_clock(monkeypatch, wall_per_step=1.0, cpu_per_step=0.25)  # a busy machine: wall time would stop it far sooner
    config = tiny_config(tiny_idx, tmp_path / "run", max_steps=1000, max_train_cpu_seconds=2.0, lr_scheduler="linear", warmup_steps=1,
                         log_every=1, checkpoint_every=1000, eval_every=1000)
    summary = train(config)
    assert summary["step"] == 8 and summary["stop_reason"].startswith("CPU budget spent: 2 CPU seconds"), summary
    assert summary["train_cpu_seconds"] == pytest.approx(2.0) and summary["train_seconds"] == pytest.approx(8.0)
    lrs = [row["lr"] for row in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] if "lr" in row]
    assert lrs == pytest.approx([1e-3 * (1 - k / 8) for k in range(8)], rel=1e-6)
    assert "max_steps=8" in summary["budget"]["message"]
    with pytest.raises(Exception, match="max_train_cpu_seconds"):
        train(tiny_config(tiny_idx, tmp_path / "bad", max_train_cpu_seconds=-1))


def test_a_budget_that_ends_a_busy_run_early_says_so_and_how_to_train_by_steps(tiny_idx, tmp_path, monkeypatch, capsys):
    import torch

    threads = torch.get_num_threads()
    fake_clock(monkeypatch, wall_per_step=0.1, cpu_per_step=0.01 * threads)  # the process got a tenth of its threads' time
    run = tmp_path / "run"
    summary = train(tiny_config(tiny_idx, run, max_steps=1000, max_train_seconds=0.6, checkpoint_every=1000, eval_every=1000))
    budget = summary["budget"]
    assert summary["step"] == 6 and budget["cpu_share"] == pytest.approx(0.1) and budget["steps_if_idle"] == 60
    message = budget["message"]
    for words in ["stopped at step 6 of the 1,000", "The machine was busy (load average", "about 60 steps",
                  "--set max_train_seconds=null max_steps=60", f"max_train_cpu_seconds={0.6 * threads:g}"]:
        assert words in message, message
    assert message in capsys.readouterr().err

    # resumed with the budget already spent: nothing trains, and the stop reason is the budget, not max_steps
    monkeypatch.undo()
    again = train(tiny_config(tiny_idx, run, max_steps=1000, max_train_seconds=0.6, checkpoint_every=1000, eval_every=1000), resume="latest")
    assert again["step"] == 6 and again["stop_reason"].startswith("time budget spent"), again
    assert "before this resume: nothing to train" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["final"]["stop_reason"].startswith("time budget spent")
    more = train(tiny_config(tiny_idx, run, max_steps=1000, max_train_seconds=0.7, checkpoint_every=1000, eval_every=1000), resume="latest")
    assert more["step"] > 6 and more["stop_reason"].startswith("time budget spent")  # a raised budget continues the run


def test_a_budgeted_runs_bar_counts_seconds_of_its_budget_not_steps_of_its_epochs(tiny_idx, tmp_path, monkeypatch):
    from genkit.clock import TrainingClock, advance, training_bar

    class Single:
        num_processes = 1

    clock = TrainingClock(Single(), 300.0)
    config = tiny_config(tiny_idx, tmp_path / "run", max_train_seconds=300)
    bar = training_bar(config, clock, 93_700, 0, show=True)
    assert bar.total == 300
    clock.update(120.0, 200.0)
    advance(bar, clock, 40)
    assert bar.n == pytest.approx(120.0) and "120/300 s" in str(bar), str(bar)
    clock.update(400.0, 700.0)
    advance(bar, clock, 90)
    assert bar.n == pytest.approx(300.0)
    bar.close()
    steps = training_bar(config, TrainingClock(Single(), None), 93_700, 5, show=True)
    assert steps.total == 93_700 and steps.n == 5
    steps.close()
