"""Autoencoders: the course's MLP (784 -> 64 -> 32 -> 64 -> 784, BCE) and its variants."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .base import Family, unwrap

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "identity": nn.Identity}


class MLPAutoencoder(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "autoencoder"]):
    """A fully connected autoencoder; the decoder mirrors the encoder. `forward` returns logits."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), hidden_dims: list[int] = (64, 32), activation: str = "relu", dropout: float = 0.0, linear: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.image_shape = tuple(image_shape)
        self.latent_dim = hidden_dims[-1]
        dims = [math.prod(image_shape), *hidden_dims]
        act = (lambda: nn.Identity()) if linear else ACTIVATIONS[activation]

        def stack(sizes: list[int], last_activation: bool) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
                layers.append(nn.Linear(a, b))
                if i < len(sizes) - 2 or last_activation:
                    layers.append(act())
                    if dropout > 0:
                        layers.append(nn.Dropout(dropout))
            return nn.Sequential(*layers)

        # the code layer keeps its activation (as in the course model) unless the model is linear
        self.encoder = stack(dims, last_activation=not linear)
        self.decoder = stack(dims[::-1], last_activation=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> codes (N, latent_dim)."""
        return self.encoder(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pixel logits (N, C, H, W)."""
        return self.decoder(z).view(-1, *self.image_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel logits of the reconstruction (sigmoid gives the image)."""
        return self.decode_logits(self.encode(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> reconstructions in [0, 1]."""
        return torch.sigmoid(self(x))


class AutoencoderFamily(Family):
    """Reconstruction training: `input` (possibly corrupted) -> clean `image`."""

    name = "autoencoder"
    model_classes = {"model": MLPAutoencoder}

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        return {"hidden_dims": [64, 32], "activation": "relu", "dropout": 0.0, "linear": False, "loss": "bce"}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        loss = config.model.get("loss", "bce")
        if loss not in ("bce", "mse"):
            raise ConfigError(f"model.loss must be 'bce' or 'mse', got {loss!r}")
        if config.data.value_range != "0,1":
            raise ConfigError("autoencoders reconstruct pixels in [0, 1] (sigmoid output): set data.value_range to '0,1'")

    def build(self) -> dict[str, torch.nn.Module]:
        o = {k: self.option(k) for k in ["hidden_dims", "activation", "dropout", "linear"]}
        return {"model": MLPAutoencoder(image_shape=list(self.info.image_shape), **o)}

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.models["model"](batch["input"]).float()
        target = batch["image"]
        if self.option("loss") == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, target)
            return loss, {"mse": F.mse_loss(torch.sigmoid(logits.detach()), target)}
        return F.mse_loss(torch.sigmoid(logits), target), {}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        model = unwrap(self.models["model"])
        recon = model.reconstruct(batch["input"]).float()
        loss, _ = self.loss("model", batch)
        return {"eval_loss": loss.item(), "eval_mse": F.mse_loss(recon, batch["image"]).item()}

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Rows of inputs above their reconstructions."""
        x = batch["input"][:8]
        recon = unwrap(self.models["model"]).reconstruct(x).float()
        rows = [x, recon] if batch["input"] is batch["image"] else [batch["image"][:8], x, recon]
        return torch.cat(rows).clamp(0, 1), len(x)
