import json
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from genkit import checkpoint as ckpt
from genkit import engine
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
    model = MLPAutoencoder.from_pretrained(str(run))
    assert model.latent_dim == 8 and model.reconstruct(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


class Killed(Exception):
    pass


def test_resume_continues_exactly(tiny_idx, tmp_path, monkeypatch):
    # ema, warmup + cosine schedule and gradient accumulation all carry state that resume must restore
    extra = dict(ema_decay=0.9, lr_scheduler="cosine", warmup_steps=3, gradient_accumulation_steps=2, data={"corruption": "gaussian"})
    train(tiny_config(tiny_idx, tmp_path / "full", **extra))

    original = engine.save_checkpoint

    def killed_after_step_8(accelerator, run_dir, state, keep_last):
        original(accelerator, run_dir, state, keep_last)
        if state["step"] == 8:
            raise Killed

    monkeypatch.setattr(engine, "save_checkpoint", killed_after_step_8)
    with pytest.raises(Killed):
        train(tiny_config(tiny_idx, tmp_path / "split", **extra))
    monkeypatch.undo()
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
    with pytest.raises(RunDirError, match="differs from the saved run in learning_rate"):
        train(tiny_config(tiny_idx, run, max_steps=8, learning_rate=0.1), resume="latest")
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


def test_tensorboard_logs(tiny_idx, tmp_path):
    train(tiny_config(tiny_idx, tmp_path / "run", log_with="tensorboard", max_steps=4))
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
