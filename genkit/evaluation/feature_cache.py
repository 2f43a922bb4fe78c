"""Features of real images, computed once per (data set content, split, image count, feature space and its weights)."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load_file, save_file

from ..data import cache_dir
from ..progress import stage
from .features import FeatureSpace

CACHE_VERSION = 1


def cached_features(space: FeatureSpace, images: torch.Tensor, source: str, split: str) -> torch.Tensor:
    """`space`'s features of these real images, from genkit's cache when an earlier evaluation computed them.

    The key hashes the pixels themselves, so another subset, another preprocessing or a changed data set is a new entry.
    """
    pixels = hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()
    key = json.dumps([source, split, len(images), pixels, space.identity, CACHE_VERSION])
    path = cache_dir() / "features" / f"{space.name}-{hashlib.sha1(key.encode()).hexdigest()}.safetensors"
    if path.is_file():
        try:
            return load_file(path)["features"]
        except Exception:  # a damaged entry is recomputed, never fatal
            path.unlink(missing_ok=True)
    with stage(f"{space.name} features of {len(images):,} real {split} images (cached for later evaluations)"):
        features = space.extract(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({"features": features.contiguous()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)  # concurrent writers never leave a half-written entry
    return features
