"""Loading models for a public Space: listed names and Hub ids only, bounded downloads, sizes checked before building.

Every rejected source gets the same message, whatever the reason (a missing path, a missing repo, a file too large,
a crafted config), so visitors cannot probe the server; the reason goes to the server's log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from .config import TrainConfig
from .families import DataInfo, Family, get_family
from .runs import LOAD_FILES, load_run, quiet_loading

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# Building a model is not thread-safe in this stack: diffusers' low-memory loading patches torch.nn.Module globally (another
# thread's module is then built on the meta device: "Cannot copy out of meta tensor") and quiet_loading swaps sys.stdout.
# Every build in a server takes this lock; downloads happen outside it.
BUILD_LOCK = threading.RLock()
REJECTED = "This model is not available here. Choose a listed model, or enter the Hub id (owner/name) of a public genkit model."


class ModelRejected(Exception):
    """A source this Space will not load (the message never says why)."""

    def __init__(self) -> None:
        super().__init__(REJECTED)


@dataclass
class Limits:
    """What one model may cost the server; set with environment variables of the same name in upper case."""

    max_download_mb: float = 200.0  # GENKIT_MAX_DOWNLOAD_MB: files fetched from the Hub, checked before downloading
    max_parameters: int = 50_000_000  # GENKIT_MAX_PARAMETERS: counted on the meta device, before any weight is allocated
    max_image_size: int = 128  # GENKIT_MAX_IMAGE_SIZE: pixels per side of the model's images
    max_classes: int = 1000  # GENKIT_MAX_CLASSES
    max_json_kb: float = 256.0  # GENKIT_MAX_JSON_KB: each config file
    max_gflops: float = 50.0  # GENKIT_MAX_GFLOPS: one denoiser forward on one image, counted on the meta device before it runs

    @classmethod
    def from_env(cls) -> "Limits":
        """Defaults, overridden by GENKIT_MAX_* variables."""
        values = {}
        for name, default in vars(cls()).items():
            raw = os.environ.get(f"GENKIT_{name.upper()}")
            if raw is not None:
                values[name] = type(default)(float(raw)) if isinstance(default, int) else float(raw)
        return cls(**values)


@dataclass
class SourcePolicy:
    """Which models a Space serves: names its owner listed (run directories or Hub ids) and, optionally, any Hub id."""

    models: dict[str, str] = field(default_factory=dict)  # name shown to visitors -> run directory or Hub repo id
    allow_hub: bool = True
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, defaults: str | Path | None = None) -> "SourcePolicy":
        """GENKIT_MODELS ("name=location,..." or "owner/model,..."), GENKIT_ALLOW_HUB (1/0), with `defaults` (a JSON file) beneath."""
        settings = json.loads(Path(defaults).read_text()) if defaults and Path(defaults).is_file() else {}
        entries = os.environ.get("GENKIT_MODELS")
        models = settings.get("models", []) if entries is None else [e.strip() for e in entries.split(",") if e.strip()]
        allow_hub = os.environ.get("GENKIT_ALLOW_HUB", str(int(settings.get("allow_hub", True))))
        return cls(dict(_entry(e) for e in models), allow_hub.strip().lower() not in ("0", "false", "no"), Limits.from_env())

    def load(self, source: str, device: str | torch.device = "cpu") -> Family:
        """The model behind a visitor's choice; anything else raises ModelRejected."""
        key = (source or "").strip()
        try:
            if key in self.models:
                location = self.models[key]
                return self.load_directory(Path(location), device) if Path(location).is_dir() else self.load_hub(location, device)
            if self.allow_hub and HUB_ID.match(key):
                return self.load_hub(key, device)
            reason = "neither listed nor an allowed Hub id"
        except Exception as err:  # every failure looks the same to the visitor
            reason = f"{type(err).__name__}: {str(err)[:300]}"
        logger.warning("model %r rejected: %s", key[:200], reason)
        raise ModelRejected()

    def load_hub(self, repo_id: str, device: str | torch.device) -> Family:
        """Download only the files a genkit run needs, after checking their sizes, then load and delete them."""
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

        info = HfApi().model_info(repo_id, files_metadata=True)  # sizes, and the commit to pin: no change between check and download
        sizes = {f.rfilename: f.size for f in info.siblings or []}
        if not 0 < (sizes.get("training_config.json") or 0) <= self.limits.max_json_kb * 1024:
            raise ValueError("no training_config.json of an acceptable size")
        with tempfile.TemporaryDirectory(prefix="genkit-space-") as tmp:
            hf_hub_download(repo_id, "training_config.json", revision=info.sha, local_dir=tmp)
            family = get_family(TrainConfig.load(tmp).family)
            wanted = [name for name in LOAD_FILES + family.export_files() if name in sizes]
            total = sum(sizes[name] if sizes[name] is not None else float("inf") for name in wanted)
            if total > self.limits.max_download_mb * 2**20:
                raise ValueError(f"{total / 2**20:.1f} MB to download, above the limit of {self.limits.max_download_mb} MB")
            snapshot_download(repo_id, revision=info.sha, allow_patterns=wanted, local_dir=tmp)
            return self.load_directory(Path(tmp), device)  # in memory from here on: the files go with the folder

    def load_directory(self, path: Path, device: str | torch.device) -> Family:
        """A run directory, once its configs are small, its data facts plausible and its parameter count within limits."""
        for json_file in [*path.glob("*.json"), *path.glob("*/*.json")]:
            if json_file.stat().st_size > self.limits.max_json_kb * 1024:
                raise ValueError(f"{json_file.name} is larger than {self.limits.max_json_kb} KB")
        config, info = TrainConfig.load(path), DataInfo.load(path)
        family = get_family(config.family)
        family.check_config(config)
        limits = self.limits
        if info.channels not in (1, 3) or not 8 <= info.image_size <= limits.max_image_size or not 1 <= info.num_classes <= limits.max_classes:
            raise ValueError(f"data_info out of range: {info}")
        if config.model.get("autoencoder") and not (path / "autoencoder" / "config.json").is_file():
            raise ValueError("latent diffusion without its autoencoder folder would load one from elsewhere")
        with BUILD_LOCK:
            return self._build(path, config, info, family, device)

    def _build(self, path: Path, config: TrainConfig, info: DataInfo, family: type[Family], device: str | torch.device) -> Family:
        """Count parameters and FLOPs on the meta device, then load for real (under BUILD_LOCK)."""
        limits = self.limits
        with torch.device("meta"), warnings.catch_warnings(), quiet_loading():  # builds each module from its config, checks shapes, allocates nothing
            warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": the point here
            models = family.load_models(path)
            parameters = sum(p.numel() for model in models.values() for p in [*model.parameters(), *model.buffers()])
            if parameters > limits.max_parameters:
                raise ValueError(f"{parameters:,} parameters, above the limit of {limits.max_parameters:,}")
            gflops = denoiser_gflops(models)
        if gflops > limits.max_gflops:
            raise ValueError(f"one denoising step of one image costs {gflops:.0f} GFLOP, above the limit of {limits.max_gflops:.0f}")
        return load_run(path, device)


def denoiser_gflops(models: dict[str, torch.nn.Module]) -> float:
    """GFLOP of one forward of a diffusion UNet on one image (0 for other families), on the meta device: nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    if "unet" not in models:
        return 0.0
    config = models["unet"].config
    labels = torch.zeros(1, dtype=torch.long) if getattr(config, "num_class_embeds", None) else None
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():  # a fresh copy: from_pretrained may have put the weights on the CPU
        x = torch.zeros(1, config.in_channels, config.sample_size, config.sample_size)
        type(models["unet"]).from_config(config)(x, torch.ones(1, dtype=torch.long), class_labels=labels)
    return counter.get_total_flops() / 1e9


def _entry(text: str) -> tuple[str, str]:
    name, sep, location = text.partition("=")
    return (name.strip(), location.strip()) if sep else (text.strip(), text.strip())


class ModelCache:
    """Loaded models by source, least recently used dropped first (never a pinned one); loading one source never blocks others."""

    def __init__(self, load: Callable[[str], Family], capacity: int = 4, forget_failures_after: float = 300.0, pinned: Iterable[str] = ()):
        self._load, self.capacity, self.retry_after, self.pinned = load, capacity, forget_failures_after, set(pinned)
        self._guard = threading.Lock()  # held only to read or change the dictionaries below, never during a load
        self._loaded: OrderedDict[str, Family] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._failed: OrderedDict[str, tuple[float, Exception]] = OrderedDict()  # a rejected source is not fetched again at once

    def get(self, source: str) -> Family:
        """The loaded model for `source`, loading it (once, however many requests ask at the same time) if needed."""
        with self._guard:
            if source in self._loaded:
                self._loaded.move_to_end(source)
                return self._loaded[source]
            self._raise_recent_failure(source)
            lock = self._loading.setdefault(source, threading.Lock())
        with lock:  # only requests for this same source wait here
            with self._guard:
                if source in self._loaded:
                    return self._loaded[source]
                self._raise_recent_failure(source)  # the request this one waited for may have just failed
            try:
                family = self._load(source)
            except Exception as err:
                with self._guard:
                    self._failed[source] = (time.monotonic(), err)
                    while len(self._failed) > 256:
                        self._failed.popitem(last=False)
                    self._loading.pop(source, None)
                raise
            with self._guard:
                self._loaded[source] = family
                evictable = [key for key in self._loaded if key not in self.pinned]
                for key in evictable[:max(0, len(evictable) - self.capacity)]:
                    del self._loaded[key]
                self._loading.pop(source, None)
            return family

    def peek(self, source: str) -> Family | None:
        """The model if it is loaded, None if not (loading nothing); a recent failure is raised again."""
        with self._guard:
            if source in self._loaded:
                self._loaded.move_to_end(source)
                return self._loaded[source]
            self._raise_recent_failure(source)
            return None

    def loaded(self) -> list:
        """The models loaded now."""
        with self._guard:
            return list(self._loaded.values())

    def is_loading(self, source: str) -> bool:
        """Whether a load of `source` is under way."""
        with self._guard:
            return source in self._loading

    def _raise_recent_failure(self, source: str) -> None:
        failed = self._failed.get(source)
        if failed and time.monotonic() - failed[0] < self.retry_after:
            raise failed[1]
