"""genkit against compact reference recipes, family by family: same data, same epochs, same evaluator, one run.

References (plain torch / sklearn, written here from their published recipes, nothing of genkit's inside them):
- gan: the PyTorch-examples DCGAN (nz=100, ngf=ndf=32, BatchNorm in G and D, BCE, Adam 2e-4, beta1=0.5, batch 64), at 28x28.
- rbm: sklearn's `BernoulliRBM` (256 hidden units, its defaults otherwise) on binarized pixels.
- vae: the course's Keras-style VAE, 784-256-z (z=16), summed BCE + KL, Adam 1e-3, on dynamically binarized pixels.
- diffusion: the diffusers tutorial loop (epsilon MSE, AdamW 1e-4, cosine with warm-up, no EMA) on the same UNet preset,
  both sampled with DDIM at `--sample-steps`.

Evaluator: FID in genkit's classifier feature space against the MNIST test split (and, where it is defined, the test
log-likelihood: IW-NLL k=`--nll-k` for the VAEs, AIS for the RBMs), the same code for both columns. Prints a table with
genkit / reference ratios (below 1 is better for FID and NLL).

    python benchmarks/peers.py --data-dir ../shared/data/mnist                # each family at its budget below
    python benchmarks/peers.py --data-dir ../shared/data/mnist --families gan --epochs 5

Budgets (epochs, the same for both columns; `--epochs` sets one for all): GAN 2, VAE 10 (its cosine schedule and the
IWAE bound are sized for long runs: at 2 epochs the reference is ahead), RBM 2, diffusion 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genkit.config import DataConfig, TrainConfig
from genkit.data import binarize_fixed, load_split
from genkit.engine import train
from genkit.evaluation import feature_distances, get_classifier, real_pair
from genkit.families.rbm import BernoulliRBM
from genkit.families.vae import VAE
from genkit.runs import load_family

CONFIGS = Path(__file__).parents[1] / "training" / "configs"
EPOCHS = {"gan": 2, "vae": 10, "rbm": 2, "diffusion": 1}


def mnist(data_dir: str, split: str = "train") -> torch.Tensor:
    """MNIST as float images in [0, 1], (N, 1, 28, 28)."""
    return load_split(DataConfig(source="mnist", data_dir=data_dir), split).images.float() / 255


def fid(fake01: torch.Tensor, data_dir: str, n: int) -> float:
    """FID of `fake01` against the first `n` test images, in genkit's classifier features."""
    data = DataConfig(source="mnist", data_dir=data_dir)
    real, _ = real_pair(data, n)
    return feature_distances(real, fake01[:n].cpu(), get_classifier(data))["fid"]


def run_genkit(config_name: str, data_dir: str, epochs: float, out: Path, **overrides) -> tuple[object, float]:
    """Train a shipped config for `epochs`; the loaded family and the training seconds."""
    config = TrainConfig.load(CONFIGS / config_name).with_overrides([f"{k}={v}" for k, v in overrides.items()])
    config.data.data_dir, config.epochs, config.output_dir = data_dir, epochs, str(out)
    config.log_with, config.progress_bar = "none", False
    started = time.perf_counter()
    train(config, overwrite=True)
    return load_family(str(out)), time.perf_counter() - started


# ---- GAN: PyTorch-examples DCGAN ---------------------------------------------------------------------------


def reference_gan(x01: torch.Tensor, epochs: float, n: int, seed: int = 0, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """The PyTorch-examples DCGAN recipe (its default batch of 64) at 28x28 (7 -> 14 -> 28); n samples in [0, 1] and training seconds."""
    torch.manual_seed(seed)
    nz, ngf, ndf = 100, 32, 32
    G = nn.Sequential(nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
                      nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                      nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False), nn.Tanh())
    D = nn.Sequential(nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
                      nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
                      nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False), nn.Flatten())
    for m in [*G.modules(), *D.modules()]:  # the recipe's weights_init
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = x01 * 2 - 1
    per_epoch = len(data) // batch_size
    started = time.perf_counter()
    for step in range(int(epochs * per_epoch)):
        if step % per_epoch == 0:
            order = torch.randperm(len(data))
        real = data[order[step % per_epoch * batch_size :][:batch_size]]
        fake = G(torch.randn(len(real), nz, 1, 1))
        loss_d = F.binary_cross_entropy_with_logits(D(real), torch.ones(len(real), 1)) + \
            F.binary_cross_entropy_with_logits(D(fake.detach()), torch.zeros(len(real), 1))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), torch.ones(len(real), 1))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    seconds = time.perf_counter() - started
    G.eval()
    with torch.no_grad():
        return ((G(torch.randn(n, nz, 1, 1)) + 1) / 2).clamp(0, 1), seconds


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


def reference_vae(x01: torch.Tensor, epochs: float, binarize: bool, seed: int = 0) -> tuple[nn.Module, float]:
    """Train the Keras-style VAE (summed BCE + KL, Adam 1e-3, batch 128); returns the model and seconds."""
    torch.manual_seed(seed)
    model = KerasVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    per_epoch = len(x01) // 128
    for step in range(int(epochs * per_epoch)):
        if step % per_epoch == 0:
            order = torch.randperm(len(x01))
        x = x01[order[step % per_epoch * 128 :][:128]]
        x = torch.bernoulli(x) if binarize else x
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        loss = (-model.log_px_given_z(x, model.decode_params(z)) + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), time.perf_counter() - started


def vae_nll(model: nn.Module, test01: torch.Tensor, k: int) -> float:
    """IW-NLL in nats with k samples, the same estimator (genkit's VAE.importance_nll) for either model."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return torch.cat([model.importance_nll(x, k, g) for x in test01.split(max(1, 50_000 // k))]).mean().item()


# ---- RBM: sklearn ---------------------------------------------------------------------------------------------------


def reference_rbm(x01: torch.Tensor, epochs: int, seed: int = 0) -> tuple[BernoulliRBM, float]:
    """sklearn's BernoulliRBM (256 hidden, its default learning rate 0.1 and batch 10), copied into a genkit RBM to score it."""
    from sklearn.neural_network import BernoulliRBM as SkRBM

    sk = SkRBM(n_components=256, n_iter=max(1, int(epochs)), random_state=seed)
    started = time.perf_counter()
    sk.fit(binarize_fixed(x01, torch.arange(len(x01))).flatten(1).numpy())
    rbm = BernoulliRBM([1, 28, 28], 256)
    with torch.no_grad():
        rbm.W.copy_(torch.from_numpy(sk.components_.T))
        rbm.b.copy_(torch.from_numpy(sk.intercept_visible_))
        rbm.c.copy_(torch.from_numpy(sk.intercept_hidden_))
    return rbm, time.perf_counter() - started


def rbm_scores(rbm: BernoulliRBM, train01: torch.Tensor, test01: torch.Tensor, data_dir: str, n: int, betas: int) -> dict:
    """AIS test log-likelihood and FID of Gibbs samples (1,000 steps), for either RBM."""
    rate = train01.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3)
    log_z, _ = rbm.ais_log_partition(torch.log(rate) - torch.log1p(-rate), 100, betas, torch.Generator().manual_seed(0))
    test = binarize_fixed(test01, torch.arange(len(test01))).flatten(1)
    samples = rbm.sample(n, 1000, torch.Generator().manual_seed(0))
    return {"log_likelihood": rbm.log_likelihood(test, log_z).mean().item(), "fid": fid(samples, data_dir, n)}


# ---- diffusion: the diffusers tutorial loop --------------------------------------------------------------------------


def reference_diffusion(x01: torch.Tensor, epochs: float, n: int, preset: str, steps: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """The diffusers "train a diffusion model" loop (zero-padded to 32x32, epsilon MSE, AdamW 1e-4, cosine with 500 warm-up steps,
    no EMA) on the same UNet preset; n samples by the stock DDIM scheduler (its default clipping), cropped back to 28x28."""
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from genkit.families.diffusion import PRESETS, build_unet

    torch.manual_seed(seed)
    model, noise_scheduler = build_unet(32, 1, **PRESETS[preset]), DDPMScheduler(num_train_timesteps=1000)
    data = F.pad(x01 * 2 - 1, (2, 2, 2, 2), value=-1.0)
    per_epoch, total = len(data) // 128, int(epochs * (len(data) // 128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = get_cosine_schedule_with_warmup(optimizer, 500, total)
    started = time.perf_counter()
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(len(data))
        clean = data[order[step % per_epoch * 128 :][:128]]
        noise, t = torch.randn_like(clean), torch.randint(0, 1000, (len(clean),))
        loss = F.mse_loss(model(noise_scheduler.add_noise(clean, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    sampler = DDIMScheduler.from_config(noise_scheduler.config)
    sampler.set_timesteps(steps)
    images, g = [], torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for chunk in range(0, n, 250):
            x = torch.randn(min(250, n - chunk), 1, 32, 32, generator=g)
            for t in sampler.timesteps:
                x = sampler.step(model(x, t).sample, t, x).prev_sample
            images.append(((x[:, :, 2:30, 2:30] + 1) / 2).clamp(0, 1))
    return torch.cat(images), seconds


# ---- driver ---------------------------------------------------------------------------------------------------------


def main() -> None:
    """Train both sides of each family, score them with one evaluator, print the ratio table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--families", nargs="+", default=["gan", "vae", "rbm", "diffusion"], choices=["gan", "vae", "rbm", "diffusion"])
    parser.add_argument("--preset", default="tiny", help="UNet preset of both diffusion models")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for both diffusion models")
    parser.add_argument("--epochs", type=float, default=None, help="one budget for every family (default: EPOCHS)")
    parser.add_argument("--num-samples", type=int, default=1000, help="images per FID")
    parser.add_argument("--nll-k", type=int, default=1000)
    parser.add_argument("--ais-betas", type=int, default=14_500)
    args = parser.parse_args()
    train01, test01 = mnist(args.data_dir), mnist(args.data_dir, "test")
    epochs = {name: args.epochs or budget for name, budget in EPOCHS.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "gan" in args.families:
            fake, ref_s = reference_gan(train01, epochs["gan"], args.num_samples)
            family, ours_s = run_genkit("dcgan_mnist.yaml", args.data_dir, epochs["gan"], Path(tmp) / "gan")
            ours = family.generate(args.num_samples, torch.Generator().manual_seed(0))
            rows.append(("gan: DCGAN (PyTorch examples)", epochs["gan"], "FID", fid(fake, args.data_dir, args.num_samples),
                         fid(ours, args.data_dir, args.num_samples), ref_s, ours_s))
        if "diffusion" in args.families:
            fake, ref_s = reference_diffusion(train01, epochs["diffusion"], args.num_samples, args.preset, args.sample_steps)
            family, ours_s = run_genkit("diffusion_mnist.yaml", args.data_dir, epochs["diffusion"], Path(tmp) / "diffusion", **{"model.preset": args.preset})
            g = torch.Generator().manual_seed(0)
            ours = torch.cat([family.generate(len(c), g, scheduler="ddim", steps=args.sample_steps) for c in torch.arange(args.num_samples).split(250)])
            rows.append((f"diffusion: diffusers tutorial loop, `{args.preset}` UNet, DDIM {args.sample_steps} steps", epochs["diffusion"], "FID",
                         fid(fake, args.data_dir, args.num_samples), fid(ours, args.data_dir, args.num_samples), ref_s, ours_s))
        if "vae" in args.families:
            test_bin = binarize_fixed(test01, torch.arange(len(test01)))[:1000]
            ref, ref_s = reference_vae(train01, epochs["vae"], binarize=True)
            family, ours_s = run_genkit("vae_binarized_mnist.yaml", args.data_dir, epochs["vae"], Path(tmp) / "vae")
            rows.append((f"vae: Keras-style 784-256-16 (dynamic binarization), IW-NLL k={args.nll_k} (nats)", epochs["vae"], "NLL",
                         vae_nll(ref, test_bin, args.nll_k), vae_nll(family.models["model"], test_bin, args.nll_k), ref_s, ours_s))
        if "rbm" in args.families:
            ref, ref_s = reference_rbm(train01, int(epochs["rbm"]))
            family, ours_s = run_genkit("rbm_mnist.yaml", args.data_dir, int(epochs["rbm"]), Path(tmp) / "rbm")
            a = rbm_scores(ref, train01, test01, args.data_dir, args.num_samples, args.ais_betas)
            b = rbm_scores(family.models["model"], train01, test01, args.data_dir, args.num_samples, args.ais_betas)
            rows.append(("rbm: sklearn BernoulliRBM, AIS test log-likelihood (nats)", epochs["rbm"], "-LL",
                         -a["log_likelihood"], -b["log_likelihood"], ref_s, ours_s))
            rows.append(("rbm: Gibbs samples", epochs["rbm"], "FID", a["fid"], b["fid"], ref_s, ours_s))
    floor = fid(train01[: args.num_samples], args.data_dir, args.num_samples)  # what reproducing the training images scores
    print(f"\nMNIST, FID on {args.num_samples} samples in genkit's classifier features (training-data "
          f"floor {floor:.1f}); lower is better\n")
    print("| family / reference | epochs | metric | reference | genkit | genkit / reference | train s: reference / genkit |")
    print("|---|---|---|---|---|---|---|")
    for name, budget, metric, ref, ours, ref_s, ours_s in rows:
        print(f"| {name} | {budget:g} | {metric} | {ref:.2f} | {ours:.2f} | **{ours / ref:.2f}** | {ref_s:.0f} / {ours_s:.0f} |")


if __name__ == "__main__":
    main()
