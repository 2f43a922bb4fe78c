import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FakeUNet, tiny_config
from diffusers import DDPMScheduler, DiffusionPipeline

from genkit.config import ConfigError
from genkit.engine import train
from genkit.families.diffusion import PRESETS, build_unet
from genkit.runs import load_family
from genkit.sampling import SCHEDULERS, X0Handling, make_scheduler, sample

TRAIN_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)


class OracleUNet(FakeUNet):
    """The exact denoiser for a data set of one image per class: any correct sampler must land on that image.

    It reads the timestep the way a trained UNet does, so a sampler that forgets `scale_model_input` or
    `init_noise_sigma` (as DDPMPipeline does with Euler) lands somewhere else.
    """

    def __init__(self, targets: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        self.targets = targets  # (classes, C, H, W) in [-1, 1]
        self.alphas_cumprod = DDPMScheduler(**TRAIN_SCHEDULE).alphas_cumprod.double()
        self.prediction_type = prediction_type
        self.config = SimpleNamespace(in_channels=targets.shape[1], sample_size=targets.shape[2], num_class_embeds=len(targets) + 1)

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        lo = t.floor().long().clamp(0, 999)
        hi = (lo + 1).clamp(max=999)
        ab = self.alphas_cumprod[lo] + (t - lo) * (self.alphas_cumprod[hi] - self.alphas_cumprod[lo])
        ab = ab.float().view(-1, 1, 1, 1)
        # the null label (one past the classes) is treated as the mean image, which makes guidance predictable
        with_null = torch.cat([self.targets, self.targets.mean(0, keepdim=True)])
        labels = torch.zeros(len(x), dtype=torch.long) if class_labels is None else class_labels
        x0 = with_null[labels]
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.prediction_type]
        return SimpleNamespace(sample=out)


def targets(k=2, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(k, 1, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", [None, "trailing"])
def test_every_scheduler_lands_on_the_data(name, prediction_type, spacing):
    truth = targets(1)
    unet = OracleUNet(truth, prediction_type)
    scheduler = make_scheduler(name, {**TRAIN_SCHEDULE, "prediction_type": prediction_type}, timestep_spacing=spacing)
    steps = 100 if name == "ddpm" else 20
    x = sample(unet, scheduler, 4, steps, torch.Generator().manual_seed(1), prediction_type=prediction_type)
    assert (x - truth).abs().max() < 0.05, f"{name}/{prediction_type}: max error {(x - truth).abs().max():.3f}"


def test_forgetting_scale_model_input_is_caught_by_the_oracle():
    # what DDPMPipeline does with Euler: no init_noise_sigma, no scale_model_input
    truth = targets(1)
    unet, scheduler = OracleUNet(truth), make_scheduler("euler", TRAIN_SCHEDULE, timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    assert (x - truth).abs().max() > 0.5


def test_class_labels_pick_the_class_with_and_without_guidance():
    truth = targets(3)
    unet = OracleUNet(truth)
    labels = torch.tensor([2, 0, 1, 2])
    mean = truth.mean(0, keepdim=True)
    for scale in [1.0, 3.0]:
        # DDIM's last step returns the guided x0 prediction: mean + scale * (class image - mean)
        x = sample(unet, make_scheduler("ddim", TRAIN_SCHEDULE), 4, 20, torch.Generator().manual_seed(0), labels, scale)
        assert (x - (mean + scale * (truth[labels] - mean))).abs().max() < 0.05


def test_sdedit_keeps_what_low_noise_does_not_destroy():
    truth = targets(1)
    unet = OracleUNet(truth)
    start = truth.repeat(2, 1, 1, 1)
    for name in ["ddim", "dpm++", "euler", "heun", "unipc"]:
        x = sample(unet, make_scheduler(name, TRAIN_SCHEDULE), 2, 20, torch.Generator().manual_seed(0), init_images=start, strength=0.3)
        assert (x - truth).abs().max() < 0.05, name
    with pytest.raises(ValueError, match="strength"):
        sample(unet, make_scheduler("ddim", TRAIN_SCHEDULE), 2, 20, init_images=start, strength=0.0)
    with pytest.raises(ValueError, match=r"image must be \(N, 1, 8, 8\) for this model"):
        sample(unet, make_scheduler("ddim", TRAIN_SCHEDULE), 2, 20, init_images=torch.zeros(2, 3, 8, 8), strength=0.5)


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 1), (28, 3), (32, 3)])
def test_presets_are_valid_at_28_and_32(size, channels):
    unet = build_unet(size, channels, **{**PRESETS["tiny"], "attention": True}, num_classes=10)
    out = unet(torch.randn(2, channels, size, size), torch.tensor([1, 500]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, channels, size, size)


def test_four_levels_at_28_is_refused_with_advice():
    with pytest.raises(ConfigError, match="image_size=32"):
        build_unet(28, 1, [16, 32, 32, 32], 1, False)


def diffusion_config(tiny_idx, out, **overrides):
    model = {"preset": "tiny", "sample_steps": 3, **overrides.pop("model", {})}
    data = {"value_range": "-1,1", **overrides.pop("data", {})}
    return tiny_config(tiny_idx, out, family="diffusion", model=model, data=data, num_samples=10,
                       learning_rate=1e-3, max_steps=6, eval_every=6, checkpoint_every=6, ema_decay=0.99, **overrides)


def test_unconditional_run_loads_with_its_own_pipeline(tiny_idx, tmp_path):
    train(diffusion_config(tiny_idx, tmp_path / "run", model={"prediction_type": "v_prediction", "snr_gamma": 5.0}))
    # not a DDPMPipeline (no scale_model_input, a DDPM scheduler): the run's pipeline.py with its sampler
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "run"), trust_remote_code=True)
    assert type(pipe).__name__ == "GenkitDiffusionPipeline" and pipe.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    family = load_family(str(tmp_path / "run"))
    for name in SCHEDULERS:
        out = family.pipeline(name)(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
        assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all(), name


def test_conditional_run_round_trips_labels(tiny_idx, tmp_path):
    from genkit.data import FASHION_MNIST_NAMES

    cfg = diffusion_config(tiny_idx, tmp_path / "run", model={"class_conditional": True, "guidance_scale": 3.0},
                           data={"source": "fashion_mnist", "data_dir": str(tiny_idx), "value_range": "-1,1"})
    train(cfg)
    run = tmp_path / "run"
    index = json.loads((run / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "GenkitDiffusionPipeline"] and (run / "pipeline.py").is_file()
    assert index["id2label"]["7"] == "Sneaker" and index["x0_handling"] == "clip" and index["decoder"] == [None, None]
    pipe = load_family(str(run)).pipeline()
    assert pipe.id2label == dict(enumerate(FASHION_MNIST_NAMES))
    assert pipe.unet.config.num_class_embeds == 11 and pipe.null_label == 10
    out = pipe(class_labels=["Sneaker", 3], guidance_scale=2.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown class name 'Cat'"):
        pipe(class_labels=["Cat"], num_inference_steps=2)
    with pytest.raises(ValueError, match="out of range"):
        pipe(class_labels=[10], num_inference_steps=2)
    # the grid written during training has one column per class
    assert (run / "samples.png").is_file()


def test_bad_diffusion_configs(tiny_idx, tmp_path):
    with pytest.raises(ConfigError, match="value_range"):
        train(tiny_config(tiny_idx, tmp_path / "a", family="diffusion", model={"preset": "tiny"}))
    with pytest.raises(ConfigError, match="model.sampler must be one of"):
        train(diffusion_config(tiny_idx, tmp_path / "b", model={"sampler": "plms"}))
    with pytest.raises(ConfigError, match="model.prediction_type"):
        train(diffusion_config(tiny_idx, tmp_path / "c", model={"prediction_type": "x0"}))
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("plms", TRAIN_SCHEDULE)


def test_loss_targets_match_prediction_type():
    from genkit.config import TrainConfig
    from genkit.families import DataInfo
    from genkit.families.diffusion import DiffusionFamily

    info = DataInfo(1, 8, ["a", "b"], "-1,1")
    x0 = targets(1).repeat(4, 1, 1, 1)
    for kind in ["epsilon", "v_prediction", "sample"]:
        model = {"prediction_type": kind, "beta_schedule": "squaredcos_cap_v2"}
        config = TrainConfig.from_dict({"family": "diffusion", "model": model, "data": {"value_range": "-1,1"}})
        family = DiffusionFamily(config, info, {"unet": OracleUNet(targets(1), kind)})
        loss, _ = family.loss("unet", {"image": x0, "label": torch.zeros(4, dtype=torch.long)})
        assert loss.item() < 1e-6, kind  # the exact denoiser has zero loss for every target


def test_latent_diffusion_in_a_vae_latent_space(tiny_idx, tmp_path):
    import shutil

    train(tiny_config(tiny_idx, tmp_path / "vae", family="vae", model={"latent_dim": 16, "hidden_dims": [64]}, max_steps=4))
    cfg = diffusion_config(tiny_idx, tmp_path / "ldm", model={"autoencoder": str(tmp_path / "vae"), "class_conditional": True})
    train(cfg)
    shutil.rmtree(tmp_path / "vae")  # the run carries its own decoder
    family = load_family(str(tmp_path / "ldm"))
    assert family.models["unet"].config.sample_size == 4 and family.models["unet"].config.in_channels == 1
    images = family.generate(3, torch.Generator().manual_seed(0), torch.tensor([1, 2, 3]), steps=2)
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ConfigError, match="multiple of 16"):
        train(tiny_config(tiny_idx, tmp_path / "ae", model={"hidden_dims": [8]}, max_steps=2))
        train(diffusion_config(tiny_idx, tmp_path / "ldm2", model={"autoencoder": str(tmp_path / "ae")}))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_x0_clipping_and_dynamic_thresholding_work_for_every_scheduler(name):
    inside = targets(1)  # data in [-1, 1]: clipping must not move the result
    x = sample(OracleUNet(inside), make_scheduler(name, TRAIN_SCHEDULE), 2, 100 if name == "ddpm" else 20, torch.Generator().manual_seed(1),
               x0=X0Handling(mode="clip"))
    assert (x - inside).abs().max() < 0.05
    outside = inside * 3  # an over-range x0 (a model that overshoots): clipped into [-1, 1], rescaled by dynamic thresholding
    clipped = sample(OracleUNet(outside), make_scheduler(name, TRAIN_SCHEDULE), 2, 20, torch.Generator().manual_seed(1), x0=X0Handling(mode="clip"))
    assert clipped.abs().max() < 1.05 and (clipped - outside.clamp(-1, 1)).abs().mean() < 0.1
    dynamic = X0Handling(mode="dynamic", ratio=1.0, max_value=10.0)
    scaled = sample(OracleUNet(outside), make_scheduler(name, TRAIN_SCHEDULE), 2, 20, torch.Generator().manual_seed(1), x0=dynamic)
    assert scaled.abs().max() < 1.05 and (scaled - outside / outside.abs().max()).abs().mean() < 0.1
    unclipped = sample(OracleUNet(outside), make_scheduler(name, TRAIN_SCHEDULE), 2, 100 if name == "ddpm" else 20, torch.Generator().manual_seed(1))
    assert unclipped.abs().max() > 2  # the default of sample leaves x0 alone


def test_clip_sample_defaults_on_for_pixels_and_is_exported(tiny_idx, tmp_path):
    from genkit.families.diffusion import DiffusionFamily

    base = dict(family="diffusion", model={"preset": "tiny"}, data={"value_range": "-1,1"}, max_steps=2, num_samples=2)
    train(tiny_config(tiny_idx, tmp_path / "run", **base))
    family = load_family(str(tmp_path / "run"))
    assert family.x0_handling().mode == "clip" and family.x0_handling("dynamic").mode == "dynamic"
    saved = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert saved["x0_handling"] == "clip" and saved["clip_sample_range"] == 1.0  # the pipeline's, kept across a scheduler swap
    # the scheduler clips nothing itself, and says so, so that a stock DDIM / DDPM swap does not default to clipping
    assert json.loads((tmp_path / "run" / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
    assert DiffusionPipeline.from_pretrained(str(tmp_path / "run"), trust_remote_code=True).config.x0_handling == "clip"
    images = family.generate(2, torch.Generator().manual_seed(0), scheduler="dpm++", steps=3, x0="none")
    assert images.shape == (2, 1, 28, 28)
    for option, message in [({"clip_sample": "yes"}, "clip_sample must be true, false or null"),
                            ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio must be in")]:
        with pytest.raises(ConfigError, match=message):
            DiffusionFamily.check_config(tiny_config(tiny_idx, tmp_path / "x", **{**base, "model": {"preset": "tiny", **option}}))
    off = tiny_config(tiny_idx, tmp_path / "off", **{**base, "model": {"preset": "tiny", "clip_sample": False}})
    assert DiffusionFamily(off, family.info).x0_handling().mode == "none"
    dyn = tiny_config(tiny_idx, tmp_path / "dyn", **{**base, "model": {"preset": "tiny", "thresholding": True}})
    dynamic = DiffusionFamily(dyn, family.info)
    dynamic.models = family.models
    assert dynamic.x0_handling().mode == "dynamic" and dynamic.pipeline().config.x0_handling == "dynamic"


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_every_sampling_scheduler_keeps_the_training_noise_schedule(beta_schedule):
    train_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)  # betas left at DDPM's defaults
    for name in SCHEDULERS:
        assert torch.equal(make_scheduler(name, train_schedule.config).alphas_cumprod, train_schedule.alphas_cumprod), name
