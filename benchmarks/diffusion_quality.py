"""Sample quality against the number of steps for every scheduler, on one or more trained diffusion runs.

    python benchmarks/diffusion_quality.py runs/diffusion-mnist-conditional --steps 10 25 --num-samples 1000
    python benchmarks/diffusion_quality.py runs/a runs/b --schedulers ddpm:1000 dpm++:20 ddim:50 --x0 clip none

A scheduler written `name:steps` runs at those steps only; a plain name runs at every `--steps`. Every run is sampled
from the same seed and scored against the same real images, so rows compare across runs, schedulers and x0 modes.
FID/KID use genkit's offline classifier features (`genkit.evaluation`); the training-data floor is printed with them.
"""

from __future__ import annotations

import argparse
import time

import torch

from genkit.evaluation import (
    class_accuracy,
    feature_distances,
    floors,
    get_classifier,
    real_pair,
)
from genkit.runs import load_family
from genkit.sampling import SCHEDULERS


def scheduler_steps(entries: list[str], default_steps: list[int]) -> list[tuple[str, int]]:
    """`["ddpm:1000", "ddim"]` -> `[("ddpm", 1000), ("ddim", s) for s in default_steps]`, checked."""
    pairs = []
    for entry in entries:
        name, _, steps = entry.partition(":")
        if name not in SCHEDULERS:
            raise SystemExit(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
        if steps and not (steps.isdigit() and int(steps) > 0):
            raise SystemExit(f"{entry!r}: the steps after ':' must be a positive integer")
        pairs += [(name, int(steps))] if steps else [(name, s) for s in default_steps]
    return pairs


def main() -> None:
    """Print a markdown table: run x scheduler x steps x x0 -> FID, KID, class accuracy, ms per image."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), help="names, or name:steps")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--x0", nargs="+", default=[None], choices=["clip", "dynamic", "none"], help="x0 handling(s) to compare (default: the run's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    pairs = scheduler_steps(args.schedulers, args.steps)
    families = {run: load_family(run, args.device) for run in args.runs}
    data = next(iter(families.values())).config.data
    classifier = get_classifier(data, args.device)
    real, other_real = real_pair(data, args.num_samples)
    floor = floors(data, real, other_real, classifier)
    print(f"\nfloors ({args.num_samples} images, device {args.device}): training images FID {floor['fid_train_floor']:.3f}, "
          f"KID {floor['kid_train_floor']:.5f}; test vs test FID {floor['fid_real_floor']:.3f}\n")
    print("| run | scheduler | steps | x0 | FID | KID | class accuracy | ms / image |")
    print("|---|---|---|---|---|---|---|---|")
    for run, family in families.items():
        labels = torch.arange(args.num_samples) % family.info.num_classes if family.conditional else None
        for (name, steps), x0 in [(p, x) for p in pairs for x in args.x0]:
            generator = torch.Generator().manual_seed(0)
            started = time.perf_counter()
            chunks = [family.generate(len(chunk), generator, None if labels is None else labels[chunk], scheduler=name, steps=steps,
                                      guidance_scale=args.guidance_scale, x0=x0).cpu() for chunk in torch.arange(args.num_samples).split(250)]
            seconds = time.perf_counter() - started
            fake = torch.cat(chunks)
            scores = feature_distances(real, fake, classifier)
            accuracy = f"{class_accuracy(fake, labels, classifier):.3f}" if labels is not None else ""
            print(f"| {run} | {name} | {steps} | {x0 or family.x0_handling().mode} | {scores['fid']:.2f} | {scores['kid']:.4f} | {accuracy} | "
                  f"{1000 * seconds / args.num_samples:.1f} |", flush=True)


if __name__ == "__main__":
    main()
