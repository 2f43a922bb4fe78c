"""The command line as a user runs it: real processes, exit codes and messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "autoencoder_mnist.yaml"


def run(*args, cwd=REPO, launcher=("-m", "genkit.cli")):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_bad_config_and_data_errors_are_readable(tmp_path, tiny_idx, capsys):
    from genkit.cli import main

    def assert_clean_error(args, *fragments):
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        for fragment in fragments:
            assert fragment in err, err

    def run(*args):
        return args

    assert_clean_error(run("train", "--config", str(tmp_path / "none.yaml")), "config file not found")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", "data.sorce=x"), "unknown config key(s) data.sorce")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", "model.hidden=[3]"), "unknown model option(s) for family 'autoencoder': hidden")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", "family=transformer"), "unknown family 'transformer'")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", f"data.data_dir={tmp_path}"), "has no IDX files")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", "data.source=/no/such/folder"), "does not exist")
    assert_clean_error(run("train", "--config", str(CONFIG), "--set", "data.value_range=-1,1"), "set data.value_range to '0,1'")
    assert_clean_error(run("train", "--config", str(CONFIG), "--output-dir", str(tmp_path / "r"), "--resume", "latest"), "no run to resume")
    assert_clean_error(run("reconstruct", str(tmp_path)), "not a genkit run directory")
    from conftest import tiny_config

    from genkit.engine import train

    train(tiny_config(tiny_idx, tmp_path / "ae", max_steps=2))
    assert_clean_error(run("sample", str(tmp_path / "ae")), "does not generate new images")
    assert_clean_error(run("analyze", str(tmp_path / "nowhere")), "neither an existing run directory nor a Hub repo id")
    # and as a real process: one line of error, no traceback
    result = subprocess.run([sys.executable, "-m", "genkit.cli", "train", "--config", str(CONFIG), "--set", "batch_size=0"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "batch_size must be >= 1" in result.stderr


def test_accelerate_launch_entry_point(tmp_path, tiny_idx):
    out = tmp_path / "run"
    result = run("--num_processes", "1", "--cpu", str(REPO / "training" / "train.py"), "--config", str(CONFIG),
                 "--output-dir", str(out), "--set", f"data.data_dir={tiny_idx}", "max_steps=5", "progress_bar=false", "log_with=none",
                 launcher=("-m", "accelerate.commands.launch"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["final"]["step"] == 5


def test_train_and_reconstruct_real_mnist(tmp_path, mnist_dir):
    out = tmp_path / "ae"
    result = run("train", "--config", str(CONFIG), "--output-dir", str(out), "--set", f"data.data_dir={mnist_dir}",
                 "data.subset=12000", "data.eval_subset=2000", "batch_size=64", "epochs=3", "progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run("reconstruct", str(out), "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["images"] == 10000
    assert report["mse"] < 0.045  # a 32-d code after 3 short epochs; the mean-image baseline is ~0.067
    assert (out / "reconstructions.png").is_file()


def test_sampling_limits_and_half_written_runs_are_explained(tmp_path, tiny_idx, capsys):
    from conftest import killed_after_checkpoint, tiny_config

    from genkit.cli import main
    from genkit.engine import train

    run = tmp_path / "vae"
    train(tiny_config(tiny_idx, run, family="vae", model={"hidden_dims": [16], "latent_dim": 2}, max_steps=2))
    for args, message in [(["--n", "100000"], "--n must be between 1 and 1024"), (["--n", "0"], "--n must be between 1"),
                          (["--steps", "0"], "--steps must be >= 1, got 0")]:
        assert main(["sample", str(run), *args]) == 2
        assert message in capsys.readouterr().err
    # a run killed after its first checkpoint: every command says to resume it
    with killed_after_checkpoint():
        train(tiny_config(tiny_idx, tmp_path / "half", max_steps=8))
    for command in ["reconstruct", "analyze", "eval"]:
        assert main([command, str(tmp_path / "half")]) == 2
        err = capsys.readouterr().err
        assert "has not finished training (last checkpoint: step 4); resume it with" in err and "--resume latest" in err, err
