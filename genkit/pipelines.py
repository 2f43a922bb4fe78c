"""`GenkitDiffusionPipeline`: genkit's diffusion sampler as a self-contained Diffusers pipeline.

This file imports only the standard library, numpy, PIL, torch and diffusers: genkit copies it into every diffusion run
folder as `pipeline.py`, so `DiffusionPipeline.from_pretrained(run, trust_remote_code=True)` loads any run (unconditional,
class-conditional, latent, flow matching) where genkit is not installed. It is also genkit's one sampling loop
(`genkit sample` goes through it), so both give the same images.

It is written for every diffusers release from 0.32 on: no `from __future__ import annotations` and no `X | None`
(diffusers 0.33-0.36 read `__init__`'s annotations as classes to type-check components), and numpy sigmas for the
FlowMatch schedulers (0.32 cannot multiply a list).

The loop applies `init_noise_sigma` and `scale_model_input` (right for every scheduler, unlike `DDPMPipeline`), class
labels with classifier-free guidance, SDEdit (`image` + `strength`) and the x0 handling (clip / dynamic thresholding),
which lives in the pipeline's config and not in the scheduler, so a stock scheduler swap keeps it. Latent runs carry a
`LatentDecoder` component and decode in `__call__`. A model's objective is a row of `PREDICTION_PATHS`; `step()` is the
one place a new objective changes how a model output moves the sample.
"""

import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

# the diffusers releases this file is tested with (tests/test_diffusers_range.py), oldest and newest; pyproject's floor
DIFFUSERS_TESTED = ("0.32.0", "0.42.1")
X0_MODES = ("none", "clip", "dynamic")
# what the UNet predicts -> the noising path it was trained on, which decides the schedulers that can sample it:
# "ddpm": x_t = sqrt(a) x0 + sqrt(1 - a) noise (schedulers with alphas_cumprod); "flow": x_t = (1 - s) x0 + s noise, the
# model predicting the velocity noise - x0 (FlowMatch schedulers, or DPM-Solver / UniPC on flow sigmas)
PREDICTION_PATHS = {"epsilon": "ddpm", "v_prediction": "ddpm", "sample": "ddpm", "flow_prediction": "flow",
                    # MeanFlow: the average velocity u(x_t, r, t) over [r, t] of the flow path; the UNet takes t - r as one
                    # extra input channel, and FlowMatch Euler's step x + (s_next - s) u is its jump x_r = x_t - (t - r) u
                    "average_velocity": "flow"}
PREDICTION_TYPES = tuple(PREDICTION_PATHS)
# the stock schedulers of each path, named when one that cannot be used is set
USABLE_SCHEDULERS = {
    "ddpm": "DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler, "
            "DEISMultistepScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, "
            "LMSDiscreteScheduler, KDPM2DiscreteScheduler (any scheduler with alphas_cumprod, without use_flow_sigmas)",
    "flow": "FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, or DPMSolverMultistepScheduler / UniPCMultistepScheduler "
            "with use_flow_sigmas=True and prediction_type='flow_prediction'",
}
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
    def __init__(self, layers: list = (), image_shape: List[int] = (1, 28, 28), latent_scale: float = 1.0, output: str = "sigmoid"):
        super().__init__()
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"output must be 'sigmoid' or 'identity', got {output!r}")
        for name, _ in layers:
            if name not in DECODER_LAYERS:
                raise ValueError(f"a LatentDecoder cannot hold a {name} layer; known: {', '.join(DECODER_LAYERS)}")
        self.net = nn.Sequential(*[getattr(nn, name)(**options) for name, options in layers])

    @classmethod
    def from_module(cls, decoder: nn.Module, image_shape: List[int], latent_scale: float = 1.0, output: str = "sigmoid") -> "LatentDecoder":
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


def decode_samples(x: torch.Tensor, decoder: Optional[nn.Module] = None) -> torch.Tensor:
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


def scheduler_path(scheduler: Any) -> Optional[str]:
    """The noising path a scheduler walks: "flow" (FlowMatch*, or use_flow_sigmas), "ddpm" (alphas_cumprod), else None."""
    if type(scheduler).__name__.startswith("FlowMatch") or bool(scheduler.config.get("use_flow_sigmas", False)):
        return "flow"
    return "ddpm" if getattr(scheduler, "alphas_cumprod", None) is not None else None


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether `scheduler` walks the flow-matching path x_t = (1 - s) x0 + s noise (FlowMatch*, or use_flow_sigmas)."""
    return scheduler_path(scheduler) == "flow"


def convert_prediction(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, source: str, target: str,
                       x0_fn: Callable[[torch.Tensor], torch.Tensor] = lambda x0: x0) -> torch.Tensor:
    """A `source`-type prediction at x_t as a `target`-type one (epsilon, v_prediction, sample), with `x0_fn` applied to
    the clean image in between."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x0 = x0_fn({"epsilon": (x_t - s * pred) / a, "sample": pred, "v_prediction": a * x_t - s * pred}[source])
    eps = (x_t - a * x0) / s
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[target]


ImageInput = Union[torch.Tensor, np.ndarray, PIL.Image.Image, List[PIL.Image.Image]]
LabelInput = Union[int, str, List[Union[int, str]], torch.Tensor]

def count_images(image: Optional[ImageInput]) -> Optional[int]:
    """How many images `image` holds: a PIL image or an unbatched array / tensor is one; None for no image."""
    if image is None:
        return None
    if isinstance(image, (list, tuple)):
        return len(image)
    return len(image) if getattr(image, "ndim", 0) == 4 else 1


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline, FlowMatchHeunDiscreteScheduler

        >>> pipe = DiffusionPipeline.from_pretrained("runs/diffusion-mnist-5min", trust_remote_code=True)  # or a Hub id
        >>> images = pipe(generator=torch.Generator().manual_seed(0)).images  # the run's sampler, steps and guidance
        >>> images = pipe(class_labels=[0, 1, "7"], guidance_scale=2.0, num_inference_steps=8).images  # by index or name
        >>> pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)  # a flow run's schedulers
        >>> images[2].save("seven.png")
        ```
"""


class GenkitDiffusionPipeline(DiffusionPipeline):
    r"""
    Image generation with a `UNet2DModel`: unconditional or class-conditional (classifier-free guidance; the null label
    is the last class embedding), in pixel space or in an autoencoder's latent space (`decoder`), for DDPM-type models
    (epsilon, v or x0 prediction) and flow-matching models (the velocity noise - x0).

    Args:
        unet ([`UNet2DModel`]): the denoiser.
        scheduler ([`SchedulerMixin`]): the sampler: any scheduler of the model's noising path (`USABLE_SCHEDULERS`); one
            it cannot use is refused with the list of those it can.
        decoder ([`LatentDecoder`], *optional*): latents -> images in [0, 1], for latent models.
        id2label (`dict`, *optional*): class index -> class name, so labels can be given by name.
        prediction_type (`str`, *optional*): what the UNet predicts (`epsilon`, `v_prediction`, `sample`,
            `flow_prediction`); None: the scheduler's. The pipeline converts it to the scheduler's own.
        x0_handling (`str`): `none`, `clip` (clamp the predicted clean image to [-clip_sample_range, clip_sample_range])
            or `dynamic` (Imagen's dynamic thresholding at the `dynamic_thresholding_ratio` quantile, at most
            `sample_max_value`), applied at every step whatever the scheduler.
        num_inference_steps (`int`), guidance_scale (`float`): the call's defaults, the run's own (`genkit sample`'s).
    """

    model_cpu_offload_seq = "unet->decoder"
    _optional_components = ["decoder"]
    _callback_tensor_inputs = ["latents"]

    # annotations are real classes (no PEP 604, no strings): diffusers type-checks components against them on load
    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, decoder: Optional[LatentDecoder] = None, id2label: Optional[dict] = None,
                 prediction_type: Optional[str] = None, x0_handling: str = "none", clip_sample_range: float = 1.0,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, num_inference_steps: int = 50,
                 guidance_scale: float = 1.0):
        super().__init__()
        if x0_handling not in X0_MODES:
            raise ValueError(f"x0_handling must be one of {X0_MODES}, got {x0_handling!r}")
        if prediction_type not in (None, *PREDICTION_TYPES):
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} (or None: the scheduler's), got {prediction_type!r}")
        self.register_modules(unet=unet, scheduler=scheduler, decoder=decoder)
        # JSON turns int keys into strings: keep them as strings in the config, convert on use; numbers stay floats / ints so
        # that diffusers' type check of the loaded config passes
        self.register_to_config(id2label={str(k): v for k, v in (id2label or {}).items()}, prediction_type=prediction_type,
                                x0_handling=x0_handling, clip_sample_range=float(clip_sample_range),
                                dynamic_thresholding_ratio=float(dynamic_thresholding_ratio), sample_max_value=float(sample_max_value),
                                num_inference_steps=int(num_inference_steps), guidance_scale=float(guidance_scale))

    @classmethod
    def _get_signature_types(cls) -> Dict[str, tuple]:
        """Diffusers' expected component types (its load and `from_pipe` checks) with any decoder: diffusers >= 0.35 executes
        this file again when it loads `decoder/pipeline.py`, after it has read these types, so the loaded decoder's class is
        a new `LatentDecoder`, not the one beside this class. The load check takes subclasses (ModelMixin), `from_pipe`
        wants the exact class (every `LatentDecoder` there is)."""
        types = dict(super()._get_signature_types())
        types["decoder"] = (ModelMixin, *{c for c in ModelMixin.__subclasses__() if c.__name__ == "LatentDecoder"}, type(None))
        return types

    @property
    def id2label(self) -> Dict[int, str]:
        """Class index -> class name."""
        return {int(k): v for k, v in (self.config.id2label or {}).items()}

    @property
    def null_label(self) -> Optional[int]:
        """The label index that means 'no class' (used for the unconditional half of guidance); None for unconditional models."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - 1

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: the config's, else the scheduler's (a FlowMatch scheduler has none: velocities)."""
        return self.config.prediction_type or self.scheduler.config.get("prediction_type") or "flow_prediction"

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set by a callback (`pipe._interrupt = True`) to skip the remaining steps."""
        return getattr(self, "_interrupt", False)

    # ---- inputs ----

    def labels_to_ids(self, class_labels: LabelInput) -> torch.Tensor:
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
        if not ids:
            raise ValueError("class_labels is empty: give one label per image, or leave it unset")
        limit = self.null_label if self.null_label is not None else 0
        # a label tensor may also hold the null label: an unconditional image in the batch
        top = limit + 1 if isinstance(class_labels, torch.Tensor) and self.null_label is not None else limit
        bad = [i for i in ids if not 0 <= i < top]
        if bad:
            raise ValueError(f"class label(s) {bad} out of range: this model knows {limit} classes (0..{limit - 1})")
        return torch.tensor(ids, dtype=torch.long)

    def batch_and_labels(self, batch_size: Optional[int], class_labels: Optional[LabelInput], *counts: Tuple[str, Optional[int]]
                         ) -> Tuple[int, Optional[torch.Tensor]]:
        """The batch size every input agrees on (`counts`: other inputs' (name, count)), and each image's label (null labels
        for a conditional model sampled without classes). One label (or one image) stands for the whole batch."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        labels = None
        if class_labels is not None:
            if self.null_label is None:
                raise ValueError("this model is unconditional: leave class_labels unset")
            labels = self.labels_to_ids(class_labels)
        given = [("class_labels", None if labels is None else len(labels)), *counts]
        sizes = {n for _, n in given if n is not None and n != 1}  # one label or image stands for any batch
        if batch_size is not None:
            given.insert(0, ("batch_size", batch_size))
            sizes.add(batch_size)
        if len(sizes) > 1:
            told = ", ".join(f"{name}: {n}" for name, n in given if n is not None)
            raise ValueError(f"the inputs disagree on the number of images ({told}): give one label (and one image) per image, or a "
                             "single one for the whole batch")
        size = sizes.pop() if sizes else 1
        if labels is None and self.null_label is not None:
            labels = torch.full((size,), self.null_label, dtype=torch.long)
        elif labels is not None and len(labels) == 1:
            labels = labels.repeat(size)
        return size, labels

    def prepare_image(self, image: ImageInput, shape: Tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`image` as the model's starting point: PIL images, numpy arrays (N, H, W, C) or tensors (N, C, H, W) in [0, 1]
        (as Diffusers' image processors take them) -> pixels in [-1, 1]; for a latent model, a tensor of latents."""
        c, h, w = shape[1:]
        if self.decoder is not None:
            if not isinstance(image, torch.Tensor) or image.ndim != 4 or tuple(image.shape[1:]) != (c, h, w):
                raise ValueError(f"this latent pipeline carries only its autoencoder's decoder: encode the images with that autoencoder "
                                 f"(genkit: family.to_latent) and pass latents of shape (N, {c}, {h}, {w}) as image")
            return image.to(device, dtype)
        if isinstance(image, PIL.Image.Image):
            image = [image]
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
            wrong = [i.size for i in image if i.size != (w, h)]
            if wrong:
                raise ValueError(f"image is {wrong[0][0]}x{wrong[0][1]}; this model makes {w}x{h} images: resize it first (image.resize(({w}, {h})))")
            image = np.stack([np.asarray(i.convert("L" if c == 1 else "RGB"), dtype=np.float32).reshape(h, w, -1) / 255 for i in image])
        if isinstance(image, np.ndarray):
            array = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
            array = array[None] if array.ndim == 3 else array[None, ..., None] if array.ndim == 2 else array
            if array.ndim != 4:
                raise ValueError(f"a numpy image is (H, W), (H, W, C) or (N, H, W, C), got shape {image.shape}")
            image = torch.from_numpy(array).permute(0, 3, 1, 2)
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image must be a PIL image (or a list of them), a numpy array or a torch tensor, got {type(image).__name__}")
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or tuple(image.shape[1:]) != (c, h, w):
            raise ValueError(f"image must be (N, {c}, {h}, {w}) for this model (numpy: (N, {h}, {w}, {c})), got {tuple(image.shape)}")
        low, high = float(image.min()), float(image.max())
        if low < -1e-4 or high > 1 + 1e-4:
            raise ValueError(f"image values must be in [0, 1] (as Diffusers' image processors take them), got [{low:.3g}, {high:.3g}]")
        return (image.to(device, torch.float32) * 2 - 1).to(dtype)

    def check_inputs(self, num_inference_steps: int, guidance_scale: float, strength: float, output_type: str, generator: Any,
                     batch_size: int, tensor_inputs: List[str]) -> None:
        """One-line errors for bad arguments, before any work."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got {guidance_scale!r}")
        if self.null_label is None and guidance_scale != 1:
            raise ValueError(f"this model is unconditional: classifier-free guidance needs class labels; leave guidance_scale unset (got {guidance_scale})")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got a list of {len(generator)} generators for {batch_size} images: pass one per image")
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} unknown; this pipeline offers {self._callback_tensor_inputs}")

    def check_scheduler(self) -> None:
        """Refuse a scheduler that cannot sample this model's objective, naming those that can."""
        source, name = self.prediction_type, type(self.scheduler).__name__
        path, have = PREDICTION_PATHS[source], scheduler_path(self.scheduler)
        target = self.scheduler.config.get("prediction_type") or "flow_prediction"
        if have != path or (path == "flow" and target != "flow_prediction"):
            what = f"a flow scheduler, prediction_type={target!r}" if have == "flow" else f"prediction_type={target!r}" if have else "no alphas_cumprod"
            raise ValueError(f"this {source} model cannot be sampled by {name} ({what}); it takes {USABLE_SCHEDULERS[path]}")
        if source == "average_velocity" and name != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(f"this average_velocity (MeanFlow) model jumps with FlowMatchEulerDiscreteScheduler only, not {name}")
        if name.startswith("EulerAncestral") and target == "sample":
            raise ValueError(f"{name} cannot step x0 (sample) predictions: load it with prediction_type='epsilon' (the pipeline converts)")

    # ---- the sampling step: where an objective meets the scheduler ----

    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], guidance_scale: float) -> torch.Tensor:
        """The UNet's output at x_t (already scaled by the scheduler), guided when a scale other than 1 is set."""
        if labels is None or guidance_scale == 1.0 or bool((labels == self.null_label).all()):
            return self.unet(x, t, class_labels=labels).sample
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, self.null_label)])).sample
        cond, uncond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def to_scheduler_input(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output as the scheduler's prediction type, after this pipeline's x0 handling (any scheduler alike)."""
        config = self.config
        source, target = self.prediction_type, self.scheduler.config.get("prediction_type") or "flow_prediction"
        if config.x0_handling == "none" and source == target:
            return output

        def x0_fn(x0: torch.Tensor) -> torch.Tensor:
            return handle_x0(x0, config.x0_handling, config.clip_sample_range, config.dynamic_thresholding_ratio, config.sample_max_value)

        if PREDICTION_PATHS[source] == "flow":  # x_t = (1 - s) x0 + s noise, velocity noise - x0, s = t / T
            s = (t.float() / self.scheduler.config.num_train_timesteps).clamp(min=1e-4).to(output.device)
            x0 = x0_fn(x.float() - s * output.float())
            return ((x.float() - x0) / s).to(output.dtype)
        alphas = self.scheduler.alphas_cumprod
        alpha_bar = alphas[min(int(round(float(t))), len(alphas) - 1)].to(output.device, torch.float32)
        return convert_prediction(output.float(), x.float(), alpha_bar, source, target, x0_fn).to(output.dtype)

    def step(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], guidance_scale: float, generator: Any) -> torch.Tensor:
        """One denoising step x_t -> x_prev: the (guided) model output, in the scheduler's terms, stepped by the scheduler.
        The extension point: an objective whose update is not a stock scheduler step overrides this (and adds its row to
        PREDICTION_PATHS)."""
        model_input = self.scheduler.scale_model_input(x, t) if hasattr(self.scheduler, "scale_model_input") else x
        if self.prediction_type == "average_velocity":  # MeanFlow: the jump t -> r (the next sigma) as the extra input channel
            sched = self.scheduler
            i = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
            jump = (sched.sigmas[i] - sched.sigmas[i + 1]).to(x.device, x.dtype)
            output = self.predict(torch.cat([model_input, jump.expand(len(x), 1, *x.shape[2:])], dim=1), t, labels, guidance_scale)
            pred = self.to_scheduler_input(output, model_input, t)
        else:
            pred = self.to_scheduler_input(self.predict(model_input, t, labels, guidance_scale), model_input, t)
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        return self.scheduler.step(pred, t, x, **({"generator": generator} if takes_generator else {})).prev_sample

    def set_timesteps(self, num_inference_steps: int, device: torch.device) -> None:
        """The scheduler's timesteps; FlowMatch Euler gets the evenly spaced sigmas 1, 1 - 1/n, ..., 1/n of Diffusers' SD3 and
        Flux pipelines (its own default ends at 1/T, which spends one of few steps going from 0.001 to 0), as a numpy array
        (diffusers 0.32 cannot scale a list)."""
        if type(self.scheduler).__name__.startswith("FlowMatch") and "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters:
            sigmas = torch.linspace(1, 1 / num_inference_steps, num_inference_steps).numpy()
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

    def start(self, noise: torch.Tensor, image: Optional[torch.Tensor], num_inference_steps: int, strength: float
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first sample and the timesteps left: pure noise, or (SDEdit) `image` noised to `strength` of the schedule."""
        timesteps = self.scheduler.timesteps
        if image is None:
            return noise * getattr(self.scheduler, "init_noise_sigma", 1.0), timesteps  # FlowMatch schedulers start at sigma 1
        skip = num_inference_steps - min(max(1, round(num_inference_steps * strength)), num_inference_steps)
        timesteps = timesteps[skip * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(skip * self.scheduler.order)
        first = timesteps[:1].repeat(len(noise))
        if hasattr(self.scheduler, "scale_noise"):  # FlowMatch schedulers: (1 - s) image + s noise
            return self.scheduler.scale_noise(image, first, noise), timesteps
        return self.scheduler.add_noise(image, noise, first), timesteps

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: Optional[int] = None,
        class_labels: Optional[LabelInput] = None,
        guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        image: Optional[ImageInput] = None,
        strength: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable, PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ("latents",),
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Generate images; with no arguments, one image as `genkit sample` makes it (the run's sampler, steps and guidance).

        Args:
            batch_size (`int`, *optional*): how many images; by default one per class label (or image, or latent), else 1.
            class_labels (`int`, `str`, list of them or `torch.Tensor`, *optional*): the class of each image, by index or
                name (`pipe.id2label`); one label is used for the whole batch. Unset on a conditional model: the
                unconditional (null-label) model.
            guidance_scale (`float`, *optional*): classifier-free guidance (1: none); default the run's (`config.guidance_scale`).
            num_inference_steps (`int`, *optional*): denoising steps; default the run's (`config.num_inference_steps`).
            generator (`torch.Generator` or a list, one per image, *optional*): for reproducible images.
            latents (`torch.Tensor`, *optional*): the starting noise, shape (batch, C, H, W) of the UNet's samples.
            image (PIL image(s), `np.ndarray` (N, H, W, C) or `torch.Tensor` (N, C, H, W) in [0, 1], *optional*): with
                `strength` < 1, noised to that fraction of the schedule and denoised from there (SDEdit). Latent models
                take latents (N, C, H, W) here, encoded by their autoencoder.
            strength (`float`): how far to noise `image`, in (0, 1].
            output_type (`str`): `pil`, `np` (N, H, W, C) or `pt` (N, C, H, W) images in [0, 1], or `latent` (the samples
                in model space: [-1, 1] pixels, or latents, undecoded).
            return_dict (`bool`): an [`ImagePipelineOutput`] (else a tuple).
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called after
                every step as `callback(pipe, i, t, tensors)`; may return `{"latents": ...}` to replace the sample.
            callback_on_step_end_tensor_inputs (`List[str]`): the tensors passed to it (`latents`).

        Examples:

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = (self.config.guidance_scale if self.null_label is not None else 1.0) if guidance_scale is None else guidance_scale
        batch_size, labels = self.batch_and_labels(batch_size, class_labels, ("image", count_images(image)),
                                                   ("latents", None if latents is None else len(latents)))
        self.check_inputs(steps, scale, strength, output_type, generator, batch_size, list(callback_on_step_end_tensor_inputs))
        self.check_scheduler()
        device, dtype = self._execution_device, self.unet.dtype
        size = self.unet.config.sample_size
        shape = (batch_size, getattr(self.unet.config, "out_channels", self.unet.config.in_channels), *((size, size) if isinstance(size, int) else size))
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, channels, height, width of the UNet's samples), got {tuple(latents.shape)}")
        start = None if image is None else self.prepare_image(image, shape, device, dtype)
        if start is not None and len(start) != batch_size:
            start = start.repeat(batch_size, 1, 1, 1)
        if labels is not None:
            labels = labels.to(device)

        self.set_timesteps(steps, device)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None else latents.to(device, dtype)
        x, timesteps = self.start(noise, start, steps, strength)
        self._num_timesteps, self._interrupt = len(timesteps), False
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                x = self.step(x, t, labels, scale, generator)
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

    def save_pretrained(self, save_directory: Union[str, Path], **kwargs: Any) -> None:
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
        scheduler = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(scheduler.read_text())
        if scheduler_path(self.scheduler) == "ddpm" and "clip_sample" not in config:
            # the x0 handling is the pipeline's: say so for a stock swap, or DDIM/DDPM.from_config would default to clipping
            config["clip_sample"] = False
            scheduler.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
