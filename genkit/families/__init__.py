"""Model families by name. Each module holds one family: its models, its loss step and its sampler."""

from __future__ import annotations

import importlib

from ..config import ConfigError
from .base import DataInfo, Family

FAMILIES = {
    "autoencoder": "genkit.families.autoencoder:AutoencoderFamily",
    "diffusion": "genkit.families.diffusion:DiffusionFamily",
    "vae": "genkit.families.vae:VAEFamily",
    "gan": "genkit.families.gan:GANFamily",
    "rbm": "genkit.families.rbm:RBMFamily",
    "classifier": "genkit.families.classifier:ClassifierFamily",
}


def get_family(name: str) -> type[Family]:
    """The Family class registered under `name`."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    module, _, attr = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["DataInfo", "FAMILIES", "Family", "get_family"]
