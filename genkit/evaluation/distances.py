"""Distances between two sets of features: Fréchet distance and KID (torchmetrics), and CMMD.

The features come in already extracted (and, for real images, cached), so torchmetrics' metrics get a pass-through
"extractor": the numbers are torchmetrics' own, whatever space the features live in.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0
KID_SUBSETS = 20


class _Given(nn.Module):
    """Features in, the same features out: torchmetrics' FID/KID on features computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The features themselves."""
        return features


@torch.no_grad()
def fid_kid(real: torch.Tensor, fake: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Fréchet distance and KID (mean and std over seeded subsets) between two feature sets (N, D)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = min(len(real), len(fake), 1000)
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    with warnings.catch_warnings():  # "will save all extracted features": these are the features, already in memory
        warnings.filterwarnings("ignore", message=".*save all extracted features")
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subset_size=max(2, subset // 2), subsets=KID_SUBSETS)
    for metric in (fid, kid):
        for features, is_real in ((real, True), (fake, False)):
            for part in features.split(chunk):
                metric.update(part, real=is_real)
    with torch.random.fork_rng(devices=[]):  # KID's random subsets, seeded: the same images give the same score
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def _mean_kernel(a: torch.Tensor, b: torch.Tensor, gamma: float, chunk: int = 2048) -> float:
    """Mean of the Gaussian kernel over every pair (a_i, b_j), diagonal included (the CMMD estimator)."""
    total = sum(torch.exp(-gamma * torch.cdist(part, b).square()).sum().item() for part in a.split(chunk))
    return total / (len(a) * len(b))


def cmmd(real: torch.Tensor, fake: torch.Tensor) -> float:
    """CMMD (Jayasumana et al. 2024): MMD with a Gaussian kernel (sigma 10) between L2-normalised CLIP embeddings, x 1000."""
    x, y = nn.functional.normalize(real.double(), dim=1), nn.functional.normalize(fake.double(), dim=1)
    gamma = 1 / (2 * CMMD_SIGMA**2)
    return CMMD_SCALE * (_mean_kernel(x, x, gamma) + _mean_kernel(y, y, gamma) - 2 * _mean_kernel(x, y, gamma))
