"""A small CNN classifier: the machine-local feature extractor of data sets genkit ships no feature network for, and CAS."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .base import Family, unwrap


class SmallCNN(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "classifier"]):
    """Two conv blocks and a 128-d feature layer; `features` gives the embedding used for Fréchet distances."""

    def __init__(self, channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 32, num_features: int = 128):
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, num_features), nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (N, num_features)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.body(x))


class ClassifierFamily(Family):
    """Cross-entropy on the labels; trained by the same engine as every generative family."""

    name = "classifier"
    model_classes = {"model": SmallCNN}

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        return {"width": 32, "num_features": 128}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        if config.data.value_range != "0,1":
            raise ConfigError("the classifier reads images in [0, 1]: set data.value_range to '0,1'")

    def build(self) -> dict[str, nn.Module]:
        """Fresh modules for this family."""
        i = self.info
        return {"model": SmallCNN(i.channels, i.image_size, i.num_classes, self.option("width"), self.option("num_features"))}

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and values to log."""
        logits = self.models["model"](batch["input"]).float()
        return F.cross_entropy(logits, batch["label"]), {}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics on one batch."""
        logits = unwrap(self.models["model"])(batch["input"]).float()
        return {"eval_loss": F.cross_entropy(logits, batch["label"]).item(),
                "eval_accuracy": (logits.argmax(1) == batch["label"]).float().mean().item()}

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """The evaluation images it is scored on."""
        return batch["input"][:32].clamp(0, 1), 8
