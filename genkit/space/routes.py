"""The request handlers: load, sample, denoise and the latent tools, each priced before it runs and bounded while it runs."""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import torch

from genkit.config import ConfigError
from genkit.corruption import CORRUPTIONS, corrupt
from genkit.families import Family
from genkit.latents import grid_points
from genkit.plots import make_grid
from genkit.runs import load_run, resolve
from genkit.safe_load import BUILD_LOCK, ModelCache, ModelRejected, SourcePolicy

from .inputs import read_image
from .limits import Settings, number, refuse
from .models import Encoder, Loads, Served, TooSlow, can_generate, check_output, grid_size, measure, model_calls, scheduler_menu
from .queue import Budget, CallCost

PREVIEW_EVERY = 5  # stream a preview every N denoising steps
MAX_IMAGES = 100  # one request: a 10 x 10 grid of a ten-class model
DEFAULT_IMAGES = 16
log = logging.getLogger("genkit.space")


class SpaceApp:
    """One app's state: its settings, queues and loaded models (several apps may live in one process, as in tests)."""

    def __init__(self, policy: SourcePolicy | None, device: str):
        self.policy, self.device, self.space = policy, device, policy is not None
        self.settings = Settings.from_env(self.space)
        self.budget = Budget(self.settings)
        self.loads = Loads(self.settings.load_workers, self.settings.max_loads_waiting)
        self.encoder = Encoder()
        self.listed = list(policy.models) if policy is not None else []
        self.results = Path(tempfile.mkdtemp(prefix="genkit-space-results-"))
        # removed with the app (or at exit): Gradio has copied every result to its own cache by then
        weakref.finalize(self, shutil.rmtree, self.results, ignore_errors=True)
        if self.space:  # listed models are pinned: Hub ids that visitors cycle through never evict them
            self.models = ModelCache(lambda source: measure(policy.load(source, device), self.settings, device), pinned=self.listed)
        else:  # a local user may fix a run and load it again at once
            self.models = ModelCache(self._load_local, forget_failures_after=0)

    def _load_local(self, source: str) -> Served:
        path = resolve(source)  # a download happens outside the build lock: other models keep building meanwhile
        with BUILD_LOCK:
            return Served(load_run(path, self.device))

    # ---- models ------------------------------------------------------------------------------------------------

    def load(self, source: str) -> Served:
        """A model, loaded if needed (in a load worker); a model already loaded answers at once, whatever loads are running."""
        source = (source or "").strip()
        if not source:
            raise refuse("Choose a model first.")
        try:
            found = self.models.peek(source)
            if found is not None:
                return found
            with self.loads.slot():
                return self.models.get(source)
        except (ModelRejected, TooSlow) as err:
            raise refuse(str(err)) from None
        except (ConfigError, FileNotFoundError, OSError) as err:
            raise refuse(f"Cannot load {source!r}: {err}") from None

    def served(self, source: str) -> Served:
        """A loaded model for a request; in Space mode nothing is loaded here, so no download holds a sampling or latent worker."""
        if not self.space:
            return self.load(source)
        source = (source or "").strip()
        if not source:
            raise refuse("Choose a model first.")
        try:
            found = self.models.peek(source)
        except (ModelRejected, TooSlow) as err:
            raise refuse(str(err)) from None
        if found is None:
            raise refuse(f"{source[:100]!r} is still loading: try again in a moment." if self.models.is_loading(source)
                         else f"{source[:100]!r} is not loaded: press Load (API: /load) first.")
        return found

    def recalibrate(self, stop: threading.Event) -> None:
        """Until `stop`: time each loaded model's calls again on its schedule (models.RECALIBRATE_AFTER), only while no request runs."""
        lanes = [self.budget.quick, self.budget.slow, self.budget.latent]
        while not stop.wait(1.0):
            if any(lane.running or lane.waiting for lane in lanes):
                continue
            for served in self.models.loaded():
                if served.due(time.monotonic()) and not any(lane.running or lane.waiting for lane in lanes):
                    served.recalibrate()

    def preload(self) -> None:
        """Load the listed models (at launch, in a thread); a visitor pressing Load sees any failure's message."""
        for name in self.listed:
            try:
                self.models.get(name)
            except Exception as err:
                log.warning("listed model %r did not load: %s", name, err)

    def describe(self, source: str) -> tuple[str, gr.Dropdown]:
        """Model summary and the class-label choices for the Sample tab."""
        family = self.load(source).family
        info = family.info
        text = (f"**{family.config.family}** model, {info.image_size}x{info.image_size}, {info.channels} channel(s); "
                f"{'class-conditional over ' + str(info.num_classes) + ' classes' if family.conditional else 'unconditional'}.")
        choices = ["(none)", "(one of each)", *info.class_names] if family.conditional else ["(none)"]
        return text, gr.Dropdown(choices=choices, value=choices[1] if family.conditional else "(none)")

    def defaults(self, served: Served) -> dict:
        """The Sample tab's defaults for a model: the run's own sampler, steps and guidance, and a number of images that fits."""
        family = served.family
        diffusion = family.name == "diffusion"
        steps = min(int(family.option("sample_steps")), self.settings.max_steps) if diffusion else 20
        sampler = family.sampler if diffusion else "dpm++_sde"
        guidance = float(family.option("guidance_scale")) if diffusion else 2.0
        classes = family.info.num_classes
        n = classes if family.conditional and classes <= DEFAULT_IMAGES else DEFAULT_IMAGES  # one of each class: a row of the grid
        limit = self.settings.request_seconds
        while n > 1 and limit is not None and (self._sample_cost(served, sampler, steps, guidance, n, family.conditional) or 0) > limit / 2:
            n -= 1  # the default request always fits, with room to spare for a slower moment
        return {"scheduler": sampler, "steps": steps, "guidance": guidance, "images": n}

    def layout(self, source: str) -> list:
        """The tabs and controls that fit the loaded model's family, opening on the first one that applies, with its defaults."""
        try:
            served = self.served(source)
        except gr.Error:
            return [gr.update()] * 14
        family = served.family
        diffusion, model = family.name == "diffusion", family.models.get("model")
        sample, latent = can_generate(family), hasattr(model, "encode")
        restore = diffusion or hasattr(model, "reconstruct")
        selected = "sample" if sample else "denoise" if restore and family.config.data.corruption else "latent" if latent else "denoise"
        d = self.defaults(served)
        menu = list(scheduler_menu(family))
        return [gr.Tabs(selected=selected), *[gr.update(visible=v) for v in [sample, restore, latent, not sample, not restore, not latent]],
                gr.update(visible=diffusion, choices=menu, value=d["scheduler"] if d["scheduler"] in menu else menu[0]),
                gr.update(visible=diffusion, value=d["steps"]), gr.update(visible=family.conditional),
                gr.update(visible=diffusion and family.conditional, value=d["guidance"]), gr.update(visible=diffusion),
                gr.update(visible=diffusion), gr.update(value=d["images"])]

    # ---- results -----------------------------------------------------------------------------------------------

    def grid_scale(self, n: int, nrow: int, family: Family, scale: int) -> int:
        """The largest enlargement up to `scale` whose grid stays within the output pixel cap; refuse when none does."""
        for s in range(scale, 0, -1):
            w, h = grid_size(n, nrow, family.info.image_shape, s)
            if w * h <= self.settings.max_output_pixels:
                return s
        raise refuse(f"{n} images of {family.info.image_size}x{family.info.image_size} pixels are over this Space's output cap: use fewer images.")

    def png(self, images: torch.Tensor, nrow: int, scale: int) -> str:
        """Images in [0, 1] -> an enlarged grid, written as a PNG file (encoded here, inside the request's time)."""
        started = time.monotonic()
        grid = make_grid(images, nrow)
        grid = grid.resize((grid.width * scale, grid.height * scale), 0) if scale > 1 else grid  # 0: nearest
        path = self.results / f"{uuid.uuid4().hex}.png"
        grid.save(path, compress_level=3)
        self.encoder.observe(grid.width * grid.height, time.monotonic() - started)
        self._prune()
        return str(path)

    def _prune(self, keep: int = 256) -> None:
        """Gradio copies each result to its own cache: only the newest `keep` files stay here."""
        files = sorted(self.results.glob("*.png"), key=lambda p: p.stat().st_mtime if p.exists() else 0)
        for old in files[:-keep]:
            old.unlink(missing_ok=True)

    def _encode_cost(self, n: int, nrow: int, family: Family, scale: int) -> float:
        w, h = grid_size(n, nrow, family.info.image_shape, scale)
        return self.encoder.cost(w * h)

    # ---- requests ----------------------------------------------------------------------------------------------

    def _report(self, progress: gr.Progress | None) -> Callable[[int, float], None] | None:
        if progress is None:
            return None

        def report(position: int, wait: float) -> None:
            try:
                progress(0.0, desc=f"Waiting in the queue: position {position}, about {wait:.0f} s")
            except Exception:  # progress is a courtesy: a closed connection must not fail the wait
                pass
        return report

    def _chunk(self, cost: CallCost | None, n: int, per_image: int = 1) -> int:
        """Images per model call so that one call (of `per_image` rows per image: 2 when guided) stays within the call limit."""
        rows = min(n * per_image, self.settings.max_batch) if self.space else n * per_image
        return max(1, (rows if cost is None else cost.chunk(rows, self.settings.call_seconds)) // per_image)

    def _in_chunks(self, make: Callable[[slice], torch.Tensor], n: int, size: int, deadline: float | None, family: Family | None = None) -> torch.Tensor:
        """`make(images)` over slices of range(n) of `size` images, one bounded model call each; the deadline and output shape are
        checked after every call."""
        parts = []
        for start in range(0, n, size):
            self.budget.stop_at(deadline)
            part = make(slice(start, min(n, start + size))).float().cpu()
            if family is not None:
                _check(family, part)
            parts.append(part)
        return torch.cat(parts)

    def _labels(self, family: Family, choice: str, n: int) -> torch.Tensor | None:
        if not family.conditional:
            return None  # the dropdown may still hold a choice from a conditional model loaded before
        choice = {"(none)": None, "(one of each)": "all"}.get(str(choice).strip(), str(choice).strip())
        try:
            return family.class_labels(choice, n)
        except ValueError as err:
            raise refuse(str(err)[:500]) from None

    def _sample_cost(self, served: Served, scheduler: str, steps: int, guidance: float, n: int, labelled: bool) -> float | None:
        family = served.family
        if family.name != "diffusion":
            return None if served.image is None else served.image.calls(n, 1, self.settings.call_seconds, self.settings.max_batch)
        guided = family.conditional and labelled and guidance != 1.0
        return served.diffusion_cost(n, model_calls(family, scheduler, steps), guided, self.settings.call_seconds, self.settings.max_batch)

    def sample(self, source: str, scheduler: str, steps: float, class_label: str, guidance_scale: float, seed: float, num_images: float,
               progress: gr.Progress = gr.Progress()) -> Iterator[str]:
        """Generate images; diffusion streams the progressive denoising."""
        model = self.served(source)
        family = model.family
        n = number(num_images, "Number of images", 1, MAX_IMAGES, integer=True)
        generator = torch.Generator().manual_seed(number(seed, "Seed", 0, 2**63 - 1, integer=True))
        labels = self._labels(family, class_label, n)
        nrow = min(10, n) if labels is not None else min(8, n)
        scale = self.grid_scale(n, nrow, family, 4)
        encode = self._encode_cost(n, nrow, family, scale)
        if family.name != "diffusion":
            if not can_generate(family):
                raise refuse(f"the {family.name} family does not generate new images; try the Denoise or Latent tab.")
            work = self._sample_cost(model, "", 0, 0.0, n, labels is not None)
            with self.budget.run(None if work is None else work + encode, report=self._report(progress)) as deadline:
                started = time.monotonic()
                make = lambda part: family.generate(part.stop - part.start, generator, None if labels is None else labels[part])  # noqa: E731
                images = self._in_chunks(make, n, self._chunk(model.image, n), deadline, family)
                if model.image is not None:
                    model.image.observe(work, time.monotonic() - started)
                self.budget.stop_at(deadline)
                yield self.png(images, nrow, scale)
            return
        steps = number(steps, "Steps", 1, self.settings.max_steps, integer=True)
        guidance_scale = number(guidance_scale, "Guidance scale", 0, 10)
        if scheduler not in scheduler_menu(family):  # a flow-matching model takes the flow forms of the samplers
            raise refuse(f"Scheduler must be one of {list(scheduler_menu(family))} for this model.")
        self.budget.check_steps(n, steps)
        work = self._sample_cost(model, scheduler, steps, guidance_scale, n, labels is not None)
        with self.budget.run(None if work is None else work + encode, report=self._report(progress)) as deadline:
            started = time.monotonic()
            for item in self._stream(family, n, generator, labels, model.denoiser, deadline, scheduler=scheduler, steps=steps,
                                     guidance_scale=guidance_scale):
                if isinstance(item, torch.Tensor):  # the result
                    took = time.monotonic() - started
                    if model.denoiser is not None:
                        log.info("/sample: predicted %.3f s, took %.3f s, for %d images x %s steps of %s", work, took, n, steps, scheduler)
                        model.denoiser.observe(work, took)
                    self.budget.stop_at(deadline)
                    yield self.png(item, nrow, scale)
                else:
                    yield self.png(item[0], nrow, 1)  # a preview: not enlarged, cheap to encode

    def _diffuse(self, family: Family, n: int, generator: torch.Generator, labels: torch.Tensor | None, cost: CallCost | None,
                 deadline: float | None, stop: threading.Event | None = None, preview: Callable | None = None, **options) -> torch.Tensor:
        """Diffusion in chunks of images, the deadline (and `stop`) checked after every step of every chunk."""
        done: list[torch.Tensor] = []

        def callback(i: int, total: int, x: torch.Tensor) -> None:
            self.budget.stop_at(deadline)
            if stop is not None and stop.is_set():
                raise refuse("Cancelled.")
            if preview is not None and i % PREVIEW_EVERY == 0 and i < total - 1:
                preview((torch.cat([*done, family.to_images(x.detach()).float().cpu()]),))

        def chunk(part: slice) -> torch.Tensor:
            images = family.generate(part.stop - part.start, generator, None if labels is None else labels[part], callback=callback, **options)
            done.append(images.float().cpu())
            return images

        guided = options.get("guidance_scale", 1.0) != 1.0 and labels is not None and family.conditional
        return self._in_chunks(chunk, n, self._chunk(cost, n, 2 if guided else 1), deadline, family)

    def _stream(self, family: Family, n: int, generator: torch.Generator, labels, cost, deadline, **options) -> Iterator:
        """Run diffusion in a thread and yield its previews (1-tuples), then the result; a visitor who leaves stops the work."""
        previews: queue.Queue = queue.Queue()
        stop, result = threading.Event(), {}

        def work() -> None:
            try:
                result["images"] = self._diffuse(family, n, generator, labels, cost, deadline, stop, previews.put, **options)
            except Exception as err:  # surfaced below
                result["error"] = err
            previews.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := previews.get()) is not None:
                yield item
        finally:
            stop.set()
            thread.join()  # the lane is held until the work has really stopped
        error = result.get("error")
        if isinstance(error, gr.Error):
            raise error
        if error is not None:
            log.error("sampling failed", exc_info=error)
            raise gr.Error(f"Sampling failed: {error}")
        yield result["images"]

    def denoise(self, source: str, upload, sketch, invert: str, noise_type: str, noise_level: float, strength: float, steps: float,
                seed: float, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        """Corrupt the image, then restore it: diffusion (noise to a level, reverse) or an autoencoder (one pass)."""
        model = self.served(source)
        family = model.family
        if noise_type not in CORRUPTIONS:
            raise refuse(f"Noise type must be one of {CORRUPTIONS}.")
        noise_level = number(noise_level, "Noise level", 0, 1)
        generator = torch.Generator().manual_seed(number(seed, "Seed", 0, 2**63 - 1, integer=True))
        if family.name == "diffusion":
            strength = number(strength, "Strength", 0.01, 1)
            steps = number(steps, "Steps", 1, self.settings.max_steps, integer=True)
            work = model.diffusion_cost(1, model_calls(family, None, steps, strength), False, self.settings.call_seconds, self.settings.max_batch)
        elif hasattr(family.models.get("model"), "reconstruct"):
            work = None if model.latent is None else model.latent.batch(1)
        else:
            raise refuse(f"A {family.name} model cannot denoise; load a diffusion or (denoising) autoencoder run.")
        x = read_image(upload, sketch, invert, family.info.image_size, family.info.channels)
        noisy = corrupt(x, noise_type, noise_level, generator) if noise_level > 0 else x
        scale = self.grid_scale(1, 1, family, 8)
        encode = 2 * self._encode_cost(1, 1, family, scale)
        with self.budget.run(None if work is None else work + encode, report=self._report(progress)) as deadline:
            if family.name == "diffusion":
                labels = torch.full((1,), family.null_label, dtype=torch.long) if family.conditional else None
                restored = self._diffuse(family, 1, generator, labels, model.denoiser, deadline, steps=steps, init_images=noisy.to(self.device),
                                         strength=strength, guidance_scale=1.0)
            else:
                with torch.no_grad():
                    restored = family.models["model"].reconstruct(noisy.to(self.device)).float().cpu()
                _check(family, restored)
            self.budget.stop_at(deadline)
            return self.png(noisy, 1, scale), self.png(restored, 1, scale)

    def _encoder(self, source: str) -> tuple[Served, torch.nn.Module]:
        model = self.served(source)
        encoder = model.family.models.get("model")
        if encoder is None or not hasattr(encoder, "encode"):
            raise refuse(f"The Latent tab needs an autoencoder or VAE run, not {model.family.name}.")
        return model, encoder

    def _latent_cost(self, model: Served, images: int, nrow: int, scale: int) -> float | None:
        if model.latent is None:
            return None
        return model.latent.calls(images, 1, self.settings.call_seconds, self.settings.max_batch) + self._encode_cost(images, nrow, model.family, scale)

    @torch.no_grad()
    def interpolate(self, source: str, first, second, invert: str, steps: float) -> str:
        """Decode the straight line between the codes of two images."""
        model, encoder = self._encoder(source)
        steps = number(steps, "Interpolation steps", 3, 16, integer=True)
        size, channels = model.family.info.image_size, model.family.info.channels
        a, b = read_image(first, None, invert, size, channels), read_image(second, None, invert, size, channels)
        scale = self.grid_scale(steps, steps, model.family, 4)
        with self.budget.run(self._latent_cost(model, steps + 2, steps, scale), lane=self.budget.latent) as deadline:
            za, zb = _code(encoder, a, self.device), _code(encoder, b, self.device)
            w = torch.linspace(0, 1, steps, device=za.device)[:, None]
            codes = (1 - w) * za + w * zb
            images = self._in_chunks(lambda part: encoder.decode(codes[part]), steps, self._chunk(model.latent, steps), deadline, model.family)
            self.budget.stop_at(deadline)
            return self.png(images, steps, scale)

    @torch.no_grad()
    def latent_grid(self, source: str, n: float, span: float) -> str:
        """Decode an n x n grid over a 2-D latent space."""
        model, encoder = self._encoder(source)
        if getattr(encoder, "latent_dim", None) != 2:
            raise refuse(f"The latent grid needs a 2-D latent space; this model has {getattr(encoder, 'latent_dim', '?')} dimensions.")
        n, span = number(n, "Grid size", 3, 25, integer=True), number(span, "Span", 0.5, 4)
        codes = grid_points(n, span).to(self.device)
        scale = self.grid_scale(n * n, n, model.family, 2)
        with self.budget.run(self._latent_cost(model, n * n, n, scale), lane=self.budget.latent) as deadline:
            images = self._in_chunks(lambda part: encoder.decode(codes[part]), n * n, self._chunk(model.latent, n * n), deadline, model.family)
            self.budget.stop_at(deadline)
            return self.png(images, n, scale)

    @torch.no_grad()
    def reconstruct(self, source: str, upload, invert: str) -> tuple[str, float]:
        """Reconstruction and its anomaly score (mean squared error; high = unlike the training data)."""
        model, encoder = self._encoder(source)
        x = read_image(upload, None, invert, model.family.info.image_size, model.family.info.channels)
        scale = self.grid_scale(2, 2, model.family, 6)
        with self.budget.run(self._latent_cost(model, 1, 2, scale), lane=self.budget.latent) as deadline:
            recon = encoder.reconstruct(x.to(self.device)).float().cpu()
            _check(model.family, recon)
            self.budget.stop_at(deadline)
            score = float((recon - x).pow(2).mean())
            return self.png(torch.cat([x, recon]), 2, scale), score


def _check(family: Family, images: torch.Tensor) -> None:
    try:
        check_output(family, images)
    except TooSlow as err:
        raise refuse(str(err)) from None


def _code(model, x: torch.Tensor, device: str) -> torch.Tensor:
    z = model.encode(x.to(device))
    return z[0] if isinstance(z, tuple) else z


def thread_budget(settings: Settings) -> int:
    """Gradio worker threads the app needs: every running and waiting request holds one."""
    return settings.generate_threads + (2 + settings.max_queue) + settings.load_workers + settings.max_loads_waiting + 16

