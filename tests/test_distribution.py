"""What genkit ships outside this checkout: the extras, a Space that resolves on its declared Python, a wheel that installs."""

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import tiny_config

from genkit.config import ConfigError
from genkit.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)


def test_extras_are_pyprojects_and_the_core_install_leaves_them_out():
    optional = PYPROJECT["optional-dependencies"]
    assert {name: optional[name] for name in EXTRAS} == EXTRAS  # genkit/extras.py names what pyproject installs
    assert set(optional["all"][0].partition("[")[2].rstrip("]").split(",")) == set(EXTRAS) and optional["dev"][0] == "hf-genkit[all]"
    core = {re.split(r"[<>=\[ ;]", r)[0].lower() for r in PYPROJECT["dependencies"]}
    for requirements in EXTRAS.values():
        assert not {re.split(r"[<>=\[ ;]", r)[0].lower() for r in requirements} & core


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend.frequent_patterns", None)  # import of it raises ModuleNotFoundError
    with pytest.raises(ConfigError) as missing:
        require("mlxtend.frequent_patterns", "analysis", "association rules (`genkit analyze`)")
    assert str(missing.value).startswith("association rules (`genkit analyze`) needs mlxtend, in genkit's optional `analysis` extra: "
                                         'pip install "mlxtend>=0.23.2"') and "\n" not in str(missing.value)
    from genkit.association import class_rules

    with pytest.raises(ConfigError, match="needs mlxtend"):
        class_rules([[1, 0]] * 4, [0, 1, 0, 1], ["a", "b"])
    from genkit.evaluation.features import TransformersSpace

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match="the dinov2 feature space needs transformers, in genkit's optional `metrics` extra"):
        TransformersSpace("dinov2", "facebook/dinov2-small", "cpu")
    monkeypatch.setitem(sys.modules, "gradio", None)
    from genkit.cli import main

    assert main(["app", str(tmp_path)]) == 2
    assert "`genkit app` needs gradio, in genkit's optional `app` extra" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs gradio"):
        from genkit.hub import space_card

        space_card("someone/space", [], True)


BLOCK_EXTRAS = """
import sys
for name in ("gradio", "transformers", "mlxtend", "torch_fidelity", "torchvision"):
    sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError, find_spec says None
from genkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_core_install_trains_samples_and_evaluates_without_any_extra(tiny_idx, tmp_path):
    config = tmp_path / "ae.yaml"
    tiny_config(tiny_idx, tmp_path / "run", max_steps=2, log_with="tensorboard", progress_bar=False).save(config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    for args in [["train", "--config", str(config)], ["reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "r.png")],
                 ["eval", str(tmp_path / "run"), "--num-samples", "32"]]:
        done = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, *args], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, f"genkit {args[0]}: {done.stderr[-3000:]}"


def index_reachable(python: str) -> str | None:
    """None when pip can resolve a wheel for `python` from the configured index, else pip's last line (the reason to skip)."""
    done = pip("install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed", "--only-binary=:all:", "--python-version", python,
               "--no-cache-dir", "tqdm", timeout=120)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["pip failed"])[-1]


@pytest.mark.slow
def test_space_requirements_resolve_on_the_python_its_card_declares(tmp_path):
    """What the Hub's builder does (`pip install -r requirements.txt`, then gradio at the card's sdk_version), resolved without
    installing for the card's python_version: every pin exists as a wheel for it and no two conflict.

    PyTorch's CPU index cannot be reached from CI, so torch is resolved as PyPI's build of the pinned release (the same
    version and Python tags; the +cpu build's dependencies are a subset of it): the other pins are checked against it.
    """
    from genkit.hub import CPU_TORCH_INDEX, prepare_space

    prepare_space("someone/demo", [], tmp_path / "space")
    meta = yaml.safe_load((tmp_path / "space" / "README.md").read_text().split("---")[1])
    python = meta["python_version"]
    assert isinstance(python, str) and re.fullmatch(r"3\.\d+", python)  # a string: YAML would read 3.10 as 3.1
    lines = (tmp_path / "space" / "requirements.txt").read_text().splitlines()
    assert lines[0] == f"--extra-index-url {CPU_TORCH_INDEX}" and sum(line.startswith("--") for line in lines) == 1
    pins = dict(line.split("==") for line in lines[1:])
    assert pins["torch"].endswith("+cpu")  # with the extra index, the local version picks the CPU wheel over PyPI's CUDA one
    pins["torch"] = pins["torch"].removesuffix("+cpu")
    pins["gradio"] = meta["sdk_version"]  # the Space SDK installs it into the same environment
    if (reason := index_reachable(python)) is not None:
        pytest.skip(f"the package index cannot be reached: {reason}")
    (tmp_path / "resolve.txt").write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    done = pip("install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:", "--python-version", python,
               "--report", str(tmp_path / "report.json"), "-r", str(tmp_path / "resolve.txt"))
    assert done.returncode == 0, f"the Space's requirements do not resolve on Python {python}:\n{done.stderr[-3000:]}"
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    for name, version in pins.items():
        assert resolved[name.lower().replace("_", "-")] == version, name


@pytest.mark.slow
def test_the_wheel_builds_passes_twine_and_its_cli_runs_in_a_clean_venv(tmp_path, tiny_idx):
    """sdist + wheel (python -m build), twine check, then the wheel alone in a fresh venv that sees this machine's packages
    (torch and the rest: no download): `genkit --help` and a short training run from the installed files, not the checkout."""
    pytest.importorskip("build", reason="python -m build is in the dev extra")
    pytest.importorskip("twine", reason="twine is in the dev extra")
    source = tmp_path / "source"  # setuptools writes build/ and *.egg-info beside the sources: a copy keeps the checkout clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache"))
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel, sdist = next(dist.glob("hf_genkit-*.whl")), next(dist.glob("hf_genkit-*.tar.gz"))
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    import zipfile

    from genkit.feature_nets import NETWORKS

    shipped = set(zipfile.ZipFile(wheel).namelist())  # the feature networks are package data: `genkit score` works from the wheel
    assert {f"genkit/weights/{name}.safetensors" for name in NETWORKS} <= shipped, sorted(n for n in shipped if "weights" in n)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True).stdout.strip()
    # this environment's packages (torch, diffusers, ..., pip) on the path as plain folders: their .pth files, and so an
    # editable genkit, are not read
    Path(site, "host.pth").write_text("".join(p + "\n" for p in sys.path if p.endswith("site-packages")))
    clean = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}
    installed = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=300, env=clean)
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = subprocess.run([python, "-c", "import genkit; print(genkit.__file__)"], capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert where.stdout.startswith(site), where.stdout + where.stderr  # the wheel's copy, not the checkout's
    genkit = str(env_dir / "bin" / "genkit")
    helped = subprocess.run([genkit, "--help"], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=120)
    assert helped.returncode == 0 and "train" in helped.stdout, helped.stderr
    config = tmp_path / "ae.yaml"
    tiny_config(tiny_idx, tmp_path / "run", max_steps=2, log_with="none", progress_bar=False).save(config)
    trained = subprocess.run([genkit, "train", "--config", str(config)], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # the Space's entry point is package data too: `genkit space` writes a Space folder from the wheel alone
    spaced = subprocess.run([genkit, "space", "--repo-id", "me/space", "--model", str(tmp_path / "run"), "--dry-run", str(tmp_path / "space")],
                            capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=300)
    assert spaced.returncode == 0, spaced.stderr[-3000:]
    assert (tmp_path / "space" / "app.py").read_text() == (ROOT / "spaces" / "app.py").read_text()
    assert (tmp_path / "space" / "models" / "run" / "model.safetensors").is_file() and not (tmp_path / "space" / "genkit" / "space" / "app.py").exists()
