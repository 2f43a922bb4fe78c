"""The class-conditional GAN: the projection discriminator's scale at initialisation, and a short run that stays bounded."""

import json

import pytest
import torch
from conftest import tiny_config

from genkit.engine import train
from genkit.families.gan import Discriminator


@pytest.mark.parametrize("architecture,width", [("dcgan", 64), ("dcgan", 8), ("mlp", 64)])
def test_projection_term_starts_at_the_scale_of_the_unconditional_head(architecture, width):
    # nn.Embedding's N(0, 1) rows once made the class term ~160x the head's at width 64: first logits of +-50, hinge losses
    # in the hundreds and a generator that never left noise (issue #19)
    torch.manual_seed(0)
    D = Discriminator([1, 28, 28], architecture, width, num_classes=10)
    x, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    with torch.no_grad():
        h = D.features(x).flatten(1)
        head, projection = D.out(h).squeeze(1), (D.embed(labels) * h).sum(1)
    assert projection.std() < 3 * head.std() + 0.1
    assert D(x, labels).abs().max() < 5


def test_conditional_gan_losses_stay_bounded_on_a_short_run(tiny_idx, tmp_path):
    # the shipped cgan_mnist model options (hinge loss, projection D) at a small width
    cfg = tiny_config(tiny_idx, tmp_path / "run", family="gan", data={"value_range": "-1,1"}, batch_size=32, max_steps=30, log_every=5,
                      model={"architecture": "dcgan", "conditional": True, "latent_dim": 16, "width": 16, "loss": "hinge"})
    train(cfg)
    rows = [r for r in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] if "discriminator_loss" in r]
    assert len(rows) == 6
    assert max(abs(r["discriminator_loss"]) for r in rows) < 4  # hinge: 2 at chance; the unscaled projection gave 20+
    assert max(abs(r["generator_loss"]) for r in rows) < 4
