"""The Gradio Space: every endpoint through gradio_client, a concurrent load on loopback, and a headless browser."""

import importlib.util
import shutil
import socket
import threading
from pathlib import Path

import pytest
from conftest import tiny_config
from PIL import Image

from genkit.engine import train

APP = Path(__file__).resolve().parents[1] / "spaces" / "app.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_idx, tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    train(tiny_config(tiny_idx, root / "diffusion", family="diffusion", model={"preset": "tiny", "class_conditional": True, "sample_steps": 2},
                      data={"value_range": "-1,1"}, max_steps=2, num_samples=4))
    train(tiny_config(tiny_idx, root / "dae", data={"corruption": "gaussian"}, max_steps=4))
    train(tiny_config(tiny_idx, root / "vae2d", family="vae", model={"latent_dim": 2, "hidden_dims": [32]}, max_steps=4))
    return root


@pytest.fixture(scope="module")
def app_url(runs):
    spec = importlib.util.spec_from_file_location("genkit_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    demo = module.build_demo(str(runs / "diffusion"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def image_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.fixture(scope="module")
def drawings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drawings")
    rgba = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    for x in range(40, 80):
        for y in range(20, 70):
            rgba.putpixel((x, y), (0, 0, 0, 255))  # black strokes on transparency: a drawing
    rgba.save(folder / "drawing.png")
    Image.new("L", (28, 28), 0).save(folder / "black.png")
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


def test_every_endpoint_is_named(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/load", "/sample", "/denoise", "/interpolate", "/latent_grid", "/reconstruct"} <= endpoints


def test_load_and_sample_stream_progress(client, runs):
    text, labels = client.predict(str(runs / "diffusion"), api_name="/load")
    assert "diffusion" in text and "class-conditional over 10 classes" in text
    assert labels["choices"][1][0] == "(one of each)"
    job = client.submit(str(runs / "diffusion"), "euler", 12, "3", 2.0, 0, 4, api_name="/sample")
    outputs = job.result() and job.outputs()
    assert len(outputs) >= 3  # previews at steps 0, 5, 10, then the final grid
    assert image_size(outputs[-1])[0] > 0


def test_sample_rejects_what_cannot_generate(client, runs):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="does not generate new images"):
        client.predict(str(runs / "dae"), "ddim", 5, "(none)", 1.0, 0, 4, api_name="/sample")
    with pytest.raises(AppError, match="Cannot load"):
        client.predict(str(runs / "nowhere"), "ddim", 5, "(none)", 1.0, 0, 4, api_name="/sample")
    with pytest.raises(AppError, match="greater than maximum value 100|between 1 and 100"):
        client.predict(str(runs / "diffusion"), "ddim", 5, "(none)", 1.0, 0, 101, api_name="/sample")
    assert image_size(client.predict(str(runs / "vae2d"), "ddim", 5, "(none)", 1.0, 0, 9, api_name="/sample"))[0] > 0


def test_denoise_with_diffusion_and_autoencoder(client, runs, drawings):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for run in ["diffusion", "dae"]:
        noisy, restored = client.predict(str(runs / run), handle_file(str(drawings / "drawing.png")), None, "auto", "salt_and_pepper", 0.2, 0.5, 4, 0,
                                         api_name="/denoise")
        assert image_size(noisy) == image_size(restored) == (28 * 8 + 4 * 8, 28 * 8 + 4 * 8)  # one padded 28x28 tile, x8
    with pytest.raises(AppError, match="Upload or draw an image first"):
        client.predict(str(runs / "dae"), None, None, "auto", "gaussian", 0.2, 0.5, 4, 0, api_name="/denoise")
    with pytest.raises(AppError):
        client.predict(str(runs / "dae"), handle_file(str(drawings / "broken.png")), None, "auto", "gaussian", 0.2, 0.5, 4, 0, api_name="/denoise")


def test_latent_endpoints(client, runs, drawings):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    drawing, black = handle_file(str(drawings / "drawing.png")), handle_file(str(drawings / "black.png"))
    assert image_size(client.predict(str(runs / "dae"), drawing, black, "auto", 6, api_name="/interpolate"))[0] > 0
    assert image_size(client.predict(str(runs / "vae2d"), 5, 2.0, api_name="/latent_grid"))[0] > 0
    with pytest.raises(AppError, match="2-D latent space"):
        client.predict(str(runs / "dae"), 5, 2.0, api_name="/latent_grid")
    grid, score = client.predict(str(runs / "vae2d"), drawing, "auto", api_name="/reconstruct")
    assert image_size(grid)[0] > 0 and score >= 0
    with pytest.raises(AppError, match="autoencoder or VAE"):
        client.predict(str(runs / "diffusion"), drawing, "auto", api_name="/reconstruct")


def test_concurrent_sampling_requests(app_url, runs):
    from gradio_client import Client

    n, errors, results = 8, [], []

    def request(i):
        try:
            job = Client(app_url, verbose=False).submit(str(runs / "diffusion"), "dpm++", 3, "(one of each)", 2.0, i, 4, api_name="/sample")
            results.append(job.result(timeout=240))
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == n


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_browser_clicks_sample_and_denoise(app_url, drawings):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(app_url)
        page.wait_for_selector("#sample-button")
        page.click("#sample-button")
        shown = page.wait_for_selector("#sample-output img", timeout=120_000)
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=shown, timeout=60_000)
        assert shown.evaluate("el => el.naturalWidth") > 0
        page.get_by_role("tab", name="Denoise").click()
        page.locator("#denoise-upload input[type=file]").set_input_files(str(drawings / "drawing.png"))
        page.click("#denoise-button")
        for selector in ["#noisy-output img", "#denoised-output img"]:
            image = page.wait_for_selector(selector, timeout=120_000)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image, timeout=60_000)
        page.screenshot(path=str(drawings / "screenshot.png"))
        browser.close()


def test_sample_api_takes_class_names_and_indices(client, runs):
    from gradio_client.exceptions import AppError

    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/sample"]["parameters"]
    label = next(p for p in parameters if p["parameter_name"] == "class_label")
    assert "enum" not in label["type"] and "class name or index" in label["type"]["description"]
    run = str(runs / "diffusion")
    names = client.predict(run, api_name="/load")[1]["choices"]
    for choice in ["7", names[-1][0], "(one of each)"]:
        assert image_size(client.predict(run, "ddim", 2, choice, 2.0, 0, 2, api_name="/sample"))[0] > 0
    for wrong in ["99", "cat", "-1"]:
        with pytest.raises(AppError, match="neither a class index"):
            client.predict(run, "ddim", 2, wrong, 2.0, 0, 2, api_name="/sample")


def test_incomplete_weights_are_refused_with_the_file_named(client, runs, tmp_path):
    from gradio_client.exceptions import AppError
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "half"
    shutil.copytree(runs / "dae", folder, ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(folder / "model.safetensors")
    save_file(dict(list(weights.items())[: len(weights) // 2]), folder / "model.safetensors")
    with pytest.raises(AppError, match="model.safetensors is incomplete"):
        client.predict(str(folder), api_name="/load")


def test_share_applies_the_space_policy_unless_told_not_to(runs, monkeypatch, capsys):
    """M7: `genkit app --share` (a public link) serves the run given and Hub ids within the Space's budget, with a warning."""
    import gradio as gr
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from genkit.cli import main

    launched, real = [], gr.Blocks.launch

    def launch(self, *args, share=False, **kwargs):  # offline: no tunnel; the same app is served on loopback instead
        launched.append((self, share))
        return real(self, *args, **{**kwargs, "server_name": "127.0.0.1", "prevent_thread_lock": True, "quiet": True})

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.delenv("GENKIT_MODELS", raising=False)
    monkeypatch.setenv("GENKIT_ALLOW_HUB", "0")
    for opt_out in [False, True]:
        port = free_port()
        assert main(["app", str(runs / "dae"), "--share", "--port", str(port), *(["--share-local-policy"] if opt_out else [])]) == 0
        demo, share = launched[-1]
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            assert share and "autoencoder" in client.predict("dae" if not opt_out else str(runs / "dae"), api_name="/load")[0]
            if opt_out:  # local mode on purpose: any path loads
                assert "vae" in client.predict(str(runs / "vae2d"), api_name="/load")[0]
                assert "WARNING" in capsys.readouterr().err
                continue
            for probe in [str(runs / "vae2d"), "/etc/passwd", "~"]:
                with pytest.raises(AppError, match="not available here"):
                    client.predict(probe, api_name="/load")
            with pytest.raises(AppError, match="is not loaded"):
                client.predict(str(runs / "diffusion"), "ddim", 2, "(none)", 1.0, 0, 1, api_name="/sample")  # never loaded here
            assert "runs as a Space does" in capsys.readouterr().err
        finally:
            demo.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_browser_opens_on_the_tab_that_fits_the_family(runs):
    playwright = pytest.importorskip("playwright.sync_api")
    spec = importlib.util.spec_from_file_location("genkit_space_app_tabs", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    demo = module.build_demo(str(runs / "dae"))  # a denoising autoencoder: nothing to sample
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            playwright.expect(page.get_by_role("tab", name="Denoise")).to_have_attribute("aria-selected", "true", timeout=60_000)
            playwright.expect(page.get_by_text("Diffusion steps")).to_be_hidden()  # the Denoise tab without diffusion's controls
            playwright.expect(page.get_by_text("Noise level")).to_be_visible()
            page.get_by_role("tab", name="Sample").click()
            playwright.expect(page.get_by_text("This model does not generate new images")).to_be_visible()
            playwright.expect(page.locator("#sample-button")).to_be_hidden()
            browser.close()
    finally:
        demo.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_browser_shows_the_whole_grid_and_the_runs_own_defaults(app_url, runs):
    """#29-2: the Sample tab opens on the run's own steps (here 2), and a 10 x 10 grid is shown whole: every row inside the box,
    below the block's label, scaled (not cropped)."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        steps = page.get_by_label("number input for Steps (diffusion)")
        playwright.expect(steps).to_have_value("2", timeout=120_000)  # the run's sample_steps, set when the model loaded
        count = page.get_by_label("number input for Number of images")
        count.fill("100")
        count.press("Enter")
        page.click("#sample-button")
        page.wait_for_function("() => { const i = document.querySelector('#sample-output img'); return i && i.complete && i.naturalHeight > 1000 }",
                               timeout=180_000)
        box = page.evaluate("""() => { const i = document.querySelector('#sample-output img'), r = i.getBoundingClientRect();
            const b = document.querySelector('#sample-output').getBoundingClientRect();
            const l = document.querySelector('#sample-output [data-testid=block-label]').getBoundingClientRect();
            return {img: [r.left, r.top, r.right, r.bottom], box: [b.left, b.top, b.right, b.bottom], label: l.bottom,
                    natural: [i.naturalWidth, i.naturalHeight], fit: getComputedStyle(i).objectFit} }""")
        browser.close()
    (left, top, right, bottom), (bl, bt, br, bb) = box["img"], box["box"]
    assert bl <= left and bt <= top and right <= br + 1 and bottom <= bb + 1  # inside the box
    assert top >= box["label"] - 1 and box["fit"] == "contain"  # below the label; contain: scaled, never cropped
    width, height = box["natural"]
    assert abs((right - left) / (bottom - top) - width / height) < 0.02  # the whole image, at its own aspect ratio
