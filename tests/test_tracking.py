"""Accelerate conventions: the launcher's mixed precision, every tracker accelerate knows, images reaching the trackers."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from genkit.config import ConfigError, TrainConfig
from genkit.engine import train
from genkit.tracking import trackers


def saved_precision(run_dir: Path) -> str:
    return json.loads((run_dir / "training_config.json").read_text())["mixed_precision"]


def test_mixed_precision_follows_the_launcher_unless_the_config_says(tiny_idx, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    train(tiny_config(tiny_idx, tmp_path / "launched", max_steps=2, eval_every=2, checkpoint_every=2))
    assert AcceleratorState().mixed_precision == "bf16" and saved_precision(tmp_path / "launched") == "bf16"
    train(tiny_config(tiny_idx, tmp_path / "explicit", max_steps=2, eval_every=2, checkpoint_every=2, mixed_precision="no"))
    assert AcceleratorState().mixed_precision == "no" and saved_precision(tmp_path / "explicit") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # a resume trains as the run did, whatever the launcher says now
    for config in [TrainConfig.load(tmp_path / "launched"), tiny_config(tiny_idx, tmp_path / "launched", max_steps=3, eval_every=2, checkpoint_every=2)]:
        config.max_steps += 1  # the saved config (bf16 written out), then the original one (unset)
        train(config, resume="latest")
        assert AcceleratorState().mixed_precision == "bf16" and saved_precision(tmp_path / "launched") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="launcher asks for mixed precision 'fp8'"):
        train(tiny_config(tiny_idx, tmp_path / "fp8", max_steps=2))


def test_log_with_takes_accelerates_trackers_and_names_the_rest(tiny_idx, tmp_path):
    for value in ["none", None, "tensorboard", "trackio, tensorboard", "all", "wandb", "mlflow", "comet_ml"]:
        trackers(TrainConfig.from_dict({"log_with": value}).log_with)
    with pytest.raises(ConfigError, match="unknown tracker.s. 'tensorbord'; choose from none, all, .*tensorboard"):
        train(tiny_config(tiny_idx, tmp_path / "typo", log_with="tensorbord"))
    assert not (tmp_path / "typo" / "training_config.json").exists()
    with pytest.raises(ConfigError, match="mlflow is not installed here"):  # accelerate alone would skip it silently
        train(tiny_config(tiny_idx, tmp_path / "run", log_with="mlflow"))
    assert not (tmp_path / "run" / "training_config.json").exists()


def test_tensorboard_gets_scalars_sample_grids_and_the_loss_curve(tiny_idx, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(tiny_idx, tmp_path / "run", log_with="tensorboard", max_steps=4, eval_every=2))
    events = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")).parent), size_guidance={"images": 0})
    events.Reload()
    assert "loss" in events.Tags()["scalars"] and "eval_loss" in events.Tags()["scalars"]
    assert {"samples", "loss_curve"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("samples")] == [2, 4]
    grid = events.Images("samples")[-1]
    assert grid.encoded_image_string.startswith(b"\x89PNG") and grid.width > 28 and grid.height > 28


TRACKIO_RUN = """
import sys
from conftest import tiny_config
from genkit.engine import train
from genkit.tracking import trackers
train(tiny_config(sys.argv[1], sys.argv[2], log_with="trackio", max_steps=4, eval_every=2))
"""


def test_trackio_gets_scalars_sample_grids_and_the_loss_curve(tiny_idx, tmp_path):
    # trackio reads its store's location once, at import: a fresh process keeps the store under tmp_path
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, "-c", TRACKIO_RUN, str(tiny_idx), str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(tmp_path / "trackio" / "genkit.db") as db:
        rows = [(run, step, json.loads(metrics)) for run, step, metrics in db.execute("SELECT run_name, step, metrics FROM metrics")]
    assert {run for run, _, _ in rows} == {"run"}  # the run directory's name
    assert any("loss" in m for _, _, m in rows) and any("eval_loss" in m for _, _, m in rows)
    images = {(key, step): m[key] for _, step, m in rows for key in ["samples", "loss_curve"] if key in m}
    assert set(images) == {("samples", 2), ("samples", 4), ("loss_curve", 4)}
    for image in images.values():
        assert image["_type"] == "trackio.image"
        assert (tmp_path / "trackio" / "media" / image["file_path"]).read_bytes().startswith(b"\x89PNG")


def test_mixed_precision_no_reads_as_no_and_fp16_on_the_cpu_records_what_ran(tiny_idx, tmp_path, capfd):
    from accelerate.state import AcceleratorState

    assert TrainConfig.from_dict({}).with_overrides(["mixed_precision=no", "log_with=no"]).mixed_precision == "no"  # YAML 1.1: no -> False
    (tmp_path / "c.yaml").write_text("mixed_precision: no\nlog_with: off\n")
    assert (TrainConfig.load(tmp_path / "c.yaml").mixed_precision, TrainConfig.load(tmp_path / "c.yaml").log_with) == ("no", "none")
    with pytest.raises(ConfigError, match="mixed_precision must be"):
        TrainConfig.from_dict({"mixed_precision": True})
    capfd.readouterr()
    train(tiny_config(tiny_idx, tmp_path / "fp16", max_steps=2, eval_every=2, checkpoint_every=2, mixed_precision="fp16"))
    warning = [line for line in capfd.readouterr().err.splitlines() if "fp16" in line]
    assert len(warning) == 1 and "does not apply on the CPU" in warning[0] and "mixed_precision=no" in warning[0]
    assert AcceleratorState().mixed_precision == "no" and saved_precision(tmp_path / "fp16") == "no"  # what accelerate really ran
    config = tiny_config(tiny_idx, tmp_path / "fp16", max_steps=3, eval_every=2, checkpoint_every=2, mixed_precision="fp16")
    train(config, resume="latest")  # the same fp16 config resumes on the CPU (no loss-scaler state was ever needed)
    assert saved_precision(tmp_path / "fp16") == "no"


class FailingTracker:
    """Stands in for a tracker whose start-up fails (mlflow without a usable store, wandb without a login)."""

    requires_logging_directory = False
    main_process_only = True

    def __init__(self, *args, **kwargs):
        raise RuntimeError("the tracking store at ./mlruns cannot be used\nsecond line of detail")


def test_a_tracker_that_fails_to_start_is_one_line_with_its_fix_and_leaves_no_run(tiny_idx, tmp_path, monkeypatch):
    import accelerate.accelerator
    import accelerate.tracking

    from genkit.cli import main

    monkeypatch.setitem(accelerate.accelerator.LOGGER_TYPE_TO_CLASS, "mlflow", FailingTracker)
    from accelerate.utils import LoggerType

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD, LoggerType.MLFLOW])
    with pytest.raises(ConfigError) as failed:
        train(tiny_config(tiny_idx, tmp_path / "run", log_with="tensorboard,mlflow", max_steps=2))
    message = str(failed.value)
    assert "\n" not in message and "mlflow failed to start" in message and "MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in message
    assert "--set log_with=tensorboard" in message
    assert not (tmp_path / "run" / "training_config.json").exists()  # nothing saved: the same command runs once the store is fixed
    config = tmp_path / "c.yaml"
    tiny_config(tiny_idx, tmp_path / "cli", log_with="mlflow", max_steps=2).save(config)
    assert main(["train", "--config", str(config)]) == 2  # the CLI prints it as one line, no traceback
