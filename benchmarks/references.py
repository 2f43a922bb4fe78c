"""The reference recipes `peers.py` compares genkit with: plain torch / sklearn, written from their published recipes, nothing
of genkit's inside them except where a scoring method is borrowed (and said so).

Each recipe is cut into steps (`Recipe.step(i)` trains batch i) so that `peers.py` can take snapshots as the recipe's training
CPU time passes genkit's; `Recipe.model()` is what the evaluator scores at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genkit.data import binarize_fixed
from genkit.families.rbm import BernoulliRBM
from genkit.families.vae import VAE


@dataclass
class Recipe:
    """A reference training loop cut into steps: `step(i)` trains on batch i; `model()` is what the evaluator scores now."""

    step: Callable[[int], None]
    per_epoch: int
    model: Callable[[], Any]


def batches(n: int, batch_size: int) -> Callable[[int], torch.Tensor]:
    """Indices of batch `i`: a new permutation every epoch, the last partial batch dropped (as in the recipes' loaders)."""
    per_epoch, order = n // batch_size, {}

    def indices(i: int) -> torch.Tensor:
        epoch, k = divmod(i, per_epoch)
        if epoch not in order:
            order.clear()
            order[epoch] = torch.randperm(n)
        return order[epoch][k * batch_size : (k + 1) * batch_size]

    return indices


# ---- GAN: the PyTorch-examples DCGAN, and its conditional form --------------------------------------------------------


def dcgan(x01: torch.Tensor, labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 64, width: int = 32) -> Recipe:
    """The PyTorch-examples DCGAN (nz 100, BatchNorm in G and D, BCE, Adam 2e-4, beta1 0.5) at 28x28 (7 -> 14 -> 28).

    With `labels`, the usual conditional DCGAN: a 10-d label embedding concatenated to z in G, and the label as a second input
    channel of D (a learned 28x28 map per class); the rest of the recipe is unchanged.
    """
    torch.manual_seed(seed)
    nz, classes = 100, 0 if labels is None else int(labels.max()) + 1
    G = nn.Sequential(nn.ConvTranspose2d(nz + classes, width * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(width * 4), nn.ReLU(True),
                      nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(True),
                      nn.ConvTranspose2d(width * 2, 1, 4, 2, 1, bias=False), nn.Tanh())
    D = nn.Sequential(nn.Conv2d(1 + bool(classes), width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
                      nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True),
                      nn.Conv2d(width * 2, 1, 7, 1, 0, bias=False), nn.Flatten())
    for m in [*G.modules(), *D.modules()]:  # the recipe's weights_init
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    g_label, d_label = (nn.Embedding(classes, classes), nn.Embedding(classes, 28 * 28)) if classes else (None, None)
    g_params = [*G.parameters(), *(g_label.parameters() if classes else [])]
    d_params = [*D.parameters(), *(d_label.parameters() if classes else [])]
    opt_d = torch.optim.Adam(d_params, lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g_params, lr=2e-4, betas=(0.5, 0.999))
    data, order = x01 * 2 - 1, batches(len(x01), batch_size)

    def generate(n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        z = torch.randn(n, nz, generator=generator)
        if classes:
            z = torch.cat([z, g_label(class_labels)], 1)
        return G(z[:, :, None, None])

    def discriminate(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return D(x if y is None else torch.cat([x, d_label(y).view(-1, 1, 28, 28)], 1))

    def step(i: int) -> None:
        idx = order(i)
        real, y = data[idx], None if labels is None else labels[idx]
        fake = generate(len(real), None, y)
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        loss_d = F.binary_cross_entropy_with_logits(discriminate(real, y), ones) + \
            F.binary_cross_entropy_with_logits(discriminate(fake.detach(), y), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(discriminate(fake, y), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

    @torch.no_grad()
    def sampler(n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        G.eval()  # the recipe samples with batch norm's running statistics
        images = ((generate(n, generator, class_labels) + 1) / 2).clamp(0, 1)
        G.train()
        return images

    return Recipe(step, len(x01) // batch_size, lambda: sampler)


# ---- VAE: the course's Keras-style VAE ------------------------------------------------------------------------


class KerasVAE(nn.Module):
    """784-256-z encoder, z-256-784 decoder, ReLU, Bernoulli decoder: the Keras example's model, in torch."""

    def __init__(self, z: int = 16):
        super().__init__()
        self.hidden, self.mu, self.logvar = nn.Linear(784, 256), nn.Linear(256, z), nn.Linear(256, z)
        self.dec = nn.Sequential(nn.Linear(z, 256), nn.ReLU(), nn.Linear(256, 784))
        self.latent_dim = z

    def encode(self, x):
        h = F.relu(self.hidden(x.flatten(1)))
        return self.mu(h), self.logvar(h)

    def decode_params(self, z):
        return self.dec(z).view(-1, 1, 28, 28)

    def log_px_given_z(self, x, out):
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)

    log_weights, importance_nll = VAE.log_weights, VAE.importance_nll  # the same estimator as genkit's, not a copy


def keras_vae(x01: torch.Tensor, binarize: bool = True, seed: int = 0, batch_size: int = 128) -> Recipe:
    """The Keras-style VAE: summed BCE + KL, Adam 1e-3, batch 128, on dynamically binarized pixels."""
    torch.manual_seed(seed)
    model, order = KerasVAE(), batches(len(x01), batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x = x01[order(i)]
        x = torch.bernoulli(x) if binarize else x
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        loss = (-model.log_px_given_z(x, model.decode_params(z)) + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return Recipe(step, len(x01) // batch_size, lambda: model)


# ---- RBM: sklearn ---------------------------------------------------------------------------------------------------


def sklearn_rbm(x01: torch.Tensor, seed: int = 0, hidden: int = 256) -> Recipe:
    """sklearn's BernoulliRBM (its default learning rate 0.1 and batch 10), fed batch by batch through `partial_fit` in the
    order `fit` uses (even slices, no shuffling); `model()` copies it into a genkit RBM so that one evaluator scores both."""
    from sklearn.neural_network import BernoulliRBM as SkRBM

    sk = SkRBM(n_components=hidden, random_state=seed)
    x = binarize_fixed(x01, torch.arange(len(x01))).flatten(1).numpy().astype(np.float64)
    per_epoch = int(np.ceil(len(x) / sk.batch_size))
    edges = np.linspace(0, len(x), per_epoch + 1).astype(int)

    def step(i: int) -> None:
        k = i % per_epoch
        sk.partial_fit(x[edges[k] : edges[k + 1]])

    def model() -> BernoulliRBM:
        rbm = BernoulliRBM([1, 28, 28], hidden)
        with torch.no_grad():
            rbm.W.copy_(torch.from_numpy(sk.components_.T))
            rbm.b.copy_(torch.from_numpy(sk.intercept_visible_))
            rbm.c.copy_(torch.from_numpy(sk.intercept_hidden_))
        return rbm

    return Recipe(step, per_epoch, model)


# ---- diffusion: the diffusers tutorial loop --------------------------------------------------------------------------


def diffusers_tutorial(x01: torch.Tensor, epochs: float, preset: str, steps: int, seed: int = 0, batch_size: int = 128) -> Recipe:
    """The diffusers "train a diffusion model" loop (zero-padded to 32x32, epsilon MSE, AdamW 1e-4, cosine with 500 warm-up
    steps over `epochs`, no EMA) on a genkit UNet preset; samples by the stock DDIM scheduler at `steps`, cropped to 28x28.
    Past `epochs` the rate stays at the schedule's end (diffusers' cosine would climb again)."""
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from genkit.families.diffusion import PRESETS, build_unet

    torch.manual_seed(seed)
    model, noise_scheduler = build_unet(32, 1, **PRESETS[preset]), DDPMScheduler(num_train_timesteps=1000)
    data, order = F.pad(x01 * 2 - 1, (2, 2, 2, 2), value=-1.0), batches(len(x01), batch_size)
    total = int(epochs * (len(data) // batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = get_cosine_schedule_with_warmup(optimizer, 500, total)

    def step(i: int) -> None:
        clean = data[order(i)]
        noise, t = torch.randn_like(clean), torch.randint(0, 1000, (len(clean),))
        loss = F.mse_loss(model(noise_scheduler.add_noise(clean, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if i < total:
            schedule.step()
        optimizer.zero_grad()

    @torch.no_grad()
    def sampler(n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sampler = DDIMScheduler.from_config(noise_scheduler.config)
        sampler.set_timesteps(steps)
        images = []
        for chunk in range(0, n, 250):
            x = torch.randn(min(250, n - chunk), 1, 32, 32, generator=generator)
            for t in sampler.timesteps:
                x = sampler.step(model(x, t).sample, t, x).prev_sample
            images.append(((x[:, :, 2:30, 2:30] + 1) / 2).clamp(0, 1))
        return torch.cat(images)

    return Recipe(step, len(data) // batch_size, lambda: sampler)
