"""Image grids and loss curves written into the run directory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> Image.Image:
    """Images (N, C, H, W) in [0, 1] -> one PIL image, `nrow` per row."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = np.zeros((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write a grid PNG (scaled up so small images stay visible) and return its path."""
    grid = make_grid(images, nrow)
    if grid.width < 512:
        scale = max(1, 512 // grid.width)
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_loss_curve(history: list[dict], path: str | Path) -> Path | None:
    """Plot every `*loss*` series in the history against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if "loss" in k})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(row["step"], row[key]) for row in history if key in row]
        ax.plot(*zip(*points), label=key, marker="o" if key.startswith("eval") else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for row in history for k, v in row.items() if k in keys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
