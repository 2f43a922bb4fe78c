"""The diffusers range the exported pipeline supports (`DIFFUSERS_TESTED`): its oldest and newest releases load a
conditional flow-matching run, a DDPM (epsilon) run and a latent run with the stock loader in a Python where genkit
cannot be imported, sample the images genkit samples (the run's defaults and stock scheduler swaps), and `from_pipe`
works. diffusers is pure Python: a release other than the installed one goes into a folder of its own (`pip install
--no-deps --target`, cached in ~/.cache/genkit-test-diffusers) put first on the path of the subprocess.

GENKIT_TEST_DIFFUSERS="0.33.1,0.36.0" tests those releases as well (how the whole range was checked).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from conftest import tiny_config

from genkit.families.autoencoder import MLPAutoencoder
from genkit.families.base import DataInfo
from genkit.families.diffusion import PRESETS, DiffusionFamily, build_unet
from genkit.hub import install_block
from genkit.pipelines import DIFFUSERS_TESTED

CACHE = Path.home() / ".cache" / "genkit-test-diffusers"
REPO = Path(__file__).resolve().parents[1]

# run by a bare Python: diffusers from argv's folder (or the installed one), genkit refused by a meta-path finder
STOCK_SCRIPT = r"""
import importlib.abc, json, logging, sys, warnings
folder, hide, runs, out = json.loads(sys.argv[1])
if folder:
    sys.path.insert(0, folder)
for name in hide:  # as if not installed: find_spec() says None, import fails
    sys.modules[name] = None


class NoGenkit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "genkit" or name.startswith("genkit."):
            raise ImportError(f"genkit is blocked in this test: {name}")


sys.meta_path.insert(0, NoGenkit())
import diffusers, torch
from diffusers import DDIMScheduler, DiffusionPipeline, EulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

assert not folder or diffusers.__file__.startswith(folder), diffusers.__file__
seen = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: seen.append(record.getMessage())
logging.getLogger("diffusers").addHandler(handler)
warnings.simplefilter("always")
version = tuple(int(p) for p in diffusers.__version__.split(".")[:2])
dtype_key = "dtype" if version >= (0, 40) else "torch_dtype"  # `dtype` since 0.40, which warns about `torch_dtype`


def seeded():
    return torch.Generator().manual_seed(0)


results = {"version": diffusers.__version__}
with warnings.catch_warnings(record=True) as caught:
    for key, folder in runs.items():
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        labels = [1, "3"] if pipe.null_label is not None else None
        got = {"class": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
               "default": pipe(batch_size=2, class_labels=labels, generator=seeded(), output_type="pt").images}
        saved = pipe.scheduler.config
        swaps = {"flow": {"heun": FlowMatchHeunDiscreteScheduler}, "ddpm": {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler},
                 "latent": {"ddim": DDIMScheduler}}[key]
        for name, cls in swaps.items():
            pipe.scheduler = cls.from_config(saved)  # the stock swap
            got[name] = pipe(batch_size=2, class_labels=labels, generator=seeded(), output_type="pt").images
        try:
            pipe.scheduler = (DDIMScheduler if key == "flow" else FlowMatchHeunDiscreteScheduler).from_config(saved)
            pipe(batch_size=1, class_labels=labels[:1] if labels else None)
            got["refused"] = None
        except ValueError as err:
            got["refused"] = str(err)
        pipe.scheduler = getattr(diffusers, got["scheduler"]).from_config(saved)
        again = type(pipe).from_pipe(pipe)  # the components carried over, not reloaded
        got["from_pipe"] = [again.unet is pipe.unet, again.decoder is pipe.decoder, type(again).__name__]
        got["from_pipe_images"] = again(batch_size=2, class_labels=labels, generator=seeded(), output_type="pt").images
        half = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **{dtype_key: torch.bfloat16})
        half.set_progress_bar_config(disable=True)
        low = half(batch_size=2, class_labels=labels, num_inference_steps=1, output_type="np").images
        got["bf16"] = [str(half.unet.dtype), str(low.dtype), list(low.shape)]
        results[key] = got
results["warnings"] = seen + [f"{w.category.__name__}: {w.message}" for w in caught]
results["genkit_importable"] = "genkit" in sys.modules
torch.save(results, out)
"""


# warnings that would be the pipeline's doing (diffusers' component type check, from_pipe's switch-over, a deprecated
# argument in our code); not diffusers' own, e.g. 0.42's from_pipe casting every model "that should be kept in float32: []"
OUR_WARNINGS = re.compile(r"Expected types|type annotation|not switched over|FutureWarning|is deprecated", re.I)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def diffusers_folder(version: str) -> str | None:
    """The installed diffusers (None: the subprocess uses it) or a cached `--target` install of `version`; skips without PyPI."""
    if version == diffusers.__version__:
        return None
    folder = CACHE / version
    if not (folder / "diffusers" / "__init__.py").is_file():
        partial = CACHE / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                               "--target", str(partial), f"diffusers=={version}"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.skip(f"cannot install diffusers=={version} from PyPI (offline?): {done.stderr.strip().splitlines()[-1:]}")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)  # whole or not at all: an interrupted install is never taken for a cached one
    return str(folder)


def family(tiny_idx, out: Path, ae=None, **model) -> DiffusionFamily:
    """A tiny untrained diffusion run of the given kind (the export does not depend on training), seeded."""
    torch.manual_seed(0)
    config = tiny_config(tiny_idx, out, family="diffusion", model={"preset": "tiny", "sample_steps": 2, **model}, data={"value_range": "-1,1"})
    info = DataInfo(1, 28, [str(i) for i in range(10)], "-1,1")
    if ae is None:
        return DiffusionFamily(config, info)
    return DiffusionFamily(config, info, {"autoencoder": ae, "unet": build_unet(4, ae.latent_dim // 16, **PRESETS["tiny"])})


@pytest.fixture(scope="module")
def runs(tiny_idx, tmp_path_factory):
    """A conditional flow-matching run (euler, guidance 1.5), an unconditional DDPM epsilon run (dpm++_sde, x0 clipped) and a
    latent run over an MLP autoencoder (unipc, dynamic thresholding), each saved as genkit saves them."""
    root = tmp_path_factory.mktemp("range")
    torch.manual_seed(0)
    ae = MLPAutoencoder([1, 28, 28], [32, 16]).eval()
    made = {"flow": family(tiny_idx, root / "flow", objective="flow_matching", class_conditional=True, guidance_scale=1.5),
            "ddpm": family(tiny_idx, root / "ddpm"),
            "latent": family(tiny_idx, root / "latent", ae, autoencoder="ae", sampler="unipc", thresholding=True)}
    for key, run in made.items():
        run.save(root / key)
    return root, made


def versions_to_test() -> list[str]:
    extra = [v for v in os.environ.get("GENKIT_TEST_DIFFUSERS", "").split(",") if v]
    return sorted({*DIFFUSERS_TESTED, *extra}, key=_version_key)


@pytest.mark.parametrize("version", versions_to_test())
def test_runs_load_and_sample_alike_across_the_diffusers_range(runs, version, tmp_path):
    root, made = runs
    folder = diffusers_folder(version)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    # diffusers < 0.40 cannot import its pipelines beside transformers 5 (transformers.utils.FLAX_WEIGHTS_NAME is gone): those
    # releases are tested as a user of them has them, without transformers (the pipeline needs only torch and diffusers)
    hide = ["transformers"] if _version_key(version) < (0, 40) else []
    args = json.dumps([folder, hide, {key: str(root / key) for key in made}, str(tmp_path / "out.pt")])
    done = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(tmp_path / "out.pt", weights_only=False)
    assert results["version"] == version and not results["genkit_importable"]
    # an old release still warns about config keys newer releases write, 0.32 about trust_remote_code for a local folder
    ours = [w for w in results["warnings"] if OUR_WARNINGS.search(w)]
    assert ours == [], "\n".join(sorted(set(ours)))

    labels = {"flow": torch.tensor([1, 3]), "ddpm": None, "latent": None}
    for key, run in made.items():
        got = results[key]
        assert got["class"] == "GenkitDiffusionPipeline" and got["scheduler"] == type(run.pipeline().scheduler).__name__
        # pipe() with the run's defaults = genkit sample; a stock swap = genkit with that sampler
        for name in ["default", *[k for k in ("heun", "ddim", "euler") if k in got]]:
            ours = run.generate(2, torch.Generator().manual_seed(0), labels[key], scheduler=None if name == "default" else name)
            assert ours.shape == got[name].shape == (2, 1, 28, 28) and ours.std() > 0.01, (key, name)
            assert (ours - got[name]).abs().max() < 1e-4, f"diffusers {version} {key}/{name}: {(ours - got[name]).abs().max():.2e}"
        assert "cannot be sampled by" in got["refused"] and "it takes" in got["refused"], got["refused"]
        assert got["from_pipe"] == [True, True, "GenkitDiffusionPipeline"] and torch.equal(got["from_pipe_images"], got["default"])
        assert got["bf16"] == ["torch.bfloat16", "float32", [2, 28, 28, 1]]


def test_the_stated_range_is_the_tested_one():
    oldest, newest = DIFFUSERS_TESTED
    assert _version_key(newest) >= _version_key(diffusers.__version__), "the installed diffusers is newer than the tested range: test it"
    pyproject = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"diffusers>=([\d.]+)"', pyproject).group(1)
    assert _version_key(floor)[:2] == _version_key(oldest)[:2], f"pyproject says diffusers>={floor}, the oldest tested is {oldest}"
    for page in ["docs/diffusion.md", "docs/app-and-hub.md"]:
        text = (REPO / page).read_text()
        assert f"{oldest} to {newest}" in text, f"{page} does not state the tested range {oldest} to {newest}"
    assert f"tested with diffusers {oldest} to {newest}" in install_block("diffusion")  # every diffusion card's install line
