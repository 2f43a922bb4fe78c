"""The student budget: train a config for its wall-clock budget exactly as the README's main job does, then score it.

    python benchmarks/student_budget.py --data-dir ../shared/data/mnist                       # diffusion_mnist_5min.yaml
    python benchmarks/student_budget.py --data-dir ../shared/data/mnist --set max_train_seconds=120 --grid docs/x.png

Runs `genkit train` in a subprocess (the command a student types; all cores, torch's default threads), timing the whole
command by the wall clock and sampling the machine's load average every 5 s while it runs. Then samples `--num-samples`
images with the run's own sampler, steps and guidance, one class after another, and reports FD, precision / recall
(genkit-mnist-v1 features, against the test split, beside two floors: the training images' and a second draw of test
images'), class accuracy, and how many tiles are noise: a tile whose share of mid-grey pixels (0.2-0.8) is above 0.3 is counted as pure noise (no real test
digit has more than 0.114; uniform noise has 0.6), one above the real maximum as noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from genkit.evaluation import class_accuracy, get_classifier, prdc, real_pair, training_images
from genkit.evaluation.distances import fd_kid
from genkit.evaluation.features import feature_space
from genkit.plots import save_grid
from genkit.runs import load_family

ROOT = Path(__file__).parents[1]
NOISE_SHARE = 0.3


def mid_grey_share(images: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of pixels strictly between 0.2 and 0.8 (MNIST digits are mostly black or white)."""
    return ((images > 0.2) & (images < 0.8)).flatten(1).float().mean(1)


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds until stopped."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])


def main() -> None:
    """Train, time, sample, score, print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "training" / "configs" / "diffusion_mnist_5min.yaml"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides")
    parser.add_argument("--output-dir", default=None, help="the run folder (default: a temporary one)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--grid", type=Path, default=None, help="write 10 samples of each class here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.output_dir or Path(tmp) / "run")
        sets = ["progress_bar=false", *args.set] + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
        command = [str(Path(sys.executable).with_name("genkit")), "train", "--config", args.config, "--output-dir", str(run), "--overwrite", "--set", *sets]
        load = LoadSampler()
        before = os.getloadavg()[0]
        load.start()
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        load.stop.set()
        summary = json.loads((run / "metrics.json").read_text())["final"]
        family = load_family(str(run))
        data = family.config.data
        classifier = get_classifier(data)
        space = feature_space("genkit", data)  # the shipped network (machine-local classifier for other data)
        real, other = real_pair(data, args.num_samples)
        real_features = space.extract(real)
        test_floor = fd_kid(real_features, space.extract(other))["fd"]
        train_floor = fd_kid(real_features, space.extract(training_images(data, args.num_samples)))["fd"]
        labels = torch.arange(args.num_samples) % family.info.num_classes
        generator = torch.Generator().manual_seed(0)
        sampling_started = time.perf_counter()
        fake = torch.cat([family.generate(len(c), generator, labels[c]).cpu() for c in torch.arange(args.num_samples).split(250)])
        sampling = time.perf_counter() - sampling_started
        features = space.extract(fake)
        fd = fd_kid(real_features, features)["fd"]
        manifold = prdc(real_features, features)
        share = mid_grey_share(fake)
        if args.grid:
            order = torch.cat([torch.nonzero(labels == k).flatten()[:10] for k in range(10)]).view(10, 10).t().flatten()
            save_grid(fake[order], args.grid, nrow=10)
            print(f"grid: {args.grid}")

    loads = load.samples or [before]
    print(f"\n{os.cpu_count()} CPUs; load average before {before:.2f}, during training mean {sum(loads) / len(loads):.2f} "
          f"(min {min(loads):.2f}, max {max(loads):.2f})")
    print(f"sampler {family.sampler}, {family.option('sample_steps')} steps, guidance {family.option('guidance_scale')}, "
          f"{args.num_samples} samples in {sampling:.1f} s\n")
    print("| wall s (whole command) | training s | steps | img/s | FD | training-data floor | FD / floor | test vs test | precision | recall | "
          "class accuracy | pure-noise tiles | tiles noisier than any real digit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {wall:.0f} | {summary['train_seconds']:.0f} | {summary['step']} | {summary['images_per_second']:.0f} | {fd:.1f} | {train_floor:.1f} "
          f"| {fd / train_floor:.2f} | {test_floor:.1f} | {manifold['precision']:.3f} | {manifold['recall']:.3f} "
          f"| {class_accuracy(fake, labels, classifier):.3f} "
          f"| {int((share > NOISE_SHARE).sum())} / {len(fake)} | {int((share > 0.114).sum())} / {len(fake)} |")


if __name__ == "__main__":
    main()
