"""Images -> uint8 arrays (N, C, H, W): PIL decoding, padding / resizing, and the parallel decode into a memory map."""

from __future__ import annotations

import io
import os
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage
from PIL import PngImagePlugin

from ..config import DataConfig
from .sources import DataSourceError
from .tensors import ImageTensors

DECODE_BATCH = 1000  # images per datasets.map batch in the parallel decode


def to_tensors(ds: datasets.Dataset, image_size: int, channels: int = 1, resize: str = "pad", chunk: int = 2000) -> ImageTensors:
    """Decode every image once, in this process, into an in-memory uint8 tensor of the requested size and channels."""
    out = np.empty((len(ds), channels, image_size, image_size), dtype=np.uint8)
    raw = _undecoded(ds)
    for start in range(0, len(ds), chunk):
        rows = raw[start : start + chunk]["image"]
        out[start : start + len(rows)] = _decode_rows(rows, start, image_size, channels, resize)
    return ImageTensors(torch.from_numpy(out), torch.tensor(ds["label"], dtype=torch.int64), list(ds.features["label"].names))


def _undecoded(ds: datasets.Dataset) -> datasets.Dataset:
    """The image column as raw bytes/paths: genkit decodes itself, so a broken file can be named."""
    return ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))


def _decode_rows(rows: list[dict[str, Any]], start: int, size: int, channels: int, resize: str) -> np.ndarray:
    """Undecoded image cells -> uint8 array (n, C, size, size)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(rows), channels, size, size), dtype=np.uint8)
    for i, item in enumerate(rows):
        try:
            with _open_image(item) as img:
                if resize == "resize" and img.format == "JPEG":
                    img.draft(mode, (size, size))  # let the JPEG decoder downscale: far less work for large photos
                out[i] = _fit(img, mode, size, resize).reshape(size, size, channels).transpose(2, 0, 1)
        except Exception as err:  # PIL raises many types for a broken file; name the file instead of a traceback
            name = repr(item.get("path") or f"row {start + i}")
            raise DataSourceError(f"cannot read image {name}: {type(err).__name__}: {err}. Remove or replace that file") from None
    return out


def _open_image(item: dict[str, Any]) -> PILImage.Image:
    """A PIL image from an undecoded cell (bytes or a path); PNGs skip PIL's format probing, ~15 % of a small PNG's cost."""
    data = item.get("bytes")
    if data is None:
        with open(item["path"], "rb") as f:
            data = f.read()
    if data[:8] == PNG_SIGNATURE:
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    return PILImage.open(io.BytesIO(data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_into(batch: dict[str, list], indices: list[int], path: str, size: int, channels: int, resize: str) -> None:
    """`datasets.map` worker: decode a batch and write it into the cache's memory map at its row numbers."""
    out = np.load(path, mmap_mode="r+")
    out[indices[0] : indices[-1] + 1] = _decode_rows(batch["image"], indices[0], size, channels, resize)
    out.flush()


def _fit(img: PILImage.Image, mode: str, size: int, resize: str) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black, the background of MNIST-like data
        img = img.convert("RGBA")
        background = PILImage.new("RGBA", img.size, (0, 0, 0, 255))
        img = PILImage.alpha_composite(background, img)
    if img.mode != mode:
        img = img.convert(mode)
    w, h = img.size
    if resize == "pad" and w <= size and h <= size:
        return _pad(np.asarray(img), size)
    return np.asarray(img.resize((size, size), PILImage.BILINEAR))


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre an (h, w[, c]) image on a black size x size canvas."""
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr
    top, left = (size - h) // 2, (size - w) // 2
    padded = np.zeros((size, size) + arr.shape[2:], dtype=np.uint8)
    padded[top : top + h, left : left + w] = arr
    return padded


def _fit_arrays(images: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Grey (n, h, w) arrays -> (n, C, size, size): padded with numpy, resized or coloured through PIL."""
    if cfg.channels == 1 and (cfg.resize == "pad" and max(images.shape[1:]) <= cfg.image_size):
        return np.stack([_pad(a, cfg.image_size) for a in images])[:, None]
    mode = "L" if cfg.channels == 1 else "RGB"
    return np.stack([_fit(PILImage.fromarray(a), mode, cfg.image_size, cfg.resize).reshape(cfg.image_size, cfg.image_size, cfg.channels)
                     for a in images]).transpose(0, 3, 1, 2)


def _decode_parallel(ds: datasets.Dataset, path: str, cfg: DataConfig) -> None:
    """Decode every image into the memory map at `path`, in `cfg.decode_workers` processes (default: all cores)."""
    workers = cfg.decode_workers or min(os.cpu_count() or 1, 16)
    workers = min(workers, max(1, len(ds) // DECODE_BATCH))  # a process per thousand images at least, or start-up dominates
    kwargs = {"path": path, "size": cfg.image_size, "channels": cfg.channels, "resize": cfg.resize}
    _undecoded(ds).map(_decode_into, batched=True, batch_size=DECODE_BATCH, with_indices=True, fn_kwargs=kwargs,
                       num_proc=workers if workers > 1 else None, load_from_cache_file=False, desc=f"decoding {len(ds):,} images")
