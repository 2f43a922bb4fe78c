"""Sample quality against the number of steps for every scheduler, on one trained diffusion run.

    python benchmarks/diffusion_quality.py runs/diffusion-mnist-conditional --steps 10 25 --num-samples 1000

FID/KID use genkit's offline classifier features (`genkit.evaluation`); the real-vs-real floor is printed with them.
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


def main() -> None:
    """Print a markdown table: scheduler x steps -> FID, KID, class accuracy, seconds per image."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--x0", nargs="+", default=[None], choices=["clip", "dynamic", "none"], help="x0 handling(s) to compare (default: the run's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    family = load_family(args.run, args.device)
    data = family.config.data
    classifier = get_classifier(data, args.device)
    real, other_real = real_pair(data, args.num_samples)
    floor = floors(data, real, other_real, classifier)
    labels = torch.arange(args.num_samples) % family.info.num_classes if family.conditional else None
    print(f"\nfloors ({args.num_samples} images, device {args.device}): training images FID {floor['fid_train_floor']:.3f}, "
          f"KID {floor['kid_train_floor']:.5f}; test vs test FID {floor['fid_real_floor']:.3f}\n")
    print("| scheduler | steps | x0 | FID | KID | class accuracy | ms / image |")
    print("|---|---|---|---|---|---|---|")
    for steps, name, x0 in [(s, n, x) for s in args.steps for n in args.schedulers for x in args.x0]:
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        chunks = [family.generate(len(chunk), generator, None if labels is None else labels[chunk], scheduler=name, steps=steps,
                                  guidance_scale=args.guidance_scale, x0=x0).cpu() for chunk in torch.arange(args.num_samples).split(250)]
        seconds = time.perf_counter() - started
        fake = torch.cat(chunks)
        scores = feature_distances(real, fake, classifier)
        accuracy = f"{class_accuracy(fake, labels, classifier):.3f}" if labels is not None else ""
        print(f"| {name} | {steps} | {x0 or family.x0_handling().mode} | {scores['fid']:.2f} | {scores['kid']:.4f} | {accuracy} | {1000 * seconds / args.num_samples:.1f} |", flush=True)


if __name__ == "__main__":
    main()
