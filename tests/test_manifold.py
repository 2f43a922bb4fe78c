"""Precision / recall / density / coverage and CMMD: against the prdc package, and on sets small enough to work out by hand."""

import math

import numpy as np
import pytest
import torch

from genkit.config import ConfigError
from genkit.evaluation import cmmd, density_coverage, fd_kid, prdc, precision_recall


def test_prdc_matches_the_prdc_package_on_random_features():
    from prdc import compute_prdc

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g)
    fake = 0.8 * torch.randn(200, 16, generator=g) + 0.3  # overlapping but different: every score strictly between 0 and 1
    ours = prdc(real, fake)
    pr = compute_prdc(real.numpy(), fake.numpy(), nearest_k=3)
    dc = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    assert ours["precision"] == pytest.approx(pr["precision"]) and ours["recall"] == pytest.approx(pr["recall"])
    assert ours["density"] == pytest.approx(dc["density"]) and ours["coverage"] == pytest.approx(dc["coverage"])
    assert all(0 < ours[key] < 1 for key in ("precision", "recall", "coverage"))


def test_prdc_by_hand_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every real ball has radius 1
    fake = torch.tensor([[0.5], [10.0]])  # k = 1: both fake balls have radius 9.5
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}  # 0.5 lies in a real ball, 10 in none
    # 0.5 lies in the balls of 0 and 1, 10 in none: density (2 + 0) / 2 / k; reals 0 and 1 have a sample within 1, 2 and 3 not
    assert density_coverage(real, fake, k=1) == {"density": 1.0, "coverage": 0.5}


def test_identical_sets_score_one_and_far_apart_sets_zero():
    real = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    same = prdc(real, real.clone())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["density"] >= 1.0
    far = prdc(real, real + 100)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_too_few_images_for_k_is_a_clear_error():
    with pytest.raises(ConfigError, match="need more than 5 images"):
        density_coverage(torch.randn(5, 4), torch.randn(10, 4))


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(2)) * 3
    assert abs(fd_kid(features, features)["fd"]) < 1e-6
    assert fd_kid(features, features + 1)["fd"] == pytest.approx(16.0, rel=1e-6)  # a shift by 1 in each of 16 dimensions


def test_cmmd_by_hand():
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])  # normalised: e1 and e2, squared distance 2
    assert cmmd(x, y) == pytest.approx(1000 * (2 - 2 * math.exp(-2 / (2 * 10**2))))
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 8)))
    assert cmmd(points, points) == pytest.approx(0.0, abs=1e-9) and cmmd(points, points + 1) > 0
