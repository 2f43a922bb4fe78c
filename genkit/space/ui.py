"""The Blocks app: tabs, controls, which handler each button calls and in which queue, and the capped launcher."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from genkit.corruption import CORRUPTIONS
from genkit.runs import default_device
from genkit.safe_load import SourcePolicy
from genkit.sampling import SCHEDULERS

from .inputs import bound_sketchpad, guard_input
from .limits import MAX_BODY_BYTES, MAX_UPLOAD_MB, BodyLimit
from .routes import DEFAULT_IMAGES, MAX_IMAGES, SpaceApp, thread_budget

DEVICE = default_device()
# the grid is shown whole: the box grows with the image, up to the page, and the image is scaled down (never cropped) to fit it
# and starts below the block's label, which Gradio lays over the image's top-left corner
GRID_CSS = ("#sample-output img, #latent-grid img, #interp-output img { object-fit: contain !important; max-height: 80vh; }\n"
            "#sample-output, #latent-grid, #interp-output { padding-top: 2.2em !important; }")


def build_demo(initial: str | None = None, policy: SourcePolicy | None = None) -> gr.Blocks:
    """The Blocks app; `initial` is the model loaded at start. With a `policy` it runs as a public Space, else locally."""
    app = SpaceApp(policy, DEVICE)
    space, settings, listed = app.space, app.settings, app.listed
    initial = initial or (listed[0] if listed else None)
    with gr.Blocks(title="genkit", analytics_enabled=False) as demo:
        gr.Markdown("# genkit\nSample, denoise and explore the latents of a genkit model.")
        with gr.Row():
            if space:  # custom values: Hub ids typed by visitors, checked by the policy
                source = gr.Dropdown(listed, value=initial, allow_custom_value=True, scale=4,
                                     label="Model" + (" (a listed one, or a Hub repo id owner/name)" if policy.allow_hub else ""))
            else:
                source = gr.Textbox(label="Model (run directory or Hub repo id)", value=initial or "", scale=4)
            load_button = gr.Button("Load", scale=1)
        summary = gr.Markdown()
        with gr.Tabs() as tabs:
            with gr.Tab("Sample", id="sample"):
                sample_note = gr.Markdown("This model does not generate new images: use the Denoise or Latent tab.", visible=False)
                with gr.Column() as sample_box:
                    with gr.Row():
                        with gr.Column(scale=1):
                            # defaults here are placeholders: loading a model sets its run's own sampler, steps and guidance
                            scheduler = gr.Dropdown(list(SCHEDULERS), value="dpm++_sde", label="Scheduler (diffusion)")
                            steps = gr.Slider(1, settings.max_steps, value=20, step=1, label="Steps (diffusion)")
                            # custom values: the choices follow the loaded model, and API callers may name any class or index
                            class_label = gr.Dropdown(["(none)", "(one of each)"], value="(none)", label="Class label (conditional models)",
                                                      allow_custom_value=True)
                            class_label.api_info = lambda: {"type": "string", "description": "(none), (one of each), or a class name or index of the model"}
                            guidance = gr.Slider(0, 10, value=2.0, step=0.5, label="Guidance scale")
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            num_images = gr.Slider(1, MAX_IMAGES, value=DEFAULT_IMAGES, step=1, label="Number of images")
                            run_sample = gr.Button("Sample", variant="primary", elem_id="sample-button")
                        with gr.Column(scale=2):
                            samples = gr.Image(label="Samples", type="filepath", elem_id="sample-output", format="png")
            with gr.Tab("Denoise", id="denoise"):
                denoise_note = gr.Markdown("This model cannot denoise: load a diffusion or (denoising) autoencoder run.", visible=False)
                with gr.Column() as denoise_box:
                    with gr.Row():
                        # filepath: Gradio hands over the file undecoded; guard_input reads its size from the header first
                        upload = gr.Image(label="Upload", type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id="denoise-upload")
                        sketch = bound_sketchpad(gr.Sketchpad(label="…or draw", type="pil", image_mode="RGBA"), max_layers=settings.max_layers)
                    with gr.Row():
                        invert = gr.Radio(["auto", "yes", "no"], value="auto", label="Invert (MNIST is light on dark)")
                        noise_type = gr.Dropdown(list(CORRUPTIONS), value="gaussian", label="Noise")
                        noise_level = gr.Slider(0, 1, value=0.4, step=0.05, label="Noise level")
                        strength = gr.Slider(0.05, 1, value=0.5, step=0.05, label="Diffusion strength (how far to noise before reversing)")
                        denoise_steps = gr.Slider(2, settings.max_steps, value=50, step=1, label="Diffusion steps")
                        denoise_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    run_denoise = gr.Button("Denoise", variant="primary", elem_id="denoise-button")
                    with gr.Row():
                        noisy = gr.Image(label="Noisy", type="filepath", elem_id="noisy-output", format="png")
                        restored = gr.Image(label="Denoised", type="filepath", elem_id="denoised-output", format="png")
            with gr.Tab("Latent", id="latent"):
                latent_note = gr.Markdown("The Latent tab needs an autoencoder or VAE run.", visible=False)
                with gr.Column() as latent_box:
                    with gr.Row():
                        first = gr.Image(label="First", type="filepath", image_mode=None)
                        second = gr.Image(label="Second", type="filepath", image_mode=None)
                        latent_invert = gr.Radio(["auto", "yes", "no"], value="auto", label="Invert")
                    interp_steps = gr.Slider(3, 16, value=8, step=1, label="Interpolation steps")
                    run_interp = gr.Button("Interpolate")
                    interp_out = gr.Image(label="Interpolation", type="filepath", elem_id="interp-output", format="png")
                    with gr.Row():
                        grid_n = gr.Slider(3, 25, value=15, step=1, label="Grid size")
                        grid_span = gr.Slider(0.5, 4, value=2.5, step=0.5, label="Span (standard deviations)")
                    run_grid = gr.Button("2-D latent grid", elem_id="latent-grid-button")
                    grid_out = gr.Image(label="Latent grid", type="filepath", elem_id="latent-grid", format="png")
                    run_recon = gr.Button("Reconstruct first image + anomaly score")
                    recon_out = gr.Image(label="Input and reconstruction", type="filepath", format="png")
                    anomaly = gr.Number(label="Anomaly score (reconstruction MSE)")

        for component in [source, scheduler, steps, class_label, guidance, seed, num_images, upload, invert, noise_type, noise_level,
                          strength, denoise_steps, denoise_seed, first, second, latent_invert, interp_steps, grid_n, grid_span]:
            guard_input(component)
        guard_input(sketch, max_files=settings.max_layers)
        # separate queues, so quick requests never wait behind slow ones: loading (downloads, timing a model; a model already
        # loaded answers without a load worker), generating (the Budget's quick and slow lanes order and admit requests, and
        # show each its position) and the latent tools. Gradio's limits only need to let every admitted request reach a lane.
        heavy = {"concurrency_id": "generate", "concurrency_limit": settings.generate_threads}
        loads = {"concurrency_id": "load", "concurrency_limit": settings.load_workers + settings.max_loads_waiting + 8}
        light = {"concurrency_id": "latent", "concurrency_limit": 2 + settings.max_queue}
        arrange = ([source], [tabs, sample_box, denoise_box, latent_box, sample_note, denoise_note, latent_note, scheduler, steps, class_label, guidance,
                            strength, denoise_steps, num_images])
        load_button.click(app.describe, source, [summary, class_label], api_name="load", **loads).then(app.layout, *arrange, api_visibility="private")
        run_sample.click(app.sample, [source, scheduler, steps, class_label, guidance, seed, num_images], samples, api_name="sample", **heavy)
        run_denoise.click(app.denoise, [source, upload, sketch, invert, noise_type, noise_level, strength, denoise_steps, denoise_seed],
                          [noisy, restored], api_name="denoise", **heavy)
        run_interp.click(app.interpolate, [source, first, second, latent_invert, interp_steps], interp_out, api_name="interpolate", **light)
        run_grid.click(app.latent_grid, [source, grid_n, grid_span], grid_out, api_name="latent_grid", **light)
        run_recon.click(app.reconstruct, [source, first, latent_invert], [recon_out, anomaly], api_name="reconstruct", **light)
        if initial:
            demo.load(app.describe, source, [summary, class_label], api_name="initial_load", **loads).then(app.layout, *arrange, api_visibility="private")
    demo.queue(max_size=thread_budget(settings) + 64)
    demo.space_app = app  # for tests and benchmarks: the queues, settings and loaded models of this app
    launch = demo.launch

    def capped_launch(*args, **kwargs):
        """Every launcher (python app.py, genkit app, tests) gets the upload and body caps; a Space loads its listed models."""
        if space:  # at launch, not at import: a process that only imports the app (a build check) exits without a loader running
            threading.Thread(target=app.preload, daemon=True, name="genkit-space-preload").start()
            threading.Thread(target=app.recalibrate, args=(stopped,), daemon=True, name="genkit-space-retime").start()
        app_kwargs = kwargs.pop("app_kwargs", None) or {}
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)]
        defaults = {"max_file_size": f"{MAX_UPLOAD_MB}mb", "max_threads": thread_budget(settings), "css": GRID_CSS}
        return launch(*args, **{**defaults, **kwargs, "app_kwargs": app_kwargs})

    demo.launch = capped_launch
    stopped, close = threading.Event(), demo.close

    def closing(*args, **kwargs):
        """Close the server and stop the re-timing thread."""
        stopped.set()
        return close(*args, **kwargs)

    demo.close = closing
    return demo


def space_policy(defaults: Path | None = None) -> SourcePolicy | None:
    """Space mode (the default) unless GENKIT_SPACE=0; `defaults` (space.json beside the app) holds the owner's settings."""
    if os.environ.get("GENKIT_SPACE", "1").strip().lower() in ("0", "false", "no"):
        return None
    return SourcePolicy.from_env(defaults)
