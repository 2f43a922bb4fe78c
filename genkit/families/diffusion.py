"""Diffusion on Diffusers' `UNet2DModel`: DDPM training (epsilon / v / x0 targets) or flow matching (rectified flow: the
velocity noise - x0 on the straight path between data and noise), and any scheduler that fits the objective for sampling.

Every run (unconditional or class-conditional, pixel or latent, DDPM or flow matching) is saved as a
`GenkitDiffusionPipeline` whose code travels with it (`pipeline.py`) and whose config carries the run's sampler, steps,
guidance and x0 handling, so it loads in stock Diffusers with `trust_remote_code=True` and samples as `genkit sample` does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.training_utils import compute_snr

from .. import mean_flow, reflow
from ..config import ConfigError, TrainConfig
from ..pipelines import GenkitDiffusionPipeline, LatentDecoder, decode_samples
from ..sampling import FLOW_SCHEDULERS, SCHEDULERS, X0Handling, make_scheduler, step_callback
from .base import Family, save_without_card, unwrap

# channels per resolution level; every preset has 3 levels, so 28x28 (28 -> 14 -> 7) and 32x32 both work
PRESETS = {
    "tiny": {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "attention": False},
    "small": {"block_out_channels": [32, 64, 64], "layers_per_block": 2, "attention": True},
    "base": {"block_out_channels": [64, 128, 128], "layers_per_block": 2, "attention": True},
}
OBJECTIVES = ("ddpm", "flow_matching", "mean_flow")  # mean_flow: average velocities on the flow path (genkit/mean_flow.py)
FLOW_OBJECTIVES = ("flow_matching", "mean_flow")  # both live on the straight path z = (1 - t) x + t e
DEFAULT_SAMPLER = {"ddpm": "dpm++_sde", "flow_matching": "euler", "mean_flow": "euler"}
# what a MeanFlow run samples with unless its config says otherwise: one jump, no extra CFG (it is in the training target)
MEAN_FLOW_DEFAULTS = {"sample_steps": 1, "guidance_scale": 1.0}
# DDPM-only options: a flow-matching config that sets one is told so instead of having it ignored
DDPM_ONLY = ("prediction_type", "beta_schedule", "snr_gamma", "timestep_spacing")


def build_unet(image_size: int, channels: int, block_out_channels: list[int], layers_per_block: int, attention: bool,
               num_classes: int | None = None) -> UNet2DModel:
    """A UNet2DModel whose depth is valid for `image_size`; conditional models get one extra 'null' class embedding."""
    levels = len(block_out_channels)
    if image_size % 2 ** (levels - 1):
        raise ConfigError(f"a UNet with {levels} levels needs image_size divisible by {2 ** (levels - 1)}, got {image_size}; "
                          f"use 3 levels for 28x28 or set data.image_size=32 (zero padding)")
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:  # self-attention at the lowest resolution only: cheap at 7x7 / 8x8
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=min(8, block_out_channels[0]), num_class_embeds=None if num_classes is None else num_classes + 1,
    )


class DiffusionFamily(Family):
    """DDPM training with epsilon / v / sample prediction and min-SNR weighting, or flow matching with uniform or
    logit-normal times; label dropout for classifier-free guidance."""

    name = "diffusion"
    model_classes = {"unet": UNet2DModel}
    parts = ("unet",)
    ema_part = "unet"

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:`, with their defaults."""
        return {
            "preset": "small", "block_out_channels": None, "layers_per_block": None, "attention": None,
            # flow_matching: x_t = (1 - s) x0 + s noise, the UNet predicts noise - x0 at timestep s * T; s is drawn
            # uniformly or logit-normally (sigmoid of N(logit_mean, logit_std), SD3's choice: more weight mid-path);
            # flow_shift > 1 moves the sampling steps towards noise (SD3's shift); time_sampling: grid trains only at the
            # times an Euler sampler of grid_steps steps visits (one-step distillation on reflow pairs, Liu et al.'s last stage)
            "objective": "ddpm", "time_sampling": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "flow_shift": 1.0, "grid_steps": [1, 2],
            "prediction_type": "epsilon", "beta_schedule": "linear", "num_train_timesteps": 1000, "snr_gamma": None,
            "class_conditional": False, "label_dropout": 0.1,
            # sampler null: dpm++_sde for ddpm, euler for flow matching
            "sampler": None, "sample_steps": 20, "guidance_scale": 2.0, "timestep_spacing": None,
            # the predicted clean image at each sampling step: clipped to [-range, range] (null: on in pixel space, off
            # for latents) or, with thresholding, Imagen's dynamic thresholding at the given quantile
            "clip_sample": None, "clip_sample_range": 1.0, "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
            # latent diffusion: a genkit autoencoder / VAE run whose codes (latent_dim = 16 * c) become c x 4 x 4 maps
            "autoencoder": None, "latent_scale": 1.0,
            **mean_flow.OPTIONS,
        }

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject options this family cannot use, naming the fix."""
        super().check_config(config)
        m = {**cls.model_options(), **config.model}
        if m["preset"] not in PRESETS:
            raise ConfigError(f"model.preset must be one of {list(PRESETS)}, got {m['preset']!r}")
        if m["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"model.prediction_type must be epsilon, v_prediction or sample, got {m['prediction_type']!r}")
        if m["beta_schedule"] not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ConfigError(f"model.beta_schedule must be linear, scaled_linear or squaredcos_cap_v2, got {m['beta_schedule']!r}")
        if m["objective"] not in OBJECTIVES:
            raise ConfigError(f"model.objective must be one of {OBJECTIVES}, got {m['objective']!r}")
        flow = m["objective"] in FLOW_OBJECTIVES
        if m["objective"] == "mean_flow":
            try:
                mean_flow.check_options(m)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if flow:
            if m["time_sampling"] not in ("uniform", "logit_normal", "grid"):
                raise ConfigError(f"model.time_sampling must be uniform, logit_normal or grid, got {m['time_sampling']!r}")
            steps = m["grid_steps"]
            if not isinstance(steps, list) or not steps or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in steps):
                raise ConfigError(f"model.grid_steps must be a list of sampler step counts >= 1 (e.g. [1, 2]), got {steps!r}")
            if not m["logit_std"] > 0 or not m["flow_shift"] > 0:
                raise ConfigError("model.logit_std and model.flow_shift must be > 0")
            misplaced = [k for k in DDPM_ONLY if config.model.get(k) is not None and k in config.model]
            if misplaced:
                raise ConfigError(f"model.{misplaced[0]} applies to objective: ddpm; flow matching predicts the velocity noise - x0 on a "
                                  f"straight path: remove it from the config or --set model.{misplaced[0]}=null")
        menu = FLOW_SCHEDULERS if flow else SCHEDULERS
        if m["sampler"] is not None and m["sampler"] not in menu:
            raise ConfigError(f"model.sampler must be one of {list(menu)} for objective {m['objective']}, got {m['sampler']!r}")
        if m["clip_sample"] not in (None, True, False):
            raise ConfigError(f"model.clip_sample must be true, false or null (on for pixel-space models), got {m['clip_sample']!r}")
        if not 0 < m["dynamic_thresholding_ratio"] <= 1 or m["sample_max_value"] < 1 or m["clip_sample_range"] <= 0:
            raise ConfigError("model.dynamic_thresholding_ratio must be in (0, 1], sample_max_value >= 1 and clip_sample_range > 0")
        if not 0 <= m["label_dropout"] < 1:
            raise ConfigError(f"model.label_dropout must be in [0, 1), got {m['label_dropout']}")
        if config.data.value_range != "-1,1":
            raise ConfigError("diffusion models work on images in [-1, 1]: set data.value_range to '-1,1'")
        if config.data.corruption:
            raise ConfigError("diffusion adds its own noise: leave data.corruption unset")

    def __init__(self, config: TrainConfig, info, models=None):
        models = dict(models) if models is not None else None
        self.autoencoder = (models or {}).pop("autoencoder", None)
        if self.autoencoder is None and config.model.get("autoencoder"):
            # a saved run (a Hub snapshot, say) without its autoencoder/ folder names one only as a Hub id, never a local path
            self.autoencoder = self._load_autoencoder(config.model["autoencoder"], hub_only=models is not None)
        super().__init__(config, info, models)
        if self.autoencoder is not None:
            self._check_autoencoder(config.model.get("autoencoder"))
        # the decoder a latent run's pipeline carries: the autoencoder's own layers, exported without its class
        self.decoder = None if self.autoencoder is None else LatentDecoder.from_module(
            self.autoencoder.decoder, self.autoencoder.image_shape, self.option("latent_scale"),
            "identity" if getattr(self.autoencoder, "linear", False) else "sigmoid")
        # the training noise schedule; sampling schedulers are built from it (make_scheduler), x0 handling is the pipeline's
        if self.flow:
            self.noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.option("num_train_timesteps"), shift=self.option("flow_shift"))
            return
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=self.option("num_train_timesteps"), beta_schedule=self.option("beta_schedule"),
                                             prediction_type=self.option("prediction_type"), clip_sample=False)

    def x0_handling(self, mode: str | None = None) -> X0Handling:
        """The run's x0 clipping (or `mode`: none, clip, dynamic) for sampling."""
        if mode is None:
            clip = self.option("clip_sample")
            clip = self.autoencoder is None if clip is None else clip  # pixels live in [-1, 1]; latents have no such bound
            mode = "dynamic" if self.option("thresholding") else "clip" if clip else "none"
        return X0Handling(mode, self.option("clip_sample_range"), self.option("dynamic_thresholding_ratio"), self.option("sample_max_value"))

    @property
    def flow(self) -> bool:
        """Whether this model lives on the flow-matching path (flow matching or MeanFlow; else DDPM)."""
        return self.option("objective") in FLOW_OBJECTIVES

    def option(self, key: str) -> Any:
        """A model option from the config, or its default; a MeanFlow run samples in 1 step with its trained-in guidance."""
        if key in MEAN_FLOW_DEFAULTS and key not in self.config.model and self.mean_flow:
            return MEAN_FLOW_DEFAULTS[key]
        return super().option(key)

    @property
    def mean_flow(self) -> bool:
        """Whether this is a MeanFlow (average-velocity, one-step) model."""
        return self.option("objective") == "mean_flow"

    @property
    def models(self) -> dict[str, torch.nn.Module]:
        """The modules; a MeanFlow run given a flow-matching UNet (init_from) widens it with the (t - r) input channel."""
        return self._models

    @models.setter
    def models(self, models: dict[str, torch.nn.Module]) -> None:
        if self.mean_flow and "unet" in models:
            models = {**models, "unet": mean_flow.widen_unet(models["unet"])}
        self._models = models

    @functools.cached_property
    def paired_noise(self) -> reflow.PairedNoise | None:
        """The noise of each image when a flow run trains on a reflow pairs folder, else None (looked up once, not every step)."""
        return reflow.PairedNoise.for_data(self.config.data) if self.flow else None

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: epsilon, v_prediction, sample, flow_prediction (the velocity noise - x0) or average_velocity (MeanFlow)."""
        return "average_velocity" if self.mean_flow else "flow_prediction" if self.flow else self.option("prediction_type")

    @property
    def sampler(self) -> str:
        """The run's default sampler."""
        return self.option("sampler") or DEFAULT_SAMPLER[self.option("objective")]

    @property
    def conditional(self) -> bool:
        """Whether the UNet takes class labels."""
        return unwrap(self.models["unet"]).config.num_class_embeds is not None

    @property
    def null_label(self) -> int | None:
        """The 'no class' label (last embedding), or None for unconditional models."""
        n = unwrap(self.models["unet"]).config.num_class_embeds
        return None if n is None else n - 1

    @staticmethod
    def _load_autoencoder(source: str, hub_only: bool = False) -> torch.nn.Module:
        from ..runs import load_family

        try:
            family = load_family(source, hub_only=hub_only)
        except ConfigError as err:
            where = "this run has no autoencoder/ folder, and a downloaded run's model.autoencoder is looked up on the Hub only: " if hub_only else ""
            raise ConfigError(f"model.autoencoder={source!r}: {where}{err}") from None
        model = family.models.get("model")
        if model is None or not hasattr(model, "encode") or not hasattr(model, "decode"):
            raise ConfigError(f"model.autoencoder={source!r} is a {family.config.family} run; latent diffusion needs an autoencoder or vae run")
        if model.latent_dim % 16:
            raise ConfigError(f"latent diffusion maps codes to c x 4 x 4: the autoencoder's latent_dim must be a multiple of 16, got {model.latent_dim}")
        return model.eval().requires_grad_(False)

    def _check_autoencoder(self, source: str | None) -> None:
        """Refuse an autoencoder that does not fit this run's images or UNet (a readable error, not a shape error mid-sampling)."""
        ae, unet = self.autoencoder, unwrap(self.models["unet"]).config
        name = f"the autoencoder ({source})" if source else "the run's autoencoder/"
        image = (self.info.channels, self.info.image_size, self.info.image_size)
        if tuple(ae.image_shape) != image:
            raise ConfigError(f"{name} works on {'x'.join(map(str, ae.image_shape))} images, this run's data is {'x'.join(map(str, image))}: "
                              "latent diffusion needs an autoencoder trained on the same images")
        if ae.latent_dim % 16 or (unet.in_channels, unet.sample_size) != (ae.latent_dim // 16, 4):
            raise ConfigError(f"{name} has {ae.latent_dim}-d codes, but the UNet denoises {unet.in_channels} x {unet.sample_size} x "
                              f"{unet.sample_size} latents ({16 * unet.in_channels}-d codes): it is not the autoencoder this model was trained with")

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latent maps (N, latent_dim / 16, 4, 4)."""
        self.autoencoder.to(images.device)
        code = self.autoencoder.encode((images.float() + 1) / 2)
        code = code[0] if isinstance(code, tuple) else code  # VAE: the posterior mean
        return code.view(len(code), -1, 4, 4) * self.option("latent_scale")

    def build(self) -> dict[str, torch.nn.Module]:
        """Fresh modules for this family."""
        explicit = {k: self.config.model[k] for k in ["block_out_channels", "layers_per_block", "attention"] if self.config.model.get(k) is not None}
        arch = {**PRESETS[self.option("preset")], **explicit}
        classes = self.info.num_classes if self.option("class_conditional") else None
        size, channels = (4, self.autoencoder.latent_dim // 16) if self.autoencoder is not None else (self.info.image_size, self.info.channels)
        return {"unet": build_unet(size, channels, num_classes=classes, **arch)}  # MeanFlow's extra input: the models setter

    def loss(self, part: str, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and values to log."""
        x0 = batch["image"] if self.autoencoder is None else self.to_latent(batch["image"])
        n = len(x0)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        if self.paired_noise is not None:  # 2-rectified flow: each image's own noise
            noise = self.paired_noise(batch["image"])
        labels = None
        if self.conditional:
            keep = torch.rand(n, generator=generator, device=x0.device) >= self.option("label_dropout")
            labels = torch.where(keep, batch["label"], torch.full_like(batch["label"], self.null_label))
        if self.mean_flow:
            opts = {k: self.option(k) for k in mean_flow.OPTIONS}
            return mean_flow.MeanFlowLoss(opts, self.noise_scheduler.config.num_train_timesteps)(
                self.models["unet"], x0, noise, labels, self.null_label, generator)
        if self.flow:
            s = self.flow_times(n, generator, x0.device)
            noisy = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
            pred = self.models["unet"](noisy, s * self.noise_scheduler.config.num_train_timesteps, class_labels=labels).sample.float()
            return F.mse_loss(pred, noise - x0), {}
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n,), generator=generator, device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.models["unet"](noisy, t, class_labels=labels).sample.float()
        kind = self.option("prediction_type")
        target = {"epsilon": noise, "v_prediction": self.noise_scheduler.get_velocity(x0, noise, t), "sample": x0}[kind]
        per_image = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        gamma = self.option("snr_gamma")
        if gamma is None:
            return per_image.mean(), {}
        # min-SNR-gamma weighting (Hang et al. 2023), written for each prediction target
        snr = compute_snr(self.noise_scheduler, t)
        clipped = torch.clamp(snr, max=gamma)
        weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[kind]
        return (per_image * weight).mean(), {"mse": per_image.mean().detach()}

    def flow_times(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Path positions s in (0, 1] (0: data, 1: noise) for a training batch: uniform, logit-normal, or the Euler grid."""
        if self.option("time_sampling") == "grid":
            # a step count m from grid_steps, then one of its times 1, 1 - 1/m, ..., 1/m, shifted as the sampler shifts them
            steps = torch.tensor(self.option("grid_steps"), dtype=torch.float32, device=device)
            m = steps[torch.randint(0, len(steps), (n,), generator=generator, device=device)]
            s = 1 - torch.floor(torch.rand(n, generator=generator, device=device) * m) / m
            shift = self.option("flow_shift")
            return shift * s / (1 + (shift - 1) * s)
        if self.option("time_sampling") == "logit_normal":
            return torch.sigmoid(self.option("logit_mean") + self.option("logit_std") * torch.randn(n, generator=generator, device=device))
        return torch.rand(n, generator=generator, device=device)

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        # fixed noise and timesteps, so evaluations are comparable across steps and leave the training RNG alone
        """Validation metrics on one batch."""
        generator = torch.Generator(device=batch["image"].device).manual_seed(0)
        loss, _ = self.loss("unet", batch, generator)
        return {"eval_loss": loss.item()}

    def pipeline(self, scheduler: str | None = None, timestep_spacing: str | None = None, x0: str | None = None) -> GenkitDiffusionPipeline:
        """A pipeline over the current UNet (and decoder) with a sampling scheduler (default: the run's `model.sampler`)."""
        sched = make_scheduler(scheduler or self.sampler, self.noise_scheduler.config, timestep_spacing or self.option("timestep_spacing"), self.flow)
        unet = unwrap(self.models["unet"])
        if self.decoder is not None:
            self.decoder.to(unet.device)
        id2label = dict(enumerate(self.info.class_names)) if self.conditional else None
        # the run's steps and guidance are the pipeline's call defaults: `pipe()` samples as `genkit sample` does
        pipe = GenkitDiffusionPipeline(unet, sched, self.decoder, id2label, self.prediction_type, **self.x0_handling(x0).pipeline_config(),
                                       num_inference_steps=self.option("sample_steps"),
                                       guidance_scale=self.option("guidance_scale") if self.conditional else 1.0)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in model space (pixels in [-1, 1] or latents) -> images in [0, 1]."""
        if self.decoder is not None:
            self.decoder.to(x.device)
        return decode_samples(x, self.decoder)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None, scheduler: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None, timestep_spacing: str | None = None,
                 init_images: torch.Tensor | None = None, strength: float = 1.0, callback=None, x0: str | None = None) -> torch.Tensor:
        """`n` images in [0, 1]; conditional models without labels sample the unconditional (null-label) model.

        `init_images` (in [0, 1]) with `strength` < 1 noises them to that level and denoises (SDEdit). `x0` overrides
        the run's clipping of predicted clean images: none, clip or dynamic.
        """
        pipe = self.pipeline(scheduler, timestep_spacing, x0)
        scale = guidance_scale if self.conditional else None  # guidance needs class labels: unconditional runs ignore it
        if init_images is not None and self.autoencoder is not None:  # the pipeline carries the decoder only: encode here
            init_images = self.to_latent(init_images * 2 - 1)
        return pipe(n, class_labels, scale, steps, generator, image=init_images, strength=strength, output_type="pt",
                    callback_on_step_end=step_callback(callback)).images

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """`num_samples` images; for conditional models one column per class."""
        n, labels, nrow = self.config.num_samples, None, 8
        if self.conditional:
            k = min(self.info.num_classes, 10)
            labels, nrow = torch.arange(n) % k, k
        return self.generate(n, generator, labels), nrow

    def save(self, directory: str | Path) -> None:
        """Export the pipeline (and, for latent diffusion, its autoencoder) into `directory`."""
        if self.autoencoder is not None:  # genkit's own copy (its encoder serves SDEdit); the pipeline carries the decoder
            save_without_card(self.autoencoder, Path(directory) / "autoencoder")
        self.pipeline().save_pretrained(directory)  # the run's sampler, steps, guidance and x0 handling: it samples as `genkit sample` does

    @classmethod
    def required_files(cls) -> list[str]:
        """The pipeline files `load_models` reads."""
        return ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]

    @classmethod
    def export_files(cls) -> list[str]:
        """The pipeline (with its code), and the autoencoder and decoder of latent runs."""
        return [*cls.required_files(), "pipeline.py", "autoencoder/config.json", "autoencoder/model.safetensors",
                "decoder/config.json", "decoder/diffusion_pytorch_model.safetensors", "decoder/pipeline.py"]

    @classmethod
    def load_models(cls, directory: str | Path) -> dict[str, torch.nn.Module]:
        """Read back what `save` wrote."""
        directory = Path(directory)
        if not (directory / "unet").is_dir():
            raise FileNotFoundError(f"{directory} holds no diffusion pipeline (no unet/ folder)")
        models = {"unet": UNet2DModel.from_pretrained(str(directory / "unet"))}
        if (directory / "autoencoder").is_dir():
            try:
                models["autoencoder"] = cls._load_autoencoder_weights(directory / "autoencoder")
            except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:  # a config that does not fit its weights, ...
                raise ConfigError(f"{directory / 'autoencoder'} does not load as a genkit autoencoder or VAE: "
                                  f"{' '.join(str(err).split())[:300]}") from None
        return models

    @staticmethod
    def _load_autoencoder_weights(directory: Path) -> torch.nn.Module:
        from .autoencoder import AutoencoderFamily
        from .vae import VAE

        config = json.loads((directory / "config.json").read_text())
        model = VAE.from_pretrained(str(directory)) if "decoder" in config else AutoencoderFamily.load_models(directory)["model"]
        return model.eval().requires_grad_(False)
