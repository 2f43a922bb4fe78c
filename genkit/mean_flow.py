"""MeanFlow (Geng et al. 2025): one-step generation by learning the average velocity on flow matching's straight path.

Path and names as in genkit's flow matching: z_t = (1 - t) x + t e (t = 0: data, t = 1: noise), instantaneous velocity
v = e - x. The network u(z, r, t) predicts the average velocity over [r, t], so that z_r = z_t - (t - r) u(z_t, r, t);
one step from noise is x = e - u(e, 0, 1). The MeanFlow identity gives its regression target without integrals:

    u_tgt = v - (t - r) du/dt,   du/dt = v . d_z u + d_t u   (a JVP w.r.t. (z, r, t) with tangent (v, 0, 1))

computed with `torch.func.jvp` (forward mode, one extra pass), or a central finite difference where forward-mode AD is
not supported. With r = t the target is v: flow matching's loss, so a flow-matching run is a valid starting point.

The UNet sees t through its timestep input (t * T, as flow matching) and t - r as one extra constant input channel:
`UNet2DModel(in_channels=C + 1, out_channels=C)` is a plain Diffusers config, so a run saves and loads without any
wrapper class, and widening a flow run's first convolution with zero weights (`widen_unet`) leaves its outputs unchanged.

Classifier-free guidance is built into the target (the paper's eq. 21 with its kappa mixing): for labelled samples
v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null), the effective scale is omega / (1 - kappa),
and a guided image still costs one network evaluation.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from diffusers import UNet2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel

# model options (under `model:`) that only objective: mean_flow reads, with their defaults
OPTIONS: dict[str, Any] = {
    "mf_ratio": 0.25,  # share of samples with r != t (the rest keep flow matching's target); the paper's best is 25%
    "mf_time_mean": -0.4, "mf_time_std": 1.0,  # logit-normal (sigmoid of N(mean, std)) for both times, then sorted
    # share of the r != t samples put on the jumps the 1-, 2- and 4-step samplers make ((0, 1), (0, 1/2), ...): a short
    # training run rarely draws t - r near 1 from the logit-normal, yet one-step sampling uses exactly that jump
    "mf_grid": 0.0,
    "mf_adaptive_p": 1.0, "mf_adaptive_c": 1.0e-3,  # loss weight 1 / (||err||^2 + c)^p, stop-gradient (p = 1: the paper's)
    "mf_omega": 1.0, "mf_kappa": 0.0,  # CFG in the target: omega = 1, kappa = 0 is no guidance
    "mf_jvp": "auto",  # auto (torch.func.jvp, finite difference where unsupported), jvp, or fd
}
JVP_MODES = ("auto", "jvp", "fd")
FD_EPS = 3e-5  # in t; the timestep input is t * 1000, whose fastest sinusoid turns 1 rad per unit: 0.03 rad here

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_options(m: dict[str, Any]) -> None:
    """Raise ValueError naming the option when a MeanFlow setting is impossible."""
    if not 0 <= m["mf_grid"] <= 1:
        raise ValueError(f"model.mf_grid (share of r != t samples on the sampler's jumps) must be in [0, 1], got {m['mf_grid']}")
    if not 0 <= m["mf_ratio"] <= 1:
        raise ValueError(f"model.mf_ratio (share of samples with r != t) must be in [0, 1], got {m['mf_ratio']}")
    if not m["mf_time_std"] > 0 or m["mf_adaptive_p"] < 0 or not m["mf_adaptive_c"] > 0:
        raise ValueError("model.mf_time_std and model.mf_adaptive_c must be > 0 and model.mf_adaptive_p >= 0")
    if not 0 <= m["mf_kappa"] < 1 or m["mf_omega"] <= 0:
        raise ValueError(f"model.mf_omega must be > 0 and model.mf_kappa in [0, 1), got {m['mf_omega']}, {m['mf_kappa']}")
    if m["mf_jvp"] not in JVP_MODES:
        raise ValueError(f"model.mf_jvp must be one of {JVP_MODES}, got {m['mf_jvp']!r}")


def sample_times(n: int, ratio: float, mean: float, std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", grid: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t) with r <= t: two logit-normal draws sorted, and r = t for a share 1 - `ratio` of them; a share `grid` of
    the others is one jump (k/m, (k+1)/m) of an m = 1, 2 or 4-step sampler."""
    a, b = (torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device)) for _ in range(2))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(n, generator=generator, device=device) >= ratio
    if grid > 0:
        on = ~equal & (torch.rand(n, generator=generator, device=device) < grid)
        steps = torch.tensor([1.0, 2.0, 4.0], device=device)[torch.randint(0, 3, (n,), generator=generator, device=device)]
        k = torch.floor(torch.rand(n, generator=generator, device=device) * steps)
        t, r = torch.where(on, (k + 1) / steps, t), torch.where(on, k / steps, r)
    return torch.where(equal, t, r), t


def unet_velocity(unet: UNet2DModel, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                  num_train_timesteps: int = 1000) -> torch.Tensor:
    """The average velocity u(z, r, t): t enters as the timestep t * T, t - r as one constant extra input channel."""
    h = (t - r).to(z.dtype).view(-1, 1, 1, 1).expand(len(z), 1, *z.shape[2:])
    return unet(torch.cat([z, h], dim=1), t * num_train_timesteps, class_labels=labels).sample


def time_derivative(fn: VelocityFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                    mode: str = "jvp") -> torch.Tensor:
    """du/dt along the path: the JVP of `fn` at (z, r, t) with tangent (v, 0, 1), by forward-mode AD or a central
    finite difference (`mode` = "fd": two plain evaluations, about half the CPU of the JVP on a UNet)."""
    if mode == "fd":
        return (fn(z + FD_EPS * v, r, t + FD_EPS) - fn(z - FD_EPS * v, r, t - FD_EPS)) / (2 * FD_EPS)
    # the math attention kernel: the fused CPU / flash ones have no forward-mode derivative (the UNet's mid-block attends)
    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))[1]


class MeanFlowLoss:
    """The MeanFlow training loss for a genkit diffusion family (its UNet, options and null label)."""

    def __init__(self, options: dict[str, Any], num_train_timesteps: int = 1000):
        check_options(options)
        self.o, self.T = options, num_train_timesteps
        self.mode = options["mf_jvp"]

    def derivative(self, fn: VelocityFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """du/dt by JVP, falling back once and for all to a finite difference where forward-mode AD fails (mode auto)."""
        if self.mode != "fd":
            try:
                return time_derivative(fn, z, r, t, v, "jvp")
            except (RuntimeError, NotImplementedError) as err:
                if self.mode == "jvp":
                    raise RuntimeError(f"model.mf_jvp=jvp: forward-mode AD failed on this model ({err}); use mf_jvp: fd or auto") from None
                warnings.warn(f"MeanFlow: torch.func.jvp is not supported here ({str(err)[:120]}); using a finite difference", stacklevel=2)
                self.mode = "fd"
        return time_derivative(fn, z, r, t, v, "fd")

    def target_velocity(self, unet: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None,
                        null_label: int | None) -> torch.Tensor:
        """v~: the conditional velocity v, guided for labelled samples (CFG in the target) when omega != 1 or kappa != 0."""
        omega, kappa = self.o["mf_omega"], self.o["mf_kappa"]
        if labels is None or null_label is None or (omega == 1 and kappa == 0):
            return v
        guided = labels != null_label
        if not guided.any():
            return v
        zg, tg, lg = z[guided], t[guided], labels[guided]
        with torch.no_grad():
            uncond = unet_velocity(unet, zg, tg, tg, torch.full_like(lg, null_label), self.T).float()
            mixed = omega * v[guided] + (1 - omega - kappa) * uncond
            if kappa:
                mixed = mixed + kappa * unet_velocity(unet, zg, tg, tg, lg, self.T).float()
        out = v.clone()
        out[guided] = mixed
        return out

    def __call__(self, unet: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None,
                 null_label: int | None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The adaptively weighted MeanFlow loss on a batch, and the plain MSE to log."""
        n = len(x0)
        r, t = sample_times(n, self.o["mf_ratio"], self.o["mf_time_mean"], self.o["mf_time_std"], generator, x0.device, self.o["mf_grid"])
        tt = t.view(-1, 1, 1, 1)
        z = (1 - tt) * x0 + tt * noise
        v = self.target_velocity(unet, z, t, noise - x0, labels, null_label)
        target = v.clone()
        jump = r < t  # only these need du/dt: for r = t the factor (t - r) is 0
        if jump.any():
            idx = jump.nonzero().squeeze(1)
            sub = None if labels is None else labels[idx]

            def fn(zz: torch.Tensor, rr: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
                return unet_velocity(unet, zz, rr, ts, sub, self.T).float()

            with torch.no_grad():
                du = self.derivative(fn, z[idx], r[idx], t[idx], v[idx])
            target[idx] = v[idx] - (t[idx] - r[idx]).view(-1, 1, 1, 1) * du
        u = unet_velocity(unet, z, r, t, labels, self.T).float()
        err = ((u - target.detach()) ** 2).mean(dim=(1, 2, 3))
        weight = 1 / (err.detach() + self.o["mf_adaptive_c"]) ** self.o["mf_adaptive_p"]
        return (weight * err).mean(), {"mse": err.mean().detach()}


@torch.no_grad()
def sample(unet: torch.nn.Module, noise: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 1, guidance_scale: float = 1.0,
           null_label: int | None = None, num_train_timesteps: int = 1000, callback: Callable[[int, torch.Tensor], Any] | None = None,
           start: float = 1.0) -> torch.Tensor:
    """Samples in model space from `noise` (a point on the path at t = `start`): `steps` jumps z_r = z_t - (t - r) u(z_t, r, t)
    on evenly spaced times down to 0. A guidance scale other than 1 adds CFG on top of the trained-in guidance (two
    evaluations per step)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < start <= 1:
        raise ValueError(f"start must be in (0, 1], got {start}")
    times = torch.linspace(start, 0, steps + 1, device=noise.device)
    z = noise
    for i in range(steps):
        t, r = times[i].expand(len(z)), times[i + 1].expand(len(z))
        if labels is None or guidance_scale == 1.0 or null_label is None:
            u = unet_velocity(unet, z, r, t, labels, num_train_timesteps)
        else:
            both = unet_velocity(unet, torch.cat([z, z]), torch.cat([r, r]), torch.cat([t, t]),
                                 torch.cat([labels, torch.full_like(labels, null_label)]), num_train_timesteps)
            cond, uncond = both.chunk(2)
            u = uncond + guidance_scale * (cond - uncond)
        z = z - (times[i] - times[i + 1]) * u
        if callback is not None:
            callback(i, z)
    return z


def widen_unet(unet: UNet2DModel) -> UNet2DModel:
    """A flow-matching UNet (in = out channels) as a MeanFlow one: one more input channel (t - r) with zero weights, so
    its predictions at r = t are unchanged."""
    if unet.config.in_channels != unet.config.out_channels:
        return unet  # already a MeanFlow UNet
    wide = UNet2DModel.from_config({**unet.config, "in_channels": unet.config.in_channels + 1})
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
    wide.load_state_dict(state)
    return wide.to(w.device)


def is_mean_flow_unet(unet: torch.nn.Module) -> bool:
    """Whether a UNet takes the extra (t - r) channel (a MeanFlow run) rather than a plain flow or DDPM one."""
    config = unet.config
    return config.in_channels == config.out_channels + 1
