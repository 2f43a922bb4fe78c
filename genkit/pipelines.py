"""`GenkitDiffusionPipeline`: genkit's diffusion sampler as a self-contained Diffusers pipeline.

This file imports only the standard library, torch and diffusers: genkit copies it into every run folder that needs it as
`pipeline.py`, so `DiffusionPipeline.from_pretrained(run, trust_remote_code=True)` loads the run where genkit is not
installed. It is also genkit's one sampling loop (`genkit sample` goes through it), so both give the same images.

The loop applies `init_noise_sigma` and `scale_model_input` (right for every scheduler, unlike `DDPMPipeline`), class
labels with classifier-free guidance, SDEdit (`image` + `strength`) and the x0 handling (clip / dynamic thresholding),
which lives in the pipeline's config and not in the scheduler, so a stock scheduler swap keeps it. Latent runs carry a
`LatentDecoder` component and decode in `__call__`. Flow-matching models (`prediction_type="flow_prediction"`, the
velocity noise - x0) run with Diffusers' FlowMatch schedulers or DPM-Solver / UniPC on flow sigmas, the same loop.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

X0_MODES = ("none", "clip", "dynamic")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")  # flow_prediction: the velocity noise - x0 of flow matching
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# the torch layers a LatentDecoder may hold, with the attributes that rebuild each one (Dropout and Identity do
# nothing at inference and are left out)
DECODER_LAYERS = {
    "Linear": ("in_features", "out_features", "bias"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"),
    "ConvTranspose2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups", "bias", "dilation"),
    "Unflatten": ("dim", "unflattened_size"),
    "Flatten": ("start_dim", "end_dim"),
    "ReLU": (), "Sigmoid": (), "Tanh": (), "SiLU": (), "LeakyReLU": ("negative_slope",), "GELU": ("approximate",),
}
SKIPPED_LAYERS = ("Dropout", "Identity")


class LatentDecoder(ModelMixin, ConfigMixin):
    """Latent maps -> images in [0, 1]: a stack of torch layers written down in its config, so any sequential decoder
    (genkit's autoencoders and VAEs) is exported without its class, and loads with this file alone."""

    @register_to_config
    def __init__(self, layers: list = (), image_shape: list[int] = (1, 28, 28), latent_scale: float = 1.0, output: str = "sigmoid"):
        super().__init__()
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"output must be 'sigmoid' or 'identity', got {output!r}")
        for name, _ in layers:
            if name not in DECODER_LAYERS:
                raise ValueError(f"a LatentDecoder cannot hold a {name} layer; known: {', '.join(DECODER_LAYERS)}")
        self.net = nn.Sequential(*[getattr(nn, name)(**options) for name, options in layers])

    @classmethod
    def from_module(cls, decoder: nn.Module, image_shape: list[int], latent_scale: float = 1.0, output: str = "sigmoid") -> "LatentDecoder":
        """The same decoder, weights included, from a (possibly nested) `nn.Sequential` of known layers."""
        if not isinstance(decoder, nn.Sequential):
            raise ValueError(f"only an nn.Sequential decoder can be exported, got {type(decoder).__name__}")
        leaves = [m for m in decoder.modules() if not list(m.children())]
        kept, specs = [], []
        for layer in leaves:
            name = type(layer).__name__
            if name.startswith(SKIPPED_LAYERS):
                continue
            if name not in DECODER_LAYERS:
                raise ValueError(f"cannot export a decoder with a {name} layer; known: {', '.join(DECODER_LAYERS)}")
            options = {key: getattr(layer, key) for key in DECODER_LAYERS[name]}
            if "bias" in options:
                options["bias"] = options["bias"] is not None
            kept.append(layer)
            specs.append([name, options])
        exported = cls(specs, list(image_shape), latent_scale, output)
        for source, target in zip(kept, exported.net):
            target.load_state_dict(source.state_dict())
        return exported.to(next(decoder.parameters()).device).eval()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, c, h, w), scaled as the UNet sees them -> images (N, C, H, W) in [0, 1]."""
        x = self.net(latents.flatten(1) / self.config.latent_scale).view(-1, *self.config.image_shape)
        return (torch.sigmoid(x) if self.config.output == "sigmoid" else x).clamp(0, 1)


def decode_samples(x: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
    """Samples in model space (pixels in [-1, 1], or latents with a decoder) -> float images in [0, 1]."""
    if decoder is None:
        return ((x.float() + 1) / 2).clamp(0, 1)
    return decoder(x.to(decoder.dtype)).float().clamp(0, 1)


def handle_x0(x0: torch.Tensor, mode: str, clip_range: float = 1.0, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Clip x0 to [-clip_range, clip_range], or Imagen's dynamic thresholding: each image clamped at the `ratio` quantile
    of its |pixels| (at least 1, at most `max_value`) and rescaled by it."""
    if mode == "clip":
        return x0.clamp(-clip_range, clip_range)
    if mode == "dynamic":
        level = torch.quantile(x0.abs().flatten(1).float(), ratio, dim=1).clamp(1, max_value).to(x0.dtype)
        level = level.view(-1, *[1] * (x0.ndim - 1))
        return torch.maximum(torch.minimum(x0, level), -level) / level
    return x0


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether `scheduler` walks the flow-matching path x_t = (1 - s) x0 + s noise (FlowMatch*, or use_flow_sigmas)."""
    return type(scheduler).__name__.startswith("FlowMatch") or bool(scheduler.config.get("use_flow_sigmas", False))


def convert_prediction(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, source: str, target: str,
                       x0_fn: Callable[[torch.Tensor], torch.Tensor] = lambda x0: x0) -> torch.Tensor:
    """A `source`-type prediction at x_t as a `target`-type one (epsilon, v_prediction, sample), with `x0_fn` applied to
    the clean image in between."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x0 = x0_fn({"epsilon": (x_t - s * pred) / a, "sample": pred, "v_prediction": a * x_t - s * pred}[source])
    eps = (x_t - a * x0) / s
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[target]


class GenkitDiffusionPipeline(DiffusionPipeline):
    """UNet + any scheduler (+ a latent decoder), with class labels by index or name and classifier-free guidance (the null
    label is the last class embedding); the x0 handling is part of the config."""

    model_cpu_offload_seq = "unet->decoder"
    _optional_components = ["decoder"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: nn.Module, scheduler: Any, decoder: ModelMixin | None = None, id2label: dict | None = None,
                 prediction_type: str | None = None, x0_handling: str = "none", clip_sample_range: float = 1.0,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0):
        super().__init__()
        if x0_handling not in X0_MODES:
            raise ValueError(f"x0_handling must be one of {X0_MODES}, got {x0_handling!r}")
        if prediction_type not in (None, *PREDICTION_TYPES):
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} (or None: the scheduler's), got {prediction_type!r}")
        self.register_modules(unet=unet, scheduler=scheduler, decoder=decoder)
        # JSON turns int keys into strings; keep them as strings in the config, convert on use
        self.register_to_config(id2label={str(k): v for k, v in (id2label or {}).items()}, prediction_type=prediction_type,
                                x0_handling=x0_handling, clip_sample_range=clip_sample_range,
                                dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value)

    @property
    def id2label(self) -> dict[int, str]:
        """Class index -> class name."""
        return {int(k): v for k, v in (self.config.id2label or {}).items()}

    @property
    def null_label(self) -> int | None:
        """The label index that means 'no class' (used for the unconditional half of guidance)."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - 1

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set by a callback (`pipe._interrupt = True`) to skip the remaining steps."""
        return getattr(self, "_interrupt", False)

    def labels_to_ids(self, class_labels: list[int | str] | torch.Tensor | int | str) -> torch.Tensor:
        """Class indices or names -> a label tensor, with a clear error for unknown ones."""
        if isinstance(class_labels, torch.Tensor):
            ids = class_labels.long().flatten().tolist()
        else:
            items = class_labels if isinstance(class_labels, (list, tuple)) else [class_labels]
            by_name = {v: k for k, v in self.id2label.items()}
            ids = []
            for item in items:
                if isinstance(item, str) and not item.isdigit():
                    if item not in by_name:
                        raise ValueError(f"unknown class name {item!r}; known: {list(by_name)}")
                    ids.append(by_name[item])
                else:
                    ids.append(int(item))
        limit = self.null_label if self.null_label is not None else 0
        # a label tensor may also hold the null label: an unconditional image in the batch
        top = limit + 1 if isinstance(class_labels, torch.Tensor) and self.null_label is not None else limit
        bad = [i for i in ids if not 0 <= i < top]
        if bad:
            raise ValueError(f"class label(s) {bad} out of range: this model knows {limit} classes (0..{limit - 1})")
        return torch.tensor(ids, dtype=torch.long)

    def prepare_labels(self, class_labels: Any, batch_size: int) -> tuple[torch.Tensor | None, int]:
        """The label of each image (null labels for an unconditional sample of a conditional model), and the batch size."""
        if class_labels is None:
            return (None if self.null_label is None else torch.full((batch_size,), self.null_label, dtype=torch.long)), batch_size
        if self.null_label is None:
            raise ValueError("this model is unconditional: leave class_labels unset")
        labels = self.labels_to_ids(class_labels)
        if len(labels) == 1 and batch_size > 1:
            labels = labels.repeat(batch_size)
        return labels, len(labels)

    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
        """The UNet's prediction at x_t (already scaled by the scheduler), guided when a scale other than 1 is set."""
        if labels is None or guidance_scale == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, self.null_label)])).sample
        cond, uncond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def for_scheduler(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction in the scheduler's prediction type, after this pipeline's x0 handling (any scheduler alike)."""
        config, flow = self.config, is_flow_scheduler(self.scheduler)
        target = self.scheduler.config.get("prediction_type") or "flow_prediction"  # FlowMatch schedulers take velocities only
        source = config.prediction_type or target
        if (source == "flow_prediction") != flow or (flow and target != "flow_prediction"):
            raise ValueError(f"a {source} model cannot be sampled by {type(self.scheduler).__name__} ({target}): flow-matching models need a "
                             "flow scheduler (FlowMatchEuler/Heun, or DPMSolverMultistep/UniPC with use_flow_sigmas=True and "
                             "prediction_type='flow_prediction'); noise-prediction models a DDPM-family one")

        def x0_fn(x0: torch.Tensor) -> torch.Tensor:
            return handle_x0(x0, config.x0_handling, config.clip_sample_range, config.dynamic_thresholding_ratio, config.sample_max_value)

        if config.x0_handling == "none" and source == target:
            return pred
        if flow:  # x_t = (1 - s) x0 + s noise, velocity noise - x0, s = t / T
            s = (t.float() / self.scheduler.config.num_train_timesteps).clamp(min=1e-4).to(pred.device)
            x0 = x0_fn(x.float() - s * pred.float())
            return ((x.float() - x0) / s).to(pred.dtype)
        alphas = getattr(self.scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ValueError(f"x0 handling and prediction conversion need a scheduler with alphas_cumprod, not {type(self.scheduler).__name__}")
        alpha_bar = alphas[min(int(round(float(t))), len(alphas) - 1)].to(pred.device, torch.float32)
        return convert_prediction(pred.float(), x.float(), alpha_bar, source, target, x0_fn).to(pred.dtype)

    def set_timesteps(self, num_inference_steps: int, device: torch.device) -> None:
        """The scheduler's timesteps; FlowMatch Euler gets the evenly spaced sigmas 1, 1 - 1/n, ..., 1/n of Diffusers' SD3 and Flux
        pipelines (its own default ends at 1/T, which spends one of few steps going from 0.001 to 0)."""
        if type(self.scheduler).__name__.startswith("FlowMatch") and "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters:
            self.scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / num_inference_steps, num_inference_steps).tolist(), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

    def check_inputs(self, num_inference_steps: int, strength: float, output_type: str, generator: Any, batch_size: int,
                     tensor_inputs: list[str]) -> None:
        """One-line errors for bad arguments, before any work."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got a list of {len(generator)} generators for {batch_size} images: pass one per image")
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} unknown; this pipeline offers {self._callback_tensor_inputs}")

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: list[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Generate `batch_size` images (or one per class label, given by index or name).

        `latents`: the starting noise; `image` (in model space: [-1, 1] pixels, or latents for a latent model) with
        `strength` < 1 is noised to that fraction of the schedule and denoised from there (SDEdit). `output_type`: pil,
        np (N, H, W, C) or pt (N, C, H, W) images in [0, 1], or latent (the samples in model space, undecoded).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        labels, batch_size = self.prepare_labels(class_labels, batch_size)
        if image is not None:
            batch_size = len(image)
            if labels is not None and len(labels) != batch_size:
                labels = labels[:1].repeat(batch_size)
        self.check_inputs(num_inference_steps, strength, output_type, generator, batch_size, list(callback_on_step_end_tensor_inputs))
        device, dtype = self._execution_device, self.unet.dtype
        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        if labels is not None:
            labels = labels.to(device)

        self.set_timesteps(num_inference_steps, device)
        timesteps = self.scheduler.timesteps
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None else latents.to(device, dtype)
        if image is None:
            x = noise * getattr(self.scheduler, "init_noise_sigma", 1.0)  # FlowMatch schedulers start at pure noise, sigma 1
        else:
            if tuple(image.shape[1:]) != shape[1:]:
                raise ValueError(f"image must have shape (N, {shape[1]}, {shape[2]}, {shape[3]}) in model space, got {tuple(image.shape)}")
            skip = num_inference_steps - min(max(1, round(num_inference_steps * strength)), num_inference_steps)
            timesteps = timesteps[skip * self.scheduler.order :]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(skip * self.scheduler.order)
            start = timesteps[:1].repeat(batch_size)
            if hasattr(self.scheduler, "scale_noise"):  # FlowMatch schedulers: (1 - s) image + s noise
                x = self.scheduler.scale_noise(image.to(device, dtype), start, noise)
            else:
                x = self.scheduler.add_noise(image.to(device, dtype), noise, start)

        self._num_timesteps, self._interrupt = len(timesteps), False
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = self.scheduler.scale_model_input(x, t) if hasattr(self.scheduler, "scale_model_input") else x
                pred = self.for_scheduler(self.predict(model_input, t, labels, guidance_scale), model_input, t)
                x = self.scheduler.step(pred, t, x, **({"generator": generator} if takes_generator else {})).prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": x}
                    outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                    x = outputs.pop("latents", x)
                progress.update()

        images = x if output_type == "latent" else decode_samples(x, self.decoder)
        if output_type in ("np", "pil"):
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save a Diffusers repo that loads without genkit: this file travels as `pipeline.py` (and `decoder/pipeline.py`,
        where Diffusers looks for a custom component's class), named in `model_index.json`."""
        if kwargs.get("push_to_hub"):
            raise ValueError("save the pipeline to a folder, then upload the folder (push_to_hub would miss pipeline.py)")
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        source = Path(__file__)
        shutil.copyfile(source, folder / "pipeline.py")
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = ["pipeline", type(self).__name__]
        if self.decoder is not None:
            shutil.copyfile(source, folder / "decoder" / "pipeline.py")
            index["decoder"] = ["pipeline", type(self.decoder).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
