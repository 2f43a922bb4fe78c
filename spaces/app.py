"""genkit Space: sample, denoise and explore the latents of genkit models.

As a public Space (the default for `python spaces/app.py`): only the models its owner lists in GENKIT_MODELS (or
`space.json` beside this file) and, unless GENKIT_ALLOW_HUB=0, Hub ids of genkit models, within the GENKIT_MAX_*
limits (see genkit.safe_load). Locally (`genkit app RUN_DIR`, or GENKIT_SPACE=0): any run directory or Hub id.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps

from genkit.config import ConfigError
from genkit.corruption import CORRUPTIONS, corrupt
from genkit.families import Family
from genkit.latents import grid_points
from genkit.plots import make_grid
from genkit.runs import default_device, load_family
from genkit.safe_load import ModelCache, ModelRejected, SourcePolicy
from genkit.sampling import SCHEDULERS

DEVICE = default_device()
PREVIEW_EVERY = 5  # stream a preview every N denoising steps
MAX_UPLOAD_PIXELS = 4096 * 4096


class Budget:
    """What one request may ask for in Space mode, so that no visitor holds a worker for long (GENKIT_MAX_* variables)."""

    def __init__(self, space: bool):
        env = os.environ.get
        self.steps = int(env("GENKIT_MAX_STEPS", 100)) if space else 200
        self.image_steps = int(env("GENKIT_MAX_IMAGE_STEPS", 1600)) if space else None  # images x denoising steps
        self.seconds = float(env("GENKIT_MAX_REQUEST_SECONDS", 60)) if space else None

    def check(self, images: int, steps: int) -> None:
        """Refuse a diffusion request over the step or images-x-steps budget."""
        if not 1 <= steps <= self.steps:
            raise gr.Error(f"Steps must be between 1 and {self.steps}.")
        if self.image_steps and images * steps > self.image_steps:
            raise gr.Error(f"{images} images x {steps} steps is over this Space's budget of {self.image_steps}: use fewer images or steps.")

    def deadline(self) -> float | None:
        """When a request started now must end."""
        return None if self.seconds is None else time.monotonic() + self.seconds


_models: ModelCache | None = None  # set by build_demo
_budget = Budget(space=False)


def get_family(source: str) -> Family:
    """The loaded model, or a readable error for the UI (in Space mode one message for every rejected source)."""
    if not source or not source.strip():
        raise gr.Error("Choose a model first.")
    try:
        return _models.get(source.strip())
    except ModelRejected as err:
        raise gr.Error(str(err)) from None
    except (ConfigError, FileNotFoundError, OSError) as err:
        raise gr.Error(f"Cannot load {source!r}: {err}") from None


def _deadline_callback(deadline: float | None, inner=None):
    """A sampling callback that stops a request at its deadline."""
    def callback(i: int, total: int, x: torch.Tensor) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"stopped after {_budget.seconds:.0f} s, this Space's limit per request: use fewer images or steps")
        if inner is not None:
            inner(i, total, x)
    return callback


def describe(source: str) -> tuple[str, gr.Dropdown]:
    """Model summary and the class-label choices for the Sample tab."""
    family = get_family(source)
    conditional = family.conditional
    info = family.info
    text = (f"**{family.config.family}** model, {info.image_size}x{info.image_size}, {info.channels} channel(s); "
            f"{'class-conditional over ' + str(info.num_classes) + ' classes' if conditional else 'unconditional'}.")
    choices = ["(none)", "(one of each)", *info.class_names] if conditional else ["(none)"]
    return text, gr.Dropdown(choices=choices, value=choices[1] if conditional else "(none)")


def to_pil_grid(images: torch.Tensor, nrow: int = 8, scale: int = 4) -> Image.Image:
    """Images in [0, 1] -> an enlarged grid."""
    grid = make_grid(images, nrow)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def _labels(family: Family, choice: str, n: int) -> torch.Tensor | None:
    choice = {"(none)": None, "(one of each)": "all"}.get(choice, choice)
    if not family.conditional:
        return None  # the dropdown may still hold a choice from a conditional model loaded before
    try:
        return family.class_labels(choice, n)
    except ValueError as err:
        raise gr.Error(str(err)) from None


def sample(source: str, scheduler: str, steps: float, class_label: str, guidance_scale: float, seed: float, num_images: float) -> Iterator[Image.Image]:
    """Generate images; diffusion streams the progressive denoising."""
    family = get_family(source)
    n, steps = int(num_images), int(steps)
    if not 1 <= n <= 64:
        raise gr.Error("Number of images must be between 1 and 64.")
    if scheduler not in SCHEDULERS:
        raise gr.Error(f"Scheduler must be one of {list(SCHEDULERS)}.")
    labels = _labels(family, class_label, n)
    generator = torch.Generator().manual_seed(int(seed))
    nrow = min(10, n) if labels is not None else min(8, n)
    if family.name != "diffusion":
        try:
            yield to_pil_grid(family.generate(n, generator, labels), nrow)
        except NotImplementedError as err:
            raise gr.Error(f"{err}; try the Denoise or Latent tab.") from None
        return
    _budget.check(n, steps)
    previews: queue.Queue = queue.Queue()

    def preview(i: int, total: int, x: torch.Tensor) -> None:
        if i % PREVIEW_EVERY == 0 and i < total - 1:
            previews.put(family.to_images(x.detach()).cpu())

    callback = _deadline_callback(_budget.deadline(), preview)
    result: dict = {}

    def work() -> None:
        try:
            result["images"] = family.generate(n, generator, labels, scheduler=scheduler, steps=steps, guidance_scale=guidance_scale, callback=callback)
        except Exception as err:  # surfaced below as a readable error
            result["error"] = err
        previews.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := previews.get()) is not None:
        yield to_pil_grid(item, nrow)
    if "error" in result:
        raise gr.Error(f"Sampling failed: {result['error']}")
    yield to_pil_grid(result["images"].cpu(), nrow)


def read_image(upload, sketch, invert: str, size: int, channels: int) -> torch.Tensor:
    """Any uploaded or drawn image (RGBA, any size) -> (1, C, size, size) in [0, 1], light-on-dark like MNIST."""
    image = upload if upload is not None else sketch
    if isinstance(image, dict):  # ImageEditor / Sketchpad value
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
    if image is None:
        raise gr.Error("Upload or draw an image first.")
    if isinstance(image, np.ndarray):
        if image.size == 0 or image.ndim not in (2, 3):
            raise gr.Error("That image is empty or has an unexpected shape.")
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise gr.Error("Could not read that file as an image.")
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise gr.Error(f"That image is {image.width}x{image.height} pixels; at most {MAX_UPLOAD_PIXELS // 4096}x4096 is read.")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent strokes: drawn on white paper
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if invert == "yes" or (invert == "auto" and np.asarray(image.convert("L")).mean() > 127):
        image = ImageOps.invert(image)
    image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array)[None]


def denoise(source: str, upload, sketch, invert: str, noise_type: str, noise_level: float, strength: float, steps: float,
            seed: float) -> tuple[Image.Image, Image.Image]:
    """Corrupt the image, then restore it: diffusion (noise to a level, reverse) or an autoencoder (one pass)."""
    family = get_family(source)
    x = read_image(upload, sketch, invert, family.info.image_size, family.info.channels)
    if noise_type not in CORRUPTIONS:
        raise gr.Error(f"Noise type must be one of {CORRUPTIONS}.")
    generator = torch.Generator().manual_seed(int(seed))
    noisy = corrupt(x, noise_type, float(noise_level), generator) if noise_level > 0 else x
    if family.name == "diffusion":
        if not 0 < strength <= 1:
            raise gr.Error("Strength must be in (0, 1].")
        labels = torch.full((1,), family.null_label, dtype=torch.long) if family.conditional else None
        _budget.check(1, int(steps))
        try:
            restored = family.generate(1, generator, labels, steps=int(steps), init_images=noisy.to(DEVICE), strength=float(strength), guidance_scale=1.0,
                                       callback=_deadline_callback(_budget.deadline()))
        except TimeoutError as err:
            raise gr.Error(str(err)) from None
    elif hasattr(family.models.get("model"), "reconstruct"):
        restored = family.models["model"].reconstruct(noisy.to(DEVICE))
    else:
        raise gr.Error(f"A {family.name} model cannot denoise; load a diffusion or (denoising) autoencoder run.")
    return to_pil_grid(noisy, 1, 8), to_pil_grid(restored.float().cpu(), 1, 8)


def _encoder(source: str):
    family = get_family(source)
    model = family.models.get("model")
    if model is None or not hasattr(model, "encode"):
        raise gr.Error(f"The Latent tab needs an autoencoder or VAE run, not {family.name}.")
    return family, model


def _code(model, x: torch.Tensor) -> torch.Tensor:
    z = model.encode(x.to(DEVICE))
    return z[0] if isinstance(z, tuple) else z


@torch.no_grad()
def interpolate(source: str, first, second, invert: str, steps: float) -> Image.Image:
    """Decode the straight line between the codes of two images."""
    family, model = _encoder(source)
    size, channels = family.info.image_size, family.info.channels
    a, b = read_image(first, None, invert, size, channels), read_image(second, None, invert, size, channels)
    za, zb = _code(model, a), _code(model, b)
    w = torch.linspace(0, 1, int(steps), device=za.device)[:, None]
    return to_pil_grid(model.decode((1 - w) * za + w * zb).float().cpu(), int(steps))


@torch.no_grad()
def latent_grid(source: str, n: float, span: float) -> Image.Image:
    """Decode an n x n grid over a 2-D latent space."""
    family, model = _encoder(source)
    if getattr(model, "latent_dim", None) != 2:
        raise gr.Error(f"The latent grid needs a 2-D latent space; this model has {getattr(model, 'latent_dim', '?')} dimensions.")
    return to_pil_grid(model.decode(grid_points(int(n), float(span)).to(DEVICE)).float().cpu(), int(n), 2)


@torch.no_grad()
def reconstruct(source: str, upload, invert: str) -> tuple[Image.Image, float]:
    """Reconstruction and its anomaly score (mean squared error; high = unlike the training data)."""
    family, model = _encoder(source)
    x = read_image(upload, None, invert, family.info.image_size, family.info.channels)
    recon = model.reconstruct(x.to(DEVICE)).float().cpu()
    score = float((recon - x).pow(2).mean())
    return to_pil_grid(torch.cat([x, recon]), 2, 6), score


def build_demo(initial: str | None = None, policy: SourcePolicy | None = None) -> gr.Blocks:
    """The Blocks app; `initial` is the model loaded at start. With a `policy` it runs as a public Space, else locally."""
    global _models, _budget
    space = policy is not None
    if space:
        _models = ModelCache(lambda source: policy.load(source, DEVICE))
    else:  # a local user may fix a run and load it again at once
        _models = ModelCache(lambda source: load_family(source, DEVICE), forget_failures_after=0)
    _budget = Budget(space)
    listed = list(policy.models) if space else []
    initial = initial or (listed[0] if listed else None)
    with gr.Blocks(title="genkit", analytics_enabled=False) as demo:
        gr.Markdown("# genkit\nSample, denoise and explore the latents of a genkit model.")
        with gr.Row():
            if space:  # custom values: Hub ids typed by visitors, checked by the policy
                source = gr.Dropdown(listed, value=initial, allow_custom_value=True, scale=4,
                                     label="Model" + (" (a listed one, or a Hub repo id owner/name)" if policy.allow_hub else ""))
            else:
                source = gr.Textbox(label="Model (run directory or Hub repo id)", value=initial or "", scale=4)
            load = gr.Button("Load", scale=1)
        summary = gr.Markdown()
        with gr.Tab("Sample"):
            with gr.Row():
                with gr.Column():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value="dpm++_sde", label="Scheduler (diffusion)")
                    steps = gr.Slider(1, _budget.steps, value=20, step=1, label="Steps (diffusion)")
                    # custom values allowed: the choices follow the loaded model, and API callers may name any class
                    class_label = gr.Dropdown(["(none)", "(one of each)"], value="(none)", label="Class label (conditional models)",
                                              allow_custom_value=True)
                    guidance = gr.Slider(0, 10, value=2.0, step=0.5, label="Guidance scale")
                    seed = gr.Number(0, label="Seed", precision=0)
                    num_images = gr.Slider(1, 64, value=16, step=1, label="Number of images")
                    run_sample = gr.Button("Sample", variant="primary", elem_id="sample-button")
                samples = gr.Image(label="Samples", type="pil", elem_id="sample-output")
        with gr.Tab("Denoise"):
            with gr.Row():
                upload = gr.Image(label="Upload", type="pil", image_mode="RGBA", sources=["upload", "clipboard"], elem_id="denoise-upload")
                sketch = gr.Sketchpad(label="…or draw", type="pil", image_mode="RGBA")
            with gr.Row():
                invert = gr.Radio(["auto", "yes", "no"], value="auto", label="Invert (MNIST is light on dark)")
                noise_type = gr.Dropdown(list(CORRUPTIONS), value="gaussian", label="Noise")
                noise_level = gr.Slider(0, 1, value=0.4, step=0.05, label="Noise level")
                strength = gr.Slider(0.05, 1, value=0.5, step=0.05, label="Diffusion strength (how far to noise before reversing)")
                denoise_steps = gr.Slider(2, _budget.steps, value=50, step=1, label="Diffusion steps")
                denoise_seed = gr.Number(0, label="Seed", precision=0)
            run_denoise = gr.Button("Denoise", variant="primary", elem_id="denoise-button")
            with gr.Row():
                noisy = gr.Image(label="Noisy", type="pil", elem_id="noisy-output")
                restored = gr.Image(label="Denoised", type="pil", elem_id="denoised-output")
        with gr.Tab("Latent"):
            with gr.Row():
                first = gr.Image(label="First", type="pil", image_mode="RGBA")
                second = gr.Image(label="Second", type="pil", image_mode="RGBA")
                latent_invert = gr.Radio(["auto", "yes", "no"], value="auto", label="Invert")
            interp_steps = gr.Slider(3, 16, value=8, step=1, label="Interpolation steps")
            run_interp = gr.Button("Interpolate")
            interp_out = gr.Image(label="Interpolation", type="pil")
            with gr.Row():
                grid_n = gr.Slider(3, 25, value=15, step=1, label="Grid size")
                grid_span = gr.Slider(0.5, 4, value=2.5, step=0.5, label="Span (standard deviations)")
            run_grid = gr.Button("2-D latent grid")
            grid_out = gr.Image(label="Latent grid", type="pil")
            run_recon = gr.Button("Reconstruct first image + anomaly score")
            recon_out = gr.Image(label="Input and reconstruction", type="pil")
            anomaly = gr.Number(label="Anomaly score (reconstruction MSE)")

        # three queues, so quick requests never wait behind slow ones: loading (downloads), generating (diffusion
        # sampling and denoising) and the one-pass latent tools; each has its own workers
        heavy = {"concurrency_id": "generate", "concurrency_limit": int(os.environ.get("GENKIT_GENERATE_WORKERS", 1 if space else 2))}
        loads = {"concurrency_id": "load", "concurrency_limit": 2}
        light = {"concurrency_id": "latent", "concurrency_limit": 2}
        load.click(describe, source, [summary, class_label], api_name="load", **loads)
        run_sample.click(sample, [source, scheduler, steps, class_label, guidance, seed, num_images], samples, api_name="sample", **heavy)
        run_denoise.click(denoise, [source, upload, sketch, invert, noise_type, noise_level, strength, denoise_steps, denoise_seed],
                          [noisy, restored], api_name="denoise", **heavy)
        run_interp.click(interpolate, [source, first, second, latent_invert, interp_steps], interp_out, api_name="interpolate", **light)
        run_grid.click(latent_grid, [source, grid_n, grid_span], grid_out, api_name="latent_grid", **light)
        run_recon.click(reconstruct, [source, first, latent_invert], [recon_out, anomaly], api_name="reconstruct", **light)
        if initial:
            demo.load(describe, source, [summary, class_label], api_name="initial_load", **loads)
    demo.queue(max_size=64)
    return demo


def space_policy() -> SourcePolicy | None:
    """Space mode (the default here) unless GENKIT_SPACE=0; `space.json` beside this file holds the owner's defaults."""
    if os.environ.get("GENKIT_SPACE", "1").strip().lower() in ("0", "false", "no"):
        return None
    return SourcePolicy.from_env(Path(__file__).with_name("space.json"))


demo = build_demo(os.environ.get("GENKIT_RUN"), space_policy())

if __name__ == "__main__":
    demo.launch(max_file_size="10mb")
