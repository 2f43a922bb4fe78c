"""Command-line details a first-time user meets: folder modes, `genkit app --host`, stage lines of the commands."""

import os
import stat

import pytest
from conftest import tiny_config

from genkit.cli import main
from genkit.engine import train


@pytest.fixture(scope="module")
def vae_run(tiny_idx, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vae"
    train(tiny_config(tiny_idx, out, family="vae", model={"hidden_dims": [16], "latent_dim": 4}, max_steps=2))
    return out


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_written_folders_get_the_umasks_mode(vae_run, tmp_path, umask_027, capsys):
    assert main(["push", str(vae_run), "--repo-id", "someone/vae", "--dry-run", str(tmp_path / "dry")]) == 0
    assert main(["generate", str(vae_run), "--n", "6", "--out", str(tmp_path / "synthetic"), "--format", "imagefolder"]) == 0
    for folder in [tmp_path / "dry", tmp_path / "synthetic"]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask_027, folder  # mkdtemp's 0700 would survive the rename
        for path in folder.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask_027, path


def test_app_listens_on_the_host_given_and_a_non_loopback_host_gets_the_space_policy(vae_run, monkeypatch, capsys):
    import gradio as gr

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert main(["app", str(vae_run), "--host", "127.0.0.1", "--port", "7999"]) == 0
    assert launched[-1]["server_name"] == "127.0.0.1" and launched[-1]["server_port"] == 7999 and not launched[-1]["share"]
    assert "Space" not in capsys.readouterr().err  # loopback: local mode
    assert main(["app", str(vae_run), "--host", "0.0.0.0"]) == 0
    assert launched[-1]["server_name"] == "0.0.0.0"
    assert "--host 0.0.0.0 lets other machines reach the app, so it runs as a Space does" in capsys.readouterr().err
    assert main(["app", str(vae_run), "--host", "0.0.0.0", "--share-local-policy"]) == 0
    assert "WARNING" in capsys.readouterr().err
    assert main(["app", str(vae_run)]) == 0 and launched[-1]["server_name"] is None  # gradio's default: loopback
    assert main(["app", str(vae_run), "--port", "0"]) == 2
