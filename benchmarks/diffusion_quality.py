"""Sample quality against the number of steps for every scheduler, on one or more trained diffusion runs.

    python benchmarks/diffusion_quality.py runs/diffusion-mnist-conditional --steps 10 25 --num-samples 1000
    python benchmarks/diffusion_quality.py runs/a runs/b --schedulers ddpm:1000 dpm++:20 ddim:50 --x0 clip none

A scheduler written `name:steps` runs at those steps only; a plain name runs at every `--steps`. Every run is sampled
from the same seed and scored against the same real images, so rows compare across runs, schedulers and x0 modes.
FD/KID are measured in genkit's shipped feature network (`genkit-mnist-v1`, `genkit.evaluation`); the training-data floor is printed with them.

The few-step table (`--few-step`) trains its own models: epsilon, v and flow-matching objectives on the same UNet, for the
same steps (the same CPU seconds: the objectives cost the same per step; each run's CPU seconds are printed), `--seeds`
each, then scores each with deterministic samplers at `--nfe` network evaluations and the epsilon / v models with
DDPM-1000 (FD, precision, recall, class accuracy; the mean over seeds):

    python benchmarks/diffusion_quality.py --few-step --config training/configs/diffusion_mnist_5min.yaml \
        --set max_steps=2000 --seeds 0 1 --nfe 1 2 4 8 16 32 --work runs/few-step --data-dir ../shared/data/mnist

Finished runs in `--work` are reused, so a second call only samples.
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
    """Print a markdown table: run x scheduler x steps x x0 -> FD, KID, class accuracy, ms per image."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--few-step", action="store_true", help="train epsilon / v / flow models and print the NFE table")
    parser.add_argument("--config", default="training/configs/diffusion_mnist_5min.yaml", help="few-step: the shared training config")
    parser.add_argument("--set", nargs="*", default=[], help="few-step: config overrides, e.g. max_steps=2000")
    parser.add_argument("--objectives", nargs="+", default=["epsilon", "v", "flow"], help="few-step: epsilon, v, flow, flow_uniform")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--nfe", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--few-step-samplers", nargs="+", default=None, help="few-step: only these deterministic samplers")
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="few-step: ancestral DDPM steps for epsilon / v (0: skip)")
    parser.add_argument("--work", default=None, help="few-step: folder for the trained runs (default: a temporary one)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), help="names, or name:steps")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--x0", nargs="+", default=[None], choices=["clip", "dynamic", "none"], help="x0 handling(s) to compare (default: the run's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.few_step:
        return run_few_step(args)
    if not args.runs:
        parser.error("give one or more runs, or --few-step")
    pairs = scheduler_steps(args.schedulers, args.steps)
    families = {run: load_family(run, args.device) for run in args.runs}
    data = next(iter(families.values())).config.data
    classifier = get_classifier(data, args.device)
    real, other_real = real_pair(data, args.num_samples)
    floor = floors(data, real, other_real, classifier)
    print(f"\nfloors ({args.num_samples} images, device {args.device}): training images FD {floor['fd_train_floor']:.3f}, "
          f"KID {floor['kid_train_floor']:.5f}; test vs test FD {floor['fd_test_floor']:.3f}\n")
    print("| run | scheduler | steps | x0 | FD | KID | class accuracy | ms / image |")
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
            print(f"| {run} | {name} | {steps} | {x0 or family.x0_handling().mode} | {scores['fd']:.2f} | {scores['kid']:.4f} | {accuracy} | "
                  f"{1000 * seconds / args.num_samples:.1f} |", flush=True)


def run_few_step(args: argparse.Namespace) -> None:
    """Train (or reuse) the objectives' models and print the few-step table."""
    import tempfile
    from pathlib import Path

    from few_step import OBJECTIVES, few_step_table, train_models

    unknown = [o for o in args.objectives if o not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        models = train_models(args.config, args.set, args.objectives, args.seeds, work, args.data_dir, args.threads)
        few_step_table(models, args.nfe, args.ddpm_steps, args.num_samples, args.guidance_scale, args.device, args.threads, args.few_step_samplers)


if __name__ == "__main__":
    main()
