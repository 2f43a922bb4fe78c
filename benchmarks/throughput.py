"""Training throughput: genkit's engine against the standard recipe, side by side in one run.

The standard recipe is the diffusers "train a diffusion model" tutorial loop: a `datasets` dataset with a
`with_transform` that decodes PIL images per sample, a `DataLoader(shuffle=True)`, and a plain Accelerate loop with the
same model, optimizer, batch size and step count. Prints a markdown table with images/second and the ratio.

    python benchmarks/throughput.py --data-dir ../shared/data/mnist --steps 200
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from genkit.config import TrainConfig
from genkit.data import load_image_dataset
from genkit.engine import train
from genkit.families.autoencoder import MLPAutoencoder
from genkit.families.diffusion import PRESETS, build_unet


def standard_recipe(family: str, data_dir: str, steps: int, batch_size: int, preset: str, mixed_precision: str) -> float:
    """The tutorial loop; returns images/second over `steps` optimizer steps (after 5 warm-up steps)."""
    dataset = load_image_dataset("mnist", "train", data_dir)
    value_range = (-1, 1) if family == "diffusion" else (0, 1)

    def transform(examples):  # per-sample PIL -> tensor, as torchvision's ToTensor + Normalize would
        images = [torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None] for img in examples["image"]]
        images = [x * 2 - 1 for x in images] if value_range[0] == -1 else images
        return {"images": images}

    dataset = dataset.with_transform(transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    if family == "diffusion":
        model = build_unet(28, 1, **PRESETS[preset])
        noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    else:
        model = MLPAutoencoder(hidden_dims=[64, 32])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_scheduler = get_scheduler("constant", optimizer)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    step, started = 0, None
    while step < steps + 5:
        for batch in loader:
            if step == 5:
                started = time.perf_counter()
            clean = batch["images"]
            if family == "diffusion":
                noise = torch.randn_like(clean)
                t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device)
                pred = model(noise_scheduler.add_noise(clean, noise, t), t).sample
                loss = F.mse_loss(pred, noise)
            else:
                loss = F.binary_cross_entropy_with_logits(model(clean), clean)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step == steps + 5:
                break
    loss.item()  # wait for the device
    return steps * batch_size / (time.perf_counter() - started)


def genkit_engine(family: str, data_dir: str, steps: int, batch_size: int, preset: str, mixed_precision: str) -> float:
    """The same training through `genkit.engine.train`; images/second as the engine measures it (step time only)."""
    model = {"preset": preset} if family == "diffusion" else {"hidden_dims": [64, 32]}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict({
            "family": family, "model": model, "output_dir": out, "batch_size": batch_size, "max_steps": steps,
            "data": {"source": "mnist", "data_dir": data_dir, "value_range": "-1,1" if family == "diffusion" else "0,1"},
            "learning_rate": 2e-4 if family == "diffusion" else 1e-3, "optimizer": "adamw" if family == "diffusion" else "adam",
            "max_grad_norm": 1.0, "mixed_precision": mixed_precision, "eval_every": steps, "checkpoint_every": steps,
            "eval_batches": 1, "num_samples": 8, "log_with": "none", "progress_bar": False, "log_every": 10_000,
        })
        return train(config)["images_per_second"]


def main() -> None:
    """Run both loops for each family and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preset", default="tiny", help="UNet preset for the diffusion rows")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--families", nargs="+", default=["autoencoder", "diffusion"])
    args = parser.parse_args()
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    for family in args.families:
        steps = args.steps * (10 if family == "autoencoder" else 1)  # the MLP step is tiny: more steps for a stable timing
        standard = standard_recipe(family, args.data_dir, steps, args.batch_size, args.preset, args.mixed_precision)
        ours = genkit_engine(family, args.data_dir, steps, args.batch_size, args.preset, args.mixed_precision)
        rows.append((family, steps, standard, ours))
    print(f"\ndevice: {device}; batch {args.batch_size}; UNet preset {args.preset}; mixed precision {args.mixed_precision}\n")
    print("| model | steps | standard recipe (img/s) | genkit (img/s) | genkit / standard |")
    print("|---|---|---|---|---|")
    for family, steps, standard, ours in rows:
        print(f"| {family} | {steps} | {standard:,.0f} | {ours:,.0f} | {ours / standard:.2f}x |")


if __name__ == "__main__":
    main()
