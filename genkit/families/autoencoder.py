"""Autoencoders: linear (PCA-like), undercomplete, overcomplete + sparse, convolutional, denoising and contractive.

The course model is the default: 784 -> 64 -> 32 -> 64 -> 784, ReLU, Adam, binary cross-entropy. Denoising is the
same model trained with `data.corruption` (input corrupted, target clean).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .base import Family, unwrap

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


class ReconstructionMixin:
    """Shared by every autoencoder: `decode` and `reconstruct` from `encode` and `decode_logits`."""

    linear = False  # a linear model's output is its last layer itself: that is what makes it equivalent to PCA

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """Last-layer values -> pixels: sigmoid, or identity for a linear model."""
        return logits if self.linear else torch.sigmoid(logits)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> images (in [0, 1] except for a linear model)."""
        return self.output(self.decode_logits(z))

    def forward(self, x: torch.Tensor, return_code: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pixel logits of the reconstruction (sigmoid gives the image), and the code when asked."""
        code = self.encode(x)
        logits = self.decode_logits(code)
        return (logits, code) if return_code else logits

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> reconstructions in [0, 1]."""
        return self.output(self(x)).clamp(0, 1)


def mlp(sizes: list[int], activation: str, dropout: float, last_activation: bool) -> nn.Sequential:
    """Linear layers with an activation (and dropout) between them; `activation='identity'` makes it linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if (i < len(sizes) - 2 or last_activation) and activation != "identity":
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPAutoencoder(ReconstructionMixin, nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "autoencoder"]):
    """A fully connected autoencoder; the decoder mirrors the encoder. `forward` returns logits."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), hidden_dims: list[int] = (64, 32), activation: str = "relu",
                 dropout: float = 0.0, linear: bool = False, code_activation: str | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self.image_shape, self.linear = tuple(image_shape), linear
        self.latent_dim = hidden_dims[-1]
        dims = [math.prod(image_shape), *hidden_dims]
        act = "identity" if linear else activation
        # the code keeps the hidden activation (the course model) unless linear, or a sparse model asks for sigmoid
        self.encoder = mlp(dims, act, dropout, last_activation=not linear and code_activation is None)
        if code_activation is not None:
            self.encoder.append(ACTIVATIONS[code_activation]())
        self.decoder = mlp(dims[::-1], act, dropout, last_activation=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> codes (N, latent_dim)."""
        return self.encoder(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pixel logits (N, C, H, W)."""
        return self.decoder(z).view(-1, *self.image_shape)


class ConvAutoencoder(ReconstructionMixin, nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "autoencoder"]):
    """Two stride-2 convolutions down to a linear code, and their transposes back (28x28 or 32x32)."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), latent_dim: int = 32, width: int = 32, dropout: float = 0.0):
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvAutoencoder needs height and width divisible by 4, got {h}x{w}")
        self.image_shape, self.latent_dim, self.small = tuple(image_shape), latent_dim, (2 * width, h // 4, w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(math.prod(self.small), latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, math.prod(self.small)), nn.ReLU(), nn.Unflatten(1, self.small),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes (N, latent_dim)."""
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pixel logits (N, C, H, W)."""
        return self.decoder(z)


class AutoencoderFamily(Family):
    """Reconstruction training: `input` (possibly corrupted) -> clean `image`, plus the chosen penalties."""

    name = "autoencoder"
    model_classes = {"model": MLPAutoencoder}

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        return {
            "architecture": "mlp", "hidden_dims": [64, 32], "latent_dim": 32, "width": 32, "activation": "relu",
            "dropout": 0.0, "linear": False, "loss": "bce",
            "sparsity": None, "sparsity_weight": 1e-3, "sparsity_target": 0.05,  # l1 on codes, or kl to a target rate
            "contractive_weight": 0.0,  # weight of the encoder Jacobian's squared Frobenius norm
            "l1_weight": 0.0, "l2_weight": 0.0,  # weight penalties
        }

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        m = {**cls.model_options(), **config.model}
        for key, allowed in [("architecture", ["mlp", "conv"]), ("loss", ["bce", "mse"]), ("sparsity", [None, "l1", "kl"]), ("activation", list(ACTIVATIONS))]:
            if m[key] not in allowed:
                raise ConfigError(f"model.{key} must be one of {allowed}, got {m[key]!r}")
        if m["linear"] and m["architecture"] != "mlp":
            raise ConfigError("model.linear applies to the mlp architecture")
        if m["linear"] and m["loss"] != "mse":
            raise ConfigError("a linear autoencoder has a linear output (the PCA equivalent): set model.loss to 'mse'")
        if config.data.value_range != "0,1":
            raise ConfigError("autoencoders reconstruct pixels in [0, 1] (sigmoid output): set data.value_range to '0,1'")

    @classmethod
    def load_models(cls, directory) -> dict[str, nn.Module]:
        """Read back what `save` wrote."""
        import json
        from pathlib import Path

        config = json.loads((Path(directory) / "config.json").read_text()) if Path(directory, "config.json").is_file() else {}
        klass = ConvAutoencoder if "width" in config and "hidden_dims" not in config else MLPAutoencoder
        return {"model": klass.from_pretrained(str(directory))}

    def build(self) -> dict[str, nn.Module]:
        """Fresh modules for this family."""
        shape = list(self.info.image_shape)
        if self.option("architecture") == "conv":
            return {"model": ConvAutoencoder(shape, self.option("latent_dim"), self.option("width"), self.option("dropout"))}
        code = "sigmoid" if self.option("sparsity") == "kl" else None  # KL sparsity needs code activations in (0, 1)
        return {"model": MLPAutoencoder(shape, self.option("hidden_dims"), self.option("activation"), self.option("dropout"), self.option("linear"), code)}

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and values to log."""
        model = self.models["model"]
        x, target = batch["input"], batch["image"]
        contractive = self.option("contractive_weight")
        if contractive:
            x = x.detach().requires_grad_(True)
        logits, code = model(x, return_code=True)  # through the (possibly DDP-wrapped) module, so gradients sync
        logits = logits.float()
        if self.option("loss") == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = F.mse_loss(unwrap(model).output(logits), target)
        logs = {"recon": loss.detach()}
        if self.option("sparsity") == "l1":
            penalty = code.abs().mean()
            loss, logs["sparsity"] = loss + self.option("sparsity_weight") * penalty, penalty.detach()
        elif self.option("sparsity") == "kl":
            rho, rho_hat = self.option("sparsity_target"), code.float().mean(0).clamp(1e-6, 1 - 1e-6)
            penalty = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
            loss, logs["sparsity"] = loss + self.option("sparsity_weight") * penalty, penalty.detach()
        if contractive:
            # ||J||_F^2 = E_v ||J^T v||^2 for v ~ N(0, I): one random projection per image, unbiased, any encoder
            v = torch.randn_like(code)
            (jtv,) = torch.autograd.grad(code, x, grad_outputs=v, create_graph=True)
            penalty = jtv.float().pow(2).flatten(1).sum(1).mean()
            loss, logs["contractive"] = loss + contractive * penalty, penalty.detach()
        if self.option("l1_weight") or self.option("l2_weight"):
            weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
            loss = loss + self.option("l1_weight") * sum(w.abs().sum() for w in weights) + self.option("l2_weight") * sum(w.pow(2).sum() for w in weights)
        return loss, logs

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics on one batch."""
        model = unwrap(self.models["model"])
        logits = model(batch["input"]).float()
        mse = F.mse_loss(model.output(logits).clamp(0, 1), batch["image"]).item()
        bce = self.option("loss") == "bce"
        return {"eval_loss": F.binary_cross_entropy_with_logits(logits, batch["image"]).item() if bce else mse, "eval_mse": mse}

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Rows of inputs above their reconstructions (clean, corrupted, reconstructed for denoisers)."""
        x = batch["input"][:8]
        recon = unwrap(self.models["model"]).reconstruct(x).float()
        rows = [x, recon] if batch["input"] is batch["image"] else [batch["image"][:8], x, recon]
        return torch.cat(rows).clamp(0, 1), len(x)
