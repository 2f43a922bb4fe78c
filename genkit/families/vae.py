"""Variational autoencoders (MLP or convolutional) with a Bernoulli or Gaussian decoder and a beta-weighted KL."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .autoencoder import mlp
from .base import Family, unwrap

LOG_2PI = math.log(2 * math.pi)


class VAE(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "vae"]):
    """q(z|x) = N(mu, sigma^2), p(z) = N(0, I), p(x|z) Bernoulli(logits) or N(mean, sigma_x^2) with a learned scalar sigma_x."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), latent_dim: int = 16, architecture: str = "mlp",
                 hidden_dims: list[int] = (512, 256), width: int = 32, decoder: str = "bernoulli"):
        super().__init__()
        if decoder not in ("bernoulli", "gaussian"):
            raise ValueError(f"decoder must be 'bernoulli' or 'gaussian', got {decoder!r}")
        c, h, w = image_shape
        self.image_shape, self.latent_dim, self.decoder_type = tuple(image_shape), latent_dim, decoder
        if architecture == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), mlp([c * h * w, *hidden_dims], "relu", 0.0, last_activation=True))
            features = hidden_dims[-1]
            self.decoder = nn.Sequential(mlp([latent_dim, *hidden_dims[::-1], c * h * w], "relu", 0.0, last_activation=False), nn.Unflatten(1, (c, h, w)))
        elif architecture == "conv":
            if h % 4 or w % 4:
                raise ValueError(f"the conv VAE needs height and width divisible by 4, got {h}x{w}")
            small = (2 * width, h // 4, w // 4)
            features = math.prod(small)
            self.encoder = nn.Sequential(nn.Conv2d(c, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), nn.Flatten())
            self.decoder = nn.Sequential(nn.Linear(latent_dim, features), nn.ReLU(), nn.Unflatten(1, small),
                                         nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, 2, 1))
        else:
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")
        self.to_mu, self.to_logvar = nn.Linear(features, latent_dim), nn.Linear(features, latent_dim)
        self.log_sigma_x = nn.Parameter(torch.tensor(-2.0)) if decoder == "gaussian" else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (mu, logvar) of q(z|x)."""
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden).clamp(-12, 8)

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> decoder output: Bernoulli logits, or Gaussian means (pre-sigmoid)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> mean images in [0, 1]."""
        return torch.sigmoid(self.decode_params(z))

    def log_px_given_z(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image, summed over pixels (nats)."""
        if self.decoder_type == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        log_sigma = self.log_sigma_x.clamp(-6, 2)
        return (-0.5 * ((x - torch.sigmoid(out)) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * LOG_2PI).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, beta: float = 1.0, target: torch.Tensor | None = None,
                generator: torch.Generator | None = None, iwae_k: int | None = None) -> dict[str, torch.Tensor]:
        """One-sample ELBO terms per image: `recon` = -log p(target|z) (target defaults to x), `kl`, `loss` = recon + beta kl.

        With `iwae_k`, `loss` is the negative importance-weighted bound with that many samples instead.
        """
        if iwae_k is not None:
            return {"loss": self.iwae_loss(x, iwae_k, generator)}
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp()
        recon = -self.log_px_given_z(x if target is None else target, self.decode_params(z))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "mu": mu}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode `n` draws from the prior; mean images in [0, 1]."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device if generator else "cpu")
        return self.decode(z.to(self.to_mu.weight.device))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode the straight line between the posterior means of images `a` and `b` (each (C, H, W))."""
        mu = self.encode(torch.stack([a, b]))[0]
        w = torch.linspace(0, 1, steps, device=mu.device)[:, None]
        return self.decode((1 - w) * mu[0] + w * mu[1])

    @torch.no_grad()
    def latent_grid(self, n: int = 15, span: float = 2.5) -> torch.Tensor:
        """An n x n grid of decoded points over [-span, span]^2 (2-D latent spaces only)."""
        if self.latent_dim != 2:
            raise ValueError(f"latent_grid needs latent_dim=2, this model has {self.latent_dim}")
        from ..latents import grid_points

        return self.decode(grid_points(n, span).to(self.to_mu.weight.device))

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior draws per image: shape (k, N)."""
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * std  # (k, N, latent)
        log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)
        log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        out = self.decode_params(z.flatten(0, 1))
        log_px = self.log_px_given_z(x.repeat(k, *[1] * (x.ndim - 1)), out).view(k, len(x))
        return log_px + log_p - log_q

    def iwae_loss(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The negative IWAE bound -log (1/k) sum_i w_i per image (Burda et al. 2015); k = 1 is the negative ELBO."""
        return -(torch.logsumexp(self.log_weights(x, k, generator), 0) - math.log(k))

    @torch.no_grad()
    def importance_nll(self, x: torch.Tensor, k: int = 100, generator: torch.Generator | None = None, chunk: int = 500) -> torch.Tensor:
        """-log p(x) per image by importance sampling with k posterior samples (Burda et al.), in nats; k in chunks, so
        k = 5000 needs no more memory than k = 500."""
        parts = [torch.logsumexp(self.log_weights(x, min(chunk, k - start), generator), 0) for start in range(0, k, chunk)]
        return -(torch.logsumexp(torch.stack(parts), 0) - math.log(k))


class VAEFamily(Family):
    """Maximise the (beta-weighted) ELBO; sample from the prior."""

    name = "vae"
    model_classes = {"model": VAE}

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        # objective "iwae": the importance-weighted bound with iwae_k samples (Burda et al. 2015) instead of the ELBO
        return {"latent_dim": 16, "architecture": "mlp", "hidden_dims": [512, 256], "width": 32, "decoder": "bernoulli", "beta": 1.0,
                "objective": "elbo", "iwae_k": 5}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        m = {**cls.model_options(), **config.model}
        if m["architecture"] not in ("mlp", "conv") or m["decoder"] not in ("bernoulli", "gaussian"):
            raise ConfigError("model.architecture must be mlp or conv, model.decoder bernoulli or gaussian")
        if m["objective"] not in ("elbo", "iwae") or m["iwae_k"] < 1:
            raise ConfigError(f"model.objective must be elbo or iwae and model.iwae_k >= 1, got {m['objective']!r}, {m['iwae_k']}")
        if m["objective"] == "iwae" and (m["beta"] != 1.0 or config.data.corruption):
            raise ConfigError("the iwae objective is a bound on log p(x): it takes no beta and no data.corruption")
        if m["beta"] < 0:
            raise ConfigError(f"model.beta must be >= 0, got {m['beta']}")
        if config.data.value_range != "0,1":
            raise ConfigError("VAEs model pixels in [0, 1]: set data.value_range to '0,1'")

    def build(self) -> dict[str, nn.Module]:
        """Fresh modules for this family."""
        keys = ["latent_dim", "architecture", "hidden_dims", "width", "decoder"]
        return {"model": VAE(list(self.info.image_shape), **{k: self.option(k) for k in keys})}

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # with data.corruption the encoder sees the corrupted input and the likelihood is of the clean image
        """The loss to minimise for `part` on a batch, and values to log."""
        if self.option("objective") == "iwae":
            return self.models["model"](batch["image"], iwae_k=self.option("iwae_k"))["loss"].mean(), {}  # through forward: DDP syncs
        out = self.models["model"](batch["input"], beta=self.option("beta"), target=batch["image"])
        return out["loss"].mean(), {"recon": out["recon"].mean().detach(), "kl": out["kl"].mean().detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics on one batch."""
        model = unwrap(self.models["model"])
        # the one-sample ELBO estimate is noisy: fixed draws make evaluations comparable
        out = model(batch["image"], beta=1.0, generator=torch.Generator(batch["image"].device).manual_seed(0))
        recon = model.reconstruct(batch["image"])
        return {"eval_loss": out["loss"].mean().item(), "eval_elbo": -out["loss"].mean().item(), "eval_kl": out["kl"].mean().item(),
                "eval_mse": F.mse_loss(recon, batch["image"]).item()}

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """`n` new images in [0, 1]."""
        return unwrap(self.models["model"]).sample(n, generator)

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Reconstructions of 8 inputs, then prior samples."""
        model = unwrap(self.models["model"])
        x = batch["image"][:8]
        return torch.cat([x, model.reconstruct(x), self.generate(self.config.num_samples, generator)]).clamp(0, 1), 8
