"""k-NN metrics that separate fidelity from diversity, in any feature space.

Improved precision and recall (Kynkäänniemi et al. 2019, k = 3): the share of generated samples inside the real
manifold (the union of balls reaching each real sample's k-th nearest real neighbour), and the share of real samples
inside the generated one. Density and coverage (Naeem et al. 2020, k = 5): how many real balls hold a generated
sample on average (divided by k; above 1 when samples crowd the dense regions), and the share of real balls that hold
at least one. Distances are computed in chunks, so 10,000 x 10,000 pairs never sit in memory at once.
"""

from __future__ import annotations

import torch

from ..config import ConfigError

PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5
CHUNK = 1024


def knn_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour among the others."""
    if len(points) <= k:
        raise ConfigError(f"k-NN metrics with k = {k} need more than {k} images per set, got {len(points)}")
    return torch.cat([torch.cdist(chunk, points).kthvalue(k + 1, dim=1).values for chunk in points.split(CHUNK)])  # k + 1: itself at 0


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query, how many of the balls (centres, radii) hold it."""
    return torch.cat([(torch.cdist(chunk, centres) <= radii[None]).sum(1) for chunk in queries.split(CHUNK)])


def _nearest(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance from each query to its nearest point."""
    return torch.cat([torch.cdist(chunk, points).min(1).values for chunk in queries.split(CHUNK)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K) -> dict[str, float]:
    """Improved precision and recall of `fake` against `real` features (N, D)."""
    real, fake = real.double(), fake.double()
    precision = (_inside(fake, real, knn_radii(real, k)) > 0).double().mean().item()
    recall = (_inside(real, fake, knn_radii(fake, k)) > 0).double().mean().item()
    return {"precision": precision, "recall": recall}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = DENSITY_COVERAGE_K) -> dict[str, float]:
    """Density and coverage of `fake` against `real` features (N, D)."""
    real, fake = real.double(), fake.double()
    radii = knn_radii(real, k)
    density = _inside(fake, real, radii).double().mean().item() / k
    coverage = (_nearest(real, fake) <= radii).double().mean().item()
    return {"density": density, "coverage": coverage}


def prdc(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Precision and recall (k = 3) and density and coverage (k = 5), on one thread (distances that tie a radius do not
    flip with the thread count)."""
    from ..feature_nets import one_thread

    with one_thread():
        return {**precision_recall(real, fake), **density_coverage(real, fake)}
