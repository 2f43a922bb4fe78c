"""Hub publishing, offline: HfApi is patched and the exact upload is inspected."""

import importlib
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from huggingface_hub import HfApi, ModelCard

from genkit.cli import main
from genkit.engine import train


@pytest.fixture(scope="module")
def ae_run(tiny_idx, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "ae"
    train(tiny_config(tiny_idx, out, max_steps=4))
    return out


class Recorder:
    """Stands in for the Hub: records calls and snapshots the folder handed to upload_folder."""

    def __init__(self, monkeypatch):
        self.calls, self.files, self.card = [], [], ""
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        root = Path(folder_path)
        self.files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.card = (root / "README.md").read_text()
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_push_uploads_exactly_the_model_files_and_card(ae_run, monkeypatch, capsys):
    hub = Recorder(monkeypatch)
    assert not (ae_run / "README.md").exists()  # no placeholder card from the hub mixin in the run folder
    assert main(["push", str(ae_run), "--repo-id", "someone/genkit-ae", "--private"]) == 0
    assert hub.calls[0] == ("create_repo", "someone/genkit-ae", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert hub.calls[1][0] == "upload_folder" and hub.calls[1][1] == "someone/genkit-ae"
    assert hub.files == ["README.md", "config.json", "data_info.json", "loss_curve.png", "metrics.json", "model.safetensors",
                         "samples.png", "training_config.json"]
    meta = front_matter(hub.card)
    assert "library_name" not in meta and meta["pipeline_tag"] == "image-to-image" and meta["datasets"] == ["ylecun/mnist"]
    assert "autoencoder" in meta["tags"] and "![samples](samples.png)" in hub.card and "base_model" not in meta
    assert "## Metrics" in hub.card and 'MLPAutoencoder.from_pretrained("someone/genkit-ae")' in hub.card
    assert "optimizer" not in " ".join(hub.files) and "checkpoints" not in " ".join(hub.files)
    # model-index: what huggingface_hub reads back is the run's held-out evaluation, value for value
    final = json.loads((ae_run / "metrics.json").read_text())["final"]
    results = ModelCard(hub.card).data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == {k: v for k, v in final.items() if k.startswith("eval_")}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {("image-to-image", "ylecun/mnist", "test")}
    assert json.loads((ae_run / "hub.json").read_text())["repo_id"] == "someone/genkit-ae"  # a fine-tune of it cites this id


def test_card_takes_genkit_eval_results_and_the_base_model(ae_run, tmp_path):
    from genkit.hub import model_card

    run = tmp_path / "ft"
    shutil.copytree(ae_run, run, ignore=shutil.ignore_patterns("checkpoints", "samples", "hub.json"))
    (run / "eval_results.json").write_text(json.dumps({"mse": 0.0123, "images": 64}))
    snapshot = tmp_path / "hf" / "models--someone--base-ae" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    pushed = tmp_path / "pushed-run"
    pushed.mkdir()
    (pushed / "hub.json").write_text(json.dumps({"repo_id": "someone/pushed-ae"}))
    cases = [(None, None, ""), ("someone/base-ae", "someone/base-ae", "Fine-tuned from [someone/base-ae]"),
             (str(snapshot), "someone/base-ae", "Fine-tuned from [someone/base-ae]"), (str(pushed), "someone/pushed-ae", "someone/pushed-ae"),
             (str(tmp_path / "secret" / "local-ae"), None, "from a local run (`local-ae`) that is not on the Hub")]
    (tmp_path / "secret" / "local-ae").mkdir(parents=True)
    config = json.loads((run / "training_config.json").read_text())
    for init_from, expected, sentence in cases:
        (run / "training_config.json").write_text(json.dumps({**config, "init_from": init_from}))
        card = model_card(run, "someone/ft")
        assert front_matter(card).get("base_model") == expected and sentence in card and str(tmp_path) not in card, init_from
    results = {r.metric_name: r.metric_value for r in ModelCard(card).data.eval_results}
    assert results["mse"] == 0.0123 and "images" not in results  # metrics, not counts


def test_dry_run_writes_the_folder_and_uploads_nothing(ae_run, tmp_path, monkeypatch, capsys):
    hub = Recorder(monkeypatch)
    assert main(["push", str(ae_run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "upload")]) == 0
    assert hub.calls == []
    listed = json.loads(capsys.readouterr().out)["files"]
    assert sorted(str(p.relative_to(tmp_path / "upload")) for p in (tmp_path / "upload").rglob("*") if p.is_file()) == listed
    from genkit.families.autoencoder import MLPAutoencoder

    MLPAutoencoder.from_pretrained(str(tmp_path / "upload"))  # what is uploaded loads back
    assert main(["push", str(ae_run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "upload")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_diffusion_card_and_files(family_runs, monkeypatch):
    hub = Recorder(monkeypatch)
    from genkit.hub import push_run

    push_run(family_runs["diffusion"], "someone/genkit-ddpm")
    assert {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= set(hub.files)
    meta = front_matter(hub.card)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
    # unconditional runs too: their own pipeline.py, never a plain DDPMPipeline (which would drop the run's sampler)
    assert "pipeline.py" in hub.files and 'DiffusionPipeline.from_pretrained("someone/genkit-ddpm", trust_remote_code=True)' in hub.card
    assert "DDPMPipeline" not in hub.card
    run = family_runs["diffusion-conditional"]
    assert (run / "pipeline.py").is_file()  # the pipeline class, shipped for trust_remote_code
    push_run(run, "someone/genkit-cddpm")
    assert "pipeline.py" in hub.files and 'DiffusionPipeline.from_pretrained("someone/genkit-cddpm", trust_remote_code=True)' in hub.card
    assert front_matter(hub.card)["library_name"] == "diffusers"


def test_push_refuses_symlinks_and_leaves_nothing_behind(ae_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(ae_run, run, ignore=shutil.ignore_patterns("checkpoints", "samples"))
    (run / ".env").write_text("HF_TOKEN=hf_secret\n")
    hub = Recorder(monkeypatch)
    for name, target in [("samples.png", Path("/etc/passwd")), ("loss_curve.png", run / ".env")]:
        saved = (run / name).read_bytes()
        (run / name).unlink()
        (run / name).symlink_to(target)
        assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out")]) == 2
        assert name in capsys.readouterr().err and not (tmp_path / "out").exists()
        assert main(["push", str(run), "--repo-id", "someone/x"]) == 2 and hub.calls == []
        (run / name).unlink()
        (run / name).write_bytes(saved)
    (tmp_path / "elsewhere").mkdir()  # a linked folder on the way to an allow-listed file
    shutil.move(run / "config.json", tmp_path / "elsewhere" / "config.json")
    (run / "config.json").symlink_to(tmp_path / "elsewhere" / "config.json")
    assert main(["push", str(run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out")]) == 2
    assert "config.json" in capsys.readouterr().err and not list(tmp_path.glob(".out*"))


def test_failed_dry_run_leaves_no_partial_folder_and_names_the_file(ae_run, tmp_path, monkeypatch, capsys):
    import errno

    real = shutil.copyfile

    def full_disk(src, dst, **kwargs):
        if Path(dst).name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    (tmp_path / "out").mkdir()  # an empty folder given by the user stays as it was
    assert main(["push", str(ae_run), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "out" / "model.safetensors") in err
    assert list(tmp_path.iterdir()) == [tmp_path / "out"] and not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("repo_id", ["a/b\n", "a/b ", " a/b", "a/\tb", "a//b", "a/b/c", "a/b\x00", "https://huggingface.co/a/b", "a/-b", "a/b."])
def test_repo_ids_are_validated_strictly(ae_run, tmp_path, repo_id, monkeypatch, capsys):
    hub = Recorder(monkeypatch)
    assert main(["push", str(ae_run), "--repo-id", repo_id]) == 2
    assert main(["space", "--repo-id", repo_id, "--dry-run", str(tmp_path / "s")]) == 2
    assert main(["space", "--repo-id", "someone/space", "--model", repo_id, "--dry-run", str(tmp_path / "s")]) == 2
    assert hub.calls == [] and not (tmp_path / "s").exists() and repr(repo_id) in capsys.readouterr().err


def test_distribution_name_is_not_googles_genkit():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "hf-genkit" and project["scripts"] == {"genkit": "genkit.cli:main"}
    from genkit.hub import INSTALL, ON_PYPI, space_card

    names = ["README.md", "spaces/README.md", "spaces/requirements.txt", *sorted(p.relative_to(root).as_posix() for p in (root / "docs").glob("*.md"))]
    texts = [(root / name).read_text() for name in names]
    for text in [*texts, INSTALL, space_card("someone/space", [], True)]:
        assert not re.search(r"(?m)^\s*pip install (-U )?[\"']?genkit\b(?!-)", text), text[:200]  # warnings about it may quote it
    # until hf-genkit is uploaded, nothing genkit writes tells anyone to install it by name (anyone could take the name)
    assert ON_PYPI or not re.search(r"pip install [\"']?hf-genkit", INSTALL + space_card("someone/space", [], True))


def test_cards_say_what_loading_needs_the_task_and_where_the_model_came_from(family_runs, tiny_idx, tmp_path):
    from genkit.hub import model_card, requirement

    cards = {name: model_card(run, f"someone/{name}") for name, run in family_runs.items()}
    metas = {name: front_matter(card) for name, card in cards.items()}
    for name, card in cards.items():
        install = re.search(r"```bash\n(.*?)```", card, re.S).group(1)
        assert not re.search(r"pip install [\"']?hf-genkit", card), name  # not on PyPI yet: nobody is told to install that name
        if name.startswith("diffusion"):  # a pipeline needs torch and diffusers, in the range genkit declares
            assert install.startswith(f'pip install torch "{requirement("diffusers")}"') and metas[name]["library_name"] == "diffusers", name
        else:  # genkit's PyTorchModelHubMixin modules: no made-up library name; genkit itself, from source
            assert "library_name" not in metas[name] and "pytorch_model_hub_mixin" in metas[name]["tags"], name
            assert "not on PyPI yet" in install and "source checkout" in install, name
    assert "genkit" not in re.search(r"```bash\n(.*?)```", cards["diffusion-conditional"], re.S).group(1).split("#")[0]
    # class-conditional generators are not unconditional ones (the Hub has no task of their own)
    assert metas["diffusion-conditional"]["pipeline_tag"] == metas["gan"]["pipeline_tag"] == "other"
    assert metas["vae"]["pipeline_tag"] == metas["diffusion-flow"]["pipeline_tag"] == "unconditional-image-generation"
    # the snippet samples with the run's own sampler, steps and guidance
    run = tmp_path / "cond"
    shutil.copytree(family_runs["diffusion-conditional"], run)
    config = json.loads((run / "training_config.json").read_text())
    config["model"].update(sampler="euler", sample_steps=8, guidance_scale=1.5)
    (run / "training_config.json").write_text(json.dumps(config))
    assert "class_labels=[0, 1, 2, 3], guidance_scale=1.5, num_inference_steps=8).images  # the run's own sampler (euler)" in model_card(run, "a/b")
    # a latent run names its autoencoder, linked once that is on the Hub
    train(tiny_config(tiny_idx, tmp_path / "ae", model={"hidden_dims": [32, 16]}, max_steps=2))
    train(tiny_config(tiny_idx, tmp_path / "ldm", family="diffusion", model={"preset": "tiny", "sample_steps": 2, "autoencoder": str(tmp_path / "ae")},
                      data={"value_range": "-1,1"}, num_samples=4, max_steps=2, eval_every=2, checkpoint_every=2))
    assert "the latent codes of the autoencoder a local run (`ae`) that is not on the Hub" in model_card(tmp_path / "ldm", "a/ldm")
    (tmp_path / "ae" / "hub.json").write_text(json.dumps({"repo_id": "someone/genkit-ae"}))
    card = model_card(tmp_path / "ldm", "a/ldm")
    assert "the latent codes of the autoencoder [someone/genkit-ae](https://huggingface.co/someone/genkit-ae)" in card
    assert "latent-diffusion" in front_matter(card)["tags"]


def test_push_errors_are_readable(tmp_path, capsys):
    assert main(["push", str(tmp_path), "--repo-id", "a/b", "--dry-run", str(tmp_path / "o")]) == 2
    assert "not a genkit run directory" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "--repo-id", "nonsense"]) == 2


def test_push_to_hub_from_training(tiny_idx, tmp_path, monkeypatch):
    hub = Recorder(monkeypatch)
    train(tiny_config(tiny_idx, tmp_path / "run", max_steps=2, push_to_hub=True, hub_model_id="someone/auto", hub_private=True))
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"] and hub.calls[0][2]["private"] is True
    assert "model.safetensors" in hub.files


def test_push_takes_an_allow_list_and_no_local_paths(tiny_idx, tmp_path, monkeypatch):
    run = tmp_path / "secret-home" / "ae"
    train(tiny_config(tiny_idx, run, max_steps=2, data={"source": str(tiny_idx), "data_dir": str(tiny_idx)}, init_from=None))
    planted = {".cache/token": "hf_secret", "notes/secret.txt": "password", "extra.safetensors": "x", "unet/config.json": "{}",
               "README.md": "old card", ".env": "KEY=1"}
    for rel, text in planted.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    hub = Recorder(monkeypatch)
    assert main(["push", str(run), "--repo-id", "someone/ae"]) == 0
    assert hub.files == ["README.md", "config.json", "data_info.json", "loss_curve.png", "metrics.json", "model.safetensors",
                         "samples.png", "training_config.json"]
    assert "old card" not in hub.card
    staged = tmp_path / "staged"
    from genkit.hub import prepare_upload

    prepare_upload(run, "someone/ae", staged)
    for path in staged.rglob("*"):
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert str(tmp_path) not in text and "secret-home" not in text, path.name
    pushed = json.loads((staged / "training_config.json").read_text())
    assert pushed["data"]["data_dir"] is None and pushed["data"]["source"] == tiny_idx.name and pushed["output_dir"] == "runs/ae"
    from genkit.runs import load_family

    assert load_family(str(staged)).config.data.source == tiny_idx.name  # the portable config still loads


def test_space_folder_dry_run_and_upload(ae_run, tmp_path, monkeypatch, capsys):
    hub = Recorder(monkeypatch)
    local = tmp_path / "my ae"  # a local run, bundled into the Space with the push's allow-list
    shutil.copytree(ae_run, local, ignore=shutil.ignore_patterns("checkpoints", "samples", "hub.json"))
    (local / ".env").write_text("HF_TOKEN=hf_secret\n")
    args = ["space", "--repo-id", "someone/genkit-demo", "--model", "someone/genkit-ddpm", "--model", str(local)]
    assert main([*args, "--dry-run", str(tmp_path / "space")]) == 0
    assert hub.calls == []
    files = json.loads(capsys.readouterr().out)["files"]
    folder = tmp_path / "space"
    assert {"app.py", "README.md", "requirements.txt", "space.json", "genkit/__init__.py", "genkit/safe_load.py", "genkit/families/diffusion.py"} <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert sorted(f for f in files if f.startswith("models/")) == ["models/my-ae/" + f for f in
                                                                   ["config.json", "data_info.json", "loss_curve.png", "metrics.json",
                                                                    "model.safetensors", "samples.png", "training_config.json"]]
    meta = front_matter((folder / "README.md").read_text())
    import gradio

    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["sdk_version"] == gradio.__version__
    assert meta["models"] == ["someone/genkit-ddpm"] and "download.pytorch.org/whl/cpu" in (folder / "README.md").read_text()
    # requirements: every package the app imports, pinned to the version installed here; CPU torch; nothing it never imports
    lines = (folder / "requirements.txt").read_text().split("\n")
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = dict(line.split("==") for line in lines[1:] if line)
    assert {"torch", "diffusers", "datasets", "huggingface_hub", "accelerate", "numpy", "pillow", "scikit-learn", "PyYAML"} <= set(pins)
    assert not {"gradio", "matplotlib", "tensorboard", "torchmetrics", "transformers", "genkit", "hf-genkit"} & set(pins)
    for dist, version in pins.items():
        installed = importlib.metadata.version(dist)
        assert version == (installed.split("+")[0] + "+cpu" if dist == "torch" else installed), dist
    assert json.loads((folder / "space.json").read_text()) == {"models": ["someone/genkit-ddpm", "my-ae=models/my-ae"], "allow_hub": True}
    # the folder runs on its own: its app imports the genkit copied beside it, lists both models and serves the bundled run
    import subprocess
    import sys

    probe = ("import sys, genkit, app; policy = app.space_policy(); name = policy.load('my-ae').name; print('@', genkit.__file__); "
             "print('@', type(app.demo).__name__, sorted(policy.models), policy.allow_hub, name); "
             "print('@', sorted({m.split('.')[0] for m in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=folder, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    out = [line[2:] for line in result.stdout.splitlines() if line.startswith("@ ")]
    assert str(folder / "genkit") in out[0] and out[1] == "Blocks ['my-ae', 'someone/genkit-ddpm'] True autoencoder"
    from genkit.hub import app_imports

    loaded = set(eval(out[2]))
    assert app_imports() <= loaded and not {"matplotlib", "torchmetrics", "tensorboard"} & app_imports()
    # and the upload sends exactly that folder to a gradio Space
    assert main([*args, "--only-listed", "--private"]) == 0
    assert hub.calls[0] == ("create_repo", "someone/genkit-demo", {"private": True, "exist_ok": True, "repo_type": "space", "space_sdk": "gradio"})
    assert hub.calls[1][2]["repo_type"] == "space" and hub.files == sorted(files)
    assert main(["space", "--repo-id", "someone/x", "--gpu", "--dry-run", str(tmp_path / "gpu")]) == 0
    gpu = (tmp_path / "gpu" / "requirements.txt").read_text()
    assert "extra-index-url" not in gpu and f"torch=={importlib.metadata.version('torch').split('+')[0]}\n" in gpu
    for bad in [["--model", "../etc"], ["--model", "not a repo"], ["--model", str(tmp_path / "gpu")]]:  # the last: a folder that is no run
        assert main(["space", "--repo-id", "someone/x", *bad, "--dry-run", str(tmp_path / "x")]) == 2
        assert not (tmp_path / "x").exists()
    assert main(["space", "--repo-id", "/abs/path", "--dry-run", str(tmp_path / "y")]) == 2


@pytest.fixture(scope="module")
def family_runs(tiny_idx, ae_run, tmp_path_factory):
    """One tiny finished run per family (and kind of diffusion model)."""
    root = tmp_path_factory.mktemp("families")
    pixels = {"value_range": "-1,1"}
    configs = {
        "vae": dict(family="vae", model={"hidden_dims": [16], "latent_dim": 4}),
        "gan": dict(family="gan", model={"architecture": "dcgan", "conditional": True, "width": 8, "latent_dim": 8}, data=pixels),
        "rbm": dict(family="rbm", model={"hidden": 16}),
        "diffusion": dict(family="diffusion", model={"preset": "tiny", "sample_steps": 2}, data=pixels),
        "diffusion-conditional": dict(family="diffusion", model={"preset": "tiny", "sample_steps": 2, "class_conditional": True}, data=pixels),
        "diffusion-flow": dict(family="diffusion", model={"preset": "tiny", "sample_steps": 2, "objective": "flow_matching"}, data=pixels),
    }
    runs = {"autoencoder": ae_run}
    for name, config in configs.items():
        train(tiny_config(tiny_idx, root / name, max_steps=2, num_samples=4, **config))
        runs[name] = root / name
    return runs


def dry_run(run: Path, folder: Path, repo_id: str = "someone/model") -> tuple[Path, str]:
    """The dry-run folder of `run` and the python block of its card, with the repo id pointing at that folder."""
    from genkit.hub import prepare_upload

    prepare_upload(run, repo_id, folder)
    card = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'"{repo_id}"' in code
    code = re.sub(r"\b(num_inference_steps|steps)=\d+", r"\1=2", code)  # the card's code as written, with 2 sampling steps (fast)
    return folder, code.replace(f'"{repo_id}"', repr(str(folder)))


@pytest.mark.parametrize("name", ["autoencoder", "vae", "gan", "rbm", "diffusion", "diffusion-conditional", "diffusion-flow"])
def test_card_snippet_runs_against_the_uploaded_folder(family_runs, name, tmp_path, monkeypatch):
    folder, code = dry_run(family_runs[name], tmp_path / "upload")
    assert not [p for p in family_runs[name].rglob("README.md")]  # the hub mixin wrote no placeholder card anywhere in the run
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, f"{name} card", "exec"), scope)
    out = scope.get("images", scope.get("reconstructions"))
    count = len(out)
    assert count == (8 if name in ("gan", "vae", "rbm") else 4), name
    if name == "gan":  # the generator once, at the root (Generator.from_pretrained(id); the Hub counts the root config.json)
        assert (folder / "config.json").read_bytes() == (family_runs["gan"] / "generator" / "config.json").read_bytes()
        assert not (folder / "generator").exists() and (folder / "discriminator" / "model.safetensors").is_file()
        from genkit.runs import load_family

        loaded = load_family(str(folder))  # genkit's loader takes the published layout too
        assert {k: v.shape for k, v in loaded.models["generator"].state_dict().items()} == \
            {k: v.shape for k, v in load_family(str(family_runs["gan"])).models["generator"].state_dict().items()}
        assert out.shape == (8, 1, 28, 28) and 0 <= out.min() and out.max() <= 1


WHAT_LOADS_WHERE = re.compile(r"^\| `(?P<family>[\w-]+)` \| `(?P<loader>[^`]+)` \| `(?P<snippet>[^`]+)` \|.*$", re.M)


def test_docs_what_loads_where_rows_load(family_runs, tmp_path, monkeypatch):
    from genkit.runs import load_family

    page = (Path(__file__).resolve().parents[1] / "docs" / "app-and-hub.md").read_text()
    rows = [m.groupdict() for m in WHAT_LOADS_WHERE.finditer(page.split("## What loads where")[1].split("\n#")[0])]
    by_family = {row["family"]: row for row in rows}
    assert set(by_family) == {name.split("-")[0] for name in family_runs}  # one row per family: every diffusion run loads alike
    monkeypatch.chdir(tmp_path)
    for i, (kind, run) in enumerate(family_runs.items()):
        row = by_family[kind.split("-")[0]]
        folder, _ = dry_run(run, tmp_path / f"row{i}")
        assert load_family(str(folder)).name == row["family"].split("-")[0]  # genkit's loader takes every family
        module, _, name = row["loader"].rpartition(".")
        scope = {name: getattr(importlib.import_module(module), name), "repo_id": str(folder)}
        if "trust_remote_code" in row["snippet"]:
            assert (folder / "pipeline.py").is_file() and '"pipeline"' in (folder / "model_index.json").read_text()
        loaded = eval(row["snippet"], scope)
        assert type(loaded).__name__ in (name, "GenkitDiffusionPipeline") or isinstance(loaded, scope[name]), row


def test_checked_in_space_requirements_are_what_genkit_space_writes():
    from genkit.hub import space_requirements

    def names(lines: list[str]) -> list[str]:
        return [line.split("==")[0] for line in lines]

    text = (Path(__file__).resolve().parents[1] / "spaces" / "requirements.txt").read_text()
    checked_in = [line for line in text.splitlines() if line and not line.startswith("#")]
    # the same packages, each pinned; the versions are those of the environment that wrote it (a later release of a
    # dependency changes what `genkit space` writes today, not what this snapshot was built and tested with)
    assert names(checked_in) == names(space_requirements())
    assert all("==" in line for line in checked_in if not line.startswith("--"))
