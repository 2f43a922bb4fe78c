"""What a model family gives the training engine: its modules, its loss step and its sampler. Nothing else."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..config import ConfigError, TrainConfig


@dataclass
class DataInfo:
    """The facts about the data that a family needs to build its models."""

    channels: int
    image_size: int
    class_names: list[str]
    value_range: str = "0,1"

    @property
    def num_classes(self) -> int:
        """Number of classes in the label column."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.image_size, self.image_size)

    def save(self, directory: str | Path) -> None:
        """Write `data_info.json`."""
        (Path(directory) / "data_info.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "DataInfo":
        """Read `data_info.json`."""
        return cls(**json.loads((Path(directory) / "data_info.json").read_text()))


def check_option_type(name: str, value: Any, default: Any) -> Any:
    """A model option must have the type of its default (ints pass for floats, null passes where the default is null)."""
    if value is None or default is None:
        return value
    if isinstance(default, float) and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-6 as a string
        except ValueError:
            pass
    numbers = (int, float) if isinstance(default, float) else (int,) if isinstance(default, int) else None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif numbers:
        ok = isinstance(value, numbers) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, type(default[0])) and not isinstance(v, bool) for v in value) if default else isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{name} must be {_describe(default)} like its default {default!r}, got {value!r}")
    return value


def _describe(default: Any) -> str:
    if isinstance(default, list):
        return f"a list of {type(default[0]).__name__}" if default else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(default), type(default).__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / compile wrappers."""
    return extract_model_from_parallel(model)


class Family:
    """Base class: subclasses set `name` and `model_classes`, and implement `build` and `loss`."""

    name: ClassVar[str]
    model_classes: ClassVar[dict[str, type]]  # part -> module class (each has save/from_pretrained)
    parts: ClassVar[tuple[str, ...]] = ("model",)  # one optimizer per part, stepped in this order
    ema_part: ClassVar[str] = "model"  # the part whose EMA is used for sampling and saved at the end
    metric_for_eval: ClassVar[str] = "eval_loss"
    conditional: bool = False  # class-conditional families override this with a property

    def __init__(self, config: TrainConfig, info: DataInfo, models: dict[str, nn.Module] | None = None):
        self.config, self.info = config, info
        self.check_config(config)
        self.models = models if models is not None else self.build()

    # ---- what each family must provide ---------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        """Fresh modules, one per part."""
        raise NotImplementedError

    def loss(self, part: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for `part` on a batch, and extra values to log."""
        raise NotImplementedError

    # ---- sensible defaults, overridden where a family differs -----------------------------------------
    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Reject model options this family does not know, before any data is loaded."""
        known = cls.model_options()
        unknown = sorted(set(config.model) - set(known))
        if unknown:
            raise ConfigError(f"unknown model option(s) for family {cls.name!r}: {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        for key, value in config.model.items():
            config.model[key] = check_option_type(f"model.{key}", value, known[key])

    @classmethod
    def model_options(cls) -> dict[str, Any]:
        """The keys accepted under `model:` with their defaults."""
        return {}

    def option(self, key: str) -> Any:
        """A model option from the config, or its default."""
        return self.config.model.get(key, self.model_options()[key])

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics on one batch (default: the first part's loss)."""
        loss, logs = self.loss(self.parts[0], batch)
        return {"eval_loss": loss.item(), **{f"eval_{k}": float(v) for k, v in logs.items()}}

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Images in [0, 1] for the progress grid, and the number per row."""
        raise NotImplementedError

    def class_labels(self, choice: str | None, n: int) -> torch.Tensor | None:
        """`n` labels from a user's choice: None, "all" (cycle through the classes), a class name or a class index."""
        if choice is None:
            return None
        if not self.conditional:
            raise ValueError(f"this {self.name} run is not class-conditional: it takes no class label")
        names = self.info.class_names
        if choice == "all":
            return torch.arange(n) % len(names)
        if choice in names:
            index = names.index(choice)
        elif choice.isdigit() and int(choice) < len(names):
            index = int(choice)
        else:
            raise ValueError(f"class label {choice!r} is neither a class index below {len(names)} nor one of {names}")
        return torch.full((n,), index, dtype=torch.long)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, class_labels: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """`n` new images in [0, 1] (generative families only)."""
        raise NotImplementedError(f"the {self.name} family does not generate new images")

    def save(self, directory: str | Path) -> None:
        """Export the trained models (weights as safetensors plus their config) into `directory`."""
        directory = Path(directory)
        for part, model in self.models.items():
            save_without_card(unwrap(model), directory if len(self.models) == 1 else directory / part)

    @classmethod
    def required_files(cls) -> list[str]:
        """The files `load_models` reads, relative to the run directory."""
        single = len(cls.model_classes) == 1
        return [name if single else f"{part}/{name}" for part in cls.model_classes for name in ("config.json", "model.safetensors")]

    @classmethod
    def export_files(cls) -> list[str]:
        """Every file `save` may write (the required ones and optional extras): what is published and downloaded."""
        names = cls.required_files()
        return [*names, *(cls.published_name(name) for name in names if cls.published_name(name) != name)]

    # A part published at the repo root instead of its folder (one copy), so the stock `Class.from_pretrained(repo_id)` loads it
    hub_root: str | None = None

    @classmethod
    def published_name(cls, name: str) -> str:
        """Where a run file goes in a published repo: the hub_root part's folder moves to the root, the rest stays."""
        prefix = f"{cls.hub_root}/"
        return name[len(prefix):] if cls.hub_root and name.startswith(prefix) else name

    @classmethod
    def load_models(cls, directory: str | Path) -> dict[str, nn.Module]:
        """Read back what `save` wrote (or a published repo, whose hub_root part is at the root)."""
        directory = Path(directory)
        single = len(cls.model_classes) == 1

        def folder(part: str) -> Path:
            published = part == cls.hub_root and not (directory / part).is_dir()
            return directory if single or published else directory / part

        return {part: klass.from_pretrained(str(folder(part))) for part, klass in cls.model_classes.items()}


def save_without_card(model: nn.Module, directory: str | Path) -> None:
    """`save_pretrained` of a hub-mixin model, minus the placeholder README.md the mixin writes ("[More Information Needed]")."""
    card = Path(directory) / "README.md"
    existed = card.exists()
    model.save_pretrained(directory)
    if not existed and card.exists():  # `genkit push` writes the real card; a README that was already there stays
        card.unlink()
