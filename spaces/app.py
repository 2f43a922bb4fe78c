"""genkit Space: sample, denoise and explore the latents of genkit models.

As a public Space (the default for `python spaces/app.py`): only the models its owner lists in GENKIT_MODELS (or
`space.json` beside this file) and, unless GENKIT_ALLOW_HUB=0, Hub ids of genkit models, within the GENKIT_MAX_*
limits (see genkit.safe_load and Budget below). Locally (`genkit app RUN_DIR`, or GENKIT_SPACE=0): any run directory or Hub id.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from genkit.config import ConfigError
from genkit.corruption import CORRUPTIONS, corrupt
from genkit.families import Family
from genkit.latents import grid_points
from genkit.plots import make_grid
from genkit.runs import default_device, load_family
from genkit.safe_load import ModelCache, ModelRejected, SourcePolicy
from genkit.sampling import FLOW_SCHEDULERS, SCHEDULERS

DEVICE = default_device()
PREVIEW_EVERY = 5  # stream a preview every N denoising steps
MAX_UPLOAD_MB = 10
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_BODY_BYTES = (MAX_UPLOAD_MB + 1) * 2**20  # an upload plus its multipart envelope; also caps inline `data:` images and JSON
# PIL checks this when it reads a header, before decoding: anything over 4096 x 4096 pixels fails at Image.open, wherever
# it is opened (Gradio's Sketchpad layers too); a 17 KB palette PNG can otherwise claim 12000 x 12000 pixels
Image.MAX_IMAGE_PIXELS = MAX_UPLOAD_PIXELS // 2  # PIL raises above twice this
log = logging.getLogger("genkit.space")


def refuse(message: str) -> gr.Error:
    """An expected error for the visitor: one log line, no traceback."""
    log.info("refused: %s", message[:300])
    return gr.Error(message, print_exception=False)


class RequestTooLarge(Exception):
    """A request body streamed past the cap."""


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` (declared or streamed) is refused with 413 before anything parses it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen, state = 0, {"started": False, "refused": False}

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a chunked body, which declares no length: answered here, whatever the route makes of it
                if not state["started"]:
                    state["refused"] = True
                    await self._refuse(scope, receive, send)
                raise RequestTooLarge()
            return message

        async def watched(message):
            if not state["refused"]:
                state["started"] = state["started"] or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except RequestTooLarge:
            pass

    async def _refuse(self, scope, receive, send):
        log.info("refused: a request body over %d bytes to %s", self.max_bytes, scope.get("path"))
        await PlainTextResponse(f"Request body over {self.max_bytes // 2**20} MB", status_code=413)(scope, receive, send)


def number(value, name: str, low: float, high: float, integer: bool = False) -> float:
    """A finite number within [low, high], or a readable error: API callers can send anything, NaN included."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise refuse(f"{name} must be a number.") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise refuse(f"{name} must be between {low:g} and {high:g}.")
    return int(value) if integer else value


class Lane:
    """At most `workers` requests run at once and `waiting` more wait; the rest are refused, so a lane never holds every worker."""

    def __init__(self, workers: int, waiting: int):
        self._run, self._slots = threading.Semaphore(workers), threading.Semaphore(workers + waiting)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Run inside the lane, or refuse when it is full."""
        if not self._slots.acquire(blocking=False):
            raise refuse("This Space is busy with long requests: try again shortly, or ask for fewer images or steps.")
        try:
            with self._run:
                yield
        finally:
            self._slots.release()


class Budget:
    """What one request may cost in Space mode (GENKIT_MAX_* variables); a request's cost is predicted before it runs."""

    def __init__(self, space: bool):
        env = os.environ.get
        self.steps = int(env("GENKIT_MAX_STEPS", 100)) if space else 200
        self.image_steps = int(env("GENKIT_MAX_IMAGE_STEPS", 1600)) if space else None  # images x denoising steps
        self.seconds = float(env("GENKIT_MAX_REQUEST_SECONDS", 60)) if space else None
        # one model call (one image-step of diffusion, one image otherwise) may take a tenth of a request: the deadline
        # is checked between calls, so a request ends within about 1.1x its limit, and a model too slow for that is refused
        self.call_seconds = float(env("GENKIT_MAX_CALL_SECONDS", self.seconds / 10)) if space else None
        self.quick_seconds = float(env("GENKIT_QUICK_SECONDS", 5))  # predicted at most this: the quick lane
        self.quick, self.slow = Lane(2, 6), Lane(1, 2)

    def check(self, images: int, steps: int) -> None:
        """Refuse a diffusion request over the step or images-x-steps budget."""
        if not 1 <= steps <= self.steps:
            raise refuse(f"Steps must be between 1 and {self.steps}.")
        if self.image_steps and images * steps > self.image_steps:
            raise refuse(f"{images} images x {steps} steps is over this Space's budget of {self.image_steps}: use fewer images or steps.")

    @contextmanager
    def run(self, predicted: float | None, lane: bool = True) -> Iterator[float | None]:
        """Refuse a request predicted to overrun, else hold the quick or slow lane while it runs; yields its deadline."""
        if self.seconds is None or predicted is None:
            yield None
            return
        if predicted > self.seconds:
            raise refuse(f"This request would take about {predicted:.0f} s here, over this Space's limit of {self.seconds:.0f} s per request: "
                         "use fewer images or steps.")
        if not lane:
            yield time.monotonic() + self.seconds
            return
        with (self.quick if predicted <= self.quick_seconds else self.slow).hold():
            yield time.monotonic() + self.seconds

    def chunk(self, unit_seconds: float | None, n: int) -> int:
        """How many images one model call may take so that it stays within `call_seconds`."""
        return n if unit_seconds is None or self.call_seconds is None else max(1, min(n, int(self.call_seconds / max(unit_seconds, 1e-6))))

    def stop_at(self, deadline: float | None) -> None:
        """Stop a request past its deadline."""
        if deadline is not None and time.monotonic() > deadline:
            raise refuse(f"Stopped after {self.seconds:.0f} s, this Space's limit per request: use fewer images or steps.")


class Served:
    """A loaded model and what its work costs here, timed once at load (None: not measured, in local mode)."""

    def __init__(self, family: Family):
        self.family = family
        self.step_seconds: float | None = None  # diffusion: one image-step, guided for conditional models (two forwards)
        self.image_seconds: float | None = None  # one generated image (other generative families)
        self.latent_seconds: float | None = None  # one reconstruction (encode + decode) of one image


class TooSlow(Exception):
    """A model whose single call exceeds this Space's limit."""


def _timed(fn: Callable[[], object]) -> float:
    """The faster of two runs of `fn` (the first pays one-time costs), in seconds."""
    times = []
    for _ in range(2):
        started = time.monotonic()
        with torch.no_grad():
            fn()
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.monotonic() - started)
    return min(times)


def can_generate(family: Family) -> bool:
    """Whether the family makes new images."""
    return type(family).generate is not Family.generate


def measure(family: Family) -> Served:
    """Time one unit of each kind of work this model does; the diffusion UNet's GFLOP were already capped by the policy."""
    served = Served(family)
    shape = (1, *family.info.image_shape)
    if "unet" in family.models:
        unet, k = family.models["unet"], 2 if family.conditional else 1  # classifier-free guidance runs the model twice per image
        config = unet.config
        x = torch.randn(k, config.in_channels, config.sample_size, config.sample_size, device=DEVICE)
        labels = torch.zeros(k, dtype=torch.long, device=DEVICE) if family.conditional else None
        served.step_seconds = _timed(lambda: unet(x, torch.full((k,), 10, device=DEVICE), class_labels=labels))
    elif can_generate(family):
        served.image_seconds = _timed(lambda: family.generate(1, torch.Generator().manual_seed(0)))
    model = family.models.get("model")
    if hasattr(model, "reconstruct"):
        served.latent_seconds = _timed(lambda: model.reconstruct(torch.zeros(shape, device=DEVICE)))
    slowest = max(s for s in (served.step_seconds, served.image_seconds, served.latent_seconds, 0.0) if s is not None)
    if _budget.call_seconds is not None and slowest > _budget.call_seconds:
        raise TooSlow(f"This model takes {slowest:.1f} s per image here, over this Space's limit of {_budget.call_seconds:.1f} s per model call.")
    return served


_models: ModelCache | None = None  # set by build_demo
_budget = Budget(space=False)
_space = False


def load(source: str) -> Served:
    """Load a model (in the load queue only, in Space mode) and return it with its costs."""
    source = (source or "").strip()
    if not source:
        raise refuse("Choose a model first.")
    try:
        return _models.get(source)
    except (ModelRejected, TooSlow) as err:
        raise refuse(str(err)) from None
    except (ConfigError, FileNotFoundError, OSError) as err:
        raise refuse(f"Cannot load {source!r}: {err}") from None


def served(source: str) -> Served:
    """A loaded model for a request; in Space mode nothing is loaded here, so no download holds a sampling or latent worker."""
    if not _space:
        return load(source)
    source = (source or "").strip()
    if not source:
        raise refuse("Choose a model first.")
    try:
        found = _models.peek(source)
    except (ModelRejected, TooSlow) as err:
        raise refuse(str(err)) from None
    if found is None:
        raise refuse(f"{source[:100]!r} is still loading: try again in a moment." if _models.is_loading(source)
                     else f"{source[:100]!r} is not loaded: press Load (API: /load) first.")
    return found


def describe(source: str) -> tuple[str, gr.Dropdown]:
    """Model summary and the class-label choices for the Sample tab."""
    family = load(source).family
    conditional = family.conditional
    info = family.info
    text = (f"**{family.config.family}** model, {info.image_size}x{info.image_size}, {info.channels} channel(s); "
            f"{'class-conditional over ' + str(info.num_classes) + ' classes' if conditional else 'unconditional'}.")
    choices = ["(none)", "(one of each)", *info.class_names] if conditional else ["(none)"]
    return text, gr.Dropdown(choices=choices, value=choices[1] if conditional else "(none)")


def layout(source: str) -> list:
    """The tabs and controls that fit the loaded model's family, opening on the first one that applies."""
    try:
        family = served(source).family
    except gr.Error:
        return [gr.update()] * 13
    diffusion, model = family.name == "diffusion", family.models.get("model")
    sample, latent = can_generate(family), hasattr(model, "encode")
    restore = diffusion or hasattr(model, "reconstruct")
    selected = "sample" if sample else "denoise" if restore and family.config.data.corruption else "latent" if latent else "denoise"
    shown = [diffusion, diffusion, family.conditional, diffusion and family.conditional, diffusion, diffusion]
    return [gr.Tabs(selected=selected), *[gr.update(visible=v) for v in [sample, restore, latent, not sample, not restore, not latent, *shown]]]


def to_pil_grid(images: torch.Tensor, nrow: int = 8, scale: int = 4) -> Image.Image:
    """Images in [0, 1] -> an enlarged grid."""
    grid = make_grid(images, nrow)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def _labels(family: Family, choice: str, n: int) -> torch.Tensor | None:
    if not family.conditional:
        return None  # the dropdown may still hold a choice from a conditional model loaded before
    choice = {"(none)": None, "(one of each)": "all"}.get(str(choice).strip(), str(choice).strip())
    try:
        return family.class_labels(choice, n)
    except ValueError as err:
        raise refuse(str(err)[:500]) from None


def _in_chunks(make: Callable[[slice], torch.Tensor], n: int, unit_seconds: float | None, deadline: float | None) -> torch.Tensor:
    """`make(images)` over slices of range(n) small enough for one bounded model call each; the deadline is checked between calls."""
    size, parts = _budget.chunk(unit_seconds, n), []
    for start in range(0, n, size):
        _budget.stop_at(deadline)
        parts.append(make(slice(start, min(n, start + size))).float().cpu())
    return torch.cat(parts)


def _diffuse(family: Family, n: int, generator: torch.Generator, labels: torch.Tensor | None, unit_seconds: float | None, deadline: float | None,
             stop: threading.Event | None = None, preview: Callable | None = None, **options) -> torch.Tensor:
    """Diffusion in chunks of images, the deadline (and `stop`) checked after every step of every chunk."""
    done: list[torch.Tensor] = []

    def callback(i: int, total: int, x: torch.Tensor) -> None:
        _budget.stop_at(deadline)
        if stop is not None and stop.is_set():
            raise refuse("Cancelled.")
        if preview is not None and i % PREVIEW_EVERY == 0 and i < total - 1:
            preview(torch.cat([*done, family.to_images(x.detach()).float().cpu()]))

    def chunk(part: slice) -> torch.Tensor:
        images = family.generate(part.stop - part.start, generator, None if labels is None else labels[part], callback=callback, **options)
        done.append(images.float().cpu())
        return images

    return _in_chunks(chunk, n, unit_seconds, deadline)


def sample(source: str, scheduler: str, steps: float, class_label: str, guidance_scale: float, seed: float, num_images: float) -> Iterator[Image.Image]:
    """Generate images; diffusion streams the progressive denoising."""
    model = served(source)
    family = model.family
    n = number(num_images, "Number of images", 1, 64, integer=True)
    generator = torch.Generator().manual_seed(number(seed, "Seed", 0, 2**63 - 1, integer=True))
    labels = _labels(family, class_label, n)
    nrow = min(10, n) if labels is not None else min(8, n)
    if family.name != "diffusion":
        if not can_generate(family):
            raise refuse(f"the {family.name} family does not generate new images; try the Denoise or Latent tab.")
        cost = None if model.image_seconds is None else n * model.image_seconds
        with _budget.run(cost) as deadline:
            make = lambda part: family.generate(part.stop - part.start, generator, None if labels is None else labels[part])  # noqa: E731
            yield to_pil_grid(_in_chunks(make, n, model.image_seconds, deadline), nrow)
        return
    steps = number(steps, "Steps", 1, _budget.steps, integer=True)
    guidance_scale = number(guidance_scale, "Guidance scale", 0, 10)
    menu = FLOW_SCHEDULERS if family.flow else SCHEDULERS  # a flow-matching model takes the flow forms of the samplers
    if scheduler not in menu:
        raise refuse(f"Scheduler must be one of {list(menu)} for this model.")
    _budget.check(n, steps)
    with _budget.run(None if model.step_seconds is None else n * steps * model.step_seconds) as deadline:
        yield from _stream(family, n, generator, labels, model.step_seconds, deadline, nrow, scheduler=scheduler, steps=steps,
                           guidance_scale=guidance_scale)


def _stream(family: Family, n: int, generator: torch.Generator, labels, unit_seconds, deadline, nrow: int, **options) -> Iterator[Image.Image]:
    """Run diffusion in a thread and yield its previews, then the result; a visitor who leaves stops the work."""
    previews: queue.Queue = queue.Queue()
    stop, result = threading.Event(), {}

    def work() -> None:
        try:
            result["images"] = _diffuse(family, n, generator, labels, unit_seconds, deadline, stop, previews.put, **options)
        except Exception as err:  # surfaced below
            result["error"] = err
        previews.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := previews.get()) is not None:
            yield to_pil_grid(item, nrow)
    finally:
        stop.set()
        thread.join()  # the lane is held until the work has really stopped
    error = result.get("error")
    if isinstance(error, gr.Error):
        raise error
    if error is not None:
        log.error("sampling failed", exc_info=error)
        raise gr.Error(f"Sampling failed: {error}")
    yield to_pil_grid(result["images"], nrow)


def read_image(upload, sketch, invert: str, size: int, channels: int) -> torch.Tensor:
    """An uploaded file (checked from its header before decoding) or a drawing -> (1, C, size, size) in [0, 1], light-on-dark."""
    image = upload if upload is not None else sketch
    if isinstance(image, dict):  # ImageEditor / Sketchpad value
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
    if image is None:
        raise refuse("Upload or draw an image first.")
    try:
        if isinstance(image, (str, Path)):
            with Image.open(image) as opened:  # reads the header only
                _check_pixels(opened)
                image = opened.copy()  # decodes, now that the size is known to be acceptable
        elif isinstance(image, np.ndarray):
            if image.size == 0 or image.ndim not in (2, 3):
                raise refuse("That image is empty or has an unexpected shape.")
            image = Image.fromarray(image.astype(np.uint8))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise refuse(f"Could not read that file as an image of at most 4096x4096 pixels ({type(err).__name__}).") from None
    if not isinstance(image, Image.Image):
        raise refuse("Could not read that file as an image.")
    _check_pixels(image)
    if image.mode in ("RGBA", "LA", "P", "PA"):
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


def _check_pixels(image: Image.Image) -> None:
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise refuse(f"That image is {image.width}x{image.height} pixels; at most 4096x4096 is read.")


def guard_input(component: gr.components.Component) -> None:
    """An input whose image files are checked from their header before Gradio's preprocessing decodes anything, and whose
    Gradio-side refusals (a value outside a slider's range) log one line, not a traceback."""
    preprocess = component.preprocess

    def checked_preprocess(payload):
        files = [payload] if hasattr(payload, "path") else [getattr(payload, "background", None), getattr(payload, "composite", None),
                                                            *(getattr(payload, "layers", None) or [])]
        for file in files:
            url = getattr(file, "url", None) or ""
            source = getattr(file, "path", None) or (io.BytesIO(base64.b64decode(url.partition(",")[2])) if url.startswith("data:") else None)
            if source is None:
                continue
            try:
                with Image.open(source) as opened:  # the header only
                    _check_pixels(opened)
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
                raise refuse(f"Could not read that file as an image of at most 4096x4096 pixels ({type(err).__name__}).") from None
        try:
            return preprocess(payload)
        except gr.Error as err:
            raise refuse(str(err.message)) from None
        except (ValueError, TypeError, OverflowError) as err:  # e.g. NaN into a whole-number field
            raise refuse(f"{component.label}: not a valid value ({err}).") from None

    component.preprocess = checked_preprocess


def denoise(source: str, upload, sketch, invert: str, noise_type: str, noise_level: float, strength: float, steps: float,
            seed: float) -> tuple[Image.Image, Image.Image]:
    """Corrupt the image, then restore it: diffusion (noise to a level, reverse) or an autoencoder (one pass)."""
    model = served(source)
    family = model.family
    if noise_type not in CORRUPTIONS:
        raise refuse(f"Noise type must be one of {CORRUPTIONS}.")
    noise_level = number(noise_level, "Noise level", 0, 1)
    generator = torch.Generator().manual_seed(number(seed, "Seed", 0, 2**63 - 1, integer=True))
    if family.name == "diffusion":
        strength = number(strength, "Strength", 0.01, 1)
        steps = number(steps, "Steps", 1, _budget.steps, integer=True)
        cost = None if model.step_seconds is None else steps * model.step_seconds
    elif hasattr(family.models.get("model"), "reconstruct"):
        cost = model.latent_seconds
    else:
        raise refuse(f"A {family.name} model cannot denoise; load a diffusion or (denoising) autoencoder run.")
    x = read_image(upload, sketch, invert, family.info.image_size, family.info.channels)
    noisy = corrupt(x, noise_type, noise_level, generator) if noise_level > 0 else x
    with _budget.run(cost) as deadline:
        if family.name == "diffusion":
            labels = torch.full((1,), family.null_label, dtype=torch.long) if family.conditional else None
            restored = _diffuse(family, 1, generator, labels, model.step_seconds, deadline, steps=steps, init_images=noisy.to(DEVICE),
                                strength=strength, guidance_scale=1.0)
        else:
            with torch.no_grad():
                restored = family.models["model"].reconstruct(noisy.to(DEVICE))
    return to_pil_grid(noisy, 1, 8), to_pil_grid(restored.float().cpu(), 1, 8)


def _encoder(source: str) -> tuple[Served, torch.nn.Module]:
    model = served(source)
    encoder = model.family.models.get("model")
    if encoder is None or not hasattr(encoder, "encode"):
        raise refuse(f"The Latent tab needs an autoencoder or VAE run, not {model.family.name}.")
    return model, encoder


def _code(model, x: torch.Tensor) -> torch.Tensor:
    z = model.encode(x.to(DEVICE))
    return z[0] if isinstance(z, tuple) else z


def _latent_cost(model: Served, images: int) -> float | None:
    return None if model.latent_seconds is None else images * model.latent_seconds


@torch.no_grad()
def interpolate(source: str, first, second, invert: str, steps: float) -> Image.Image:
    """Decode the straight line between the codes of two images."""
    model, encoder = _encoder(source)
    steps = number(steps, "Interpolation steps", 3, 16, integer=True)
    size, channels = model.family.info.image_size, model.family.info.channels
    a, b = read_image(first, None, invert, size, channels), read_image(second, None, invert, size, channels)
    with _budget.run(_latent_cost(model, steps + 2), lane=False) as deadline:
        za, zb = _code(encoder, a), _code(encoder, b)
        w = torch.linspace(0, 1, steps, device=za.device)[:, None]
        codes = (1 - w) * za + w * zb
        images = _in_chunks(lambda part: encoder.decode(codes[part]), steps, model.latent_seconds, deadline)
    return to_pil_grid(images, steps)


@torch.no_grad()
def latent_grid(source: str, n: float, span: float) -> Image.Image:
    """Decode an n x n grid over a 2-D latent space."""
    model, encoder = _encoder(source)
    if getattr(encoder, "latent_dim", None) != 2:
        raise refuse(f"The latent grid needs a 2-D latent space; this model has {getattr(encoder, 'latent_dim', '?')} dimensions.")
    n, span = number(n, "Grid size", 3, 25, integer=True), number(span, "Span", 0.5, 4)
    codes = grid_points(n, span).to(DEVICE)
    with _budget.run(_latent_cost(model, n * n), lane=False) as deadline:
        images = _in_chunks(lambda part: encoder.decode(codes[part]), n * n, model.latent_seconds, deadline)
    return to_pil_grid(images, n, 2)


@torch.no_grad()
def reconstruct(source: str, upload, invert: str) -> tuple[Image.Image, float]:
    """Reconstruction and its anomaly score (mean squared error; high = unlike the training data)."""
    model, encoder = _encoder(source)
    x = read_image(upload, None, invert, model.family.info.image_size, model.family.info.channels)
    with _budget.run(_latent_cost(model, 1), lane=False):
        recon = encoder.reconstruct(x.to(DEVICE)).float().cpu()
    score = float((recon - x).pow(2).mean())
    return to_pil_grid(torch.cat([x, recon]), 2, 6), score


def _preload(cache: ModelCache, names: list[str]) -> None:
    for name in names:
        try:
            cache.get(name)
        except Exception as err:  # logged; a visitor pressing Load sees the message
            log.warning("listed model %r did not load: %s", name, err)


def build_demo(initial: str | None = None, policy: SourcePolicy | None = None) -> gr.Blocks:
    """The Blocks app; `initial` is the model loaded at start. With a `policy` it runs as a public Space, else locally."""
    global _models, _budget, _space
    _space = policy is not None
    _budget = Budget(_space)
    listed = list(policy.models) if _space else []
    if _space:  # listed models are pinned: Hub ids that visitors cycle through never evict them
        _models = ModelCache(lambda source: measure(policy.load(source, DEVICE)), pinned=listed)
    else:  # a local user may fix a run and load it again at once
        _models = ModelCache(lambda source: Served(load_family(source, DEVICE)), forget_failures_after=0)
    initial = initial or (listed[0] if listed else None)
    with gr.Blocks(title="genkit", analytics_enabled=False) as demo:
        gr.Markdown("# genkit\nSample, denoise and explore the latents of a genkit model.")
        with gr.Row():
            if _space:  # custom values: Hub ids typed by visitors, checked by the policy
                source = gr.Dropdown(listed, value=initial, allow_custom_value=True, scale=4,
                                     label="Model" + (" (a listed one, or a Hub repo id owner/name)" if policy.allow_hub else ""))
            else:
                source = gr.Textbox(label="Model (run directory or Hub repo id)", value=initial or "", scale=4)
            load_button = gr.Button("Load", scale=1)
        summary = gr.Markdown()
        with gr.Tabs() as tabs:
            with gr.Tab("Sample", id="sample"):
                sample_note = gr.Markdown("This model does not generate new images: use the Denoise or Latent tab.", visible=False)
                with gr.Column() as sample_box:
                    with gr.Row():
                        with gr.Column():
                            scheduler = gr.Dropdown(list(SCHEDULERS), value="dpm++_sde", label="Scheduler (diffusion)")
                            steps = gr.Slider(1, _budget.steps, value=20, step=1, label="Steps (diffusion)")
                            # custom values: the choices follow the loaded model, and API callers may name any class or index
                            class_label = gr.Dropdown(["(none)", "(one of each)"], value="(none)", label="Class label (conditional models)",
                                                      allow_custom_value=True)
                            class_label.api_info = lambda: {"type": "string", "description": "(none), (one of each), or a class name or index of the model"}
                            guidance = gr.Slider(0, 10, value=2.0, step=0.5, label="Guidance scale")
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            num_images = gr.Slider(1, 64, value=16, step=1, label="Number of images")
                            run_sample = gr.Button("Sample", variant="primary", elem_id="sample-button")
                        samples = gr.Image(label="Samples", type="pil", elem_id="sample-output")
            with gr.Tab("Denoise", id="denoise"):
                denoise_note = gr.Markdown("This model cannot denoise: load a diffusion or (denoising) autoencoder run.", visible=False)
                with gr.Column() as denoise_box:
                    with gr.Row():
                        # filepath: Gradio hands over the file undecoded; guard_input reads its size from the header first
                        upload = gr.Image(label="Upload", type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id="denoise-upload")
                        sketch = gr.Sketchpad(label="…or draw", type="pil", image_mode="RGBA")
                    with gr.Row():
                        invert = gr.Radio(["auto", "yes", "no"], value="auto", label="Invert (MNIST is light on dark)")
                        noise_type = gr.Dropdown(list(CORRUPTIONS), value="gaussian", label="Noise")
                        noise_level = gr.Slider(0, 1, value=0.4, step=0.05, label="Noise level")
                        strength = gr.Slider(0.05, 1, value=0.5, step=0.05, label="Diffusion strength (how far to noise before reversing)")
                        denoise_steps = gr.Slider(2, _budget.steps, value=50, step=1, label="Diffusion steps")
                        denoise_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    run_denoise = gr.Button("Denoise", variant="primary", elem_id="denoise-button")
                    with gr.Row():
                        noisy = gr.Image(label="Noisy", type="pil", elem_id="noisy-output")
                        restored = gr.Image(label="Denoised", type="pil", elem_id="denoised-output")
            with gr.Tab("Latent", id="latent"):
                latent_note = gr.Markdown("The Latent tab needs an autoencoder or VAE run.", visible=False)
                with gr.Column() as latent_box:
                    with gr.Row():
                        first = gr.Image(label="First", type="filepath", image_mode=None)
                        second = gr.Image(label="Second", type="filepath", image_mode=None)
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

        for component in [source, scheduler, steps, class_label, guidance, seed, num_images, upload, sketch, invert, noise_type, noise_level,
                          strength, denoise_steps, denoise_seed, first, second, latent_invert, interp_steps, grid_n, grid_span]:
            guard_input(component)
        # three queues, so quick requests never wait behind slow ones: loading (downloads, timing a model), generating
        # (diffusion sampling and denoising, where Budget's quick and slow lanes decide what runs) and the latent tools
        lanes = 2 + 6 + 1 + 2  # Budget's lanes: running and waiting requests; more are refused before they take a worker
        heavy = {"concurrency_id": "generate", "concurrency_limit": lanes if _space else 2}
        loads = {"concurrency_id": "load", "concurrency_limit": 2}
        light = {"concurrency_id": "latent", "concurrency_limit": 2}
        arrange = ([source], [tabs, sample_box, denoise_box, latent_box, sample_note, denoise_note, latent_note, scheduler, steps, class_label, guidance,
                            strength, denoise_steps])
        load_button.click(describe, source, [summary, class_label], api_name="load", **loads).then(layout, *arrange, api_visibility="private")
        run_sample.click(sample, [source, scheduler, steps, class_label, guidance, seed, num_images], samples, api_name="sample", **heavy)
        run_denoise.click(denoise, [source, upload, sketch, invert, noise_type, noise_level, strength, denoise_steps, denoise_seed],
                          [noisy, restored], api_name="denoise", **heavy)
        run_interp.click(interpolate, [source, first, second, latent_invert, interp_steps], interp_out, api_name="interpolate", **light)
        run_grid.click(latent_grid, [source, grid_n, grid_span], grid_out, api_name="latent_grid", **light)
        run_recon.click(reconstruct, [source, first, latent_invert], [recon_out, anomaly], api_name="reconstruct", **light)
        if initial:
            demo.load(describe, source, [summary, class_label], api_name="initial_load", **loads).then(layout, *arrange, api_visibility="private")
    demo.queue(max_size=64)
    launch = demo.launch

    def capped_launch(*args, **kwargs):
        """Every launcher (python app.py, genkit app, tests) gets the upload and body caps; a Space loads its listed models."""
        if _space:  # at launch, not at import: a process that only imports the app (a build check) exits without a loader running
            threading.Thread(target=_preload, args=(_models, listed), daemon=True).start()
        app_kwargs = kwargs.pop("app_kwargs", None) or {}
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)]
        return launch(*args, **{"max_file_size": f"{MAX_UPLOAD_MB}mb", **kwargs, "app_kwargs": app_kwargs})

    demo.launch = capped_launch
    return demo


def space_policy() -> SourcePolicy | None:
    """Space mode (the default here) unless GENKIT_SPACE=0; `space.json` beside this file holds the owner's defaults."""
    if os.environ.get("GENKIT_SPACE", "1").strip().lower() in ("0", "false", "no"):
        return None
    return SourcePolicy.from_env(Path(__file__).with_name("space.json"))


demo = build_demo(os.environ.get("GENKIT_RUN"), space_policy())

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # refusals: one line each
    demo.launch()
