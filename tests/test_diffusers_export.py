"""Diffusion runs as Diffusers repos: they load in a Python where genkit cannot be imported and sample as `genkit sample`
does, with every scheduler (swapped the stock way), the x0 handling kept, and the usual Diffusers call options."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from diffusers import DDPMPipeline, DiffusionPipeline
from diffusers.callbacks import PipelineCallback

from genkit.engine import train
from genkit.families.autoencoder import ConvAutoencoder, MLPAutoencoder
from genkit.families.vae import VAE
from genkit.hub import prepare_upload
from genkit.pipelines import LatentDecoder, decode_samples
from genkit.runs import load_family
from genkit.sampling import SCHEDULERS

# run by a bare Python: genkit blocked before anything is imported, the worktree not on the path
STOCK_SCRIPT = r"""
import json, sys
sys.modules["genkit"] = None  # `import genkit` now fails
import diffusers, torch
from diffusers import DiffusionPipeline

folders, schedulers, out = json.loads(sys.argv[1])
results = {}
for key, folder in folders.items():
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    conditional = pipe.null_label is not None
    saved, images = pipe.scheduler.config, {}
    for name, (cls, extra) in schedulers.items():
        pipe.scheduler = getattr(diffusers, cls).from_config(saved, **extra)  # the stock swap
        images[name] = pipe(batch_size=2, class_labels=[1, "3"] if conditional else None, guidance_scale=2.0 if conditional else None, num_inference_steps=3,
                            generator=torch.Generator().manual_seed(0), output_type="pt").images
    pil = pipe(batch_size=2, num_inference_steps=2).images
    half = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16)  # torch_dtype before diffusers 0.40
    half.set_progress_bar_config(disable=True)
    low = half(batch_size=2, num_inference_steps=2, output_type="np").images
    results[key] = {"class": type(pipe).__name__, "module": type(pipe).__module__, "images": images,
                    "decoder": None if pipe.decoder is None else [type(pipe.decoder).__name__, str(half.decoder.dtype)],
                    "pil": [len(pil), pil[0].size, pil[0].mode], "id2label": pipe.id2label,
                    "bf16": [str(half.unet.dtype), str(low.dtype), low.shape, bool((low >= 0).all() and (low <= 1).all())]}
assert sys.modules["genkit"] is None
torch.save(results, out)
"""


def diffusion_config(tiny_idx, out, source="mnist", **model):
    return tiny_config(tiny_idx, out, family="diffusion", model={"preset": "tiny", "sample_steps": 2, **model},
                       data={"value_range": "-1,1", "source": source}, num_samples=4, learning_rate=1e-3, max_steps=3, eval_every=3, checkpoint_every=3)


@pytest.fixture(scope="module")
def runs(tiny_idx, tmp_path_factory):
    """A class-conditional pixel run (v-prediction, x0 clipped) and a latent run over an MLP autoencoder (dynamic thresholding)."""
    root = tmp_path_factory.mktemp("runs")
    train(diffusion_config(tiny_idx, root / "cond", "fashion_mnist", class_conditional=True, prediction_type="v_prediction"))
    train(tiny_config(tiny_idx, root / "ae", model={"hidden_dims": [32, 16]}, max_steps=3))
    train(diffusion_config(tiny_idx, root / "ldm", autoencoder=str(root / "ae"), thresholding=True))
    return root


def test_runs_load_and_sample_the_same_in_stock_diffusers_without_genkit(runs, tmp_path):
    pushed = tmp_path / "pushed"
    files = prepare_upload(runs / "ldm", "someone/ldm", pushed)  # what `genkit push` uploads
    assert {"pipeline.py", "decoder/pipeline.py", "decoder/config.json"} <= set(files)
    shutil.rmtree(runs / "ae")  # the latent run carries its decoder
    folders = {"cond": str(runs / "cond"), "ldm": str(pushed)}
    schedulers = {name: [cls.__name__, extra] for name, (cls, extra) in SCHEDULERS.items()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    args = json.dumps([folders, schedulers, str(tmp_path / "out.pt")])
    done = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(tmp_path / "out.pt", weights_only=False)

    cond, ldm = results["cond"], results["ldm"]
    assert cond["class"] == ldm["class"] == "GenkitDiffusionPipeline" and cond["module"].startswith("diffusers_modules")
    assert cond["decoder"] is None and ldm["decoder"] == ["LatentDecoder", "torch.bfloat16"]
    assert cond["pil"] == ldm["pil"] == [2, (28, 28), "L"]  # decoded images, never latents
    assert cond["bf16"][0] == "torch.bfloat16" and cond["bf16"][1:] == ["float32", (2, 28, 28, 1), True]
    assert ldm["bf16"][1:] == ["float32", (2, 28, 28, 1), True]
    for key, labels in [("cond", torch.tensor([1, 3])), ("ldm", None)]:
        family = load_family(str(runs / key))
        assert results[key]["id2label"] == (dict(enumerate(family.info.class_names)) if key == "cond" else {})  # names work without genkit
        for name in SCHEDULERS:
            ours = family.generate(2, torch.Generator().manual_seed(0), labels, scheduler=name, steps=3, guidance_scale=2.0)
            theirs = results[key]["images"][name]
            assert ours.shape == theirs.shape == (2, 1, 28, 28)
            assert (ours - theirs).abs().max() < 1e-5, f"{key}/{name}: {(ours - theirs).abs().max():.2e}"
        # the swapped schedulers kept the run's x0 handling: without it the images differ
        bare = family.generate(2, torch.Generator().manual_seed(0), labels, scheduler="dpm++", steps=3, guidance_scale=2.0, x0="none")
        assert (bare - results[key]["images"]["dpm++"]).abs().max() > 1e-3, key


def test_model_index_names_the_shipped_code_and_old_runs_still_load(runs, tmp_path):
    index = json.loads((runs / "ldm" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "GenkitDiffusionPipeline"] and index["decoder"] == ["pipeline", "LatentDecoder"]
    assert index["x0_handling"] == "dynamic" and index["prediction_type"] == "epsilon"
    shipped = (runs / "ldm" / "pipeline.py").read_text()
    assert shipped == (runs / "ldm" / "decoder" / "pipeline.py").read_text()
    assert "genkit" not in "".join(line for line in shipped.splitlines() if line.startswith(("import", "from")))
    with pytest.raises(ValueError, match="trust_remote_code"):  # stock DDPMPipeline no longer returns latents silently
        DDPMPipeline.from_pretrained(str(runs / "ldm"))
    # a latent run saved before pipelines shipped their code: old model_index.json, no pipeline.py, no decoder/
    old = tmp_path / "old"
    shutil.copytree(runs / "ldm", old, ignore=shutil.ignore_patterns("pipeline.py", "decoder", "checkpoints"))
    old_index = {k: index[k] for k in ("_diffusers_version", "unet", "scheduler", "id2label")}
    (old / "model_index.json").write_text(json.dumps({**old_index, "_class_name": "GenkitDiffusionPipeline"}))
    new, before = load_family(str(runs / "ldm")), load_family(str(old))
    a = new.generate(2, torch.Generator().manual_seed(0), steps=2)
    assert torch.equal(a, before.generate(2, torch.Generator().manual_seed(0), steps=2)) and a.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("model", [MLPAutoencoder([1, 28, 28], [32, 16], dropout=0.1), MLPAutoencoder([1, 28, 28], [16], linear=True),
                                   ConvAutoencoder([1, 28, 28], 16, 8), VAE([1, 28, 28], 32, "mlp", [64]), VAE([1, 32, 32], 32, "conv", width=8)],
                         ids=["mlp", "linear", "conv", "vae", "conv-vae"])
def test_latent_decoder_is_the_autoencoders_own_decoder(model, tmp_path):
    model.eval()
    decoder = LatentDecoder.from_module(model.decoder, model.image_shape, latent_scale=0.5, output="identity" if getattr(model, "linear", False) else "sigmoid")
    decoder.save_pretrained(tmp_path / "decoder")  # the config is plain JSON: it reloads with no genkit class
    decoder = LatentDecoder.from_pretrained(tmp_path / "decoder")
    latents = torch.randn(3, model.latent_dim // 16, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = model.decode(latents.flatten(1) / 0.5).clamp(0, 1)
    assert torch.allclose(decode_samples(latents, decoder), expected, atol=1e-6)
    with pytest.raises(ValueError, match="cannot export a decoder with a BatchNorm1d layer"):
        LatentDecoder.from_module(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)), [1, 2, 2])


def test_pipeline_call_options_match_diffusers(runs):
    family = load_family(str(runs / "cond"))
    pipe = family.pipeline("euler_a")  # stochastic steps: generators matter after the first draw
    options = dict(num_inference_steps=3, guidance_scale=2.0)

    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    pair = pipe(class_labels=["Pullover", 3], generator=generators, output_type="pt", **options).images
    for i, (label, seed) in enumerate([(2, 1), (3, 2)]):  # one generator per image: each image as if sampled alone
        alone = pipe(class_labels=[label], generator=[torch.Generator().manual_seed(seed)], output_type="pt", **options).images
        assert torch.allclose(pair[i], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="one per image"):
        pipe(batch_size=3, generator=[torch.Generator()] * 2, **options)

    seeded = dict(generator=torch.Generator().manual_seed(0), class_labels=[1, 2], **options)
    latent = pipe(output_type="latent", **{**seeded, "generator": torch.Generator().manual_seed(0)}).images
    pt = pipe(output_type="pt", **{**seeded, "generator": torch.Generator().manual_seed(0)}).images
    arr = pipe(output_type="np", **{**seeded, "generator": torch.Generator().manual_seed(0)}).images
    pil = pipe(**{**seeded, "generator": torch.Generator().manual_seed(0)}).images
    assert latent.shape == pt.shape == (2, 1, 28, 28) and latent.min() < 0 and torch.equal(decode_samples(latent), pt)
    assert arr.shape == (2, 28, 28, 1) and torch.equal(torch.from_numpy(arr).permute(0, 3, 1, 2), pt) and pil[0].size == (28, 28)
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(output_type="jpeg", **options)

    seen = []

    def zero_at_end(p, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == p.num_timesteps - 1 else {}

    out = pipe(batch_size=2, output_type="latent", callback_on_step_end=zero_at_end, callback_on_step_end_tensor_inputs=["latents"], **options).images
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (2, 1, 28, 28) and torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(callback_on_step_end=zero_at_end, callback_on_step_end_tensor_inputs=["prompt_embeds"], **options)

    class Stop(PipelineCallback):  # a Diffusers callback object that interrupts after the first step
        tensor_inputs = ["latents"]

        def callback_fn(self, p, i, t, tensors):
            p._interrupt = True
            seen.append(i)
            return tensors

    seen.clear()
    pipe(callback_on_step_end=Stop(), **options)
    assert seen == [0]

    bar = io.StringIO()
    pipe.set_progress_bar_config(file=bar, disable=False)
    pipe(**options)
    assert "3/3" in bar.getvalue()

    null = torch.full((2,), family.null_label)  # the app's denoiser asks for the unconditional model this way
    assert torch.equal(family.generate(2, torch.Generator().manual_seed(0), null, steps=2), family.generate(2, torch.Generator().manual_seed(0), steps=2))
    with pytest.raises(ValueError, match="out of range"):
        pipe(class_labels=[family.null_label], **options)

    calls = []  # genkit's own callback(i, total, x), kept for the app's previews
    family.generate(2, torch.Generator().manual_seed(0), steps=3, callback=lambda i, n, x: calls.append((i, n, tuple(x.shape))))
    assert calls == [(0, 3, (2, 1, 28, 28)), (1, 3, (2, 1, 28, 28)), (2, 3, (2, 1, 28, 28))]


def test_pipe_with_no_arguments_is_genkit_sample(runs):
    """The run's sampler, steps, guidance and x0 handling live in the saved pipeline: `pipe()` makes what `genkit sample` makes."""
    for key, labels in [("cond", torch.tensor([1, 3])), ("ldm", None)]:
        family = load_family(str(runs / key))
        pipe = DiffusionPipeline.from_pretrained(str(runs / key), trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        conditional = labels is not None
        assert pipe.config.num_inference_steps == family.option("sample_steps") == 2
        assert pipe.config.guidance_scale == (family.option("guidance_scale") if conditional else 1.0)
        assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
        ours = family.generate(2, torch.Generator().manual_seed(4), labels)  # what `genkit sample --n 2 --seed 4` samples
        theirs = pipe(class_labels=labels, batch_size=2, generator=torch.Generator().manual_seed(4), output_type="pt").images
        assert (ours - theirs).abs().max() < 1e-5, key
        if conditional:  # the default guidance is the run's, not 1
            unguided = pipe(class_labels=labels, guidance_scale=1.0, generator=torch.Generator().manual_seed(4), output_type="pt").images
            assert (unguided - theirs).abs().max() > 1e-3
        else:
            assert len(pipe(generator=torch.Generator().manual_seed(4)).images) == 1  # really no arguments


def test_pipeline_inputs_and_their_errors(runs):
    pipe = load_family(str(runs / "cond")).pipeline()
    options = dict(num_inference_steps=2, output_type="pt")
    for bad, message in [
        (dict(batch_size=3, class_labels=[1, 2]), r"disagree on the number of images \(batch_size: 3, class_labels: 2\)"),
        (dict(class_labels=[1, 2], latents=torch.zeros(3, 1, 28, 28)), "disagree on the number of images"),
        (dict(batch_size=1, class_labels=[1, 2]), r"disagree on the number of images \(batch_size: 1, class_labels: 2\)"),
        (dict(batch_size=2, latents=torch.zeros(2, 1, 32, 32)), r"latents must have shape \(2, 1, 28, 28\)"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (dict(num_inference_steps=0), "num_inference_steps must be an int >= 1"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(class_labels=["Pullover", "nope"]), "unknown class name 'nope'"),
        (dict(image=torch.rand(1, 1, 28, 28) * 2 - 1, strength=0.5), r"image values must be in \[0, 1\]"),
        (dict(image=torch.rand(1, 3, 28, 28), strength=0.5), r"image must be \(N, 1, 28, 28\)"),
        (dict(image=PIL.Image.new("L", (32, 32)), strength=0.5), r"image is 32x32; this model makes 28x28 images"),
        (dict(image="digit.png", strength=0.5), "image must be a PIL image"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe(**{**options, **bad})
    # one label (or one image) stands for the whole batch
    assert pipe(batch_size=3, class_labels="Pullover", **options).images.shape == (3, 1, 28, 28)
    # SDEdit takes PIL, numpy (N, H, W, C) or (H, W) and tensors (N, C, H, W) in [0, 1], as Diffusers' image processors do
    digits = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    as_np = digits.permute(0, 2, 3, 1).numpy()
    as_pil = [PIL.Image.fromarray((a[..., 0] * 255).round().astype(np.uint8)) for a in as_np]
    edits = [pipe(class_labels=[1, 2], image=image, strength=0.5, generator=torch.Generator().manual_seed(0), **options).images
             for image in (digits, as_np, as_pil, (as_np * 255).round().astype(np.uint8))]
    assert all((e - edits[0]).abs().max() < 1e-6 for e in edits)
    one = pipe(class_labels=1, image=as_pil[0], strength=0.5, generator=torch.Generator().manual_seed(0), **options).images
    assert one.shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional: classifier-free guidance needs class labels"):
        load_family(str(runs / "ldm")).pipeline()(guidance_scale=2.0, **options)
    with pytest.raises(ValueError, match="latent pipeline carries only its autoencoder's decoder"):
        load_family(str(runs / "ldm")).pipeline()(image=as_pil[0], strength=0.5, **options)
