"""Images a visitor sends: their size read from the header before anything decodes them, bounded in number and in total."""

from __future__ import annotations

import base64
import io
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio.components.base import server
from gradio.components.image_editor import AcceptBlobs
from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import MAX_UPLOAD_PIXELS, refuse

UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)
SKETCH_PIXELS = MAX_UPLOAD_PIXELS // 4  # a drawing: background and composite together (its layers are never decoded)


def _check_pixels(image: Image.Image, limit: int = MAX_UPLOAD_PIXELS) -> None:
    if image.width * image.height > limit:
        side = int(limit**0.5)
        raise refuse(f"That image is {image.width}x{image.height} pixels; at most {side}x{side} is read.")


def header_pixels(source) -> int:
    """Pixels an image file (path, bytes or file object) claims in its header, decoding nothing; a readable error otherwise."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as opened:
            _check_pixels(opened)
            return opened.width * opened.height
    except UNREADABLE as err:
        raise refuse(f"Could not read that file as an image of at most 4096x4096 pixels ({type(err).__name__}).") from None


def _file_source(file):
    """Where a Gradio FileData's bytes are (a path, or an inline data: URL), or None."""
    url = getattr(file, "url", None) or ""
    path = getattr(file, "path", None)
    return path or (io.BytesIO(base64.b64decode(url.partition(",")[2])) if url.startswith("data:") else None)


def read_image(upload, sketch, invert: str, size: int, channels: int) -> torch.Tensor:
    """An uploaded file (checked from its header before decoding) or a drawing -> (1, C, size, size) in [0, 1], light-on-dark."""
    image = upload if upload is not None else sketch
    if isinstance(image, dict):  # ImageEditor / Sketchpad value
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
    if image is None:
        raise refuse("Upload or draw an image first.")
    try:
        if isinstance(image, (str, Path)):
            with Image.open(image) as opened:  # reads the header only
                _check_pixels(opened)
                opened.draft(None, (size * 4, size * 4))  # JPEG: decode at a reduced scale when that is enough
                opened.load()  # decodes, now that the size is known to be acceptable (no copy: one full-size image at most)
                factor = min(opened.width, opened.height) // (size * 4)
                image = opened.reduce(factor) if factor > 1 else opened.copy()
        elif isinstance(image, np.ndarray):
            if image.size == 0 or image.ndim not in (2, 3):
                raise refuse("That image is empty or has an unexpected shape.")
            image = Image.fromarray(image.astype(np.uint8))
    except UNREADABLE as err:
        raise refuse(f"Could not read that file as an image of at most 4096x4096 pixels ({type(err).__name__}).") from None
    if not isinstance(image, Image.Image):
        raise refuse("Could not read that file as an image.")
    _check_pixels(image)
    factor = min(image.width, image.height) // (size * 4)
    if factor > 1:  # shrink first: the conversions below then copy a small image, not a 4096 x 4096 one
        image = image.reduce(factor)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent strokes: drawn on white paper
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if invert == "yes" or (invert == "auto" and np.asarray(image.convert("L")).mean() > 127):
        image = ImageOps.invert(image)
    image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array)[None]


class BlobStore(OrderedDict):
    """The Sketchpad's uploaded drawings waiting for their event, oldest dropped first once over `max_bytes` or `max_entries`."""

    def __init__(self, max_bytes: int, max_entries: int):
        super().__init__()
        self.max_bytes, self.max_entries = max_bytes, max_entries

    @staticmethod
    def size(blobs) -> int:
        """Bytes one drawing holds."""
        files = [getattr(blobs, "background", None), getattr(blobs, "composite", None), *(getattr(blobs, "layers", None) or [])]
        return sum(len(f) for f in files if f)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > 1 and (len(self) > self.max_entries or sum(self.size(v) for v in self.values()) > self.max_bytes):
            self.popitem(last=False)


def bound_sketchpad(sketch: gr.Sketchpad, max_layers: int = 4, max_pixels: int = SKETCH_PIXELS, store_mb: float = 32) -> gr.Sketchpad:
    """Bound a Sketchpad's uploads (Gradio's `accept_blobs`): a layer index below `max_layers`, each file checked from its header,
    a bounded store; its layers are never decoded (the app reads the composite). Patched on the instance: a subclass of a Gradio
    component would make Gradio write a .pyi stub beside this module and need its own front-end name."""
    sketch.max_layers, sketch.max_pixels = max_layers, max_pixels
    sketch.blob_storage = BlobStore(int(store_mb * 2**20), 64)
    accept, preprocess = sketch.accept_blobs, sketch.preprocess

    @server
    def accept_blobs(data: AcceptBlobs):
        """Gradio's upload of one part of a drawing, refused before anything is allocated for an index or a file out of bounds."""
        fields = data.data
        kind, index = str(fields.get("type")), fields.get("index")
        if kind not in ("layer", "background", "composite"):
            raise refuse("Unknown part of a drawing.")
        if kind == "layer":
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise refuse("A drawing layer needs an index.") from None
            if not 0 <= index < max_layers:
                raise refuse(f"A drawing has at most {max_layers} layers.")
        if not data.files or len(data.files) != 1 or len(str(fields.get("id") or "")) > 64:
            raise refuse("One file per part of a drawing.")
        if header_pixels(data.files[0][1]) > max_pixels:
            raise refuse(f"A drawing has at most {max_pixels} pixels.")
        return accept(data)

    def bounded_preprocess(payload):
        """Gradio's preprocessing without the layers (never used: the composite holds them) and within the pixel budget."""
        if payload is None:
            return None
        layers = getattr(payload, "layers", None) or []
        if len(layers) > max_layers:
            raise refuse(f"A drawing has at most {max_layers} layers; this one has {len(layers)}.")
        cached = sketch.blob_storage.get(payload.id) if getattr(payload, "id", None) else None
        files = [cached.background, cached.composite] if cached is not None else [_file_source(payload.background), _file_source(payload.composite)]
        if sum(header_pixels(f) for f in files if f) > max_pixels:
            raise refuse(f"A drawing has at most {max_pixels} pixels in all.")
        if cached is not None:
            cached.layers = []
        return preprocess(payload.model_copy(update={"layers": []}))

    sketch.accept_blobs, sketch.preprocess = accept_blobs, bounded_preprocess
    return sketch


def guard_input(component: gr.components.Component, max_files: int = 8) -> None:
    """An input whose image files are checked from their header (and counted) before Gradio's preprocessing decodes anything,
    and whose Gradio-side refusals (a value outside a slider's range) log one line, not a traceback."""
    preprocess = component.preprocess

    def checked_preprocess(payload):
        if hasattr(payload, "path"):
            files = [payload]
        else:
            files = [getattr(payload, "background", None), getattr(payload, "composite", None), *(getattr(payload, "layers", None) or [])]
        if len(files) > max_files + 2:
            raise refuse(f"{component.label}: at most {max_files} files.")
        total = sum(header_pixels(source) for file in files if (source := _file_source(file)) is not None)
        if total > MAX_UPLOAD_PIXELS * 2:
            raise refuse(f"{component.label}: at most {MAX_UPLOAD_PIXELS * 2} pixels in all.")
        try:
            return preprocess(payload)
        except gr.Error as err:
            raise refuse(str(err.message)) from None
        except (ValueError, TypeError, OverflowError) as err:  # e.g. NaN into a whole-number field
            raise refuse(f"{component.label}: not a valid value ({err}).") from None

    component.preprocess = checked_preprocess
