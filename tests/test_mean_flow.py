"""MeanFlow (objective: mean_flow): the JVP target against a finite difference and a closed-form field, the r = t limit
(flow matching's loss), exact one-step sampling of a known field, init_from a flow run, training, save / load."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import FakeUNet, tiny_config

from genkit import mean_flow
from genkit.config import ConfigError
from genkit.engine import train
from genkit.families.diffusion import DiffusionFamily, build_unet
from genkit.runs import load_family

SIGMA = 0.5  # the data's std in the closed-form Gaussian case
INFO = SimpleNamespace(channels=1, image_size=8, num_classes=10, class_names=[str(i) for i in range(10)])


def gaussian_std(t: torch.Tensor) -> torch.Tensor:
    """Std of z_t = (1 - t) x + t e for x ~ N(0, SIGMA^2), e ~ N(0, 1)."""
    return ((1 - t) ** 2 * SIGMA**2 + t**2).sqrt()


def gaussian_v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The marginal (instantaneous) velocity of that path: z d/dt log std(t)."""
    t = t.view(-1, 1, 1, 1)
    return z * (t - (1 - t) * SIGMA**2) / gaussian_std(t) ** 2


def gaussian_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Its exact average velocity: the flow map is z_r = z_t std(r) / std(t), so u = (z_t - z_r) / (t - r)."""
    r, t = r.view(-1, 1, 1, 1), t.view(-1, 1, 1, 1)
    h = t - r
    safe = torch.where(h.abs() < 1e-6, torch.ones_like(h), h)
    avg = (1 - gaussian_std(r) / gaussian_std(t)) / safe
    return torch.where(h.abs() < 1e-6, gaussian_v(torch.ones_like(z), t.flatten()), avg) * z


class FieldUNet(FakeUNet):
    """A UNet stand-in (the MeanFlow input layout: C image channels + the t - r channel) that returns a given field u(z, r, t)."""

    def __init__(self, field, channels: int = 1, size: int = 8):
        super().__init__()
        self.field = field
        self.config = SimpleNamespace(in_channels=channels + 1, out_channels=channels, sample_size=size, num_class_embeds=None)

    def forward(self, x, timestep, class_labels=None):
        z, h = x[:, :-1], x[:, -1, 0, 0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(len(x)) / 1000
        return SimpleNamespace(sample=self.field(z, t - h, t))


def points(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, 8, 8, generator=g)
    a, b = torch.rand(n, generator=g) * 0.9 + 0.05, torch.rand(n, generator=g) * 0.9 + 0.05
    return z, torch.minimum(a, b), torch.maximum(a, b)


def test_jvp_matches_an_analytic_derivative_and_the_finite_difference():
    def fn(z, r, t):
        return torch.sin(z) * t.view(-1, 1, 1, 1) + r.view(-1, 1, 1, 1) ** 2 * z

    z, r, t = points()
    v = torch.randn_like(z)
    exact = v * (torch.cos(z) * t.view(-1, 1, 1, 1) + r.view(-1, 1, 1, 1) ** 2) + torch.sin(z)  # tangent (v, 0, 1): no d/dr term
    jvp = mean_flow.time_derivative(fn, z, r, t, v, "jvp")
    fd = mean_flow.time_derivative(fn, z, r, t, v, "fd")
    assert torch.allclose(jvp, exact, atol=1e-5)
    assert torch.allclose(fd, exact, atol=5e-3)  # float32 rounding over a 3e-5 step


def test_jvp_and_finite_difference_agree_on_a_real_unet():
    torch.manual_seed(0)
    unet = mean_flow.widen_unet(build_unet(8, 1, [8, 16, 16], 1, False, num_classes=3)).eval()
    z, r, t = points(4)
    labels = torch.tensor([0, 1, 2, 3])
    v = torch.randn_like(z)

    def fn(zz, rr, tt):
        return mean_flow.unet_velocity(unet, zz, rr, tt, labels)

    with torch.no_grad():
        jvp = mean_flow.time_derivative(fn, z, r, t, v, "jvp")
        fd = mean_flow.time_derivative(fn, z, r, t, v, "fd")
    assert jvp.abs().mean() > 1e-3  # not trivially zero
    assert (jvp - fd).abs().max() < 0.01 * jvp.abs().max()


@pytest.mark.parametrize("mode", ["jvp", "fd"])
def test_target_of_the_exact_average_velocity_is_itself(mode):
    # the MeanFlow identity u = v - (t - r) du/dt holds for the true u of Gaussian data: the loss of the exact field is ~0,
    # and a wrong tangent (d/dr instead of d/dt) would not give it
    z, r, t = points()
    v = gaussian_v(z, t)
    u, du = gaussian_u(z, r, t), mean_flow.time_derivative(gaussian_u, z, r, t, v, mode)
    target = v - (t - r).view(-1, 1, 1, 1) * du
    assert (target - u).abs().max() < (1e-4 if mode == "jvp" else 5e-3)
    _, wrong = torch.func.jvp(gaussian_u, (z, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
    assert (v - (t - r).view(-1, 1, 1, 1) * wrong - u).abs().max() > 0.05


def test_loss_with_r_equal_t_is_flow_matchings():
    torch.manual_seed(0)
    flow = build_unet(8, 1, [8, 16, 16], 1, False, num_classes=3)
    wide = mean_flow.widen_unet(flow)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1, torch.randn(5, 1, 8, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0])
    options = {**mean_flow.OPTIONS, "mf_ratio": 0.0, "mf_adaptive_p": 0.0}
    loss, _ = mean_flow.MeanFlowLoss(options)(wide, x0, noise, labels, 3, torch.Generator().manual_seed(7))
    r, t = mean_flow.sample_times(5, 0.0, options["mf_time_mean"], options["mf_time_std"], torch.Generator().manual_seed(7))
    assert torch.equal(r, t)
    s = t.view(-1, 1, 1, 1)
    with torch.no_grad():
        expected = F.mse_loss(flow((1 - s) * x0 + s * noise, t * 1000, class_labels=labels).sample, noise - x0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_time_sampling_keeps_the_share_of_r_equal_t():
    r, t = mean_flow.sample_times(20000, 0.25, -0.4, 1.0, torch.Generator().manual_seed(0))
    assert (r <= t).all() and 0 < r.min() and t.max() < 1
    assert abs((r < t).float().mean().item() - 0.25) < 0.015
    r, t = mean_flow.sample_times(20000, 0.5, -0.4, 1.0, torch.Generator().manual_seed(0), grid=0.5)
    jumps = {(round(a, 4), round(b, 4)) for a, b in zip(r.tolist(), t.tolist()) if (b - a) in (1.0, 0.5, 0.25)}
    assert jumps == {(0.0, 1.0), (0.0, 0.5), (0.5, 1.0), (0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)}
    assert abs(sum((b - a) in (1.0, 0.5, 0.25) for a, b in zip(r.tolist(), t.tolist())) / 20000 - 0.25) < 0.015


def test_one_step_sample_of_a_known_field_is_exact():
    # one image: straight lines to it, u(z, r, t) = (z - x*) / t; one jump from noise lands on x*
    truth = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    oracle = FieldUNet(lambda z, r, t: (z - truth) / t.view(-1, 1, 1, 1))
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert (mean_flow.sample(oracle, noise, steps=1) - truth).abs().max() < 1e-5
    # Gaussian data: one jump is the exact flow map e -> SIGMA e, and two jumps are the same
    gauss = FieldUNet(gaussian_u)
    assert torch.allclose(mean_flow.sample(gauss, noise, steps=1), SIGMA * noise, atol=1e-5)
    assert torch.allclose(mean_flow.sample(gauss, noise, steps=2), SIGMA * noise, atol=1e-5)


def test_cfg_in_the_target_mixes_the_unconditional_velocity():
    options = {**mean_flow.OPTIONS, "mf_omega": 2.0, "mf_kappa": 0.0}
    oracle = FieldUNet(lambda z, r, t: torch.full_like(z, 0.25))
    z, _, t = points(3)
    v = torch.ones_like(z)
    labels = torch.tensor([1, 9, 2])  # 9: the null label, trained on the plain velocity
    out = mean_flow.MeanFlowLoss(options).target_velocity(oracle, z, t, v, labels, 9)
    assert torch.allclose(out[0], torch.full_like(out[0], 2.0 * 1 - 0.25)) and torch.equal(out[1], v[1])


STOCK_SCRIPT = r"""
import sys
sys.modules["genkit"] = None  # `import genkit` now fails
import diffusers, torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
one = pipe(class_labels=[0, 1, "2"], generator=torch.Generator().manual_seed(0), output_type="pt").images
two = pipe(class_labels=[0, 1, 2], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
pipe.scheduler = diffusers.FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
try:
    pipe(class_labels=[0])
    heun = "sampled"
except ValueError as err:
    heun = str(err)
assert sys.modules["genkit"] is None
torch.save({"one": one, "two": two, "steps": pipe.config.num_inference_steps, "heun": heun}, sys.argv[2])
"""


def mf_config(tiny_idx, out, init_from=None, **model):
    model = {"preset": "tiny", "objective": "mean_flow", "class_conditional": True, **model}
    return tiny_config(tiny_idx, out, family="diffusion", init_from=init_from, model=model,
                       data={"value_range": "-1,1"}, num_samples=10, learning_rate=1e-3, max_steps=4, eval_every=4, checkpoint_every=4, ema_decay=0.99)


def test_mean_flow_run_trains_from_a_flow_run_saves_and_loads(tiny_idx, tmp_path):
    flow_run = tmp_path / "flow"
    train(tiny_config(tiny_idx, flow_run, family="diffusion", data={"value_range": "-1,1"}, max_steps=2, eval_every=2, checkpoint_every=2,
                      model={"preset": "tiny", "objective": "flow_matching", "class_conditional": True}, num_samples=10))
    flow = load_family(str(flow_run))
    # init_from widens the flow UNet: at r = t it predicts the flow velocity unchanged
    family = DiffusionFamily(mf_config(tiny_idx, tmp_path / "x"), INFO, models=dict(flow.models))
    unet = family.models["unet"]
    assert mean_flow.is_mean_flow_unet(unet) and not mean_flow.is_mean_flow_unet(flow.models["unet"])
    x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(mean_flow.unet_velocity(unet, x, t, t, labels), flow.models["unet"](x, t * 1000, class_labels=labels).sample, atol=1e-5)

    run = tmp_path / "mf"
    summary = train(mf_config(tiny_idx, run, init_from=str(flow_run), mf_omega=1.5, mf_kappa=0.2))
    assert summary["step"] == 4
    loaded = load_family(str(run))
    assert loaded.mean_flow and mean_flow.is_mean_flow_unet(loaded.models["unet"])
    a = loaded.generate(3, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2]))
    b = loaded.generate(3, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2]), steps=1, guidance_scale=1.0)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)  # default: one step, guidance trained in
    two = loaded.generate(3, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2]), steps=2)
    assert torch.isfinite(two).all() and not torch.equal(a, two)
    # the saved weights are the trained ones, not the flow run's
    assert not torch.equal(loaded.models["unet"].conv_in.weight[:, -1], torch.zeros_like(loaded.models["unet"].conv_in.weight[:, -1]))
    # genkit's sampler is the pipeline's, and equals the reference jump z_0 = e - u(e, 0, 1) (clipped into [-1, 1])
    noise = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = mean_flow.sample(loaded.models["unet"], noise, torch.tensor([0, 1, 2]), steps=1)
    assert torch.allclose(a, ((reference + 1) / 2).clamp(0, 1), atol=1e-5)
    config = json.loads((run / "model_index.json").read_text())
    assert config["prediction_type"] == "average_velocity" and config["num_inference_steps"] == 1 and config["guidance_scale"] == 1.0

    # stock Diffusers, genkit unimportable: one step by default, the same call API, the same images
    out = tmp_path / "stock.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, str(run), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stock = torch.load(out, weights_only=False)
    assert stock["steps"] == 1 and stock["heun"].startswith("this average_velocity (MeanFlow) model jumps with FlowMatchEulerDiscreteScheduler")
    assert torch.allclose(stock["one"], a, atol=1e-5) and torch.allclose(stock["two"], two, atol=1e-5)


@pytest.mark.parametrize("model, match", [
    ({"mf_ratio": 1.5}, "mf_ratio"),
    ({"mf_kappa": 1.0}, "mf_kappa"),
    ({"mf_jvp": "reverse"}, "mf_jvp"),
])
def test_mean_flow_config_errors_name_the_option(tiny_idx, tmp_path, model, match):
    with pytest.raises(ConfigError, match=match):
        train(mf_config(tiny_idx, tmp_path / "run", **model))
