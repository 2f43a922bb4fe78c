"""Flow matching (rectified flow) on UNet2DModel: the training target, every flow sampler, guidance, SDEdit, x0 clipping,
save / load and the config checks."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import FakeUNet, tiny_config
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from genkit.config import ConfigError
from genkit.engine import train
from genkit.families.diffusion import DiffusionFamily
from genkit.runs import load_family
from genkit.sampling import FLOW_SCHEDULERS, X0Handling, make_scheduler, sample

FLOW_SCHEDULE = {"num_train_timesteps": 1000, "shift": 1.0}


class VelocityOracle(FakeUNet):
    """The exact velocity field for a data set of one image per class: x_t = (1 - s) x0 + s noise gives
    noise - x0 = (x_t - x0) / s. The null label (one past the classes) stands for the mean image."""

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self.targets = targets
        self.config = SimpleNamespace(in_channels=targets.shape[1], sample_size=targets.shape[2], num_class_embeds=len(targets) + 1)
        self.seen: list[float] = []

    def forward(self, x, t, class_labels=None):
        s = (torch.as_tensor(t, dtype=torch.float32).reshape(-1) / 1000).clamp(min=1e-4).view(-1, 1, 1, 1)
        self.seen.append(float(s.flatten()[0]))
        with_null = torch.cat([self.targets, self.targets.mean(0, keepdim=True)])
        labels = torch.zeros(len(x), dtype=torch.long) if class_labels is None else class_labels
        return SimpleNamespace(sample=(x - with_null[labels]) / s)


def targets(k=2, size=8, scale=1.0):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(k, 1, size, size, generator=g) * 2 - 1) * scale


@pytest.mark.parametrize("name", list(FLOW_SCHEDULERS))
def test_every_flow_sampler_lands_on_the_data(name):
    truth = targets(1)
    x = sample(VelocityOracle(truth), make_scheduler(name, FLOW_SCHEDULE, flow=True), 4, 20, torch.Generator().manual_seed(1),
               prediction_type="flow_prediction")
    assert (x - truth).abs().max() < 0.05, f"{name}: max error {(x - truth).abs().max():.3f}"


def test_flow_euler_spends_every_step_on_the_path():
    # Diffusers' FlowMatch Euler alone spaces sigma from 1 to 1/T and then steps to 0: with 2 steps one step is wasted
    oracle = VelocityOracle(targets(1))
    sample(oracle, make_scheduler("euler", FLOW_SCHEDULE, flow=True), 1, 2, torch.Generator().manual_seed(0), prediction_type="flow_prediction")
    assert oracle.seen == pytest.approx([1.0, 0.5])


def test_flow_guidance_picks_the_class():
    truth = targets(3)
    labels = torch.tensor([2, 0, 1, 2])
    mean = truth.mean(0, keepdim=True)
    for scale in [1.0, 3.0]:
        # with an exact velocity, Euler lands on the guided x0 prediction: mean + scale * (class image - mean)
        x = sample(VelocityOracle(truth), make_scheduler("euler", FLOW_SCHEDULE, flow=True), 4, 10, torch.Generator().manual_seed(0),
                   labels, scale, prediction_type="flow_prediction")
        assert (x - (mean + scale * (truth[labels] - mean))).abs().max() < 0.05


def test_flow_sdedit_starts_part_way_and_keeps_the_image():
    truth = targets(1)
    start = truth.repeat(2, 1, 1, 1)
    for name in ["euler", "heun", "dpm++", "unipc"]:
        oracle = VelocityOracle(truth)
        x = sample(oracle, make_scheduler(name, FLOW_SCHEDULE, flow=True), 2, 20, torch.Generator().manual_seed(0), init_images=start,
                   strength=0.3, prediction_type="flow_prediction")
        assert (x - truth).abs().max() < 0.05, name
        assert max(oracle.seen) < 0.35, f"{name} started at s={max(oracle.seen):.2f}, not at 0.3"


def test_flow_x0_clipping_applies_to_every_flow_sampler():
    outside = targets(1, scale=2.0)
    for name in FLOW_SCHEDULERS:
        scheduler = make_scheduler(name, FLOW_SCHEDULE, flow=True)
        clipped = sample(VelocityOracle(outside), scheduler, 2, 20, torch.Generator().manual_seed(1), x0=X0Handling(mode="clip"),
                         prediction_type="flow_prediction")
        assert (clipped - outside.clamp(-1, 1)).abs().max() < 0.05, name
        free = sample(VelocityOracle(outside), make_scheduler(name, FLOW_SCHEDULE, flow=True), 2, 20, torch.Generator().manual_seed(1),
                      prediction_type="flow_prediction")
        assert (free - outside).abs().max() < 0.1, name


def test_flow_and_ddpm_samplers_do_not_mix():
    with pytest.raises(ValueError, match="for a flow-matching model; choose one of"):
        make_scheduler("ddim", FLOW_SCHEDULE, flow=True)
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_scheduler("euler", FLOW_SCHEDULE, timestep_spacing="trailing", flow=True)
    oracle = VelocityOracle(targets(1))
    # refused before any step, naming the schedulers that can sample the model
    with pytest.raises(ValueError, match="flow_prediction model cannot be sampled by DDIMScheduler.*it takes FlowMatchEulerDiscreteScheduler"):
        sample(oracle, make_scheduler("ddim", {"num_train_timesteps": 1000}), 1, 4, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="epsilon model cannot be sampled by FlowMatchEulerDiscreteScheduler.*it takes DDPMScheduler, DDIMScheduler"):
        sample(oracle, make_scheduler("euler", FLOW_SCHEDULE, flow=True), 1, 4, prediction_type="epsilon")
    with pytest.raises(ValueError, match="cannot be sampled by DPMSolverMultistepScheduler.*use_flow_sigmas=True"):
        sample(oracle, make_scheduler("dpm++", {"num_train_timesteps": 1000}), 1, 4, prediction_type="flow_prediction")
    assert oracle.seen == []


def flow_config(tiny_idx, out, **model):
    return tiny_config(tiny_idx, out, family="diffusion", model={"preset": "tiny", "sample_steps": 3, "objective": "flow_matching", **model},
                       data={"value_range": "-1,1"}, num_samples=10, learning_rate=1e-3, max_steps=6, eval_every=6, checkpoint_every=6, ema_decay=0.99)


def test_flow_loss_is_the_velocity_on_the_straight_path(tiny_idx, tmp_path):
    config = flow_config(tiny_idx, tmp_path / "run", time_sampling="logit_normal", logit_mean=0.5, logit_std=0.7)
    config.validate()
    info = SimpleNamespace(channels=1, image_size=8, num_classes=10, class_names=[str(i) for i in range(10)])
    family = DiffusionFamily(config, info)
    seen = {}

    class Recorder(torch.nn.Module):
        config = SimpleNamespace(num_class_embeds=None)

        def forward(self, x, t, class_labels=None):
            seen["x"], seen["t"] = x, t
            return SimpleNamespace(sample=torch.zeros_like(x))

    family.models = {"unet": Recorder()}
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    loss, _ = family.loss("unet", {"image": x0, "label": torch.zeros(64, dtype=torch.long)}, torch.Generator().manual_seed(3))
    # replay the generator: noise first, then the path positions
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=g)
    s = torch.sigmoid(0.5 + 0.7 * torch.randn(64, generator=g))
    assert torch.allclose(seen["t"], s * 1000)
    assert torch.allclose(seen["x"], (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise, atol=1e-6)
    assert loss.item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-5)
    assert 0.55 < s.median() < 0.7  # logit-normal around sigmoid(0.5) = 0.62, not uniform


def test_time_sampling_choices(tiny_idx, tmp_path):
    info = SimpleNamespace(channels=1, image_size=8, num_classes=10, class_names=[str(i) for i in range(10)])
    uniform = DiffusionFamily(flow_config(tiny_idx, tmp_path / "u"), info).flow_times(20000, torch.Generator().manual_seed(0), "cpu")
    logit_family = DiffusionFamily(flow_config(tiny_idx, tmp_path / "l", time_sampling="logit_normal"), info)
    logit = logit_family.flow_times(20000, torch.Generator().manual_seed(0), "cpu")
    assert ((uniform < 0.1).float().mean() - 0.1).abs() < 0.01
    assert (logit < 0.1).float().mean() < 0.03 and (logit - 0.5).abs().mean() < 0.18  # mass mid-path
    assert 0 < uniform.min() and uniform.max() < 1 and 0 < logit.min() and logit.max() < 1


def test_grid_times_are_where_the_euler_sampler_evaluates(tiny_idx, tmp_path):
    """time_sampling: grid (one-step distillation on reflow pairs) trains exactly at the 1- and 2-step sampler's times, shifted as it shifts them."""
    info = SimpleNamespace(channels=1, image_size=8, num_classes=10, class_names=[str(i) for i in range(10)])
    family = DiffusionFamily(flow_config(tiny_idx, tmp_path / "g", time_sampling="grid", grid_steps=[1, 2], flow_shift=3.0), info)
    s = family.flow_times(20000, torch.Generator().manual_seed(0), "cpu")
    visited = []
    for steps in (1, 2):
        oracle = VelocityOracle(targets(1))
        sample(oracle, make_scheduler("euler", family.noise_scheduler.config, flow=True), 1, steps, torch.Generator().manual_seed(0),
               prediction_type="flow_prediction")
        visited += oracle.seen
    assert sorted(set(visited)) == pytest.approx([0.75, 1.0])  # shift 3 moves the 2-step sampler's midpoint from 1/2 to 3/4
    assert sorted(set(s.tolist())) == pytest.approx(sorted(set(visited)))
    assert ((s == 1).float().mean() - 0.75).abs() < 0.02  # half the draws are 1-step, half the 2-step sampler's two times
    with pytest.raises(ConfigError, match="model.grid_steps must be a list"):
        train(flow_config(tiny_idx, tmp_path / "bad", time_sampling="grid", grid_steps=[0, 2]))


def test_conditional_flow_run_trains_saves_loads_and_samples_with_every_sampler(tiny_idx, tmp_path):
    run = tmp_path / "run"
    summary = train(flow_config(tiny_idx, run, class_conditional=True, time_sampling="logit_normal"))
    assert summary["step"] == 6
    index = json.loads((run / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "GenkitDiffusionPipeline"] and index["prediction_type"] == "flow_prediction"
    assert json.loads((run / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    family = load_family(str(run))
    assert family.flow and family.conditional and family.sampler == "euler"
    labels = torch.tensor([0, 3])
    for name in FLOW_SCHEDULERS:
        images = family.generate(2, torch.Generator().manual_seed(0), labels, scheduler=name, steps=3, guidance_scale=2.0)
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1, name
    with pytest.raises(ValueError, match="flow-matching model"):
        family.generate(2, torch.Generator().manual_seed(0), labels, scheduler="ddim", steps=3)
    # the saved pipeline samples what genkit samples, and SDEdit runs through it
    pipe = DiffusionPipeline.from_pretrained(str(run), trust_remote_code=True)  # the stock way: the run's own pipeline.py
    assert type(pipe).__name__ == "GenkitDiffusionPipeline" and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    ours = family.generate(2, torch.Generator().manual_seed(5), labels, steps=4)
    theirs = pipe(2, labels, None, 4, torch.Generator().manual_seed(5), output_type="pt").images  # the run's guidance by default
    assert (ours - theirs).abs().max() < 1e-5
    # stock swaps give genkit's images with that sampler; DDIM is refused, naming the schedulers a flow model takes
    saved = pipe.scheduler.config
    flow_sigmas = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
    for name, scheduler in [("heun", FlowMatchHeunDiscreteScheduler.from_config(saved)),
                            ("dpm++", DPMSolverMultistepScheduler.from_config(saved, algorithm_type="dpmsolver++", **flow_sigmas)),
                            ("unipc", UniPCMultistepScheduler.from_config(saved, **flow_sigmas))]:
        pipe.scheduler = scheduler
        theirs = pipe(class_labels=labels, num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="pt").images
        mine = family.generate(2, torch.Generator().manual_seed(5), labels, scheduler=name, steps=3)
        assert (mine - theirs).abs().max() < 1e-5, name
    pipe.scheduler = DDIMScheduler.from_config(saved)
    with pytest.raises(ValueError, match="cannot be sampled by DDIMScheduler.*it takes FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler"):
        pipe(class_labels=labels)
    edited = family.generate(2, torch.Generator().manual_seed(0), labels, steps=4, init_images=ours, strength=0.5)
    fresh = family.generate(2, torch.Generator().manual_seed(0), labels, steps=4)
    assert edited.shape == ours.shape and (edited - ours).abs().mean() < (fresh - ours).abs().mean()  # SDEdit keeps some of the image


def test_unconditional_flow_run_is_not_a_ddpm_pipeline(tiny_idx, tmp_path):
    train(flow_config(tiny_idx, tmp_path / "run"))
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "GenkitDiffusionPipeline"]  # a DDPMPipeline would sample it as epsilon
    assert load_family(str(tmp_path / "run")).generate(2, torch.Generator().manual_seed(0), steps=2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("model, match", [
    ({"objective": "rectified"}, "model.objective"),
    ({"objective": "flow_matching", "prediction_type": "v_prediction"}, "model.prediction_type applies to objective: ddpm"),
    ({"objective": "flow_matching", "snr_gamma": 5.0}, "model.snr_gamma applies"),
    ({"objective": "flow_matching", "sampler": "ddim"}, "model.sampler must be one of"),
    ({"objective": "flow_matching", "time_sampling": "cosine"}, "model.time_sampling"),
    ({"objective": "flow_matching", "logit_std": 0}, "logit_std"),
])
def test_flow_config_errors_name_the_fix(tiny_idx, tmp_path, model, match):
    with pytest.raises(ConfigError, match=match):
        train(flow_config(tiny_idx, tmp_path / "run", **model))
    assert not (tmp_path / "run" / "model_index.json").exists()


def test_stochastic_flow_euler_is_refused_where_diffusers_lacks_it(monkeypatch):
    """diffusers < 0.34 has no FlowMatch Euler `stochastic_sampling`: euler_a is refused by name there, not run as plain Euler."""

    class OldFlowEuler(FlowMatchEulerDiscreteScheduler):  # FlowMatchEulerDiscreteScheduler's signature in diffusers 0.32 / 0.33
        def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
            super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)

    monkeypatch.setitem(FLOW_SCHEDULERS, "euler_a", (OldFlowEuler, {"stochastic_sampling": True}))
    with pytest.raises(ValueError, match=r"'euler_a' needs diffusers >= 0.34.*choose one of euler, heun"):
        make_scheduler("euler_a", FLOW_SCHEDULE, flow=True)
    assert make_scheduler("euler", FLOW_SCHEDULE, flow=True).config.shift == 1.0
