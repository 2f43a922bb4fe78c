"""Models the Space serves: what each call costs (timed at load, corrected as requests run) and what each may output."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

import torch

from genkit.families import Family
from genkit.sampling import FLOW_SCHEDULERS, SCHEDULERS, make_scheduler

from .limits import Settings, refuse
from .queue import CallCost, RunningMedian

GRID_PADDING = 2  # genkit.plots.make_grid's
PROBE = (1, 8)  # batch sizes timed at load (and again when idle): the call cost's overhead and its cost per image
RECALIBRATE_AFTER = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)  # seconds after a load: timed again then, when no request runs


class TooSlow(Exception):
    """A model whose single call exceeds this Space's limit, or whose output does not match what it declares."""


def can_generate(family: Family) -> bool:
    """Whether the family makes new images."""
    return type(family).generate is not Family.generate


def model_calls(family: Family, scheduler: str | None, steps: int, strength: float = 1.0) -> int:
    """Denoiser calls of one diffusion request: the scheduler's own count (Heun: two per step); a family may define
    `model_calls(scheduler, steps, strength)` for a sampler of its own (a one-step model says 1)."""
    own = getattr(family, "model_calls", None)
    if callable(own):
        return int(own(scheduler, steps, strength))
    if getattr(family, "mean_flow", False):  # MeanFlow jumps along its own times: one evaluation per step, whatever the sampler
        return max(1, round(steps * strength)) if strength < 1.0 else steps
    name = scheduler or family.sampler
    sched = make_scheduler(name, family.noise_scheduler.config, family.option("timestep_spacing"), family.flow)
    sched.set_timesteps(steps)
    calls = len(sched.timesteps)
    if strength < 1.0:  # what the pipeline skips for an image-to-image start (genkit.pipelines)
        skip = steps - min(max(1, round(steps * strength)), steps)
        calls -= skip * getattr(sched, "order", 1)
    return max(1, calls)


def grid_size(n: int, nrow: int, shape: tuple[int, int, int], scale: int = 1) -> tuple[int, int]:
    """(width, height) of genkit.plots.make_grid's grid of `n` images of `shape`, enlarged `scale` times."""
    _, h, w = shape
    ncol = min(nrow, n)
    rows = math.ceil(n / ncol)
    return (ncol * (w + GRID_PADDING) + GRID_PADDING) * scale, (rows * (h + GRID_PADDING) + GRID_PADDING) * scale


class Served:
    """A loaded model and what its work costs here (None: not measured, in local mode)."""

    def __init__(self, family: Family):
        self.family = family
        self.denoiser: CallCost | None = None  # diffusion: one UNet call (both halves of a guided call: two images)
        self.decoder: CallCost | None = None  # diffusion: model space -> images (a latent decoder)
        self.image: CallCost | None = None  # one generated image (other generative families)
        self.latent: CallCost | None = None  # one encode + decode of one image
        self.probes: list[tuple[CallCost, Callable[[int], object]]] = []  # what to time again, and how
        self.device = "cpu"
        self.loaded_at = time.monotonic()
        self.recalibrated = 0

    @property
    def measured(self) -> bool:
        """Whether costs were measured (Space mode)."""
        return any(c is not None for c in (self.denoiser, self.image, self.latent))

    def recalibrate(self) -> None:
        """Time every kind of call again (once each): start-up timings are one sample among several, never the only one."""
        for cost, make in self.probes:
            cost.add(*[_timed(lambda b=b: make(b), self.device, repeats=1) for b in cost.sizes])
        self.recalibrated += 1

    def due(self, now: float) -> bool:
        """Whether the next scheduled re-timing is due."""
        return self.recalibrated < len(RECALIBRATE_AFTER) and now - self.loaded_at >= RECALIBRATE_AFTER[self.recalibrated]

    def diffusion_cost(self, n: int, calls: int, guided: bool, call_seconds: float | None, max_batch: int | None = None) -> float | None:
        """Predicted seconds of `n` images through `calls` denoiser calls each, plus decoding."""
        if self.denoiser is None:
            return None
        k = 2 if guided else 1
        work = self.denoiser.calls(n * k, calls, call_seconds, max_batch)
        return work + (self.decoder.calls(n, 1, call_seconds, max_batch) if self.decoder is not None else 0.0)


def _timed(fn: Callable[[], object], device: str, repeats: int = 3, warmup: int = 1) -> float:
    """The fastest of `repeats` runs of `fn` after `warmup` runs (which pay one-time costs: allocator, caches), in seconds: anything
    else running at the time only slows a run down, so the fastest is the closest to the model's own cost."""
    times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        with torch.no_grad():
            fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return min(times)


def _fit(served: Served, make: Callable[[int], object], device: str, call_seconds: float | None) -> CallCost:
    """Time one call at batch 1, refuse it over `call_seconds`, then at a larger batch that stays well within the limit."""
    small = _timed(lambda: make(PROBE[0]), device, repeats=5, warmup=3)
    if call_seconds is not None and small > call_seconds:
        raise TooSlow(f"This model takes {small:.1f} s per image here, over this Space's limit of {call_seconds:.1f} s per model call.")
    large = PROBE[1] if call_seconds is None else max(2, min(PROBE[1], int(call_seconds / max(small, 1e-6) / 2)))
    cost = CallCost.fit((PROBE[0], small), (large, _timed(lambda: make(large), device, repeats=3, warmup=1)))
    served.probes.append((cost, make))
    return cost


def check_output(family: Family, images: torch.Tensor) -> None:
    """Refuse output whose shape is not the model's declared data_info (a generator drawing 512 x 512 for a 28 x 28 model)."""
    expected = tuple(family.info.image_shape)
    if tuple(images.shape[1:]) != expected:
        raise TooSlow(f"This model makes images of shape {tuple(images.shape[1:])}, not the {expected} its data_info declares.")


def measure(family: Family, settings: Settings, device: str) -> Served:
    """Check what the model outputs and time each kind of call it makes at two batch sizes (median of three runs each)."""
    served = Served(family)
    served.device = device
    info, shape = family.info, (1, *family.info.image_shape)
    if info.image_size * info.image_size * info.channels > settings.max_output_pixels:
        raise TooSlow(f"This model's {info.image_size}x{info.image_size} images are over this Space's output cap.")
    generator = torch.Generator().manual_seed(0)
    if "unet" in family.models:
        unet = family.models["unet"]
        config = unet.config
        if not 1 <= config.sample_size <= info.image_size:
            raise TooSlow(f"This model's UNet works on {config.sample_size} pixels, which does not fit its {info.image_size}-pixel data.")
        check_output(family, family.generate(1, generator, steps=1))  # UNet, scheduler and latent decoder end to end, one call

        def forward(b: int):
            x = torch.randn(b, config.in_channels, config.sample_size, config.sample_size, device=device)
            labels = torch.zeros(b, dtype=torch.long, device=device) if family.conditional else None
            return unet(x, torch.full((b,), 10, device=device), class_labels=labels)

        served.denoiser = _fit(served, forward, device, settings.call_seconds)
        latent = torch.zeros(1, config.in_channels, config.sample_size, config.sample_size, device=device)
        served.decoder = _fit(served, lambda b: family.to_images(latent.expand(b, -1, -1, -1)), device, settings.call_seconds)
    elif can_generate(family):
        check_output(family, family.generate(1, generator))
        served.image = _fit(served, lambda b: family.generate(b, generator), device, settings.call_seconds)
    model = family.models.get("model")
    if hasattr(model, "reconstruct"):
        check_output(family, model.reconstruct(torch.zeros(shape, device=device)))
        served.latent = _fit(served, lambda b: model.reconstruct(torch.zeros((b, *shape[1:]), device=device)), device, settings.call_seconds)
    slowest = max((c.batch(1) for c in (served.denoiser, served.image, served.latent) if c is not None), default=0.0)
    if settings.call_seconds is not None and slowest > settings.call_seconds:
        raise TooSlow(f"This model takes {slowest:.1f} s per image here, over this Space's limit of {settings.call_seconds:.1f} s per model call.")
    served.loaded_at = time.monotonic()
    return served


class Encoder:
    """PNG encoding of results, priced by a running median of seconds per megapixel (it runs inside the request's deadline)."""

    def __init__(self) -> None:
        self.per_megapixel = RunningMedian()
        self.per_megapixel.add(0.05)  # a prior of the right order until requests measure it here

    def cost(self, pixels: int) -> float:
        """Predicted seconds to enlarge and encode `pixels` pixels."""
        return pixels / 1e6 * (self.per_megapixel.value or 0.05)

    def observe(self, pixels: int, seconds: float) -> None:
        """One encoding's time."""
        if pixels >= 100_000:  # small images measure mostly overhead
            self.per_megapixel.add(seconds / (pixels / 1e6))


class Loads:
    """Builds and downloads at most `workers` at a time, with a bounded line; a model already loaded never waits here."""

    def __init__(self, workers: int, max_waiting: int):
        self._slots, self._line = threading.Semaphore(workers), threading.Semaphore(workers + max_waiting)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a load worker, or refuse when too many loads wait."""
        if not self._line.acquire(blocking=False):
            raise refuse("This Space is busy loading other models: try again in a minute.")
        try:
            with self._slots:
                yield
        finally:
            self._line.release()


def scheduler_menu(family: Family) -> dict:
    """The samplers a model takes: the flow forms for a flow-matching model."""
    return FLOW_SCHEDULERS if getattr(family, "flow", False) else SCHEDULERS
