"""genkit's scheduler menu and x0 options around the one sampling loop, `GenkitDiffusionPipeline.__call__`.

`DDPMPipeline` never applies `init_noise_sigma` or `scale_model_input`, so sigma-based schedulers (Euler, Heun) come out
wrong through it; the pipeline's loop applies both, passes the generator where the scheduler takes one, and can start
from a partly noised image (denoising, SDEdit).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .pipelines import X0_MODES, GenkitDiffusionPipeline

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
# flow-matching models (velocity on x_t = (1 - s) x0 + s noise) take the samplers written for that path, under the same
# names: Diffusers' FlowMatch Euler / Heun, Euler with fresh noise at each step (euler_a), and DPM-Solver++ / UniPC on flow sigmas
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_SCHEDULERS: dict[str, tuple[type, dict]] = {
    "euler": (FlowMatchEulerDiscreteScheduler, {}),
    "euler_a": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": True}),
    "heun": (FlowMatchHeunDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, **FLOW}),
    "dpm++_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **FLOW}),
    "unipc": (UniPCMultistepScheduler, FLOW),
}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
NOISE_SCHEDULE = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
NO_SAMPLE_PREDICTION = {"euler_a"}  # schedulers that raise on prediction_type="sample"


@dataclass
class X0Handling:
    """What the sampler does with each step's prediction of the clean image, for every scheduler alike.

    `clip` clamps the predicted x0 to [-clip_range, clip_range] (diffusers' `clip_sample`); `dynamic` is Imagen's
    dynamic thresholding: each image's x0 is clamped at the `ratio` quantile of its |pixels| (at least 1, at most
    `max_value`) and rescaled by it. The pipeline applies it, so schedulers without these options get them too.
    """

    mode: str = "none"
    clip_range: float = 1.0
    ratio: float = 0.995
    max_value: float = 1.0

    def pipeline_config(self) -> dict[str, Any]:
        """The matching `GenkitDiffusionPipeline` options."""
        if self.mode not in X0_MODES:
            raise ValueError(f"x0 handling must be one of {X0_MODES}, got {self.mode!r}")
        return {"x0_handling": self.mode, "clip_sample_range": self.clip_range, "dynamic_thresholding_ratio": self.ratio,
                "sample_max_value": self.max_value}


def make_scheduler(name: str, train_config: dict, timestep_spacing: str | None = None, flow: bool = False) -> SchedulerMixin:
    """A sampling scheduler of kind `name` sharing the training noise schedule (betas, prediction type), or for a
    flow-matching model (`flow`), the flow-matching form of that sampler.

    The scheduler clips nothing: x0 handling is the pipeline's, so it survives a scheduler swap.
    """
    menu = FLOW_SCHEDULERS if flow else SCHEDULERS
    if name not in menu:
        kind = "a flow-matching model" if flow else "a noise-prediction model"
        raise ValueError(f"unknown scheduler {name!r} for {kind}; choose one of {', '.join(menu)}")
    if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    cls, extra = menu[name]
    if flow and extra.get("stochastic_sampling") and "stochastic_sampling" not in inspect.signature(cls.__init__).parameters:
        raise ValueError(f"the flow sampler {name!r} needs diffusers >= 0.34 (FlowMatchEulerDiscreteScheduler's stochastic_sampling); "
                         f"this is diffusers {diffusers.__version__}: upgrade it or choose one of {', '.join(k for k in menu if k != name)}")
    if flow:  # evenly spaced in sigma (Diffusers' flow samplers have no other spacing); the shift is the training one
        if timestep_spacing is not None:
            raise ValueError("timestep_spacing applies to noise-prediction models; flow-matching samplers space sigma evenly")
        keep = {key: train_config[key] for key in ("num_train_timesteps", "shift") if key in train_config}
        if cls is not FlowMatchEulerDiscreteScheduler and cls is not FlowMatchHeunDiscreteScheduler:
            keep = {"num_train_timesteps": keep.get("num_train_timesteps", 1000), "flow_shift": keep.get("shift", 1.0)}
        return cls(**keep, **extra)
    # "leading" by default for every scheduler: "linspace"/"trailing" start at t=T-1, where a squaredcos_cap_v2
    # schedule has alpha_bar ~ 2e-9 (sigma ~ 2e4) and epsilon errors are multiplied into noise. Passed as a keyword:
    # from_config() replaces keys the training scheduler left at their defaults with the new class's defaults.
    config = dict(train_config)
    extra = {**extra, "timestep_spacing": timestep_spacing or "leading"}
    # the noise schedule is pinned too: left implicit, Heun would take its own default betas (0.00085..0.012) for a
    # training schedule that kept DDPM's (0.0001..0.02), and sample a different schedule than the one trained
    extra.update({key: config[key] for key in NOISE_SCHEDULE if key in config})
    if name in NO_SAMPLE_PREDICTION and config.get("prediction_type") == "sample":
        config["prediction_type"] = "epsilon"  # euler_a raises on x0 predictions: the pipeline hands it epsilon
    config.update(clip_sample=False, thresholding=False)
    return cls.from_config(config, **extra)


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    num_images: int,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    x0: X0Handling | None = None,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """Run the reverse process of a pixel-space model through the pipeline's loop; returns samples in the model's space
    ([-1, 1]). `init_images` (SDEdit) are in that space too.

    `prediction_type` is the UNet's (default: the scheduler's); `callback(i, n, x)` sees the sample after each step.
    """
    pipe = GenkitDiffusionPipeline(unet, scheduler, prediction_type=prediction_type, **(x0 or X0Handling()).pipeline_config())
    pipe.set_progress_bar_config(disable=True)
    image = None if init_images is None else (init_images + 1) / 2  # the pipeline takes images in [0, 1], as Diffusers' do
    return pipe(num_images, class_labels, guidance_scale, num_inference_steps, generator, image=image, strength=strength,
                output_type="latent", callback_on_step_end=step_callback(callback)).images


def step_callback(callback: Callable[[int, int, torch.Tensor], None] | None) -> Callable | None:
    """An old-style `callback(i, n, x)` as a Diffusers `callback_on_step_end`."""
    if callback is None:
        return None

    def on_step_end(pipe: GenkitDiffusionPipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
        callback(i, pipe.num_timesteps, tensors["latents"])
        return {}

    return on_step_end
