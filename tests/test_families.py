"""Every shipped config trains from the CLI on tiny data and loads back; each family's own maths is checked."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from genkit.cli import main
from genkit.config import ConfigError, DataConfig, TrainConfig
from genkit.engine import train
from genkit.families import DataInfo
from genkit.families.autoencoder import (
    AutoencoderFamily,
    ConvAutoencoder,
    MLPAutoencoder,
)
from genkit.families.gan import Discriminator, Generator
from genkit.families.rbm import BernoulliRBM
from genkit.families.vae import VAE
from genkit.runs import load_family

CONFIGS = sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_trains_and_loads(config, tiny_idx, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [f"data.data_dir={tiny_idx}", "max_steps=3", "batch_size=16", "eval_batches=1", "num_samples=4", "log_with=none",
                 "progress_bar=false", "checkpoint_every=3", "model.sample_steps=2" if "diffusion" in config.stem or "rbm" in config.stem else "seed=0"]
    if "diffusion" in config.stem or "meanflow" in config.stem:
        overrides.append("model.preset=tiny")
    if "init_from:" in config.read_text():  # a run it fine-tunes (MeanFlow from a flow run: tests/test_mean_flow.py covers that path)
        overrides.append("init_from=null")
    if "source: runs/" in config.read_text():  # reflow pairs a README command makes (tests/test_reflow.py trains this config on pairs)
        overrides.append("data.source=mnist")
    assert main(["train", "--config", str(config), "--output-dir", str(out), "--set", *overrides]) == 0, capsys.readouterr().err
    family = load_family(str(out))
    assert family.config == TrainConfig.load(out)
    generator = torch.Generator().manual_seed(0)
    model = family.models.get("model")
    if model is not None and hasattr(model, "reconstruct"):
        x = torch.rand(3, 1, 28, 28)
        assert model.reconstruct(x).shape == (3, 1, 28, 28)
    if family.name in ("vae", "gan", "rbm", "diffusion"):
        images = family.generate(3, generator, steps=2) if family.name in ("rbm", "diffusion") else family.generate(3, generator)
        assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


def test_models_round_trip_through_from_pretrained(tmp_path):
    for model in [MLPAutoencoder(hidden_dims=[16, 4], linear=True), ConvAutoencoder(latent_dim=8, width=8),
                  VAE(latent_dim=2, architecture="conv", width=8, decoder="gaussian"),
                  Generator(latent_dim=8, width=8, num_classes=10), Discriminator(width=8, num_classes=10), BernoulliRBM(hidden=16)]:
        path = tmp_path / type(model).__name__
        model.save_pretrained(path)
        loaded = type(model).from_pretrained(str(path))
        assert json.loads((path / "config.json").read_text()) and (path / "model.safetensors").is_file()
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name


def test_contractive_penalty_estimates_the_jacobian_norm():
    config = TrainConfig.from_dict({"model": {"hidden_dims": [6], "linear": True, "loss": "mse", "contractive_weight": 1.0}})
    family = AutoencoderFamily(config, DataInfo(1, 4, ["a"]))
    weight = family.models["model"].encoder[0].weight
    exact = weight.pow(2).sum().item()  # a linear encoder's Jacobian is W
    x = torch.rand(4096, 1, 4, 4)
    _, logs = family.loss("model", {"input": x, "image": x})
    assert abs(logs["contractive"].item() - exact) / exact < 0.1


def test_kl_sparsity_drives_activations_to_the_target(tiny_idx, tmp_path):
    train(tiny_config(tiny_idx, tmp_path / "run", model={"hidden_dims": [128], "sparsity": "kl", "sparsity_weight": 1.0, "sparsity_target": 0.05},
                      max_steps=80, learning_rate=3e-3))
    model = load_family(str(tmp_path / "run")).models["model"]
    from genkit.config import DataConfig
    from genkit.data import load_split

    data = load_split(DataConfig(data_dir=str(tiny_idx)), "test")
    mean_activation = model.encode(data.images.float() / 255).mean().item()
    assert mean_activation < 0.12


def test_vae_bounds_grid_and_interpolation():
    torch.manual_seed(0)
    vae = VAE(latent_dim=2, hidden_dims=[32])
    x = (torch.rand(16, 1, 28, 28) > 0.7).float()
    elbo = -vae(x)["loss"].mean()
    nll = vae.importance_nll(x, k=64).mean()
    assert nll <= -elbo + 1.0  # the importance-weighted bound is at least as tight as the ELBO
    assert vae.latent_grid(5).shape == (25, 1, 28, 28)
    assert vae.interpolate(x[0], x[1], 6).shape == (6, 1, 28, 28)
    with pytest.raises(ValueError, match="latent_dim=2"):
        VAE(latent_dim=3).latent_grid()


def test_rbm_surrogate_gives_the_contrastive_divergence_gradient():
    torch.manual_seed(0)
    rbm = BernoulliRBM(image_shape=[1, 2, 3], hidden=4)
    v_data, v_model = (torch.rand(8, 6) > 0.5).float(), (torch.rand(8, 6) > 0.5).float()
    (rbm.free_energy(v_data).mean() - rbm.free_energy(v_model).mean()).backward()
    h_data, h_model = rbm.hidden_probs(v_data), rbm.hidden_probs(v_model)
    expected = -(v_data.t() @ h_data - v_model.t() @ h_model) / 8  # descent direction of the log-likelihood estimate
    torch.testing.assert_close(rbm.W.grad, expected.detach(), rtol=1e-5, atol=1e-6)


def test_gan_r1_and_conditional_labels(tiny_idx, tmp_path):
    cfg = tiny_config(tiny_idx, tmp_path / "run", family="gan", data={"value_range": "-1,1"},
                      model={"conditional": True, "width": 8, "latent_dim": 8, "r1_gamma": 10.0}, max_steps=4, ema_decay=0.9)
    train(cfg)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert any("discriminator_r1" in row and row["discriminator_r1"] > 0 for row in history)
    family = load_family(str(tmp_path / "run"))
    images = family.generate(4, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 1, 28, 28)
    assert set(p.name for p in (tmp_path / "run").iterdir()) >= {"generator", "discriminator"}


def test_dcgan_is_the_pytorch_examples_recipe_and_batch_norm_sees_real_and_fake_apart(tiny_idx, tmp_path, monkeypatch):
    G, D = Generator([1, 28, 28], 100, "dcgan", 32), Discriminator([1, 28, 28], "dcgan", 32)
    assert sum(p.numel() for p in G.parameters()) == 759_680  # nz=100, ngf=32: 100x128x7x7 + 128x64x4x4 + 64x1x4x4 + BN
    assert G(torch.randn(3, 100)).shape == (3, 1, 28, 28) and D(torch.randn(3, 1, 28, 28)).shape == (3,)
    sizes = []
    monkeypatch.setattr(Discriminator, "forward", lambda self, x, labels=None, f=Discriminator.forward: sizes.append(len(x)) or f(self, x, labels))
    for norm, expected in [("batch", [8, 8, 8]), ("none", [16, 8])]:  # D step (real, fake), then G step
        sizes.clear()
        train(tiny_config(tiny_idx, tmp_path / norm, family="gan", data={"value_range": "-1,1"}, batch_size=8,
                          model={"width": 8, "latent_dim": 8, "d_norm": norm}, max_steps=1))
        assert sizes[:len(expected)] == expected, norm


def test_exported_ema_generator_gets_batch_norm_statistics_of_its_own_weights(tiny_idx, tmp_path):
    train(tiny_config(tiny_idx, tmp_path / "run", family="gan", data={"value_range": "-1,1"}, model={"width": 8, "latent_dim": 8},
                      max_steps=6, ema_decay=0.5))
    G = load_family(str(tmp_path / "run")).models["generator"]
    first_conv, first_norm = G.net[1], G.net[2]
    with torch.no_grad():
        pre = first_conv(torch.randn(20_000, 8, 1, 1, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(first_norm.running_mean, pre.mean((0, 2, 3)), atol=0.01, rtol=0.05)
    torch.testing.assert_close(first_norm.running_var, pre.var((0, 2, 3)), atol=0.01, rtol=0.05)


def test_bad_family_options_are_named(tiny_idx, tmp_path):
    for family, model, data, match in [("vae", {"decoder": "poisson"}, {}, "model.decoder"), ("gan", {}, {}, "value_range"),
                                       ("gan", {"loss": "wasserstein"}, {"value_range": "-1,1"}, "model.loss"),
                                       ("gan", {"d_norm": "layer"}, {"value_range": "-1,1"}, "model.d_norm"),
                                       ("autoencoder", {"sparsity": "l2"}, {}, "model.sparsity"), ("rbm", {"cd_k": 0}, {}, "cd_k")]:
        with pytest.raises(ConfigError, match=match):
            train(tiny_config(tiny_idx, tmp_path / family, family=family, model=model, data=data))


def test_eval_reports_pca_baseline_and_anomaly_auroc(tiny_idx, tmp_path, capsys):
    cfg = tiny_config(tiny_idx, tmp_path / "run", model={"hidden_dims": [64, 8]}, data={"exclude_labels": [9]}, max_steps=150,
                      learning_rate=3e-3, eval_every=50, checkpoint_every=150)
    train(cfg)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["num_images"] == 64 and "pca8_mse" in result and result["mse"] > 0
    assert result["anomaly_auroc"] > 0.7  # the unseen class (a bar at an unseen height) reconstructs worse
    assert main(["analyze", str(tmp_path / "run"), "--num-images", "64"]) == 0
    report = json.loads((tmp_path / "run" / "analysis.json").read_text())
    assert set(report["clustering"]) == {"kmeans", "hierarchical", "dbscan"} and (tmp_path / "run" / "latents.png").is_file()
    for key in ["pca_clustering", "ica_clustering"]:
        assert set(report[key]) == {"kmeans", "hierarchical", "dbscan"}
    assert 1 <= report["ica_components"] <= 8 and 0 <= report["som"]["unit_purity"] <= 1 and report["som"]["units"] == 100
    assert (tmp_path / "run" / "som.png").is_file()


def test_linear_autoencoder_compared_with_pca(tmp_path):
    from genkit.latents import pca_baseline, subspace_angles_to_pca

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(500, 3)) @ rng.normal(size=(3, 20)) * 0.1 + 0.5).clip(0, 1)
    mse, pca = pca_baseline(data[:400], data[400:], 3)
    assert mse < 1e-3
    assert subspace_angles_to_pca(pca.components_.T, pca).max() < 1e-3


def test_linear_autoencoder_cannot_beat_pca_on_its_training_data(tiny_idx, tmp_path):
    from genkit.config import DataConfig
    from genkit.data import load_split
    from genkit.latents import pca_baseline, to_flat

    train(tiny_config(tiny_idx, tmp_path / "lin", model={"hidden_dims": [8], "linear": True, "loss": "mse"}, max_steps=300,
                      learning_rate=3e-3, eval_every=300, checkpoint_every=300))
    model = load_family(str(tmp_path / "lin")).models["model"]
    data = load_split(DataConfig(data_dir=str(tiny_idx)), "train")
    flat = to_flat(data)
    pca_mse, _ = pca_baseline(flat, flat, 8)
    ae_mse = (model.reconstruct(torch.from_numpy(flat).view(-1, 1, 28, 28)).flatten(1).numpy() - flat).__pow__(2).mean()
    assert 0.95 * pca_mse <= ae_mse < 3 * pca_mse  # PCA is the optimum among rank-8 linear maps; the AE gets close
    with pytest.raises(ConfigError, match="set model.loss to 'mse'"):
        train(tiny_config(tiny_idx, tmp_path / "bad", model={"hidden_dims": [8], "linear": True}))


def test_rbm_tracks_the_training_pixel_rates_and_starts_its_chains_from_them(tiny_idx, tmp_path, monkeypatch):
    from genkit.data import load_split

    train(tiny_config(tiny_idx, tmp_path / "run", family="rbm", model={"hidden": 16, "persistent": True}, max_steps=6, batch_size=64))
    rbm = load_family(str(tmp_path / "run")).models["model"]
    pixels = load_split(DataConfig(source="mnist", data_dir=str(tiny_idx)), "train").images.float().flatten(1) / 255
    assert rbm.base_count.item() == 6 and (rbm.base_rate - pixels.mean(0)).abs().max() < 0.1  # 6 binarized batches of 64
    starts = []
    monkeypatch.setattr(BernoulliRBM, "gibbs", lambda self, v, k, generator=None: starts.append(v) or (v, v))
    rbm.sample(2000, 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(starts[0].mean(0), rbm.base_rate, atol=0.05, rtol=0)


def test_rbm_pseudo_likelihood_is_exact():
    import math

    import torch.nn.functional as F

    from genkit.config import TrainConfig
    from genkit.families.base import DataInfo
    from genkit.families.rbm import BernoulliRBM, RBMFamily

    torch.manual_seed(0)
    rbm = BernoulliRBM([1, 3, 3], hidden=4)
    with torch.no_grad():
        for p in rbm.parameters():
            p.normal_()
    family = RBMFamily(TrainConfig(family="rbm"), DataInfo(1, 3, ["0"]), {"model": rbm})
    x = (torch.rand(5, 1, 3, 3) > 0.5).float()
    expected = 0.0
    for v in x.flatten(1):  # by definition: each pixel's conditional from the two free energies
        for i in range(9):
            other = v.clone()
            other[i] = 1 - other[i]
            expected += -F.logsigmoid(rbm.free_energy(other[None]) - rbm.free_energy(v[None])).item()
    assert family.pseudo_nll(x, chunk=4).item() == pytest.approx(expected / 5, rel=1e-5)
    assert family.pseudo_nll(x).item() == family.pseudo_nll(x).item() and not math.isnan(expected)


def test_rbm_exact_log_partition_matches_brute_force():
    import itertools

    from genkit.families.rbm import BernoulliRBM

    torch.manual_seed(0)
    rbm = BernoulliRBM([1, 2, 3], hidden=4)
    with torch.no_grad():
        rbm.W.normal_(0, 1.0), rbm.b.normal_(0, 1.0), rbm.c.normal_(0, 1.0)
    energies = []
    for bits in itertools.product([0.0, 1.0], repeat=10):
        v, h = torch.tensor(bits[:6]).double(), torch.tensor(bits[6:]).double()
        energies.append(v @ rbm.b.double() + h @ rbm.c.double() + v @ rbm.W.double() @ h)
    assert abs(rbm.exact_log_partition() - torch.logsumexp(torch.stack(energies), 0).item()) < 1e-9


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_rbm_ais_estimates_the_exact_log_partition(scale):
    from genkit.families.rbm import BernoulliRBM

    torch.manual_seed(1)
    rbm = BernoulliRBM([1, 8, 8], hidden=12)  # 64 visible units, 12 hidden: exact log Z by enumerating 4,096 states
    with torch.no_grad():
        rbm.W.normal_(0, scale / 4), rbm.b.normal_(-0.5, 0.5), rbm.c.normal_(0, 0.5)
    exact = rbm.exact_log_partition()
    estimate, stderr = rbm.ais_log_partition(rbm.b.detach(), runs=200, betas=2000, generator=torch.Generator().manual_seed(0))
    assert abs(estimate - exact) < max(0.05, 3 * stderr), (estimate, exact, stderr)
    assert stderr < 0.05
    crude, _ = rbm.ais_log_partition(torch.zeros(64), runs=5, betas=3, generator=torch.Generator().manual_seed(0))
    assert crude != estimate  # the estimate comes from the chains, not from the reference


def test_rbm_eval_reports_an_ais_log_likelihood(tiny_idx, tmp_path, monkeypatch):
    from genkit import evaluation

    train(tiny_config(tiny_idx, tmp_path / "rbm", family="rbm", model={"hidden": 16}, max_steps=4))
    family = load_family(str(tmp_path / "rbm"))
    result = evaluation.evaluate_rbm_likelihood(family, num_images=32, runs=50, betas=3000)
    exact = family.models["model"].exact_log_partition()
    assert abs(result["ais_log_z"] - exact) < 0.5 and result["likelihood_images"] == 32
    assert result["test_log_likelihood"] < 0  # a probability of a binary image


def test_binarization_dynamic_fixed_and_evaluation():
    from genkit.config import DataConfig
    from genkit.data import ImageTensors, binarize_fixed, make_batch

    data = ImageTensors((torch.rand(64, 1, 8, 8) * 255).to(torch.uint8), torch.zeros(64, dtype=torch.long), ["x"])
    grey = data.images.float() / 255
    index = torch.arange(64)
    dynamic = DataConfig(image_size=8, binarize="dynamic")
    a, b = (make_batch(data, index, dynamic, augment=True)["image"] for _ in range(2))
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)  # a new draw each time an image is seen
    assert abs(a.mean().item() - grey.mean().item()) < 0.02
    evaluation = make_batch(data, index, dynamic)["image"]  # evaluation batches: one fixed draw per image
    assert torch.equal(evaluation, make_batch(data, index, dynamic)["image"])
    fixed = DataConfig(image_size=8, binarize="fixed")
    first = make_batch(data, index, fixed, augment=True)["image"]
    shuffled = torch.randperm(64)
    assert torch.equal(make_batch(data, shuffled, fixed, augment=True)["image"], first[shuffled])  # per image, not per batch
    assert torch.equal(first, binarize_fixed(grey, index)) and torch.equal(make_batch(data, index, DataConfig(image_size=8))["image"], grey)
    with pytest.raises(ConfigError, match="data.binarize must be one of"):
        TrainConfig.from_dict({"data": {"binarize": "yes"}})


def test_iwae_bound_and_importance_nll():
    from genkit.families.vae import VAE

    torch.manual_seed(0)
    vae = VAE([1, 8, 8], latent_dim=4, hidden_dims=[32])
    x = torch.bernoulli(torch.rand(16, 1, 8, 8))
    elbo_loss = torch.stack([vae(x)["loss"] for _ in range(200)]).mean(0)
    one = torch.stack([vae(x, iwae_k=1)["loss"] for _ in range(200)]).mean(0)
    assert torch.allclose(one, elbo_loss, atol=0.5)  # k = 1 is the ELBO
    k50 = torch.stack([vae(x, iwae_k=50)["loss"] for _ in range(20)]).mean(0)
    assert (k50 < one).all()  # a tighter bound: lower negative bound
    g = torch.Generator().manual_seed(0)
    chunked = vae.importance_nll(x, 1000, g, chunk=300)
    whole = vae.importance_nll(x, 1000, torch.Generator().manual_seed(1), chunk=1000)
    assert (chunked - whole).abs().max() < 0.5 and (chunked - whole).mean().abs() < 0.1 and (chunked <= k50 + 0.3).all()


def test_vae_iwae_training_on_binarized_data_and_nll_eval(tiny_idx, tmp_path):
    from genkit.evaluation import evaluate_likelihood

    run = tmp_path / "iwae"
    train(tiny_config(tiny_idx, run, family="vae", model={"latent_dim": 4, "hidden_dims": [32], "objective": "iwae", "iwae_k": 3},
                      data={"binarize": "dynamic"}, max_steps=6))
    family = load_family(str(run))
    result = evaluate_likelihood(family, num_images=None, k=700)
    assert result["likelihood_images"] == 64 and result["likelihood_data"] == "binarized" and 0 < result["nll_iw700"] < 800
    with pytest.raises(ConfigError, match="takes no beta"):
        from genkit.families.vae import VAEFamily

        VAEFamily.check_config(tiny_config(tiny_idx, tmp_path / "x", family="vae", model={"objective": "iwae", "beta": 4.0}))
