"""Shared fixtures: offline Hub settings, tiny synthetic IDX data, and the real MNIST when ../shared/data has it."""

import contextlib
import gzip
import os
from pathlib import Path

# No Hub at test time: make every Hub call fail at once instead of retrying (must precede the HF imports).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if "GENKIT_CACHE" not in os.environ:  # decoded splits and classifiers: one cache per test session, not the user's
    import tempfile

    os.environ["GENKIT_CACHE"] = tempfile.mkdtemp(prefix="genkit-test-cache-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("GENKIT_TEST_MNIST", REPO.parent / "shared" / "data" / "mnist"))


class FakeUNet(torch.nn.Module):
    """Base of the tests' exact denoisers: a module with a device and a dtype (one parameter) that pipelines can hold."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


def make_idx_folder(folder: Path, n_train: int = 256, n_test: int = 64, size: int = 28, seed: int = 0) -> Path:
    """A tiny MNIST-like data set: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, size, size))
        for i, lab in enumerate(labels):
            row = 3 + 2 * lab
            images[i, row : row + 3, 4 : size - 4] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".egg-info")


def _new_files() -> set[str] | None:
    """Untracked and ignored files of the checkout (None when it is not a git checkout)."""
    import subprocess
    import sys

    exclude = []  # a virtual environment inside the checkout (CI's .venv): its packages write their own files (gradio's hash seed)
    if Path(sys.prefix).resolve().is_relative_to(REPO):
        exclude = [f":(exclude){Path(sys.prefix).resolve().relative_to(REPO)}"]
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".", *exclude], cwd=REPO,
                                capture_output=True, text=True)
    except OSError:
        return None
    if result.returncode != 0:
        return None
    return {line[3:] for line in result.stdout.splitlines() if line[:2] in ("??", "!!") and not any(c in line for c in CACHES)}


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Tests write into tmp_path only: a file that appears in the checkout (runs/, samples.png, ...) fails the session."""
    before = _new_files()
    yield
    after = _new_files()
    if before is not None and after is not None and after - before:
        pytest.fail(f"the tests wrote into the checkout {REPO}: {', '.join(sorted(after - before)[:10])}")


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory) -> Path:
    """Folder of synthetic IDX files (256 train / 64 test images, 10 classes)."""
    return make_idx_folder(tmp_path_factory.mktemp("tiny_idx"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX folder, or skip."""
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST


def tiny_config(data_dir: Path, output_dir: Path, **overrides):
    """A small, fast autoencoder config on the synthetic data."""
    from genkit.config import TrainConfig

    values = {
        "family": "autoencoder",
        "model": {"hidden_dims": [32, 8]},
        "data": {"source": "mnist", "data_dir": str(data_dir)},
        "output_dir": str(output_dir),
        "batch_size": 32,
        "max_steps": 12,
        "eval_every": 6,
        "checkpoint_every": 4,
        "log_every": 2,
        "eval_batches": 2,
        "num_samples": 8,
        "log_with": "none",
        "progress_bar": False,
    }
    for key, value in overrides.items():
        if key == "data":  # merged; "model" is replaced (its keys depend on the family)
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


class Killed(Exception):
    """Stands for a kill -9: raised right after a checkpoint is written."""


@contextlib.contextmanager
def killed_after_checkpoint(step: int | None = None):
    """Training dies right after writing the checkpoint of `step` (the first checkpoint when None)."""
    from genkit import engine

    original = engine.save_checkpoint

    def save_then_die(accelerator, run_dir, state, *args):
        original(accelerator, run_dir, state, *args)
        if step is None or state["step"] == step:
            raise Killed

    engine.save_checkpoint = save_then_die
    try:
        yield
    except Killed:
        pass
    finally:
        engine.save_checkpoint = original


def train_space_runs(data_dir: Path, root: Path) -> Path:
    """The three tiny runs the app and Space tests serve: a diffusion model, a denoising autoencoder and a 2-d VAE."""
    from genkit.engine import train

    train(tiny_config(data_dir, root / "diffusion", family="diffusion", model={"preset": "tiny", "sample_steps": 2},
                      data={"value_range": "-1,1"}, max_steps=2, num_samples=4))
    train(tiny_config(data_dir, root / "dae", data={"corruption": "gaussian"}, max_steps=4))
    train(tiny_config(data_dir, root / "vae2d", family="vae", model={"latent_dim": 2, "hidden_dims": [32]}, max_steps=4))
    return root
