"""What one request may cost the Space: its settings (GENKIT_* variables), the request-body cap and checked numbers."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import gradio as gr
from PIL import Image
from starlette.responses import PlainTextResponse

MAX_UPLOAD_MB = 10
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_BODY_BYTES = (MAX_UPLOAD_MB + 1) * 2**20  # an upload plus its multipart envelope; also caps inline `data:` images and JSON
# PIL checks this when it reads a header, before decoding: anything over 4096 x 4096 pixels fails at Image.open, wherever
# it is opened (Gradio's Sketchpad layers too); a 17 KB palette PNG can otherwise claim 12000 x 12000 pixels
Image.MAX_IMAGE_PIXELS = MAX_UPLOAD_PIXELS // 2  # PIL raises above twice this
log = logging.getLogger("genkit.space")


def refuse(message: str) -> gr.Error:
    """An expected error for the visitor: one log line, no traceback."""
    log.info("refused: %s", message[:300])
    return gr.Error(message, print_exception=False)


def _env(name: str, default: float, kind: type = float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(float(raw))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


@dataclass
class Settings:
    """The Space's limits per request and per queue; in Space mode each is read from the GENKIT_* variable named beside it."""

    space: bool = False
    max_steps: int = 200  # GENKIT_MAX_STEPS: denoising steps of one request
    max_image_steps: int | None = None  # GENKIT_MAX_IMAGE_STEPS: images x steps of one request
    request_seconds: float | None = None  # GENKIT_MAX_REQUEST_SECONDS: the work of one request, once it runs
    call_seconds: float | None = None  # GENKIT_MAX_CALL_SECONDS: one model call (the deadline is checked between calls)
    quick_seconds: float = 5.0  # GENKIT_QUICK_SECONDS: predicted at most this, a request takes the quick lane
    max_wait_seconds: float | None = None  # GENKIT_MAX_WAIT_SECONDS: predicted wait in a lane before the request runs
    max_queue: int = 32  # GENKIT_MAX_QUEUE: requests waiting in each lane
    workers: int = 1  # GENKIT_WORKERS: requests running at once in each lane (quick, slow)
    max_batch: int = 32  # GENKIT_MAX_BATCH: images (guided: image halves) in one model call, which bounds its memory
    max_output_pixels: int = 16 * 2**20  # GENKIT_MAX_OUTPUT_PIXELS: pixels of one returned image (a grid, enlarged)
    max_layers: int = 4  # GENKIT_MAX_SKETCH_LAYERS: layers of one drawing (each file is also checked from its header)
    max_request_pixels: int = MAX_UPLOAD_PIXELS  # all the images of one request together, read from their headers
    load_workers: int = 2  # GENKIT_LOAD_WORKERS: models built or downloaded at once
    max_loads_waiting: int = 8  # loads waiting for a load worker; more are refused

    @classmethod
    def from_env(cls, space: bool) -> "Settings":
        """Space mode: the GENKIT_* variables over the defaults; local mode: no time limits, no queue refusals."""
        if not space:
            return cls(space=False, max_wait_seconds=None, max_queue=64, workers=2)
        request = _env("GENKIT_MAX_REQUEST_SECONDS", 60.0)
        return cls(space=True, max_steps=_env("GENKIT_MAX_STEPS", 100, int), max_image_steps=_env("GENKIT_MAX_IMAGE_STEPS", 1600, int),
                   request_seconds=request,
                   # one model call may take a tenth of a request: a request ends within about 1.1x its limit
                   call_seconds=_env("GENKIT_MAX_CALL_SECONDS", request / 10), quick_seconds=_env("GENKIT_QUICK_SECONDS", 5.0),
                   max_wait_seconds=_env("GENKIT_MAX_WAIT_SECONDS", 300.0), max_queue=max(1, _env("GENKIT_MAX_QUEUE", 32, int)),
                   workers=max(1, _env("GENKIT_WORKERS", 1, int)), max_output_pixels=_env("GENKIT_MAX_OUTPUT_PIXELS", 16 * 2**20, int),
                   max_batch=max(1, _env("GENKIT_MAX_BATCH", 32, int)),
                   max_layers=_env("GENKIT_MAX_SKETCH_LAYERS", 4, int), load_workers=max(1, _env("GENKIT_LOAD_WORKERS", 2, int)))

    @property
    def generate_threads(self) -> int:
        """Gradio workers the sampling queue needs: every running and waiting request of both lanes holds one (waiting is cheap)."""
        return 2 * (self.workers + self.max_queue)


class RequestTooLarge(Exception):
    """A request body streamed past the cap."""


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` (declared or streamed) is refused with 413 before anything parses it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen, state = 0, {"started": False, "refused": False}

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a chunked body, which declares no length: answered here, whatever the route makes of it
                if not state["started"]:
                    state["refused"] = True
                    await self._refuse(scope, receive, send)
                raise RequestTooLarge()
            return message

        async def watched(message):
            if not state["refused"]:
                state["started"] = state["started"] or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except RequestTooLarge:
            pass

    async def _refuse(self, scope, receive, send):
        log.info("refused: a request body over %d bytes to %s", self.max_bytes, scope.get("path"))
        await PlainTextResponse(f"Request body over {self.max_bytes // 2**20} MB", status_code=413)(scope, receive, send)


def number(value, name: str, low: float, high: float, integer: bool = False) -> float:
    """A finite number within [low, high], or a readable error: API callers can send anything, NaN included."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise refuse(f"{name} must be a number.") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise refuse(f"{name} must be between {low:g} and {high:g}.")
    return int(value) if integer else value
