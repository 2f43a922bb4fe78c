"""A queue, not a wall: costs per model call, corrected as the server runs; lanes that admit, order and show positions; every
output bounded by the model's declared shape and the Space's pixel cap."""

import json
import shutil
import threading

import pytest
import test_space
from test_space import FakeHub, wait_for

from genkit.runs import load_run
from genkit.space.models import Served, model_calls
from genkit.space.queue import CallCost, Lane

runs, space = test_space.runs, test_space.space  # the Space launched on loopback, with its listed tiny models


def test_model_calls_count_solver_evaluations_and_a_family_may_say_its_own(runs):
    family = load_run(runs / "diffusion")
    assert model_calls(family, "ddim", 10) == 10
    assert model_calls(family, "heun", 10) >= 19  # two evaluations per step (diffusers' Heun: 2n - 1)
    assert model_calls(family, "ddim", 10, strength=0.5) == 5  # image-to-image starts half way
    served = Served(family)
    served.denoiser = CallCost.linear(0.0, 0.01)
    heun, ddim = (served.diffusion_cost(4, model_calls(family, s, 10), False, None) for s in ("heun", "ddim"))
    assert heun == pytest.approx(ddim * model_calls(family, "heun", 10) / 10)
    family.model_calls = lambda scheduler, steps, strength: 1  # a one-step model priced as such
    assert model_calls(family, "heun", 50) == 1


def test_costs_follow_a_running_median_of_what_requests_took():
    cost = CallCost.linear(0.0, 0.01)
    assert cost.calls(10, 20, None) == pytest.approx(2.0)
    for _ in range(5):
        cost.observe(cost.calls(10, 20, None), 1.0)  # the machine is twice as fast as timed at load
    assert cost.calls(10, 20, None) == pytest.approx(1.0, rel=0.01)
    cost.observe(cost.calls(10, 20, None), 50.0)  # one outlier (a hiccup) moves a median by nothing
    assert cost.calls(10, 20, None) == pytest.approx(1.0, rel=0.01)
    assert cost.chunk(100, 0.05) == 10  # one call stays within 0.05 s: 10 images at the corrected 0.005 s each


def test_a_lane_orders_waits_shows_positions_and_refuses_only_past_the_deadline():
    now = [0.0]
    lane = Lane("test", workers=1, max_waiting=3, max_wait_seconds=12.0, clock=lambda: now[0])
    release, started, seen, refusals = threading.Event(), [], {}, []

    def request(name, predicted):
        try:
            with lane.hold(predicted, lambda position, wait: seen.setdefault(name, (position, round(wait)))):
                started.append(name)
                if name == "first":
                    release.wait(120)
        except Exception as err:  # gr.Error: asserted below
            refusals.append((name, str(err)))

    threads = [threading.Thread(target=request, args=("first", 11.0))]
    threads[0].start()
    wait_for(lambda: lane.running == 1)
    for i in range(2):
        threads.append(threading.Thread(target=request, args=(f"w{i}", 1.0)))
        threads[-1].start()
        wait_for(lambda i=i: lane.waiting == i + 1)
    assert seen == {"w0": (1, 11), "w1": (2, 12)}  # positions and predicted waits, as the visitor sees them
    request("over", 1.0)  # 11 s running + 2 x 1 s waiting = 13 s, over the 12 s limit: refused at once
    assert refusals == [("over", refusals[0][1])] and "wait would be about 13 s" in refusals[0][1]
    now[0] = 2.0  # two seconds on, the line ahead is predicted to clear in 11 s: admitted, it waits its turn
    threads.append(threading.Thread(target=request, args=("fits", 1.0)))
    threads[-1].start()
    wait_for(lambda: lane.waiting == 3)
    assert seen["fits"] == (3, 11) and len(refusals) == 1
    release.set()
    for t in threads:
        t.join()
    assert started == ["first", "w0", "w1", "fits"]  # first come, first served


def test_a_crowd_of_default_requests_waits_instead_of_being_refused(space, runs):
    """N3 in small: 10 clients at once, each the UI's default request, one worker per lane: every request is served, and the
    queue positions are reported to the waiting clients."""
    from gradio_client import Client

    module, url = space(GENKIT_WORKERS="1", GENKIT_QUICK_SECONDS="0.001")  # all in one lane: a real line forms
    app = module.demo.space_app
    Client(url, verbose=False).predict("ddpm", api_name="/load")
    served = app.served("ddpm")
    d = app.defaults(served)
    assert d["steps"] == 2 and d["scheduler"] == served.family.sampler  # the run's own sample_steps and sampler
    assert app.budget.fits(app._sample_cost(served, d["scheduler"], d["steps"], d["guidance"], d["images"], False))
    jobs = [Client(url, verbose=False).submit("ddpm", d["scheduler"], d["steps"], "(none)", d["guidance"], i, d["images"], api_name="/sample")
            for i in range(10)]
    descriptions = set()
    while not all(job.done() for job in jobs):
        for job in jobs:
            status = job.status()
            descriptions |= {unit.desc for unit in status.progress_data or [] if unit.desc}
    assert all(job.exception() is None for job in jobs), [str(job.exception()) for job in jobs if job.exception()]
    assert any("Waiting in the queue: position" in d for d in descriptions), descriptions


def test_loaded_models_answer_while_slow_loads_hold_every_load_worker(space, runs, monkeypatch):
    """N7: two slow Hub downloads hold both load workers; /load of a loaded model (what every page view's /initial_load does)
    answers at once."""
    import huggingface_hub
    from gradio_client import Client

    hub = FakeHub(monkeypatch, {f"someone/ae{i}": runs / "dae" for i in range(2)})
    release, snapshot = threading.Event(), hub.snapshot_download

    def slow_snapshot(repo_id, *args, **kwargs):
        release.wait(120)
        return snapshot(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", slow_snapshot)
    module, url = space(GENKIT_ALLOW_HUB="1", GENKIT_LOAD_WORKERS="2")
    client = Client(url, verbose=False)
    client.predict("dae", api_name="/load")
    loading = [Client(url, verbose=False).submit(f"someone/ae{i}", api_name="/load") for i in range(2)]
    wait_for(lambda: hub.fetched.count("training_config.json") == 2)  # both load workers are held
    assert "autoencoder" in client.predict("dae", api_name="/load")[0]
    assert not release.is_set() and not any(job.done() for job in loading)
    release.set()
    assert all("autoencoder" in job.result(timeout=120)[0] for job in loading)


def test_outputs_must_match_the_declared_shape_and_the_pixel_cap(space, runs, tmp_path):
    """N5: a model whose output is not the shape its data_info declares, or whose UNet works on larger images, is refused at
    load; a grid over GENKIT_MAX_OUTPUT_PIXELS is shrunk, or refused before it runs."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from PIL import Image

    for name, source, file, change in [("liar", "vae2d", "data_info.json", {"image_size": 32}),
                                       ("bigunet", "diffusion", "unet/config.json", {"sample_size": 56})]:
        shutil.copytree(runs / source, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))
        path = tmp_path / name / file
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    listed = f"ddpm={runs / 'diffusion'},liar={tmp_path / 'liar'},bigunet={tmp_path / 'bigunet'}"
    module, url = space(GENKIT_MODELS=listed, GENKIT_MAX_OUTPUT_PIXELS="50000")
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=r"makes images of shape \(1, 28, 28\), not the \(1, 32, 32\)"):
        client.predict("liar", api_name="/load")
    with pytest.raises(AppError, match="UNet works on 56 pixels"):
        client.predict("bigunet", api_name="/load")
    client.predict("ddpm", api_name="/load")
    grid = client.predict("ddpm", "ddim", 2, "(none)", 1.0, 0, 16, api_name="/sample")
    with Image.open(grid) as image:
        assert image.width * image.height <= 50_000  # enlarged less than the usual 4x, to stay within the cap
    with pytest.raises(AppError, match="over this Space's output cap"):
        client.predict("ddpm", "ddim", 2, "(none)", 1.0, 0, 100, api_name="/sample")  # even at 1x, 242 x 392 pixels: over the cap
