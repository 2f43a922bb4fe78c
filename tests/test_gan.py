"""The class-conditional GAN: how G and D take the label at initialisation, and a short run of the shipped options that stays bounded."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from genkit.config import TrainConfig
from genkit.engine import train
from genkit.families.gan import Discriminator, GANFamily, Generator


@pytest.mark.parametrize("architecture,width", [("dcgan", 64), ("dcgan", 8), ("mlp", 64)])
def test_projection_term_starts_at_the_scale_of_the_unconditional_head(architecture, width):
    # nn.Embedding's N(0, 1) rows once made the class term ~160x the head's at width 64: first logits of +-50, hinge losses
    # in the hundreds and a generator that never left noise (issue #19)
    torch.manual_seed(0)
    D = Discriminator([1, 28, 28], architecture, width, num_classes=10, conditioning="projection")
    x, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    with torch.no_grad():
        h = D.features(x).flatten(1)
        head, projection = D.out(h).squeeze(1), (D.embed(labels) * h).sum(1)
    assert projection.std() < 3 * head.std() + 0.1
    assert D(x, labels).abs().max() < 5


def test_generator_draws_on_z_more_than_on_the_class_code_at_initialisation():
    # nn.Embedding's N(0, 1) class code beside N(0, 1) z: the generator ignored z and drew one digit per class (issue #19)
    torch.manual_seed(0)
    G = Generator([1, 28, 28], 64, "dcgan", 32, num_classes=10)
    assert G.embed.weight.pow(2).sum(1).mean() < 0.1 * G.latent_dim  # the class code's share of the input's squared norm
    with torch.no_grad():
        pre = G.net[:2]  # the 1x1 input map through the first transposed conv
        z, labels = torch.randn(200, 64), torch.arange(200) % 10
        by_z = pre(torch.cat([z, G.embed(labels[:1]).expand(200, -1)], 1)).var(0).mean()  # one class, z varies
        by_class = pre(torch.cat([z[:1].expand(200, -1), G.embed(labels)], 1)).var(0).mean()  # one z, classes vary
    assert by_z > 10 * by_class


def test_conditional_discriminator_sees_the_label_from_the_first_layer():
    # the shipped default: the label as a learned input channel (the reference conditional DCGAN) rather than a projection,
    # which trained far slower here: FD 360 vs 122 at 300 steps, the rest alike (issue #19)
    D = Discriminator([1, 28, 28], "dcgan", 8, num_classes=10, conditioning="channel")
    assert D.embed is None and D.features[0].in_channels == 2
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(D(x, torch.zeros(4, dtype=torch.long)), D(x, torch.ones(4, dtype=torch.long)))
    assert GANFamily.model_options()["d_conditioning"] == "channel"


def test_conditional_gan_losses_stay_bounded_on_a_short_run(tiny_idx, tmp_path):
    # the shipped cgan_mnist model options at a small width
    model = {**TrainConfig.load(Path(__file__).parents[1] / "training/configs/cgan_mnist.yaml").model, "latent_dim": 16, "width": 16}
    cfg = tiny_config(tiny_idx, tmp_path / "run", family="gan", data={"value_range": "-1,1"}, batch_size=32, max_steps=30, log_every=5,
                      model=model)
    train(cfg)
    rows = [r for r in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] if "discriminator_loss" in r]
    assert len(rows) == 6
    assert max(abs(r["discriminator_loss"]) for r in rows) < 4  # 2 (hinge) or 1.39 (BCE) at chance; the unscaled projection gave 20+
    assert max(abs(r["generator_loss"]) for r in rows) < 4


def test_reuse_fake_runs_the_generator_once_a_step(tiny_idx, tmp_path, monkeypatch):
    # the shipped cgan_mnist runs G once a step, as the reference does: a fresh fake for the G step cost ~30% more CPU a
    # step (issue #19); without the option, twice (the unconditional configs, unchanged)
    calls = []
    monkeypatch.setattr(Generator, "forward", lambda self, z, labels=None, f=Generator.forward: calls.append(torch.is_grad_enabled()) or f(self, z, labels))
    for reuse, expected in [(True, [True]), (False, [False, True])]:
        calls.clear()
        train(tiny_config(tiny_idx, tmp_path / str(reuse), family="gan", data={"value_range": "-1,1"}, batch_size=8, max_steps=2, eval_every=2,
                          model={"conditional": True, "width": 8, "latent_dim": 8, "reuse_fake": reuse}))
        assert calls[: 2 * len(expected)] == 2 * expected, reuse  # two steps; with grad only where G is trained through it
