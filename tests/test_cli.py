"""The command line as a user runs it: real processes, exit codes and messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "autoencoder_mnist.yaml"


def run(*args, cwd, launcher=("-m", "genkit.cli")):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_bad_config_and_data_errors_are_readable(tmp_path, tiny_idx, capsys, monkeypatch):
    from genkit.cli import main

    monkeypatch.chdir(tmp_path)  # the config's relative output_dir (runs/...) lands here, never in the checkout

    def assert_clean_error(args, *fragments):
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        for fragment in fragments:
            assert fragment in err, err

    def cmd(*args):
        return args

    assert_clean_error(cmd("train", "--config", str(tmp_path / "none.yaml")), "config file not found")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", "data.sorce=x"), "unknown config key(s) data.sorce")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", "model.hidden=[3]"), "unknown model option(s) for family 'autoencoder': hidden")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", "family=transformer"), "unknown family 'transformer'")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", f"data.data_dir={tmp_path}"), "has no IDX files")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", "data.source=/no/such/folder"), "does not exist")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--set", "data.value_range=-1,1"), "set data.value_range to '0,1'")
    assert_clean_error(cmd("train", "--config", str(CONFIG), "--output-dir", str(tmp_path / "r"), "--resume", "latest"), "no run to resume")
    assert_clean_error(cmd("reconstruct", str(tmp_path)), "not a genkit run directory")
    from conftest import tiny_config

    from genkit.engine import train

    train(tiny_config(tiny_idx, tmp_path / "ae", max_steps=2))
    assert_clean_error(cmd("sample", str(tmp_path / "ae")), "does not generate new images")
    assert_clean_error(cmd("analyze", str(tmp_path / "nowhere")), "neither an existing run directory nor a Hub repo id")
    # and as a real process: one line of error, no traceback
    (tmp_path / "fresh").mkdir()
    result = run("train", "--config", str(CONFIG), "--set", "batch_size=0", cwd=tmp_path / "fresh")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "batch_size must be >= 1" in result.stderr
    assert not any((tmp_path / "fresh").iterdir())  # no output directory for a config that is refused


def test_accelerate_launch_entry_point(tmp_path, tiny_idx):
    out = tmp_path / "run"
    result = run("--num_processes", "1", "--cpu", str(REPO / "training" / "train.py"), "--config", str(CONFIG),
                 "--output-dir", str(out), "--set", f"data.data_dir={tiny_idx}", "max_steps=5", "progress_bar=false", "log_with=none",
                 cwd=tmp_path, launcher=("-m", "accelerate.commands.launch"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["final"]["step"] == 5


def test_train_and_reconstruct_real_mnist(tmp_path, mnist_dir):
    out = tmp_path / "ae"
    result = run("train", "--config", str(CONFIG), "--output-dir", str(out), "--set", f"data.data_dir={mnist_dir}",
                 "data.subset=12000", "data.eval_subset=2000", "batch_size=64", "epochs=3", "progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run("reconstruct", str(out), "--data-dir", str(mnist_dir), cwd=tmp_path)
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
                          (["--steps", "0"], "--steps must be between 1 and 10000, got 0")]:
        assert main(["sample", str(run), *args]) == 2
        assert message in capsys.readouterr().err
    # a run killed after its first checkpoint: every command says to resume it
    with killed_after_checkpoint():
        train(tiny_config(tiny_idx, tmp_path / "half", max_steps=8))
    for command in ["reconstruct", "analyze", "eval"]:
        assert main([command, str(tmp_path / "half")]) == 2
        err = capsys.readouterr().err
        assert "has not finished training (last checkpoint: step 4); resume it with" in err and "--resume latest" in err, err


HEAVY = ("torch", "datasets", "diffusers", "gradio", "accelerate", "huggingface_hub")


def test_help_and_argument_errors_import_nothing_heavy(tmp_path):
    # the heavy libraries are made unimportable: --help and argument errors must not need them
    probe = f"""
import json, sys
for name in {HEAVY!r}:
    sys.modules[name] = None
from genkit.cli import build_parser, main
codes = {{}}
commands = build_parser()._subparsers._group_actions[0].choices
for argv in [["--help"], *[[c, "--help"] for c in commands], ["sample"], ["sample", "run", "--x0", "bogus"],
             ["train", "--config", {str(CONFIG)!r}, "--set", "a=!!python/name:os.system"]]:
    try:
        codes[" ".join(argv)] = main(argv)
    except SystemExit as exit:
        codes[" ".join(argv)] = exit.code
print(json.dumps(codes))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(codes) >= 13 and all(code == (0 if argv.endswith("--help") else 2) for argv, code in codes.items()), codes
    assert "Traceback" not in result.stderr and "not plain YAML" in result.stderr


def test_set_is_repeatable_and_cumulative(capsys):
    from genkit.cli import main, parse_args

    args = parse_args(["train", "--config", "c.yaml", "--set", "data.data_dir=/d", "--set", "model.preset=tiny", "epochs=3"])
    assert args.overrides == ["data.data_dir=/d", "model.preset=tiny", "epochs=3"]
    from genkit.config import TrainConfig

    config = TrainConfig.load(REPO / "training" / "configs" / "diffusion_mnist_conditional.yaml").with_overrides(args.overrides)
    assert (config.data.data_dir, config.model["preset"], config.epochs) == ("/d", "tiny", 3.0)
    # a YAML value that is not plain data (a python tag) is one line, exit code 2
    assert main(["train", "--config", str(CONFIG), "--set", "seed=!!python/object/apply:os.getpid []"]) == 2
    err = capsys.readouterr().err
    assert "override 'seed=!!python/object/apply:os.getpid []': the value is not plain YAML" in err and len(err.strip().splitlines()) == 1


def test_sample_writes_into_the_run_and_refuses_nonsense(tmp_path, tiny_idx, capsys, monkeypatch):
    from conftest import tiny_config

    from genkit.cli import main
    from genkit.engine import train
    from genkit.families.vae import VAEFamily

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # nothing lands in the current folder
    run = tmp_path / "vae"
    train(tiny_config(tiny_idx, run, family="vae", model={"hidden_dims": [16], "latent_dim": 2}, max_steps=2))
    capsys.readouterr()
    grids = []
    for _ in range(2):  # never overwritten: each call writes a new grid in RUN/samples and prints its path
        assert main(["sample", str(run), "--n", "4"]) == 0
        grids.append(json.loads(capsys.readouterr().out)["grid"])
    assert grids == [str(run / "samples" / "sample-001.png"), str(run / "samples" / "sample-002.png")]
    assert all(Path(g).is_file() for g in grids) and not list((tmp_path / "elsewhere").iterdir())
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "mine.png")]) == 0 and (tmp_path / "mine.png").is_file()
    for args, message in [(["--steps", "100000000"], "--steps must be between 1 and 10000"),
                          (["--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
                          (["--guidance-scale", "inf"], "--guidance-scale must be a finite number")]:
        assert main(["sample", str(run), *args]) == 2
        assert message in capsys.readouterr().err
    # a model that produces NaN: refused, and no grid written
    monkeypatch.setattr(VAEFamily, "generate", lambda self, n, generator, labels=None, **o: torch.full((n, 1, 28, 28), float("nan")))
    assert main(["sample", str(run), "--n", "4"]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "samples").glob("sample-*.png")) == ["sample-001.png", "sample-002.png"]


def test_train_says_where_the_run_went(tmp_path, tiny_idx, capsys):
    from conftest import tiny_config

    from genkit.cli import main

    tiny_config(tiny_idx, tmp_path / "run", max_steps=2).save(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["step"] == 2  # stdout stays the JSON summary
    assert f"the run is in {tmp_path / 'run'}" in captured.err and f"genkit reconstruct {tmp_path / 'run'}" in captured.err
