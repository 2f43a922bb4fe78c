"""`genkit push` publishes only the run's own files as genkit wrote them: no hard links to files elsewhere, no edited code."""

import json
import os
import shutil

import pytest
from conftest import tiny_config
from huggingface_hub import HfApi

from genkit.cli import main
from genkit.engine import train


@pytest.fixture(scope="module")
def conditional_run(tiny_idx, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "cddpm"
    train(tiny_config(tiny_idx, out, family="diffusion", max_steps=2, num_samples=4, data={"value_range": "-1,1"},
                      model={"preset": "tiny", "sample_steps": 2, "class_conditional": True}))
    return out


def copy_run(run, to):
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints", "samples"))
    return to


def no_uploads(monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: calls.append("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append("upload_folder"))
    return calls


def test_push_refuses_a_hard_link_to_a_file_outside_the_run(conditional_run, tmp_path, monkeypatch, capsys):
    run = copy_run(conditional_run, tmp_path / "run")
    secret = tmp_path / "secret.txt"
    secret.write_text("HF_TOKEN=hf_secret\n")
    (run / "samples.png").unlink()
    os.link(secret, run / "samples.png")  # the same inode as a file outside the run: symlink checks do not see it
    calls = no_uploads(monkeypatch)
    for argv in [["--dry-run", str(tmp_path / "out")], []]:
        assert main(["push", str(run), "--repo-id", "someone/x", *argv]) == 2
        err = capsys.readouterr().err
        assert "samples.png" in err and "hard link" in err and "--allow-hard-links" in err and len(err.strip().splitlines()) == 1, err
    assert calls == [] and not (tmp_path / "out").exists()
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out"), "--allow-hard-links"]) == 0
    assert (tmp_path / "out" / "samples.png").read_text() == secret.read_text()  # what the user asked for explicitly

    (run / "samples.png").unlink()  # links among the run's own files are fine
    shutil.copyfile(conditional_run / "samples.png", run / "samples.png")
    (run / "extra").mkdir()
    os.link(run / "samples.png", run / "extra" / "samples-copy.png")
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out2")]) == 0


def test_push_refuses_an_edited_pipeline_unless_asked(conditional_run, tmp_path, monkeypatch, capsys):
    run = copy_run(conditional_run, tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    assert set(record["code_sha256"]) == {"pipeline.py"} and record["run_id"]
    original = (run / "pipeline.py").read_text()
    (run / "pipeline.py").write_text(original + "\nimport os; os.system('echo pwned')\n")
    calls = no_uploads(monkeypatch)
    assert main(["push", str(run), "--repo-id", "someone/x"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.py" in err and "differs from the file genkit wrote" in err and "--allow-edited-code" in err, err
    assert calls == []
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out"), "--allow-edited-code"]) == 0
    assert "pwned" in (tmp_path / "out" / "pipeline.py").read_text()

    (run / "pipeline.py").write_text(original)
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out2")]) == 0
    # a run with no record (older genkit, a Hub snapshot): its pipeline.py must be genkit's own
    (run / "run.json").write_text(json.dumps({"run_id": record["run_id"]}))
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out3")]) == 0
    (run / "pipeline.py").write_text(original + "\n# edited\n")
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out4")]) == 2
    assert "genkit's own pipeline code" in capsys.readouterr().err


def test_a_downloaded_latent_run_names_its_autoencoder_by_hub_id_only_and_a_mismatch_reads_plainly(tiny_idx, tmp_path, monkeypatch, capsys):
    from genkit.runs import load_family

    ae = tmp_path / "ae"
    train(tiny_config(tiny_idx, ae, model={"hidden_dims": [32, 16]}, max_steps=2))
    ldm = tmp_path / "ldm"
    train(tiny_config(tiny_idx, ldm, family="diffusion", max_steps=2, num_samples=4, data={"value_range": "-1,1"},
                      model={"preset": "tiny", "sample_steps": 2, "autoencoder": str(ae)}))
    assert load_family(str(ldm)).autoencoder is not None

    # a snapshot without autoencoder/ whose config names a folder that exists here: never loaded from this machine
    snapshot = copy_run(ldm, tmp_path / "snapshot")
    shutil.rmtree(snapshot / "autoencoder")
    (snapshot / "run.json").unlink()
    monkeypatch.chdir(tmp_path)
    for name in ["ae", "someone/ae"]:
        if "/" in name:
            shutil.copytree(ae, tmp_path / name)
        config = json.loads((snapshot / "training_config.json").read_text())
        config["model"]["autoencoder"] = name
        (snapshot / "training_config.json").write_text(json.dumps(config))
        assert main(["sample", str(snapshot), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert f"model.autoencoder={name!r}" in err and "Hub only" in err and len(err.strip().splitlines()) == 1, err
        assert ("not a Hub repo id" if "/" not in name else "cannot download") in err, err
        assert not (tmp_path / "x.png").exists()

    # another autoencoder in place of the run's own: a sentence, not a shape error from inside the UNet
    other = tmp_path / "other"
    train(tiny_config(tiny_idx, other, model={"hidden_dims": [64, 32]}, max_steps=2))
    swapped = copy_run(ldm, tmp_path / "swapped")
    shutil.rmtree(swapped / "autoencoder")
    shutil.copytree(other, swapped / "autoencoder", ignore=shutil.ignore_patterns("checkpoints", "samples", "*.png", "*.json", "logs"))
    shutil.copyfile(other / "config.json", swapped / "autoencoder" / "config.json")
    assert main(["sample", str(swapped), "--n", "2", "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "32-d codes" in err and "not the autoencoder this model was trained with" in err and len(err.strip().splitlines()) == 1, err
    (swapped / "autoencoder" / "config.json").write_text(json.dumps({**json.loads((ae / "config.json").read_text())}))
    assert main(["sample", str(swapped), "--n", "2", "--out", str(tmp_path / "y.png")]) == 2  # a config that does not fit its weights
    err = capsys.readouterr().err
    assert "does not load as a genkit autoencoder" in err and len(err.strip().splitlines()) == 1, err
