"""Distances between two sets of features: Fréchet distance, KID (unbiased) and CMMD, in float64.

The features come in already extracted (and, for real images, cached). Everything is computed in float64 with
deterministic operations, so the same features give the same figure whatever the thread count; the Fréchet distance
is torchmetrics' and pytorch-fid's formula (it equals torchmetrics' FID on the same features, a test checks), KID is
clean-fid's (cubic kernel, subsets of at most 1,000). The Fréchet distance is called FID only in Inception space.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0
KID_SUBSETS = 100  # clean-fid's defaults
KID_SUBSET_SIZE = 1000


def _moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of a feature set, float64."""
    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / max(1, len(x) - 1)


def frechet_from_moments(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

    The trace of the matrix square root comes from the eigenvalues of a symmetric matrix (S1^1/2 S2 S1^1/2), which
    `eigh` finds stably in float64: no complex parts to discard, unlike scipy's sqrtm of the non-symmetric S1 S2.
    """
    values, vectors = torch.linalg.eigh(sigma1)
    root = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root @ sigma2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N, D), in float64 (FID when the features are Inception's pool3)."""
    if len(real) < 2 or len(fake) < 2:
        raise ConfigError(f"a Fréchet distance needs at least 2 images per set, got {len(real)} and {len(fake)}")
    return frechet_from_moments(*_moments(real), *_moments(fake))


def _polynomial_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3 (Binkowski et al. 2018), float64."""
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
    """KID (unbiased MMD^2, cubic kernel): mean and std over `subsets` seeded subsets of min(subset_size, N) images per set.

    At N <= subset_size every subset is the whole set, so the score is the exact unbiased estimate (std 0), as in clean-fid.
    """
    x, y = real.double(), fake.double()
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ConfigError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    if size == len(x) == len(y):
        return _polynomial_mmd(x, y), 0.0
    generator = torch.Generator().manual_seed(seed)
    scores = torch.tensor([_polynomial_mmd(x[torch.randperm(len(x), generator=generator)[:size]], y[torch.randperm(len(y), generator=generator)[:size]])
                           for _ in range(subsets)], dtype=torch.float64)
    return float(scores.mean()), float(scores.std()) if subsets > 1 else 0.0


@torch.no_grad()
def fd_kid(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Fréchet distance and KID (mean and std over seeded subsets) between two feature sets (N, D), float64 throughout,
    on one thread (the same bits whatever the machine's thread count)."""
    from ..feature_nets import one_thread

    with one_thread():
        kid, kid_std = kernel_distance(real, fake)
        return {"fd": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std}


def _mean_kernel(a: torch.Tensor, b: torch.Tensor, gamma: float, chunk: int = 2048) -> float:
    """Mean of the Gaussian kernel over every pair (a_i, b_j), diagonal included (the CMMD estimator)."""
    total = sum(torch.exp(-gamma * torch.cdist(part, b).square()).sum().item() for part in a.split(chunk))
    return total / (len(a) * len(b))


def cmmd(real: torch.Tensor, fake: torch.Tensor) -> float:
    """CMMD (Jayasumana et al. 2024): MMD with a Gaussian kernel (sigma 10) between L2-normalised CLIP embeddings, x 1000."""
    x, y = nn.functional.normalize(real.double(), dim=1), nn.functional.normalize(fake.double(), dim=1)
    gamma = 1 / (2 * CMMD_SIGMA**2)
    return CMMD_SCALE * (_mean_kernel(x, x, gamma) + _mean_kernel(y, y, gamma) - 2 * _mean_kernel(x, y, gamma))
