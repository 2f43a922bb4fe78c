"""The public Space under load: a crowd of default requests, one visitor's worst requests, cost predictions across restarts,
and model loading under concurrency. Prints one table; the server runs as `python spaces/app.py` in a subprocess.

    python benchmarks/space_load.py                    # everything, on a tiny listed model trained here (CPU)
    python benchmarks/space_load.py --clients 20 --requests 3 --restarts 5 --race-rounds 50

Goals (issues #28, #29): 20 clients x 3 default /sample: 0 refused, p95 reported, server RSS growth < 300 MB; each worst request
adds < 200 MB RSS and delays a quick request < 10 s; predicted / actual within 2x on each of 5 restarts; 50 race rounds, 0 failures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(folder: Path) -> Path:
    """A tiny ten-class diffusion run with genkit's default sampler, 20 steps and guidance 2 (the trained weights do not matter)."""
    from conftest import make_idx_folder, tiny_config

    from genkit.engine import train

    run = folder / "tiny"
    if not (run / "training_config.json").is_file():
        data = make_idx_folder(folder / "idx")
        train(tiny_config(data, run, family="diffusion", model={"preset": "tiny", "class_conditional": True}, data={"value_range": "-1,1"},
                          max_steps=2, num_samples=4))
    return run


class Server:
    """`python spaces/app.py` in Space mode on 127.0.0.1, listing `run` as "tiny"; its RSS read from /proc."""

    def __init__(self, run: Path, log: Path | None = None, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        settings = {"GENKIT_MODELS": f"tiny={run}", "GENKIT_ALLOW_HUB": "0", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                    "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", **env}
        self.process = subprocess.Popen([sys.executable, str(ROOT / "spaces" / "app.py")], env={**os.environ, **settings},
                                        stdout=subprocess.DEVNULL, stderr=open(log, "w") if log else subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the app did not start")
            time.sleep(0.5)
        answer = call(self.url, "/load", ["tiny"])
        if answer[0] != "complete":
            raise RuntimeError(f"the tiny model did not load: {answer[1][-300:]}")

    def rss_mb(self, field: str = "VmRSS") -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) / 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def call(url: str, api: str, data: list, files: dict | None = None) -> tuple[str, str, float]:
    """One event through /gradio_api/call: (complete | error, its answer, seconds)."""
    started = time.monotonic()
    event = httpx.post(f"{url}gradio_api/call{api}", content=json.dumps({"data": data}), headers={"content-type": "application/json"}, timeout=600)
    if event.status_code != 200:
        return "error", event.text, time.monotonic() - started
    text = httpx.get(f"{url}gradio_api/call{api}/{event.json()['event_id']}", timeout=900).text
    kind = "complete" if "event: complete" in text else "error"
    return kind, text, time.monotonic() - started


def defaults(run: Path) -> dict:
    """The Sample tab's defaults for the run, as the app computes them (the run's sampler, steps, guidance; images that fit)."""
    from genkit.runs import load_run
    from genkit.safe_load import SourcePolicy
    from genkit.space.models import measure
    from genkit.space.routes import SpaceApp

    app = SpaceApp(SourcePolicy({}, allow_hub=False), "cpu")
    return app.defaults(measure(load_run(run), app.settings, "cpu"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def logged_ratios(log: Path) -> list[float]:
    """predicted / actual of every /sample the server logged, in order."""
    ratios = []
    for line in log.read_text().splitlines():
        if "/sample: predicted" in line:
            predicted, took = (float(part.split()[1]) for part in line.split("/sample: ")[1].split(", ")[:2])
            ratios.append(predicted / took)
    return ratios


def crowd(run: Path, d: dict, clients: int, requests: int, folder: Path) -> dict:
    """`clients` threads, each sending `requests` default /sample requests one after the other."""
    log = folder / "crowd.log"
    server = Server(run, log=log)
    try:
        before = server.rss_mb()
        server.reset_peak()
        results: list[tuple[str, float]] = []

        def client(i: int) -> None:
            for j in range(requests):
                request = ["tiny", d["scheduler"], d["steps"], "(one of each)", d["guidance"], i * 100 + j, d["images"]]
                kind, text, seconds = call(server.url, "/sample", request)
                results.append((kind if kind == "complete" else text.strip().splitlines()[-1][:160], seconds))

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        latencies = [s for kind, s in results if kind == "complete"]
        refused = [kind for kind, _ in results if kind != "complete"]
        return {"requests": len(results), "refused": len(refused), "why": refused[:2], "p50 s": statistics.median(latencies) if latencies else None,
                "p95 s": percentile(latencies, 95) if latencies else None, "wall s": time.monotonic() - started,
                "RSS growth MB": server.rss_mb() - before, "peak growth MB": server.rss_mb("VmHWM") - before}
    finally:
        server.close()
        ratios = logged_ratios(log)
        if ratios:  # the running correction at work: the first requests against the later ones
            print(f"crowd: predicted/actual, first request {ratios[0]:.2f}; median of the rest {statistics.median(ratios[1:] or ratios):.2f}; "
                  f"10th-90th percentile {percentile(ratios, 10):.2f}-{percentile(ratios, 90):.2f} over {len(ratios)} requests")


def worst_requests(run: Path, d: dict, folder: Path) -> list[dict]:
    """One visitor's worst request on each route, alone; then again while a quick request is timed."""
    server = Server(run)
    rows = []
    try:
        big = folder / "big.png"
        Image.new("RGBA", (4096, 4096), (0, 0, 0, 0)).save(big)
        with open(big, "rb") as f:
            uploaded = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=120).json()[0]
        file = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        png = io.BytesIO()
        Image.new("L", (16, 16), 0).save(png, format="PNG")
        config = httpx.get(f"{server.url}config", timeout=60).json()
        sketch_id = next(c["id"] for c in config["components"] if c.get("props", {}).get("label") == "…or draw")
        blobs = {"component_id": str(sketch_id), "session_hash": "bench", "fn_name": "accept_blobs", "type": "layer", "index": "50000000", "id": "x"}
        def largest(scheduler: str, steps: int, sizes: list[int]):
            """The largest of `sizes` (images) that the server admits at these settings: refusals are answered at once."""
            def request():
                for n in sizes:
                    kind, text, seconds = call(server.url, "/sample", ["tiny", scheduler, steps, "(one of each)", d["guidance"], 1, n])
                    if kind == "complete" or n == sizes[-1]:
                        return kind, f"{n} images", seconds
            return request

        worst = {
            "/sample, most images admitted": largest(d["scheduler"], d["steps"], [100, 80, 64, 48, 32, 24, 16, 8]),
            "/sample, heun 100 steps": largest("heun", 100, [16, 8, 4, 2, 1]),
            "/denoise, 4096x4096 RGBA upload": lambda: call(server.url, "/denoise", ["tiny", file, None, "auto", "gaussian", 0.2, 0.5, 50, 0]),
            "/denoise, sketch of 50 layers": lambda: call(server.url, "/denoise", ["tiny", None, {"background": file, "layers": [file] * 50, "composite": file},
                                                                                 "auto", "gaussian", 0.2, 0.5, 50, 0]),
            "accept_blobs index 5e7": lambda: ("error" if httpx.post(f"{server.url}gradio_api/component_server", data=blobs,
                                                                     files={"file": ("b", png.getvalue(), "image/png")}, timeout=60).status_code >= 400
                                               else "complete", "", 0.0),
        }
        quick = ["tiny", "ddim", 2, "(none)", 1.0, 0, 1]
        call(server.url, "/sample", quick)  # warm
        alone = call(server.url, "/sample", quick)[2]
        for name, request in worst.items():
            base = server.rss_mb()
            server.reset_peak()
            outcome: dict = {}
            thread = threading.Thread(target=lambda: outcome.update(result=request()))
            thread.start()
            time.sleep(0.5)  # a benchmark, not a test: let the worst request start before the quick one is timed
            quick_seconds = call(server.url, "/sample", quick)[2]
            thread.join()
            kind, text, seconds = outcome["result"]
            if kind == "complete":
                reason = text if len(text) < 40 else ""  # "N images" from `largest`, not a whole answer stream
            else:
                reason = text.strip().splitlines()[-1][:90] if text else "refused"
            rows.append({"request": name, "outcome": kind + (f": {reason}" if reason else ""), "seconds": seconds,
                         "peak RSS +MB": server.rss_mb("VmHWM") - base, "kept RSS +MB": server.rss_mb() - base,
                         "quick request s": quick_seconds, "quick alone s": alone})
    finally:
        server.close()
    return rows


def predictions(run: Path, d: dict, restarts: int, folder: Path) -> list[dict]:
    """Per restart: the server's prediction for the default request (from the costs it timed at load, before any correction)
    against the time the request's work took, both from the server's log line."""
    rows = []
    for i in range(restarts):
        log = folder / f"server{i}.log"
        server = Server(run, log=log)
        try:
            call(server.url, "/sample", ["tiny", d["scheduler"], d["steps"], "(one of each)", d["guidance"], 0, d["images"]])
        finally:
            server.close()
        line = next(line for line in log.read_text().splitlines() if "/sample: predicted" in line)
        predicted, took = (float(part.split()[1]) for part in line.split("/sample: ")[1].split(", ")[:2])
        rows.append({"restart": i + 1, "predicted s": predicted, "actual s": took, "predicted/actual": predicted / took})
    return rows


def race_runs(folder: Path, rounds: int) -> list[str]:
    """The concurrency test's race (preload and several /load at once) on three tiny runs trained here, `rounds` times."""
    from conftest import make_idx_folder, tiny_config
    from test_space_concurrency import race

    from genkit.engine import train

    root, data = folder / "race", make_idx_folder(folder / "idx")
    configs = {"diffusion": dict(family="diffusion", model={"preset": "tiny", "sample_steps": 2}, data={"value_range": "-1,1"}, max_steps=2),
               "dae": dict(data={"corruption": "gaussian"}, max_steps=4),
               "vae2d": dict(family="vae", model={"latent_dim": 2, "hidden_dims": [32]}, max_steps=4)}
    for name, overrides in configs.items():
        if not (root / name / "training_config.json").is_file():
            train(tiny_config(data, root / name, **overrides))
    return race(root, rounds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--race-rounds", type=int, default=50)
    p.add_argument("--parts", default="crowd,worst,cost,race", help="which measurements to run (comma-separated)")
    p.add_argument("--folder", default=None, help="where the tiny run is trained (default: a temporary folder)")
    args = p.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="genkit-space-load-"))
    folder.mkdir(parents=True, exist_ok=True)
    run = tiny_run(folder)
    d = defaults(run)
    loads, cpu = [os.getloadavg()[0]], time.process_time()
    parts = set(args.parts.split(","))
    print(f"default request: {d}")
    if "crowd" in parts:
        result = crowd(run, d, args.clients, args.requests, folder)
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
        print(f"\n{args.clients} clients x {args.requests} default /sample:", json.dumps(shown, default=str))
        loads.append(os.getloadavg()[0])
    if "worst" in parts:
        for row in worst_requests(run, d, folder):
            print("worst:", json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
        loads.append(os.getloadavg()[0])
    if "cost" in parts:
        rows = predictions(run, d, args.restarts, folder)
        for row in rows:
            print("cost:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        ratios = [row["predicted/actual"] for row in rows]
        print(f"cost: predicted/actual from {min(ratios):.2f} to {max(ratios):.2f} over {len(rows)} restarts (goal: within 0.5-2)")
        loads.append(os.getloadavg()[0])
    if args.race_rounds and "race" in parts:
        started = time.monotonic()
        failures = race_runs(folder, args.race_rounds)
        print(f"race: {args.race_rounds} rounds of preload + 4 /load at once: {len(failures)} failures in {time.monotonic() - started:.0f} s {failures[:3]}")
    loads.append(os.getloadavg()[0])
    print(f"\nload average (1 min) during the measurements: {min(loads):.1f}-{max(loads):.1f}; this process's CPU: {time.process_time() - cpu:.0f} s")


if __name__ == "__main__":
    main()
