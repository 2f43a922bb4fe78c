"""Input corruptions for denoising: gaussian noise, salt-and-pepper and masking, on images in [0, 1]."""

from __future__ import annotations

import torch

CORRUPTIONS = ("gaussian", "salt_and_pepper", "mask")


def corrupt(x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt images in [0, 1]: `level` is the noise std (gaussian) or the fraction of pixels hit (others)."""
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * noise).clamp(0, 1)
    if kind in ("salt_and_pepper", "mask"):
        # one draw per pixel location, shared across channels, so a hit pixel is black or white in every channel
        shape = (x.shape[0], 1, *x.shape[2:]) if x.dim() == 4 else x.shape
        u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
        hit = u < level
        if kind == "mask":
            return x.masked_fill(hit, 0.0)
        salt = u < level / 2
        return torch.where(hit, salt.to(x.dtype), x)
    raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")
