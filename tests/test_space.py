"""The app as a public Space: which models it loads, what a download may cost, and a queue no visitor can hold."""

import importlib.util
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from conftest import train_space_runs
from huggingface_hub import HfApi

from genkit.safe_load import REJECTED, Limits, ModelCache, ModelRejected, SourcePolicy

APP = Path(__file__).resolve().parents[1] / "spaces" / "app.py"


@pytest.fixture(scope="module")
def runs(tiny_idx, tmp_path_factory):
    return train_space_runs(tiny_idx, tmp_path_factory.mktemp("space"))


class FakeHub:
    """Stands in for the Hub: repos are local run folders (plus planted files); records what is fetched."""

    def __init__(self, monkeypatch, repos: dict, planted: dict | None = None):
        self.repos, self.planted, self.fetched, self.snapshots = repos, planted or {}, [], []
        monkeypatch.setattr(HfApi, "model_info", lambda api, repo_id, **kw: self.model_info(repo_id, **kw))
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def files(self, repo_id):
        root = self.repos[repo_id]
        found = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
        return {**found, **self.planted.get(repo_id, {})}

    def model_info(self, repo_id, files_metadata=False, **kwargs):
        if repo_id not in self.repos:
            raise OSError(f"404 Client Error: Repository Not Found for url: https://huggingface.co/api/models/{repo_id}")
        assert files_metadata
        return SimpleNamespace(sha="0123abc", siblings=[SimpleNamespace(rfilename=n, size=s) for n, s in self.files(repo_id).items()])

    def hf_hub_download(self, repo_id, filename, revision=None, local_dir=None, **kwargs):
        assert revision == "0123abc"
        self.fetched.append(filename)
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.repos[repo_id] / filename, target)
        return str(target)

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_dir=None, **kwargs):
        assert revision == "0123abc" and allow_patterns is not None  # pinned to the commit whose sizes were checked
        self.snapshots.append(sorted(allow_patterns))
        for name in allow_patterns:
            self.hf_hub_download(repo_id, name, revision, local_dir)
        return local_dir


def test_every_rejected_source_gets_the_same_message(runs, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, {})
    policy = SourcePolicy({"demo": str(runs / "dae")}, allow_hub=True)
    (tmp_path / "file.txt").write_text("x")
    probes = [str(runs / "dae"), str(runs / "diffusion"), str(runs), "/nope", "/etc", "/etc/passwd", "~", "~/.cache", "../..", str(tmp_path / "file.txt"),
              "someone/missing", "a/b/c", "", "demo ", "x" * 500, "..\\..", "./dae", "someone/../etc"]
    messages = set()
    for probe in probes:
        if probe == "demo ":
            continue  # the listed name (stripped): loads
        with pytest.raises(ModelRejected) as caught:
            policy.load(probe)
        messages.add(str(caught.value))
    assert messages == {REJECTED} and "/" not in REJECTED.replace("owner/name", "")
    assert policy.load("demo ").name == "autoencoder"
    assert SourcePolicy({"demo": str(runs / "dae")}, allow_hub=False).load("demo").name == "autoencoder"
    with pytest.raises(ModelRejected):
        SourcePolicy({}, allow_hub=False).load("someone/ae")
    assert hub.fetched == []  # nothing was downloaded for a repo that does not exist


def test_hub_download_fetches_only_what_a_run_needs_within_the_size_cap(runs, monkeypatch):
    planted = {"ddpm": {"junk.bin": 300 * 2**20, "notes/secret.txt": 10, "unet/other.safetensors": 1}}
    hub = FakeHub(monkeypatch, {"someone/ddpm": runs / "diffusion", "someone/ae": runs / "dae"},
                  {"someone/ddpm": planted["ddpm"]})
    policy = SourcePolicy({}, allow_hub=True)
    family = policy.load("someone/ddpm")
    assert family.name == "diffusion" and family.generate(2, __import__("torch").Generator().manual_seed(0), steps=2).shape == (2, 1, 28, 28)
    assert hub.snapshots == [["data_info.json", "model_index.json", "pipeline.py", "scheduler/scheduler_config.json", "training_config.json",
                              "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]]
    assert "junk.bin" not in hub.fetched and "notes/secret.txt" not in hub.fetched
    # a cap below the weights' size: refused before anything but the small config is fetched
    hub.fetched.clear()
    small = SourcePolicy({}, allow_hub=True, limits=Limits(max_download_mb=0.01))
    with pytest.raises(ModelRejected, match="not available"):
        small.load("someone/ae")
    assert hub.fetched == ["training_config.json"]


def test_crafted_configs_are_refused_before_anything_is_allocated(runs, tmp_path):
    import resource

    policy = SourcePolicy({}, allow_hub=False)
    cases = {
        "ae_huge": ("config.json", lambda c: {**c, "hidden_dims": [10**6, 10**6]}),  # 10^12 parameters: terabytes
        "ae_mismatch": ("config.json", lambda c: {**c, "hidden_dims": [64, 8]}),  # not the stored weights
        "big_image": ("data_info.json", lambda c: {**c, "image_size": 100_000}),
        "many_classes": ("data_info.json", lambda c: {**c, "class_names": [str(i) for i in range(10**5)]}),
        "unet_huge": ("unet/config.json", lambda c: {**c, "block_out_channels": [4096, 8192, 8192]}),
        "bad_family": ("training_config.json", lambda c: {**c, "family": "transformer"}),
        "other_autoencoder": ("training_config.json", lambda c: {**c, "model": {**c["model"], "autoencoder": "/etc"}}),
    }
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, (file, change) in cases.items():
        source = runs / ("diffusion" if "unet" in file or name == "other_autoencoder" else "dae")
        folder = tmp_path / name
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoints"))
        path = folder / file
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
        listed = SourcePolicy({name: str(folder)}, allow_hub=False, limits=policy.limits)
        with pytest.raises(ModelRejected):
            listed.load(name)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 300_000  # KiB: no model was built for real


def test_model_cache_loads_each_source_once_and_never_blocks_others(runs):
    release, calls = threading.Event(), []

    def load(source):
        calls.append(source)
        if source == "slow":
            release.wait(120)  # released by the test once the other sources have answered
        return source.upper()

    cache = ModelCache(load)
    assert cache.get("fast") == "FAST"
    slow = [threading.Thread(target=cache.get, args=("slow",)) for _ in range(3)]
    for t in slow:
        t.start()
    assert cache.get("fast") == "FAST" and cache.get("other") == "OTHER"  # not behind the slow download:
    assert not release.is_set() and all(t.is_alive() for t in slow)  # answered while the slow load is still held
    release.set()
    for t in slow:
        t.join()
    assert calls.count("slow") == 1 and calls.count("fast") == 1
    failing = ModelCache(lambda s: (_ for _ in ()).throw(ModelRejected()))
    for _ in range(2):
        with pytest.raises(ModelRejected):
            failing.get("x")


def wait_for(condition, timeout: float = 300.0) -> None:
    """Poll `condition` until it holds (a generous timeout only so that a broken app fails instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def rss_peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident size (VmHWM) starts again from the current one


def rss_peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def bomb_png(path: Path, side: int) -> Path:
    """A 1-bit palette PNG of side x side pixels, a few KB on disk, written without ever holding its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" + b"\0" * ((side + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 3, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", b"\0\0\0\xff\xff\xff") + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def space(runs, monkeypatch):
    """Launches spaces/app.py in Space mode (its default) with the given environment; yields (module, url)."""
    from test_app import free_port

    launched = []

    def launch(**env):
        settings = {"GENKIT_MODELS": f"ddpm={runs / 'diffusion'},dae={runs / 'dae'}", "GENKIT_ALLOW_HUB": "0", **env}
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(f"genkit_space_app_{len(launched)}", APP)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        port = free_port()
        module.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        launched.append(module)
        return module, f"http://127.0.0.1:{port}/"

    yield launch
    for module in launched:
        module.demo.close()


@pytest.fixture()
def slow_unet(monkeypatch):
    """Makes the UNet of a run in a folder named in `delay` sleep that many seconds per image and call: a deterministic slow model."""
    from diffusers import UNet2DModel

    delay, original = {"slow": 0.25, "slower": 1.5, "calls": []}, UNet2DModel.forward

    def forward(self, sample, *args, **kwargs):
        folder = Path(str(self.config.get("_name_or_path", ""))).parent.name
        if threading.current_thread().name != "genkit-space-retime":  # the app's own re-timing while idle is not a request's work
            delay["calls"].append(folder)  # which model ran, for tests that check nothing ran
        time.sleep(delay.get(folder, 0) * sample.shape[0])
        return original(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", forward)
    return delay


def test_space_mode_budget(space, runs):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    module, url = space()
    client = Client(url, verbose=False)
    text, _ = client.predict("ddpm", api_name="/load")
    assert "diffusion" in text
    for probe in [str(runs / "dae"), "/etc/passwd", "~", "someone/ae"]:
        with pytest.raises(AppError) as caught:
            client.predict(probe, api_name="/load")
        assert REJECTED in str(caught.value)
    with pytest.raises(AppError, match="over this Space's budget"):
        client.predict("ddpm", "ddpm", 100, "(none)", 1.0, 0, 64, api_name="/sample")
    with pytest.raises(AppError, match="Steps must be between 1 and 100|greater than maximum value 100"):
        client.predict("ddpm", "ddpm", 150, "(none)", 1.0, 0, 1, api_name="/sample")


def test_slow_models_and_requests_are_refused_before_running_and_stopped_at_the_deadline(space, runs, slow_unet, tmp_path):
    """H1: a model's cost per image-step is timed at load; a request predicted over the limit never starts; one that turns out
    slower stops at its deadline; a quick request on a listed model answers while a slow one runs."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    for name in ["slow", "slower"]:
        shutil.copytree(runs / "diffusion", tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))
    models = ",".join(f"{name}={tmp_path / name}" for name in ["slow", "slower"])
    module, url = space(GENKIT_MODELS=f"ddpm={runs / 'diffusion'},{models}", GENKIT_MAX_REQUEST_SECONDS="6",
                        GENKIT_MAX_CALL_SECONDS="1", GENKIT_QUICK_SECONDS="1")
    client = Client(url, verbose=False)
    client.predict("ddpm", api_name="/load")
    client.predict("slow", api_name="/load")  # 0.25 s per image-step: within the 1 s allowed per model call
    # the start-up preload times every listed model (it calls "slower" too): count the request's calls only after it ends
    wait_for(lambda: not any(thread.name == "genkit-space-preload" for thread in threading.enumerate()))
    # predicted 4 images x 8 steps x 0.25 s (or a little more, as timed) = 8 s, over 6 s: refused at once, nothing runs
    ran = len(slow_unet["calls"])
    with pytest.raises(AppError, match=r"would take about (8|9|1\d) s here, over this Space's limit of 6 s"):
        client.predict("slow", "ddim", 8, "(none)", 1.0, 0, 4, api_name="/sample")
    assert len(slow_unet["calls"]) == ran  # refused before any model call
    # the machine gets slower after the model was timed: the request is stopped at its deadline, within one model call
    slow_unet["slow"] = 0.6
    started = time.monotonic()
    with pytest.raises(AppError, match="Stopped after 6 s"):
        client.predict("slow", "ddim", 12, "(none)", 1.0, 0, 1, api_name="/sample")  # predicted 3 s, takes 7.2 s
    assert 6 <= time.monotonic() - started < 6 + 0.6 + 30  # stopped by the deadline, not run to its end (7.2 s + compute)
    # a model whose single call exceeds the limit is refused when it is loaded (timed), with the reason
    with pytest.raises(AppError, match=r"takes 1.\d s per image here, over this Space's limit of 1.0 s per model call"):
        client.predict("slower", api_name="/load")
    slow_unet["slow"] = 0.25
    # a slow request (predicted 4 s: the slow lane) runs; a quick one on a listed model answers meanwhile
    slow_job = Client(url, verbose=False).submit("slow", "ddim", 16, "(none)", 1.0, 0, 1, api_name="/sample")
    lanes = module.demo.space_app.budget
    wait_for(lambda: lanes.slow.running == 1)  # the slow request is running (a condition, not a fixed sleep)
    client.predict("ddpm", "ddim", 2, "(none)", 1.0, 0, 1, api_name="/sample")  # the quick lane: not behind it
    assert not slow_job.done() and lanes.slow.running == 1
    slow_job.result(timeout=120)


def test_downloads_never_hold_a_sampling_worker_and_listed_models_stay_loaded(space, runs, monkeypatch, tmp_path):
    """M1: a fresh Hub id is loaded only by /load, in its own queue; listed models are never evicted by Hub ids."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    hub = FakeHub(monkeypatch, {f"someone/ae{i}": runs / "dae" for i in range(6)})
    release, snapshot = threading.Event(), hub.snapshot_download

    def slow_snapshot(repo_id, *args, **kwargs):
        if repo_id == "someone/ae0":
            release.wait(60)  # a download that takes as long as the test wants
        return snapshot(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", slow_snapshot)
    module, url = space(GENKIT_ALLOW_HUB="1")
    client = Client(url, verbose=False)
    client.predict("ddpm", api_name="/load")
    Image.new("L", (28, 28), 0).save(tmp_path / "black.png")
    black = handle_file(str(tmp_path / "black.png"))
    for api, args in [("/sample", ("someone/ae1", "ddim", 2, "(none)", 1.0, 0, 1)), ("/reconstruct", ("someone/ae1", black, "auto"))]:
        with pytest.raises(AppError, match="is not loaded: press Load"):
            client.predict(*args, api_name=api)
    assert hub.fetched == []  # nothing was downloaded by a sampling or latent request
    loading = Client(url, verbose=False).submit("someone/ae0", api_name="/load")
    wait_for(lambda: "training_config.json" in hub.fetched)
    with pytest.raises(AppError, match="is still loading"):
        client.predict("someone/ae0", black, "auto", api_name="/reconstruct")
    client.predict("ddpm", "ddim", 2, "(none)", 1.0, 0, 1, api_name="/sample")  # not behind the download, still held:
    client.predict("dae", black, "auto", api_name="/reconstruct")
    client.predict("dae", api_name="/load")  # a loaded model answers /load without a load worker
    assert not loading.done() and not release.is_set()
    release.set()
    assert "autoencoder" in loading.result(timeout=60)[0]
    for i in range(1, 6):  # five more Hub ids through a cache that keeps four of them
        client.predict(f"someone/ae{i}", api_name="/load")
    client.predict("dae", black, "auto", api_name="/reconstruct")  # listed: still loaded
    client.predict("ddpm", "ddim", 2, "(none)", 1.0, 0, 1, api_name="/sample")
    with pytest.raises(AppError, match="is not loaded"):
        client.predict("someone/ae0", black, "auto", api_name="/reconstruct")  # the oldest Hub id was dropped


def test_huge_images_are_refused_from_their_header_by_every_route(space, tmp_path):
    """M2: a few KB claiming 12000x12000 pixels is refused before anything decodes it (the process's peak memory stays put)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    bomb = bomb_png(tmp_path / "bomb.png", 12000)
    assert bomb.stat().st_size < 100_000
    module, url = space()
    client = Client(url, verbose=False)
    client.predict("dae", api_name="/load")
    rss_peak_reset()
    before = rss_peak_mb()
    editor = {"background": handle_file(str(bomb)), "layers": [], "composite": handle_file(str(bomb))}
    for api, args in [("/denoise", ("dae", handle_file(str(bomb)), None, "auto", "gaussian", 0.2, 0.5, 4, 0)),
                      ("/denoise", ("dae", None, editor, "auto", "gaussian", 0.2, 0.5, 4, 0)),
                      ("/reconstruct", ("dae", handle_file(str(bomb)), "auto")),
                      ("/interpolate", ("dae", handle_file(str(bomb)), handle_file(str(bomb)), "auto", 4))]:
        with pytest.raises(AppError, match="at most 4096x4096 pixels"):
            client.predict(*args, api_name=api)
    assert rss_peak_mb() - before < 100  # decoding would take 144 MB (palette) to 576 MB (RGBA)


def test_request_bodies_are_capped_data_urls_included(space, tmp_path):
    """M3: an image sent inline as a data: URL, or any body over 11 MB, is refused with 413 before it is parsed."""
    import base64
    import io

    import httpx
    import numpy as np
    from gradio_client import Client
    from PIL import Image

    module, url = space()
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)  # incompressible: a 12 MB PNG
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    assert buffer.tell() > 11 * 2**20
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    payload = {"data": ["dae", {"url": data_url, "meta": {"_type": "gradio.FileData"}}, None, "auto", "gaussian", 0.2, 0.5, 4, 0]}
    response = httpx.post(f"{url}gradio_api/call/denoise", json=payload, timeout=60)
    assert response.status_code == 413
    chunks = (b"x" * 2**20 for _ in range(13))  # no Content-Length: counted as it streams
    assert httpx.post(f"{url}gradio_api/call/denoise", content=chunks, headers={"content-type": "application/json"}, timeout=60).status_code == 413
    # a small inline image still works
    small = io.BytesIO()
    Image.new("L", (28, 28), 0).save(small, format="PNG")
    client = Client(url, verbose=False)
    client.predict("dae", api_name="/load")
    inline = {"url": "data:image/png;base64," + base64.b64encode(small.getvalue()).decode(), "meta": {"_type": "gradio.FileData"}}
    noisy, restored = client.predict("dae", inline, None, "auto", "gaussian", 0.2, 0.5, 4, 0, api_name="/denoise")
    assert Path(restored).is_file()


def test_incomplete_weights_are_refused(runs, tmp_path, caplog):
    """L1: a safetensors file with no tensors, or half of them, is refused (the log names the file), never served half-random."""
    from safetensors.torch import load_file, save_file

    for name, keep in [("empty", 0), ("half", 0.5)]:
        folder = tmp_path / name
        shutil.copytree(runs / "dae", folder, ignore=shutil.ignore_patterns("checkpoints"))
        weights = load_file(folder / "model.safetensors")
        kept = dict(list(weights.items())[: int(len(weights) * keep)])
        save_file(kept, folder / "model.safetensors")
        with pytest.raises(ModelRejected):
            SourcePolicy({name: str(folder)}, allow_hub=False).load(name)
        assert "model.safetensors is incomplete" in caplog.text
        caplog.clear()


def test_numeric_inputs_are_checked_server_side_and_refusals_log_one_line(space, runs, tmp_path, capfd, caplog):
    """L2: NaN, infinity or out-of-range numbers sent as raw JSON are refused with a message; an expected refusal logs one
    line, never a traceback."""
    import base64
    import io
    import re

    import httpx
    from gradio_client import Client
    from PIL import Image

    module, url = space(GENKIT_MODELS=f"ddpm={runs / 'diffusion'},dae={runs / 'dae'},vae2d={runs / 'vae2d'}")
    client = Client(url, verbose=False)
    for name in ["ddpm", "dae", "vae2d"]:
        client.predict(name, api_name="/load")
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format="PNG")
    black = {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), "meta": {"_type": "gradio.FileData"}}
    nan, inf = float("nan"), float("inf")
    cases = [("/sample", ("ddpm", "ddim", 2, "(none)", nan, 0, 1), "Guidance scale"),
             ("/sample", ("ddpm", "ddim", 2, "(none)", inf, 0, 1), "Guidance scale"),
             ("/sample", ("ddpm", "ddim", nan, "(none)", 1.0, 0, 1), "Steps"),
             ("/sample", ("ddpm", "ddim", 2, "(none)", 1.0, nan, 1), "Seed"),
             ("/sample", ("ddpm", "ddim", 2, "(none)", 1.0, -1, 1), "Seed"),
             ("/sample", ("ddpm", "ddim", 2, "(none)", 1.0, 0, nan), "Number of images"),
             ("/denoise", ("ddpm", black, None, "auto", "gaussian", nan, 0.5, 4, 0), "Noise level"),
             ("/denoise", ("ddpm", black, None, "auto", "gaussian", 0.2, nan, 4, 0), "Strength"),
             ("/denoise", ("ddpm", black, None, "auto", "gaussian", 0.2, 0.5, inf, 0), "Steps"),
             ("/interpolate", ("dae", black, black, "auto", nan), "Interpolation steps"),
             ("/latent_grid", ("vae2d", 5, nan), "Span"),
             ("/latent_grid", ("vae2d", 5, -inf), "Span"),
             ("/latent_grid", ("vae2d", nan, 2.0), "Grid size")]
    capfd.readouterr()
    caplog.set_level(logging.INFO, logger="genkit.space")
    for api, args, name in cases:  # raw JSON: gradio_client refuses to send NaN, a visitor's own script does not
        event = httpx.post(f"{url}gradio_api/call{api}", content=json.dumps({"data": args}), headers={"content-type": "application/json"}).json()
        answer = httpx.get(f"{url}gradio_api/call{api}/{event['event_id']}", timeout=60).text
        expected = f"{name}( must be between|: not a valid value)|Value .* is (greater|less) than"
        assert "event: error" in answer and re.search(expected, answer), (api, args, answer)
    assert "Traceback" not in capfd.readouterr().err
    refusals = [r for r in caplog.records if r.name == "genkit.space" and r.getMessage().startswith("refused:")]
    assert len(refusals) == len(cases)


def test_denoisers_too_costly_per_step_are_refused_before_they_run(runs, caplog):
    """H1: one UNet forward is counted on the meta device at load; above GENKIT_MAX_GFLOPS the model is refused, never timed."""
    from genkit.safe_load import denoiser_gflops

    policy = SourcePolicy({"ddpm": str(runs / "diffusion")}, allow_hub=False)
    assert policy.load("ddpm").name == "diffusion"
    gflops = denoiser_gflops(policy.load("ddpm").models)
    assert 0 < gflops < Limits().max_gflops
    with pytest.raises(ModelRejected):
        SourcePolicy(policy.models, allow_hub=False, limits=Limits(max_gflops=gflops / 2)).load("ddpm")
    assert "GFLOP, above the limit" in caplog.text
