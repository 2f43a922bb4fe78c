"""genkit's frozen feature networks: small CNNs shipped inside the package, the shared ruler of genkit's scores.

Like pytorch-fid's one Inception file, each network is a fixed file (genkit/weights/NAME.safetensors) with a name and
version (`genkit-mnist-v1`) and a sha256 that is checked at load: a score names the network it was measured in, and
the same images give the same score on every machine. `training/feature_nets.py` trained them (recipe and seed in
each file's metadata). Features run in float64 on the CPU, so thread counts and BLAS builds do not move the figures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INPUT_SIZE = 28  # every shipped network reads 28x28 grey images in [0, 1]; other sizes are resized to it


@dataclass(frozen=True)
class NetworkInfo:
    """A shipped network: its file, checksum, the data set it was trained on and its reference splits."""

    name: str
    sha256: str
    source: str  # genkit's data source name ("mnist", "fashion_mnist")
    test_accuracy: float  # on the source's test split, as trained (recorded by training/feature_nets.py)

    @property
    def path(self) -> Path:
        """The weights file inside the installed package."""
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def version(self) -> str:
        """The version part of the name (v1, v2, ...): a retrained network gets a new name, never the same one."""
        return self.name.rsplit("-", 1)[1]


NETWORKS = {
    "genkit-mnist-v1": NetworkInfo("genkit-mnist-v1", "d09b76ae838e1c5936f3f5e036dd254a932ba5b8c052ea5b3e18c6910a6207de", "mnist", 0.9914),
    "genkit-fashion-mnist-v1": NetworkInfo("genkit-fashion-mnist-v1", "b26e12cb5a56adcf9872fc7157c4ea1abfc254d257438a9b2f92000c3835f718",
                                           "fashion_mnist", 0.8666),
}
BY_SOURCE = {info.source: name for name, info in NETWORKS.items()}


class FeatureNet(nn.Module):
    """Three conv blocks (28 -> 14 -> 7 -> 3 pixels) and a 64-d feature layer; `features` is the embedding scores use."""

    def __init__(self, width: int = 16, num_features: int = 64, num_classes: int = 10):
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * width * 3 * 3, num_features), nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 1, H, W) -> (N, num_features), computed in the weights' dtype."""
        return self.body(prepare(x).to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


def prepare(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> what the networks read: one channel (RGB averaged), 28x28 (bilinear, antialiased), centred at 0."""
    x = images.float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"the feature networks read images shaped (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) - 0.5


def sha256(path: Path) -> str:
    """The file's sha256, hex (runs.file_sha256, imported here: runs imports the families, which import evaluation)."""
    from .runs import file_sha256

    return file_sha256(path)


def network_for(source: str) -> str | None:
    """The shipped network for a data source name ("mnist", "fashion-mnist", ...), or None when genkit ships none."""
    return BY_SOURCE.get(str(source).lower().replace("-", "_"))


def load_network(name: str) -> FeatureNet:
    """The shipped network `name`, checked against its sha256, in eval mode, float64, on the CPU (one copy per process)."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown feature network {name!r}; genkit ships {', '.join(NETWORKS)}")
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> FeatureNet:
    from safetensors import safe_open
    from safetensors.torch import load_file

    info = NETWORKS[name]
    if not info.path.is_file():
        raise ConfigError(f"feature network file {info.path} is missing: reinstall genkit (the weights are package data)")
    found = sha256(info.path)
    if found != info.sha256:
        raise ConfigError(f"feature network {info.path} has sha256 {found}, not {info.sha256} ({name}): the file is damaged or "
                          "not the one this genkit version shipped; reinstall genkit")
    with safe_open(str(info.path), "pt") as f:
        meta = f.metadata() or {}
    arch = json.loads(meta.get("architecture", "{}"))
    model = FeatureNet(**arch)
    model.load_state_dict(load_file(str(info.path)))
    model.name, model.metadata = name, meta
    return model.double().eval().requires_grad_(False)


def describe(name: str) -> str:
    """One line naming the network and what it is, for protocols and reports."""
    model = load_network(name)
    return f"{name} (genkit's shipped {NETWORKS[name].source} network, {model.num_features}-d features, sha256 {NETWORKS[name].sha256[:12]})"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread: BLAS and convolutions split their sums by thread count, and the last digits
    of a figure would follow the machine's core count (2e-9 relative at 2 threads); on one thread they do not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def extract(model: FeatureNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features (float64, CPU, one thread: the same bits everywhere) of images in [0, 1], batch by batch."""
    if not len(images):
        return torch.zeros(0, model.num_features, dtype=torch.float64)
    with one_thread():
        return torch.cat([model.features(chunk.cpu()) for chunk in images.split(batch_size)])
