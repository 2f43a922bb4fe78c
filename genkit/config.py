"""Run configuration: dataclasses that round-trip through YAML and `training_config.json`."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


MAX_IMAGE_SIZE = 4096  # pixels per side: beyond it a decoded split no longer fits anywhere (100000 px would be 596 GiB for MNIST)


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped before they reach a model."""

    source: str = "mnist"  # mnist | fashion_mnist | a Hub dataset id | a local path
    data_dir: str | None = None  # local IDX folder for mnist / fashion_mnist (else searched, then the Hub)
    revision: str | None = None  # Hub datasets: a branch, tag or commit (pin a commit for reproducible runs)
    config_name: str | None = None  # Hub datasets with several configurations: which one
    streaming: bool = False  # Hub datasets: stream the split into the decode cache (with subset: only the first N rows are fetched)
    split: str = "train"
    eval_split: str | None = "test"  # None: hold out `eval_fraction` of the training split
    eval_fraction: float = 0.05
    subset: int | None = None  # keep only the first N training images
    eval_subset: int | None = None
    image_size: int = 28
    resize: str = "pad"  # pad (28 -> 32 with zeros around) | resize (bilinear)
    channels: int = 1
    value_range: str = "0,1"  # "0,1" or "-1,1"
    corruption: str | None = None  # gaussian | salt_and_pepper | mask (input noise for denoising models)
    corruption_level: float = 0.3
    exclude_labels: list[int] = field(default_factory=list)  # drop these classes from training (anomaly studies)
    binarize: str = "none"  # none | dynamic (a new Bernoulli draw of each training image every time) | fixed (one draw, seeded)
    hflip: bool = False  # random horizontal flips of training images (photos, not digits)
    storage: str = "auto"  # auto (in memory up to 2 GiB of pixels, else memory-mapped) | memory | mmap
    decode_workers: int | None = None  # processes for the one-time decode; default: every core

    def resolve_paths(self) -> "DataConfig":
        """Make local paths absolute, so a saved run still finds its data from another working directory."""
        if self.data_dir and Path(self.data_dir).expanduser().exists():
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        if Path(self.source).expanduser().exists():
            self.source = str(Path(self.source).expanduser().resolve())
        return self


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as `training_config.json` in the run directory."""

    family: str = "autoencoder"
    model: dict[str, Any] = field(default_factory=dict)  # family-specific model arguments
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = "runs/autoencoder-mnist"
    seed: int = 0
    batch_size: int = 128  # per process
    epochs: float = 10.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    # stop after this many seconds of training steps (evaluation, samples and checkpoints not counted), or at max_steps /
    # epochs if sooner; the lr schedule's decay then runs over the time budget instead of the steps
    max_train_seconds: float | None = None
    # the same on the process's CPU time (time.process_time: all its threads): a budget a busy machine does not shrink
    max_train_cpu_seconds: float | None = None
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_scheduler: str = "constant"  # constant | cosine | linear | constant_with_warmup
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str | None = None  # no | fp16 | bf16; null: what `accelerate launch` / ACCELERATE_MIXED_PRECISION says (else no)
    compile: bool = False  # torch.compile the models (pays on a GPU after a minute of compiling)
    channels_last: bool = False  # NHWC memory format for convolutions (tensor cores)
    allow_tf32: bool = True  # TF32 matmuls and convolutions on Ampere+ GPUs (no effect on the CPU)
    fused_optimizer: bool | None = None  # fused Adam/AdamW kernels; default: on for CUDA
    ema_decay: float | None = None
    log_every: int = 50
    eval_every: int | None = None  # steps; default: once per epoch
    eval_batches: int = 20  # batches per periodic evaluation; the final one covers the whole eval split
    sample_every: int | None = None  # steps; default: at each evaluation
    num_samples: int = 64
    checkpoint_every: int | None = None  # steps; default: once per epoch
    keep_last: int = 3
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_metric: str = "eval_loss"
    early_stopping_mode: str | None = None  # min | max; default: inferred from the metric's name (fd, loss: min; precision, accuracy: max)
    log_with: str | None = "tensorboard"  # none, or any tracker accelerate knows (tensorboard, trackio, wandb, mlflow, ...), comma-separated
    progress_bar: bool = True
    init_from: str | None = None  # fine-tune: a run directory (or Hub id) to start from
    trainable_layers: int | None = None  # fine-tune: train only the last N layers, freeze the rest
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    # ---- judging generation while training (genkit/train_eval.py) ----
    eval_generation_every: int | None = None  # steps between FD evaluations of generated samples (main process; others wait)
    eval_generation_samples: int = 1000  # generated images per evaluation (and as many real ones from the eval split)
    save_best: str | None = None  # keep the checkpoint with the best value of this metric (fd, kid, precision, eval_loss, ...)
    save_best_mode: str | None = None  # min | max; default: inferred from the metric's name
    export_best: bool = False  # export the best checkpoint's weights as the final model instead of the last ones

    # ---- round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, suitable for JSON and YAML."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build and validate a config, naming any unknown or mistyped key."""
        values = dict(values)
        for key, word in [("mixed_precision", "no"), ("log_with", "none")]:
            if values.get(key) is False:  # YAML 1.1 reads an unquoted `no` (or off, false) as False
                values[key] = word
        return _build(cls, values, prefix="").validate()

    def save(self, path: str | Path) -> None:
        """Write as JSON (`.json`) or YAML (anything else)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else yaml.safe_dump(self.to_dict(), sort_keys=False)
        path.write_text(text + ("\n" if not text.endswith("\n") else ""))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a YAML or JSON config file (a run directory means its `training_config.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / "training_config.json"
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:  # JSON read as JSON: YAML 1.1 would read a saved 1e-06 as a string
            values = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is not valid YAML/JSON: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict(values)

    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        """Apply `key=value` strings (dotted keys for nesting, values parsed as YAML)."""
        values = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. data.subset=1000)")
            target = values
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(target.get(part), dict):
                    if part == "model" or isinstance(target, dict) and part in target:
                        target.setdefault(part, {})
                    else:
                        raise ConfigError(f"unknown config section {part!r} in override {item!r}")
                target = target[part]
            try:
                target[leaf] = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError as err:  # e.g. a !!python/... tag, which safe_load refuses
                reason = " ".join(str(getattr(err, "problem", None) or err).split())
                raise ConfigError(f"override {item!r}: the value is not plain YAML ({reason})") from None
        return TrainConfig.from_dict(values)

    def validate(self) -> "TrainConfig":
        """Check value ranges and choices; raise ConfigError with the fix."""
        d = self.data
        _choice("mixed_precision", self.mixed_precision, [None, "no", "fp16", "bf16"])
        _choice("optimizer", self.optimizer, ["adam", "adamw", "sgd"])
        _choice("lr_scheduler", self.lr_scheduler, ["constant", "constant_with_warmup", "cosine", "linear"])
        _choice("early_stopping_mode", self.early_stopping_mode, [None, "min", "max"])
        _choice("save_best_mode", self.save_best_mode, [None, "min", "max"])
        _choice("data.value_range", d.value_range, ["0,1", "-1,1"])
        _choice("data.resize", d.resize, ["pad", "resize"])
        _choice("data.channels", d.channels, [1, 3])
        _choice("data.corruption", d.corruption, [None, "gaussian", "salt_and_pepper", "mask"])
        _choice("data.storage", d.storage, ["auto", "memory", "mmap"])
        _choice("data.binarize", d.binarize, ["none", "dynamic", "fixed"])
        if d.decode_workers is not None and d.decode_workers < 1:
            raise ConfigError(f"data.decode_workers must be >= 1 (or null for every core), got {d.decode_workers}")
        if self.fused_optimizer and self.optimizer == "sgd":
            raise ConfigError("fused_optimizer applies to adam and adamw; set it to null or false with optimizer sgd")
        for name in ["batch_size", "gradient_accumulation_steps", "keep_last", "log_every", "eval_batches", "num_samples"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ["max_steps", "eval_every", "sample_every", "checkpoint_every", "early_stopping_patience", "trainable_layers",
                     "eval_generation_every"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or null), got {value}")
        for name in ["max_train_seconds", "max_train_cpu_seconds"]:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (or null), got {getattr(self, name)}")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0 (or null), got {self.max_grad_norm}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not 8 <= d.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"data.image_size must be in [8, {MAX_IMAGE_SIZE}], got {d.image_size}")
        if d.subset is not None and d.subset < 1:
            raise ConfigError(f"data.subset must be >= 1, got {d.subset}")
        if not 0 <= d.corruption_level <= 1 and d.corruption != "gaussian":
            raise ConfigError(f"data.corruption_level must be in [0, 1], got {d.corruption_level}")
        if not 0 < d.eval_fraction < 1:
            raise ConfigError(f"data.eval_fraction must be in (0, 1), got {d.eval_fraction}")
        if self.trainable_layers is not None and self.init_from is None:
            raise ConfigError("trainable_layers (fine-tuning) needs init_from: the run directory to start from")
        from .train_eval import check_config as check_evaluation_keys

        check_evaluation_keys(self)
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (e.g. your-name/genkit-mnist-ae)")
        return self


def _choice(name: str, value: Any, allowed: list[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate a dataclass from a dict, checking keys and coarse types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Accept ints for floats and check the rest, so a typo'd value fails at load time, not mid-run."""
    args = typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if value is None:
        if (union and type(None) in args) or hint is Any:
            return None
        raise ConfigError(f"{name} may not be null")
    base = next(a for a in args if a is not type(None)) if union else hint
    origin = typing.get_origin(base)
    if base is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            number = None
        if number is not None:
            if not math.isfinite(number):  # .inf epochs or a nan rate would only fail deep inside the loop
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return number
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if origin is list and isinstance(value, (list, tuple)):
        return list(value)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if base is Any:
        return value
    expected = getattr(base, "__name__", str(base))
    raise ConfigError(f"{name} must be of type {expected}, got {value!r}")
