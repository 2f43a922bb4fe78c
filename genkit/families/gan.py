"""GANs: the course's MLP GAN, DCGAN and a class-conditional GAN; non-saturating or hinge loss, optional R1 penalty."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .base import Family, unwrap


class Generator(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "gan"]):
    """z (and a class embedding) -> image in [-1, 1]; `mlp` or `dcgan` architecture."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), latent_dim: int = 64, architecture: str = "dcgan", width: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.latent_dim, self.num_classes = tuple(image_shape), latent_dim, num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        if self.embed is not None:
            # a small class code beside z: nn.Embedding's N(0, 1) rows carried half the input's variance, and the generator
            # drew one digit per class whatever z was (issue #19: FD 355 vs 122 at 300 steps, all else alike)
            nn.init.normal_(self.embed.weight, 0.0, 0.1)
        z_in = 2 * latent_dim if num_classes else latent_dim
        if architecture == "mlp":
            self.net = nn.Sequential(nn.Linear(z_in, 256), nn.LeakyReLU(0.2), nn.Linear(256, 512), nn.LeakyReLU(0.2),
                                     nn.Linear(512, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, c * h * w), nn.Tanh(), nn.Unflatten(1, (c, h, w)))
        elif architecture == "dcgan":
            if h % 4 or w % 4:
                raise ValueError(f"DCGAN needs height and width divisible by 4, got {h}x{w}")
            # the PyTorch-examples DCGAN: z as a 1x1 map, a transposed conv to (h/4, w/4), two stride-2 upsamplings
            self.net = nn.Sequential(
                nn.Unflatten(1, (z_in, 1, 1)),
                nn.ConvTranspose2d(z_in, 4 * width, (h // 4, w // 4), 1, 0, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
                nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.ConvTranspose2d(2 * width, c, 4, 2, 1, bias=False), nn.Tanh(),
            )
            dcgan_init(self.net)
        else:
            raise ValueError(f"architecture must be 'mlp' or 'dcgan', got {architecture!r}")

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1]."""
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], 1)
        return self.net(z)


class Discriminator(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "gan"]):
    """Image (and label: a learned extra input channel, or by projection) -> one real/fake logit."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), architecture: str = "dcgan", width: int = 64, num_classes: int | None = None,
                 norm: str = "batch", minibatch_std: bool = False, conditioning: str = "projection"):
        super().__init__()
        if conditioning not in ("channel", "projection"):
            raise ValueError(f"conditioning must be 'channel' or 'projection', got {conditioning!r}")
        c, h, w = image_shape
        self.batch_norm, self.minibatch_std = architecture == "dcgan" and norm == "batch", minibatch_std
        # the label as one more input channel, a learned h x w map per class (the usual conditional DCGAN, N(0, 1) as there):
        # at 300 steps FD 112 against 272-360 for the projection below, with or without batch norm (issue #19)
        self.label_map = nn.Embedding(num_classes, h * w) if num_classes and conditioning == "channel" else None
        c += self.label_map is not None
        if architecture == "mlp":
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2))
            dim = 256 + minibatch_std
        elif architecture == "dcgan":
            self.features = nn.Sequential(nn.Conv2d(c, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
                                          nn.Conv2d(width, 2 * width, 4, 2, 1, bias=not self.batch_norm),
                                          nn.BatchNorm2d(2 * width) if self.batch_norm else nn.Identity(), nn.LeakyReLU(0.2))
            dcgan_init(self.features)
            dim = (2 * width + minibatch_std) * (h // 4) * (w // 4)
        else:
            raise ValueError(f"architecture must be 'mlp' or 'dcgan', got {architecture!r}")
        self.out = nn.Linear(dim, 1)
        self.embed = nn.Embedding(num_classes, dim) if num_classes and conditioning == "projection" else None  # Miyato & Koyama
        if self.embed is not None:
            # at the head's scale: nn.Embedding's N(0, 1) rows against `dim` (6,272 at width 64) unit-scale features made the
            # class term ~160x the head's, so D's first logits were ~±50 and hinge losses ran in the hundreds
            nn.init.uniform_(self.embed.weight, -dim**-0.5, dim**-0.5)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Real/fake logits (N,)."""
        if self.label_map is not None:
            x = torch.cat([x, self.label_map(labels).view(len(x), 1, *x.shape[2:]).to(x.dtype)], 1)
        h = self.features(x)
        if self.minibatch_std:  # one more feature: the batch's spread, which a collapsed generator cannot fake (Karras et al. 2018)
            spread = h.std(0, correction=0).mean()
            h = torch.cat([h, spread.expand(len(h), 1, *h.shape[2:])], 1)
        h = h.flatten(1)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GANFamily(Family):
    """Alternating updates: the discriminator, then the generator, each with its own optimizer."""

    name = "gan"
    model_classes = {"discriminator": Discriminator, "generator": Generator}
    hub_root = "generator"  # pushed once, at the root: Generator.from_pretrained(repo_id); the Hub counts downloads of the root config.json
    parts = ("discriminator", "generator")
    ema_part = "generator"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fakes: list[torch.Tensor] = []  # with model.reuse_fake: the D step's fakes, graph kept, for the G step

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        return {"architecture": "dcgan", "latent_dim": 100, "width": 32, "conditional": False, "loss": "non_saturating", "r1_gamma": 0.0,
                "d_norm": "batch", "minibatch_std": False, "d_conditioning": "channel", "reuse_fake": False}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        m = {**cls.model_options(), **config.model}
        if m["architecture"] not in ("mlp", "dcgan"):
            raise ConfigError(f"model.architecture must be mlp or dcgan, got {m['architecture']!r}")
        if m["d_norm"] not in ("batch", "none"):
            raise ConfigError(f"model.d_norm must be batch or none, got {m['d_norm']!r}")
        if m["d_conditioning"] not in ("channel", "projection"):
            raise ConfigError(f"model.d_conditioning must be channel or projection, got {m['d_conditioning']!r}")
        if m["loss"] not in ("non_saturating", "hinge"):
            raise ConfigError(f"model.loss must be non_saturating or hinge, got {m['loss']!r}")
        if config.data.value_range != "-1,1":
            raise ConfigError("the generator ends in tanh: set data.value_range to '-1,1'")

    @property
    def conditional(self) -> bool:
        """Whether G and D take class labels."""
        return unwrap(self.models["generator"]).num_classes is not None

    def build(self) -> dict[str, nn.Module]:
        """Fresh modules for this family."""
        shape, arch, width = list(self.info.image_shape), self.option("architecture"), self.option("width")
        classes = self.info.num_classes if self.option("conditional") else None
        return {"discriminator": Discriminator(shape, arch, width, classes, self.option("d_norm"), self.option("minibatch_std"),
                                               self.option("d_conditioning")),
                "generator": Generator(shape, self.option("latent_dim"), arch, width, classes)}

    def _fake(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        z = torch.randn(n, unwrap(self.models["generator"]).latent_dim, device=device)
        return self.models["generator"](z, labels)

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and values to log."""
        real = batch["image"]
        labels = batch["label"] if self.conditional else None
        D, hinge = self.models["discriminator"], self.option("loss") == "hinge"
        reuse = self.option("reuse_fake")
        if part == "discriminator":
            # reuse_fake: the G step backpropagates through these same fakes (as the PyTorch-examples DCGAN does), one G
            # forward a step instead of two; G is the costlier net at 28x28 (cgan_mnist: 0.143 -> 0.110 CPU s a step, #19)
            with contextlib.nullcontext() if reuse else torch.no_grad():
                fake = self._fake(len(real), labels, real.device)
            if reuse:
                self._fakes.append(fake)
                fake = fake.detach()
            gamma = self.option("r1_gamma")
            real_in = real.detach().requires_grad_(gamma > 0)
            if unwrap(D).batch_norm:  # separate batches: batch statistics of real and fake images must not mix (ganhacks)
                real_logit, fake_logit = D(real_in, labels).float(), D(fake, labels).float()
            else:  # one forward over both
                real_logit, fake_logit = D(torch.cat([real_in, fake]), None if labels is None else torch.cat([labels, labels])).float().chunk(2)
            if hinge:
                loss = F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()
            else:
                loss = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            logs = {"real_score": torch.sigmoid(real_logit).mean().detach(), "fake_score": torch.sigmoid(fake_logit).mean().detach()}
            if gamma > 0:  # R1: penalise the gradient on real data (Mescheder et al. 2018)
                (grad,) = torch.autograd.grad(real_logit.sum(), real_in, create_graph=True)
                r1 = grad.pow(2).flatten(1).sum(1).mean()
                loss, logs["r1"] = loss + gamma / 2 * r1, r1.detach()
            return loss, logs
        fake = self._fakes.pop(0) if reuse and self._fakes else self._fake(len(real), labels, real.device)
        fake_logit = D(fake, labels).float()
        return (-fake_logit.mean() if hinge else F.softplus(-fake_logit).mean()), {}

    @torch.no_grad()
    def standing_statistics(self, batches: int = 20, batch_size: int = 256) -> None:
        """Re-estimate the generator's batch-norm statistics for its current weights (BigGAN's "standing statistics").

        The engine swaps EMA weights in for sampling and export, but batch-norm running statistics are buffers that were
        accumulated by the live weights; the averaged weights need their own.
        """
        G = unwrap(self.models["generator"])
        norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or not self.config.ema_decay:
            return
        device, was_training, momenta = next(G.parameters()).device, G.training, [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
        G.train()
        generator = torch.Generator(device).manual_seed(0)  # the same statistics each time these weights are exported
        for _ in range(batches):
            labels = torch.randint(0, self.info.num_classes, (batch_size,), device=device, generator=generator) if self.conditional else None
            G(torch.randn(batch_size, G.latent_dim, device=device, generator=generator), labels)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.train(was_training)

    def save(self, directory: str | Path) -> None:
        """Export G and D; G's batch-norm statistics re-estimated for the exported (EMA) weights first."""
        self.standing_statistics()
        super().save(directory)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        # GAN losses do not measure quality; report D's view on held-out real vs fixed-noise fakes (FD: `genkit eval`)
        """Validation metrics on one batch."""
        G, D = unwrap(self.models["generator"]), unwrap(self.models["discriminator"])
        real, labels = batch["image"], batch["label"] if self.conditional else None
        g = torch.Generator(real.device).manual_seed(0)
        fake = G(torch.randn(len(real), G.latent_dim, generator=g, device=real.device), labels)
        d_real, d_fake = torch.sigmoid(D(real, labels)).mean().item(), torch.sigmoid(D(fake, labels)).mean().item()
        return {"eval_d_real": d_real, "eval_d_fake": d_fake, "eval_loss": d_real - d_fake}

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """`n` new images in [0, 1]."""
        G = unwrap(self.models["generator"])
        device = next(G.parameters()).device
        if self.conditional and class_labels is None:
            class_labels = torch.randint(0, self.info.num_classes, (n,), generator=generator)
        z = torch.randn(n, G.latent_dim, generator=generator, device=generator.device).to(device)
        was_training = G.training
        G.eval()  # batch norm in inference mode for sampling
        images = G(z, None if class_labels is None else class_labels.to(device))
        G.train(was_training)
        return ((images.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Fixed noise (the engine reseeds the generator), one column per class for conditional models."""
        n = self.config.num_samples
        if self.conditional:
            k = min(self.info.num_classes, 10)
            return self.generate(n, generator, torch.arange(n) % k), k
        return self.generate(n, generator), 8
