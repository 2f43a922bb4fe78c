"""Requests whose memory is bounded before anything decodes: sketch layers, upload lists and Gradio's accept_blobs, each
measured as RSS growth of the real app (launched on 127.0.0.1 in this process) through its HTTP routes."""

import io
import json
from pathlib import Path

import httpx
import test_space
from PIL import Image
from test_space import rss_peak_mb, rss_peak_reset

runs, space = test_space.runs, test_space.space  # the Space launched on loopback, with its listed tiny models


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def upload(url: str, path: Path) -> dict:
    """A file uploaded through Gradio's upload route, as the FileData a request names."""
    with open(path, "rb") as f:
        answer = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f, "image/png")}, timeout=60)
    answer.raise_for_status()
    return {"path": answer.json()[0], "meta": {"_type": "gradio.FileData"}}


def call(url: str, api: str, data: list) -> str:
    """One event through /gradio_api/call: its whole answer stream."""
    event = httpx.post(f"{url}gradio_api/call{api}", content=json.dumps({"data": data}), headers={"content-type": "application/json"}, timeout=60)
    event.raise_for_status()
    return httpx.get(f"{url}gradio_api/call{api}/{event.json()['event_id']}", timeout=120).text


def sketchpad_id(module) -> int:
    import gradio as gr

    return next(i for i, block in module.demo.blocks.items() if isinstance(block, gr.Sketchpad))


def test_sketch_layers_and_upload_lists_are_capped_before_decoding(space, tmp_path):
    """N1: one 4096 x 4096 PNG of a few KB named 50 times as layers (or as a large drawing) is refused from the headers: the
    peak RSS moves by less than 60 MB (decoding the 50 layers would take 3.2 GB)."""
    module, url = space()
    httpx.get(url, timeout=60)
    assert "event: complete" in call(url, "/load", ["dae"])  # the listed model ready (the start-up preload may still run)
    image = tmp_path / "big.png"
    Image.new("L", (4096, 4096), 0).save(image, optimize=True)
    assert image.stat().st_size < 200_000
    file = upload(url, image)
    small = tmp_path / "small.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(small)
    little = upload(url, small)
    rss_peak_reset()
    before = rss_peak_mb()
    cases = [({"background": file, "layers": [file] * 50, "composite": file}, "at most 4 (files|layers)"),
             ({"background": little, "layers": [little] * 5, "composite": little}, "at most 4 (files|layers)"),
             ({"background": file, "layers": [], "composite": file}, "pixels"),
             ({"background": None, "layers": [file] * 3, "composite": little}, "pixels in all|at most")]
    for sketch, expected in cases:
        answer = call(url, "/denoise", ["dae", None, sketch, "auto", "gaussian", 0.2, 0.5, 4, 0])
        assert "event: error" in answer and __import__("re").search(expected, answer), answer[-400:]
    assert rss_peak_mb() - before < 60
    # a drawing within the caps still works
    answer = call(url, "/denoise", ["dae", None, {"background": little, "layers": [little], "composite": little}, "auto", "gaussian", 0.2, 0.5, 4, 0])
    assert "event: complete" in answer, answer[-400:]


def test_accept_blobs_indices_and_storage_are_bounded(space, tmp_path):
    """N2: Gradio's Sketchpad upload route (`component_server`, `fn_name=accept_blobs`) with index 5e7 allocates nothing (it
    was +382 MB), and many drawings stored for later events stay within the store's cap."""
    module, url = space()
    httpx.get(url, timeout=60)
    component = sketchpad_id(module)
    png = io.BytesIO()
    Image.new("L", (16, 16), 0).save(png, format="PNG")

    def send(index, id_, body=png.getvalue(), kind="layer"):
        fields = {"component_id": str(component), "session_hash": "probe", "fn_name": "accept_blobs", "type": kind, "index": str(index), "id": id_}
        return httpx.post(f"{url}gradio_api/component_server", data=fields, files={"file": ("blob", body, "image/png")}, timeout=60)

    assert send(0, "ok").status_code == 200  # a normal layer is accepted
    assert "ok" in module.demo.blocks[component].blob_storage
    rss_peak_reset()
    before = rss_peak_mb()
    for index in ["50000000", "4", "-1", "x"]:
        assert send(index, "huge").status_code >= 400
    assert "huge" not in module.demo.blocks[component].blob_storage
    assert rss_peak_mb() - before < 30
    # 60 drawings of ~1 MB each (incompressible noise), never used by an event: the store keeps at most 32 MB of them
    noise = io.BytesIO()
    Image.frombytes("L", (1024, 1024), __import__("os").urandom(1024 * 1024)).save(noise, format="PNG", compress_level=0)
    started = rss_mb()
    for i in range(60):
        assert send(0, f"drawing{i}", noise.getvalue(), "background").status_code == 200
    store = module.demo.blocks[component].blob_storage
    assert sum(store.size(v) for v in store.values()) <= 32 * 2**20 and "drawing0" not in store and "drawing59" in store
    assert rss_mb() - started < 100
