"""Training and sampling throughput: genkit against the diffusers tutorial recipe, side by side in one run.

The recipe is the diffusers "train a diffusion model" tutorial loop: a `datasets` dataset with a `with_transform`
that converts PIL images per sample, `DataLoader(shuffle=True)`, and a plain Accelerate loop with the same UNet,
noise schedule, optimizer, batch size, mixed precision and step count. genkit runs its own engine (`genkit.engine.train`)
with the speed options named by `--genkit-options`. Images/second are steady-state (the first `--warmup` steps, which
include compilation, are excluded) and peak GPU memory is `torch.cuda.max_memory_allocated`.

Sampling: images/second at `--sample-steps` DDIM steps and batch `--sample-batch` for the stock `DDPMPipeline`
(fp32, as it is usually called) and genkit's sampler (on CUDA: bf16 autocast, channels_last), on the same UNet.

    python benchmarks/throughput.py --data-dir ../shared/data/mnist --device cuda            # GPU: presets x batch sizes
    python benchmarks/throughput.py --data-dir ../shared/data/mnist --device cpu --presets tiny --batch-sizes 128 --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler

import genkit.engine as engine
from genkit.config import TrainConfig
from genkit.data import load_image_dataset
from genkit.families.diffusion import PRESETS, build_unet
from genkit.sampling import sample

SIZE = 32  # MNIST zero-padded to 32x32: the presets' shape at 32 px


class StepClock:
    """Timestamps of training steps; steady images/second between step `warmup` and the last recorded step."""

    def __init__(self, device: str):
        self.device, self.times = device, []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def rate(self, warmup: int, batch_size: int) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.tick()  # the end of the last step, after the device has finished it
        return (len(self.times) - 1 - warmup) * batch_size / (self.times[-1] - self.times[warmup])


def recipe(data_dir: str, preset: str, batch_size: int, steps: int, warmup: int, mixed_precision: str, device: str) -> dict:
    """The tutorial loop; returns steady img/s and peak GPU memory (GiB)."""
    dataset = load_image_dataset("mnist", "train", data_dir)

    def transform(examples):  # per-sample PIL -> tensor: ToTensor + Pad(2) + Normalize([0.5], [0.5]) as in the tutorial
        arrays = [np.pad(np.asarray(img.convert("L"), dtype=np.float32) / 255.0, 2) for img in examples["image"]]
        return {"images": [torch.from_numpy(a)[None] * 2 - 1 for a in arrays]}

    loader = torch.utils.data.DataLoader(dataset.with_transform(transform), batch_size=batch_size, shuffle=True, drop_last=True)
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    model = build_unet(SIZE, 1, **PRESETS[preset])
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    _reset_memory(device)
    clock, step = StepClock(device), 0
    while step < warmup + steps:
        for batch in loader:
            clock.tick()
            clean = batch["images"]
            noise = torch.randn_like(clean)
            t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device)
            with accelerator.autocast():
                loss = F.mse_loss(model(noise_scheduler.add_noise(clean, noise, t), t).sample.float(), noise)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == warmup + steps:
                break
    return {"img_s": clock.rate(warmup, batch_size), "memory_gib": _peak_memory(device)}


def genkit(data_dir: str, preset: str, batch_size: int, steps: int, warmup: int, mixed_precision: str, device: str, options: list[str]) -> dict:
    """The same training through genkit's engine; steady img/s from the engine's own batches."""
    clock = StepClock(device)
    make_batch = engine.make_batch

    def timed(*args, **kwargs):
        if kwargs.get("augment"):  # training batches only
            clock.tick()
        return make_batch(*args, **kwargs)

    engine.make_batch = timed
    _reset_memory(device)
    try:
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig.from_dict({
                "family": "diffusion", "model": {"preset": preset}, "output_dir": out, "batch_size": batch_size, "max_steps": warmup + steps,
                "data": {"source": "mnist", "data_dir": data_dir, "value_range": "-1,1", "image_size": SIZE},
                "learning_rate": 1e-4, "optimizer": "adamw", "max_grad_norm": 1.0, "mixed_precision": mixed_precision,
                "eval_every": warmup + steps, "checkpoint_every": warmup + steps, "eval_batches": 1, "num_samples": 2,
                "log_with": "none", "progress_bar": False, "log_every": 50, **{name: True for name in options},
            })
            if device == "cpu":
                os.environ["ACCELERATE_USE_CPU"] = "1"  # the engine's Accelerator: the CPU even where a GPU is visible
            engine.train(config)
            clock.times = clock.times[: warmup + steps]  # drop the final evaluation's timing
            rate = (len(clock.times) - 1 - warmup) * batch_size / (clock.times[-1] - clock.times[warmup])
    finally:
        engine.make_batch = make_batch
    return {"img_s": rate, "memory_gib": _peak_memory(device)}


def sampling(preset: str, batch: int, steps: int, device: str) -> tuple[float, float]:
    """Images/second of the stock DDPMPipeline (fp32) and of genkit's sampler (bf16 + channels_last on CUDA, fp32 on a CPU)."""
    unet = build_unet(SIZE, 1, **PRESETS[preset]).to(device).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def timed(fn) -> float:
        fn()  # warm-up (cuDNN autotuning, allocations)
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        return batch / (time.perf_counter() - started)

    stock = timed(lambda: pipe(batch_size=batch, num_inference_steps=steps, output_type="np"))
    cuda = device.startswith("cuda")
    fast_unet = build_unet(SIZE, 1, **PRESETS[preset]).to(device).eval()
    fast_unet.load_state_dict(unet.state_dict())
    if cuda:  # bf16 and NHWC pay on tensor cores; on a CPU both are slower, so genkit samples in fp32 there
        fast_unet.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def ours():
        with autocast:
            sample(fast_unet, DDIMScheduler.from_config(scheduler.config), batch, steps, torch.Generator(device).manual_seed(0)).float().cpu()

    return stock, timed(ours)


def _reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    """Train with both loops for every preset and batch size, then time sampling; print the tables."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"], choices=list(PRESETS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512] if cuda else [128])
    parser.add_argument("--steps", type=int, default=200 if cuda else 30, help="timed steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=30 if cuda else 3, help="untimed first steps (compilation, autotuning)")
    parser.add_argument("--mixed-precision", default="bf16" if cuda else "no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--genkit-options", nargs="*", default=["compile", "channels_last"] if cuda else [],
                        choices=["compile", "channels_last"], help="genkit's speed options (TF32 and fused AdamW are on by default on CUDA)")
    parser.add_argument("--sample-batch", type=int, default=256 if cuda else 32)
    parser.add_argument("--sample-steps", type=int, default=25)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # for the recipe too: the same arithmetic
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    for preset in args.presets:
        for batch_size in args.batch_sizes:
            ref = recipe(args.data_dir, preset, batch_size, args.steps, args.warmup, args.mixed_precision, args.device)
            ours = genkit(args.data_dir, preset, batch_size, args.steps, args.warmup, args.mixed_precision, args.device, args.genkit_options)
            rows.append((preset, batch_size, ref, ours))
            print(f"{preset} batch {batch_size}: recipe {ref['img_s']:,.0f} img/s, genkit {ours['img_s']:,.0f} img/s", flush=True)
    print(f"\ndevice: {name}; MNIST at {SIZE}x{SIZE}; mixed precision {args.mixed_precision}; genkit options: "
          f"{', '.join(args.genkit_options) or 'none'}; {args.steps} timed steps after {args.warmup}\n")
    print("| UNet preset | batch | recipe (img/s) | genkit (img/s) | genkit / recipe | peak GPU memory recipe / genkit (GiB) |")
    print("|---|---|---|---|---|---|")
    for preset, batch_size, ref, ours in rows:
        memory = f"{ref['memory_gib']:.2f} / {ours['memory_gib']:.2f}" if args.device.startswith("cuda") else "-"
        print(f"| {preset} | {batch_size} | {ref['img_s']:,.0f} | {ours['img_s']:,.0f} | **{ours['img_s'] / ref['img_s']:.2f}x** | {memory} |")
    print(f"\n| UNet preset | sampling, batch {args.sample_batch}, {args.sample_steps} DDIM steps | DDPMPipeline fp32 (img/s) | genkit (img/s) | ratio |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        stock, ours = sampling(preset, args.sample_batch, args.sample_steps, args.device)
        print(f"| {preset} | | {stock:,.1f} | {ours:,.1f} | **{ours / stock:.2f}x** |")


if __name__ == "__main__":
    main()
