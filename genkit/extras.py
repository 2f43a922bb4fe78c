"""Optional dependencies (pyproject's extras): each is imported only where it is used, and a missing one is named in one line."""

from __future__ import annotations

import importlib
from types import ModuleType

from .config import ConfigError

# extra -> its requirements, as in pyproject.toml's [project.optional-dependencies] (a test keeps the two equal)
EXTRAS = {
    "app": ["gradio>=4.0"],
    "metrics": ["torch-fidelity>=0.3", "torchvision>=0.16", "transformers>=4.40"],
    "analysis": ["mlxtend>=0.23.2"],
}


class MissingExtra(ConfigError):
    """An optional dependency a command needs is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra that brings it and the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: that traceback is the useful one
        packages = " ".join(f'"{r}"' for r in EXTRAS[extra])
        raise MissingExtra(f"{purpose} needs {module.split('.')[0]}, in genkit's optional `{extra}` extra: pip install {packages} "
                           f"(or pip install -e \".[{extra}]\" in a genkit checkout)") from None
