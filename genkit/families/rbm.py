"""Bernoulli restricted Boltzmann machine trained by contrastive divergence (CD-k) or persistent CD; Gibbs sampling."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import ConfigError, TrainConfig
from .base import Family, unwrap


class BernoulliRBM(nn.Module, PyTorchModelHubMixin, library_name="genkit", tags=["genkit", "rbm"]):
    """Binary visible and hidden units; energy E(v, h) = -v.b - h.c - v W h."""

    def __init__(self, image_shape: list[int] = (1, 28, 28), hidden: int = 256):
        super().__init__()
        self.image_shape, visible = tuple(image_shape), math.prod(image_shape)
        self.W = nn.Parameter(torch.randn(visible, hidden) * 0.01)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))
        # the training pixels' mean rates, tracked during training: Gibbs chains start from draws of them (see `sample`)
        self.register_buffer("base_rate", torch.full((visible,), 0.5))
        self.register_buffer("base_count", torch.zeros(()))

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -v.b - sum_j softplus(c_j + (vW)_j), per example."""
        v = v.flatten(1)
        return -v @ self.b - F.softplus(v @ self.W + self.c).sum(1)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        """p(h=1 | v)."""
        return torch.sigmoid(v.flatten(1) @ self.W + self.c)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        """p(v=1 | h), flat."""
        return torch.sigmoid(h @ self.W.t() + self.b)

    def gibbs(self, v: torch.Tensor, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """k steps v -> h -> v; returns the last binary sample and its probabilities (flat)."""
        probs = v.flatten(1)
        for _ in range(k):
            h = torch.bernoulli(self.hidden_probs(v), generator=generator)
            probs = self.visible_probs(h)
            v = torch.bernoulli(probs, generator=generator)
        return v, probs

    @torch.no_grad()
    def exact_log_partition(self) -> float:
        """log Z by summing over every hidden configuration (at most 24 hidden units): the reference AIS is tested against."""
        hidden = self.W.shape[1]
        if hidden > 24:
            raise ValueError(f"exact log Z enumerates 2^hidden states; {hidden} hidden units is too many (use ais_log_partition)")
        W, b, c = self.W.double(), self.b.double(), self.c.double()
        states = ((torch.arange(2**hidden, device=W.device)[:, None] >> torch.arange(hidden, device=W.device)) & 1).double()
        # sum over v in closed form: log Z = logsumexp_h [h.c + sum_i softplus(b_i + (W h)_i)]
        return torch.logsumexp(states @ c + F.softplus(states @ W.t() + b).sum(1), 0).item()

    @torch.no_grad()
    def ais_log_partition(self, base_bias: torch.Tensor, runs: int = 100, betas: int = 14_500,
                          generator: torch.Generator | None = None) -> tuple[float, float]:
        """Annealed importance sampling estimate of log Z (Salakhutdinov & Murray 2008) and its standard error.

        The chains anneal from a base-rate model (visible biases `base_bias`, usually the data's logit means, no weights)
        to this RBM through p_beta(v, h) ~ exp((1-beta) v.b_A + beta (v.b + h.c + v W h)). The default schedule is the
        paper's 14,500 temperatures: 500 up to 0.5, 4,000 up to 0.9, 10,000 up to 1. Deterministic for a seeded `generator`.
        """
        W, b, c, b_a = self.W.double(), self.b.double(), self.c.double(), base_bias.double().to(self.W.device).flatten()
        schedule = annealing_schedule(betas).to(W.device)
        v = torch.bernoulli(torch.sigmoid(b_a).expand(runs, -1), generator=generator)

        def log_p(v: torch.Tensor, beta: float) -> torch.Tensor:  # log p*_beta(v), hidden units summed out
            return (1 - beta) * (v @ b_a) + beta * (v @ b) + F.softplus(beta * (v @ W + c)).sum(1)

        log_w = torch.zeros(runs, dtype=torch.float64, device=W.device)
        for previous, beta in zip(schedule[:-1].tolist(), schedule[1:].tolist()):
            log_w += log_p(v, beta) - log_p(v, previous)
            h = torch.bernoulli(torch.sigmoid(beta * (v @ W + c)), generator=generator)  # a Gibbs sweep that leaves p_beta invariant
            v = torch.bernoulli(torch.sigmoid((1 - beta) * b_a + beta * (h @ W.t() + b)), generator=generator)
        log_z_base = F.softplus(b_a).sum().item() + W.shape[1] * math.log(2)
        log_mean_w = (torch.logsumexp(log_w, 0) - math.log(runs)).item()
        # delta method on the mean importance weight: a standard error in nats
        weights = torch.exp(log_w - log_w.max())
        stderr = (weights.std() / math.sqrt(runs) / weights.mean()).item()
        return log_z_base + log_mean_w, stderr

    def log_likelihood(self, v: torch.Tensor, log_z: float) -> torch.Tensor:
        """log p(v) = -F(v) - log Z per example, for binary v."""
        return -self.free_energy(v).double() - log_z

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Free energy per example (the quantity whose data-vs-model difference is trained)."""
        return self.free_energy(v)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """One mean-field pass v -> p(h) -> p(v), as images."""
        return self.visible_probs(self.hidden_probs(x)).view(-1, *self.image_shape)

    @torch.no_grad()
    def track_base_rate(self, v: torch.Tensor) -> None:
        """Fold a training batch into `base_rate`: a running mean over the first 100 batches, then an average with weight 0.01."""
        self.base_count += 1
        self.base_rate.lerp_(v.flatten(1).float().mean(0), 1 / self.base_count.clamp(max=100))  # no host sync

    @torch.no_grad()
    def sample(self, n: int, steps: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run n Gibbs chains for `steps` steps from draws of the training pixels' rates; return the final p(v) as images.

        Chains started from uniform noise (half the pixels on) wander where PCD's chains, started from data, never went:
        on MNIST half of them stall in a grey state for thousands of steps (FD 498 vs 98 at 1,000 steps, 500 hidden units).
        """
        v = torch.bernoulli(self.base_rate.expand(n, -1), generator=generator)
        _, probs = self.gibbs(v, steps, generator)
        return probs.view(-1, *self.image_shape)


def annealing_schedule(n: int) -> torch.Tensor:
    """Inverse temperatures 0 -> 1 in Salakhutdinov & Murray's proportions (1/29 of them to 0.5, 8/29 to 0.9, the rest to 1)."""
    first, second = max(1, round(n * 500 / 14_500)), max(1, round(n * 4_000 / 14_500))
    third = max(1, n - first - second)
    return torch.cat([torch.linspace(0, 0.5, first + 1, dtype=torch.float64)[:-1], torch.linspace(0.5, 0.9, second + 1, dtype=torch.float64)[:-1],
                      torch.linspace(0.9, 1.0, third + 1, dtype=torch.float64)])


class RBMFamily(Family):
    """CD-k / PCD: minimise F(v_data) - F(v_model) with v_model from (persistent) Gibbs chains."""

    name = "rbm"
    model_classes = {"model": BernoulliRBM}

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        return {"hidden": 256, "cd_k": 1, "persistent": False, "binarize": True, "sample_steps": 1000}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        if config.data.value_range != "0,1":
            raise ConfigError("an RBM models pixels as Bernoulli in [0, 1]: set data.value_range to '0,1'")
        if config.model.get("cd_k", 1) < 1:
            raise ConfigError("model.cd_k must be >= 1")

    def __init__(self, config: TrainConfig, info, models=None):
        super().__init__(config, info, models)
        self.chains: torch.Tensor | None = None  # persistent chains (PCD); restarted from data after a resume

    def build(self) -> dict[str, nn.Module]:
        """Fresh modules for this family."""
        return {"model": BernoulliRBM(list(self.info.image_shape), self.option("hidden"))}

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and values to log."""
        rbm = unwrap(self.models["model"])
        v = batch["input"].flatten(1).float()
        if self.option("binarize"):
            v = torch.bernoulli(v)
        rbm.track_base_rate(v)
        with torch.no_grad():
            start = v
            if self.option("persistent"):
                if self.chains is None or len(self.chains) != len(v):
                    self.chains = v.clone()
                start = self.chains
            negative, _ = rbm.gibbs(start, self.option("cd_k"))
            if self.option("persistent"):
                self.chains = negative
        # the gradient of this surrogate is the CD / PCD estimate of the log-likelihood gradient
        free = self.models["model"](torch.cat([v, negative])).float()
        loss = free[: len(v)].mean() - free[len(v):].mean()
        recon_error = F.mse_loss(rbm.reconstruct(v).flatten(1), v)
        return loss, {"recon_mse": recon_error.detach()}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics on one batch."""
        rbm = unwrap(self.models["model"])
        x = batch["image"]
        recon = rbm.reconstruct(x)
        return {"eval_loss": F.mse_loss(recon, x).item(), "eval_free_energy": rbm.free_energy(x).mean().item(),
                "eval_pseudo_nll": self.pseudo_nll(x).item()}

    @torch.no_grad()
    def pseudo_nll(self, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Exact pseudo-likelihood -sum_i log p(v_i | v_-i) over every pixel (binarised at 0.5), in nats: no sampled pixel, so
        no bias from flipping the same pixels in every batch."""
        rbm = unwrap(self.models["model"])
        v = (x.flatten(1) > 0.5).float()
        pre = v @ rbm.W + rbm.c  # (N, H)
        sign = 1 - 2 * v  # flipping pixel i adds sign_i * W_i to every hidden pre-activation
        total = torch.zeros(len(v), device=v.device)
        for start in range(0, v.shape[1], chunk):  # (N, pixels, H) in slices: bounded memory
            i = slice(start, start + chunk)
            flipped = pre[:, None, :] + sign[:, i, None] * rbm.W[i][None]
            # F(flipped) - F(v) = -sign_i b_i - sum_j [softplus(flipped_j) - softplus(pre_j)]
            delta = -sign[:, i] * rbm.b[i] - (F.softplus(flipped) - F.softplus(pre)[:, None, :]).sum(-1)
            total += -F.logsigmoid(delta).sum(1)  # log p(v_i | v_-i) = log sigmoid(F(flipped) - F(v))
        return total.mean()

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None, steps: int | None = None, **options: Any) -> torch.Tensor:
        """`n` new images in [0, 1]."""
        rbm = unwrap(self.models["model"])
        g = torch.Generator(rbm.W.device).manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        steps = self.option("sample_steps") if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return rbm.sample(n, steps, g)

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Reconstructions of 8 inputs, then Gibbs samples."""
        x = batch["image"][:8]
        rbm = unwrap(self.models["model"])
        return torch.cat([x, rbm.reconstruct(x), self.generate(self.config.num_samples, generator)]).clamp(0, 1), 8
