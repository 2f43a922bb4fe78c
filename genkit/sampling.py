"""The diffusion sampler: one loop that is right for every Diffusers scheduler, with classifier-free guidance and SDEdit.

`DDPMPipeline` never applies `init_noise_sigma` or `scale_model_input`, so sigma-based schedulers (Euler, Heun) come out
wrong through it; this loop applies both, passes the generator where the scheduler takes one, and can start from a
partly noised image (denoising, SDEdit).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),  # DPM++ 2M SDE
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
NO_SAMPLE_PREDICTION = {"euler_a"}  # schedulers that raise on prediction_type="sample"


X0_MODES = ("none", "clip", "dynamic")


@dataclass
class X0Handling:
    """What the sampler does with each step's prediction of the clean image, for every scheduler alike.

    `clip` clamps the predicted x0 to [-clip_range, clip_range] (diffusers' `clip_sample`); `dynamic` is Imagen's
    dynamic thresholding: each image's x0 is clamped at the `ratio` quantile of its |pixels| (at least 1, at most
    `max_value`) and rescaled by it. The scheduler then receives the matching epsilon, so schedulers without these
    options (DPM-Solver, UniPC, Euler, Heun) get them too.
    """

    prediction_type: str = "epsilon"
    mode: str = "none"
    clip_range: float = 1.0
    ratio: float = 0.995
    max_value: float = 1.0

    def to_epsilon(self, pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The model's prediction at x_t (any type) as epsilon, after the x0 handling."""
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction_type == "epsilon" and self.mode == "none":
            return pred
        x0 = {"epsilon": (x_t - s * pred) / a, "sample": pred, "v_prediction": a * x_t - s * pred}[self.prediction_type]
        if self.mode == "clip":
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        elif self.mode == "dynamic":
            level = torch.quantile(x0.abs().flatten(1).float(), self.ratio, dim=1).clamp(1, self.max_value).to(x0.dtype)
            level = level.view(-1, *[1] * (x0.ndim - 1))
            x0 = torch.maximum(torch.minimum(x0, level), -level) / level
        return (x_t - a * x0) / s


def make_scheduler(name: str, train_config: dict, timestep_spacing: str | None = None, x0: X0Handling | None = None) -> SchedulerMixin:
    """A sampling scheduler of kind `name` sharing the training noise schedule (betas, prediction type).

    `x0` (default: no clipping) is applied by `sample` for every scheduler; the scheduler itself is then told to predict
    epsilon and to clip nothing, so nothing is done twice.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    cls, extra = SCHEDULERS[name]
    # "leading" by default for every scheduler: "linspace"/"trailing" start at t=T-1, where a squaredcos_cap_v2
    # schedule has alpha_bar ~ 2e-9 (sigma ~ 2e4) and epsilon errors are multiplied into noise. Passed as a keyword:
    # from_config() replaces keys the training scheduler left at their defaults with the new class's defaults.
    config = dict(train_config)
    extra = {**extra, "timestep_spacing": timestep_spacing or "leading"}
    handling = replace(x0 or X0Handling(), prediction_type=config.get("prediction_type", "epsilon"))
    if handling.mode not in X0_MODES:
        raise ValueError(f"x0 handling must be one of {X0_MODES}, got {handling.mode!r}")
    converts = handling.mode != "none" or (name in NO_SAMPLE_PREDICTION and handling.prediction_type == "sample")
    if converts:  # the loop hands the scheduler epsilon (euler_a raises on x0 predictions; clipping is done in the loop)
        config["prediction_type"] = "epsilon"
    config.update(clip_sample=False, thresholding=False)
    scheduler = cls.from_config(config, **extra)
    scheduler.genkit_x0 = handling if converts else None
    return scheduler


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    num_images: int,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process; returns images in the model's range (usually [-1, 1]).

    With `init_images` and `strength` < 1 the images are noised to that fraction of the schedule and denoised from
    there (SDEdit). `callback(i, n, x)` sees the current sample after each step (for streaming previews).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    device, dtype = unet.device, unet.dtype
    shape = (num_images, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    guided = class_labels is not None and guidance_scale != 1.0
    if class_labels is not None:
        class_labels = class_labels.to(device)
        if guided and null_label is None:
            raise ValueError("classifier-free guidance needs the model's null label")

    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    noise = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device, dtype)
    if init_images is None:
        x = noise * scheduler.init_noise_sigma
    else:
        if init_images.shape[1:] != shape[1:]:
            raise ValueError(f"init_images must have shape (N, {shape[1]}, {shape[2]}, {shape[3]}), got {tuple(init_images.shape)}")
        skip = num_inference_steps - min(max(1, round(num_inference_steps * strength)), num_inference_steps)
        timesteps = timesteps[skip * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip * scheduler.order)
        x = scheduler.add_noise(init_images.to(device, dtype), noise, timesteps[:1].repeat(num_images))

    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(x, t)
        if guided:
            both = unet(torch.cat([model_input, model_input]), t, class_labels=torch.cat([class_labels, torch.full_like(class_labels, null_label)])).sample
            cond, uncond = both.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        else:
            pred = unet(model_input, t, class_labels=class_labels).sample
        if getattr(scheduler, "genkit_x0", None) is not None:
            ab = scheduler.alphas_cumprod[int(round(float(t)))].to(device, pred.dtype)
            pred = scheduler.genkit_x0.to_epsilon(pred, model_input, ab)
        extra = {"generator": generator} if takes_generator else {}
        x = scheduler.step(pred, t, x, **extra).prev_sample
        if callback is not None:
            callback(i, len(timesteps), x)
    return x
