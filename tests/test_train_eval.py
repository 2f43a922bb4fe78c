"""Evaluation while training: FD of generated samples, the best checkpoint (kept, resumed, exported) and early stopping on it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from genkit.config import ConfigError
from genkit.engine import train
from genkit.train_eval import metric_mode


def gan_config(tiny_idx, run_dir, **overrides):
    return tiny_config(tiny_idx, run_dir, family="gan", model={}, data={"value_range": "-1,1"}, eval_every=2, checkpoint_every=2, **overrides)


def checkpoint_holds(checkpoint, exported):
    """Whether one of the checkpoint's model files has exactly the exported weights."""
    for path in checkpoint.glob("model*.safetensors"):
        saved = load_file(path)
        if saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved):
            return True
    return False


def test_fd_is_computed_while_training(tiny_idx, tmp_path):
    summary = train(gan_config(tiny_idx, tmp_path / "run", max_steps=4, eval_generation_every=2, eval_generation_samples=16, save_best="fd"))
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    rows = [row for row in history if "fd" in row]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(math.isfinite(row["fd"]) and row["fd"] > 0 and row["generation_eval_seconds"] > 0 for row in rows)
    best = min(rows, key=lambda row: row["fd"])
    assert summary["best_checkpoint"] == {"metric": "fd", "value": best["fd"], "step": best["step"]}
    assert summary["fd"] == rows[-1]["fd"]
    protocol = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["generation_protocol"]  # what the figures were measured with
    assert protocol["num_samples"] == 16 and protocol["reference_split"] == "test" and protocol["feature_network"] == "genkit-mnist-v1"
    assert protocol["nfe"] == 1 and protocol["seed"] == 0 and protocol["train_cpu_seconds"] > 0


def test_best_checkpoint_survives_rotation_resume_and_early_stopping(tiny_idx, tmp_path, monkeypatch):
    from genkit import evaluation

    fds = iter([3.0, 1.0, 2.0, 1.5, 0.5, 0.7, 0.9])  # steps 2, 4, 6 | resumed: 8, 10, 12, 14
    monkeypatch.setattr(evaluation, "get_classifier", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluation, "evaluate_generation", lambda family, **kwargs: {"fd": next(fds), "num_samples": kwargs["num_samples"]})
    run = tmp_path / "run"
    keys = {"eval_generation_every": 2, "eval_generation_samples": 16, "save_best": "fd", "keep_last": 1, "export_best": True}
    first = train(gan_config(tiny_idx, run, max_steps=6, **keys))
    assert first["best_checkpoint"] == {"metric": "fd", "value": 1.0, "step": 4} and first["exported_step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]  # keep_last=1, plus the best

    # resumed: 1.5 at step 8 would be a best if the resume had forgotten 1.0; patience 2 stops after 12 and 14
    summary = train(gan_config(tiny_idx, run, max_steps=20, early_stopping_patience=2, early_stopping_metric="fd", **keys), resume="latest")
    assert summary["best_checkpoint"] == {"metric": "fd", "value": 0.5, "step": 10}
    assert summary["step"] == 14 and summary["stop_reason"].startswith("early stopping")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000010", "step-0000014"]
    exported = load_file(run / "generator" / "model.safetensors")
    assert summary["exported_step"] == 10 and checkpoint_holds(run / "checkpoints" / "step-0000010", exported)
    assert not checkpoint_holds(run / "checkpoints" / "step-0000014", exported)


def test_metric_modes_and_bad_keys(tiny_idx, tmp_path):
    assert [metric_mode(m) for m in ["fd", "fid", "kid", "eval_loss", "eval_mse"]] == ["min"] * 5
    assert [metric_mode(m) for m in ["precision", "recall", "density", "coverage", "class_accuracy", "eval_accuracy"]] == ["max"] * 6
    assert metric_mode("eval_free_energy", "min") == "min"
    for overrides, match in [({"save_best": "fd"}, "set eval_generation_every"), ({"export_best": True}, "export_best needs save_best"),
                             ({"save_best": "eval_free_energy"}, "set its mode"), ({"eval_generation_samples": 1}, "eval_generation_samples"),
                             ({"early_stopping_metric": "precision", "early_stopping_patience": 2}, "set eval_generation_every"),
                             ({"save_best": "fid", "eval_generation_every": 2}, "called 'fd' now; set save_best: fd")]:
        with pytest.raises(ConfigError, match=match):
            gan_config(tiny_idx, tmp_path / "bad", **overrides)
    with pytest.raises(ConfigError, match="does not generate"):
        train(tiny_config(tiny_idx, tmp_path / "ae", eval_generation_every=2))
    with pytest.raises(ConfigError, match="too few for two disjoint sets of 40"):  # 64 test images: found before any training
        train(gan_config(tiny_idx, tmp_path / "big", eval_generation_every=2, eval_generation_samples=40))
    assert not (tmp_path / "big" / "checkpoints").exists()


def test_two_processes_only_the_main_one_evaluates_and_both_agree(tiny_idx, tmp_path):
    from test_distributed import free_port

    worker = Path(__file__).with_name("two_process_gen_eval_worker.py")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(worker), str(tiny_idx), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["calls"] == [16, 16] and r1["calls"] == []
    assert r0["summary"]["best_checkpoint"] == r1["summary"]["best_checkpoint"] and r0["summary"]["fd"] == r1["summary"]["fd"]
    best = r0["summary"]["best_checkpoint"]["step"]
    assert (tmp_path / "run" / "checkpoints" / f"step-{best:07d}").is_dir() and r0["summary"]["exported_step"] == best
