"""genkit Space: sample, denoise and explore latents of any genkit run directory or Hub repo id.

Run locally with `genkit app RUN_DIR` or `python spaces/app.py` (GENKIT_RUN=run-or-repo picks the model loaded at start).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from functools import lru_cache

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps

from genkit.config import ConfigError
from genkit.corruption import CORRUPTIONS, corrupt
from genkit.families import Family
from genkit.latents import grid_points
from genkit.plots import make_grid
from genkit.runs import load_family
from genkit.sampling import SCHEDULERS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PREVIEW_EVERY = 5  # stream a preview every N denoising steps
_load_lock = threading.Lock()


@lru_cache(maxsize=4)
def _cached(source: str):
    return load_family(source, DEVICE)


def get_family(source: str) -> Family:
    """The loaded run, or a readable error for the UI."""
    if not source or not source.strip():
        raise gr.Error("Enter a run directory or a Hub repo id first.")
    try:
        with _load_lock:
            return _cached(source.strip())
    except (ConfigError, FileNotFoundError, OSError) as err:
        raise gr.Error(f"Cannot load {source!r}: {err}") from None


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
    labels = _labels(family, class_label, n)
    generator = torch.Generator().manual_seed(int(seed))
    nrow = min(10, n) if labels is not None else min(8, n)
    if family.name != "diffusion":
        try:
            yield to_pil_grid(family.generate(n, generator, labels), nrow)
        except NotImplementedError as err:
            raise gr.Error(f"{err}; try the Denoise or Latent tab.") from None
        return
    previews: queue.Queue = queue.Queue()

    def callback(i: int, total: int, x: torch.Tensor) -> None:
        if i % PREVIEW_EVERY == 0 and i < total - 1:
            previews.put(family.to_images(x.detach()).cpu())

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


def denoise(source: str, upload, sketch, invert: str, noise_type: str, noise_level: float, strength: float, steps: float, seed: float) -> tuple[Image.Image, Image.Image]:
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
        restored = family.generate(1, generator, labels, steps=int(steps), init_images=noisy.to(DEVICE), strength=float(strength), guidance_scale=1.0)
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


def build_demo(initial: str | None = None) -> gr.Blocks:
    """The Blocks app; `initial` is the run loaded at start."""
    with gr.Blocks(title="genkit", analytics_enabled=False) as demo:
        gr.Markdown("# genkit\nSample, denoise and explore the latents of a genkit model (a run directory or a Hub repo id).")
        with gr.Row():
            source = gr.Textbox(label="Model (run directory or Hub repo id)", value=initial or "", scale=4)
            load = gr.Button("Load", scale=1)
        summary = gr.Markdown()
        with gr.Tab("Sample"):
            with gr.Row():
                with gr.Column():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value="dpm++", label="Scheduler (diffusion)")
                    steps = gr.Slider(1, 200, value=25, step=1, label="Steps (diffusion)")
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
                denoise_steps = gr.Slider(2, 200, value=50, step=1, label="Diffusion steps")
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

        load.click(describe, source, [summary, class_label], api_name="load")
        run_sample.click(sample, [source, scheduler, steps, class_label, guidance, seed, num_images], samples, api_name="sample")
        run_denoise.click(denoise, [source, upload, sketch, invert, noise_type, noise_level, strength, denoise_steps, denoise_seed],
                          [noisy, restored], api_name="denoise")
        run_interp.click(interpolate, [source, first, second, latent_invert, interp_steps], interp_out, api_name="interpolate")
        run_grid.click(latent_grid, [source, grid_n, grid_span], grid_out, api_name="latent_grid")
        run_recon.click(reconstruct, [source, first, latent_invert], [recon_out, anomaly], api_name="reconstruct")
        if initial:
            demo.load(describe, source, [summary, class_label], api_name="initial_load")
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


demo = build_demo(os.environ.get("GENKIT_RUN"))

if __name__ == "__main__":
    demo.launch()
