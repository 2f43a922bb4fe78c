"""genkit against compact reference recipes, family by family, at equal epochs and at equal training CPU time.

References (`benchmarks/references.py`: plain torch / sklearn, written from their published recipes):
- gan: the PyTorch-examples DCGAN (nz=100, ngf=ndf=32, BatchNorm in G and D, BCE, Adam 2e-4, beta1=0.5, batch 64), at 28x28.
- cgan: the same DCGAN made conditional the usual way (label embedding concatenated to z, the label as a second channel of D).
- rbm: sklearn's `BernoulliRBM` (256 hidden units, its defaults otherwise) on binarized pixels.
- vae: the course's Keras-style VAE, 784-256-z (z=16), summed BCE + KL, Adam 1e-3, on dynamically binarized pixels.
- diffusion: the diffusers tutorial loop (epsilon MSE, AdamW 1e-4, cosine with warm-up, no EMA) on the same UNet preset,
  both sampled with DDIM at `--sample-steps`.

How the sides are timed: sequentially in one process, one thread, CPU seconds by `time.process_time` (not wall time, so
other jobs on the machine do not count). genkit trains its shipped config for the family's epochs through `genkit.engine.train`
(its CPU seconds: the whole call, checkpoints included), with checkpoints at
`--points` places along the way, each exported afterwards by the engine (`train(..., resume=checkpoint)` with nothing left to
train) and scored; a checkpoint's CPU seconds are the run's, pro rata to its step. The reference then trains step by step and is
scored at the same epochs and as its cumulative training CPU seconds pass each of genkit's points (scoring not counted),
training on past the epochs when genkit took longer. genkit's checkpoints along a run with a schedule sized to it (the VAE's
and RBM's cosine) are mid-schedule: the curve's inner points are not what a shorter run would reach; its last point is.
genkit's CPU seconds: the engine's periodic evaluations and sample grids are turned off (one evaluation at the end, on 256
test images, and a 10-image grid remain), so they count training plus a small fixed cost per `train` call (data, the export).

Evaluator: FD in genkit-mnist-v1 feature space against the MNIST test split; class accuracy of conditional samples (genkit's
classifier); the test log-likelihood where it is defined (IW-NLL k=`--nll-k` for the VAEs, AIS for the RBMs). The same code
scores both columns. Prints the table of genkit / reference ratios at equal epochs and at equal CPU seconds, every point of the
curves, and writes a plot of each metric against CPU seconds (`--plot`).

    python benchmarks/peers.py --data-dir ../shared/data/mnist                 # each family at its budget below
    python benchmarks/peers.py --data-dir ../shared/data/mnist --families gan --genkit-set "" "model.width=32" "batch_size=64"

`--genkit-set` runs several genkit variants (config overrides, "" is the shipped config) against one reference run: the
quality-per-CPU-second front the shipped configs are chosen from. Budgets (epochs; `--epochs` sets one for all):
GAN 2, cGAN 2, VAE 10, RBM 2, diffusion 1.
"""

from __future__ import annotations

import argparse
import math
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from references import Recipe, dcgan, diffusers_tutorial, keras_vae, sklearn_rbm

from genkit import checkpoint as ckpt
from genkit.config import DataConfig, TrainConfig
from genkit.data import binarize_fixed, load_split, load_train_eval
from genkit.engine import train
from genkit.evaluation import class_accuracy, feature_distances, get_classifier, real_pair
from genkit.families.rbm import BernoulliRBM
from genkit.runs import load_family

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "training" / "configs"
LOWER_IS_BETTER = {"FD": True, "NLL": True, "-LL": True, "class acc": False}


@dataclass
class Point:
    """One scored snapshot of one side."""

    side: str  # "reference" or the genkit variant's label
    steps: int
    epochs: float
    cpu: float  # training CPU seconds at this snapshot
    scores: dict[str, float]
    at: str = ""  # "epochs" for the equal-epoch snapshot, "cpu" for the one at a genkit variant's final CPU seconds


@dataclass
class Family:
    """What one comparison needs: genkit's config and epochs, the reference recipe, and how to score either side."""

    config: str
    epochs: float
    reference: Callable[[], Recipe]
    of_genkit: Callable[[Any], Any]  # a loaded genkit family -> what `score` takes
    score: Callable[[Any], dict[str, float]]
    name: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


class Evaluator:
    """genkit's evaluator on the MNIST test split: classifier-feature FD, class accuracy, IW-NLL, AIS log-likelihood."""

    def __init__(self, data_dir: str, num_samples: int, nll_k: int, ais_betas: int):
        self.data = DataConfig(source="mnist", data_dir=data_dir)
        self.n, self.nll_k, self.ais_betas = num_samples, nll_k, ais_betas
        self.train01, self.test01 = mnist(data_dir), mnist(data_dir, "test")
        self.classifier = get_classifier(self.data)
        self.real, _ = real_pair(self.data, num_samples)

    def fd(self, fake01: torch.Tensor) -> float:
        """FD of `fake01` against the first `n` test images."""
        return feature_distances(self.real, fake01[: self.n].cpu(), self.classifier)["fd"]

    def samples(self, generate: Callable[..., torch.Tensor]) -> dict[str, float]:
        """FD of n unconditional samples of `generate(n, generator)`."""
        return {"FD": self.fd(generate(self.n, torch.Generator().manual_seed(0)))}

    def conditional(self, generate: Callable[..., torch.Tensor]) -> dict[str, float]:
        """FD and class accuracy of n samples, the classes in turn."""
        labels = torch.arange(self.n) % 10
        images = generate(self.n, torch.Generator().manual_seed(0), labels)
        return {"FD": self.fd(images), "class acc": class_accuracy(images, labels, self.classifier)}

    @torch.no_grad()
    def vae(self, model: torch.nn.Module) -> dict[str, float]:
        """IW-NLL in nats on 1,000 binarized test images, genkit's estimator (VAE.importance_nll) for either model."""
        test = binarize_fixed(self.test01, torch.arange(len(self.test01)))[:1000]
        g = torch.Generator().manual_seed(0)
        return {"NLL": torch.cat([model.importance_nll(x, self.nll_k, g) for x in test.split(max(1, 50_000 // self.nll_k))]).mean().item()}

    def rbm(self, rbm: BernoulliRBM) -> dict[str, float]:
        """AIS test log-likelihood (100 runs) and FD of Gibbs samples (1,000 steps from draws of the training pixel rates)."""
        rate = self.train01.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3)
        log_z, _ = rbm.ais_log_partition(torch.log(rate) - torch.log1p(-rate), 100, self.ais_betas, torch.Generator().manual_seed(0))
        test = binarize_fixed(self.test01, torch.arange(len(self.test01))).flatten(1)
        samples = rbm.sample(self.n, 1000, torch.Generator().manual_seed(0))
        return {"-LL": -rbm.log_likelihood(test, log_z).mean().item(), "FD": self.fd(samples)}


def mnist(data_dir: str, split: str = "train") -> torch.Tensor:
    """MNIST as float images in [0, 1], (N, 1, 28, 28)."""
    return load_split(DataConfig(source="mnist", data_dir=data_dir), split).images.float() / 255


def mnist_labels(data_dir: str) -> torch.Tensor:
    """The training labels, in the order of `mnist`."""
    return load_split(DataConfig(source="mnist", data_dir=data_dir), "train").labels.long()


def families(args: argparse.Namespace, ev: Evaluator) -> dict[str, Family]:
    """Every comparison, at its default budget."""
    x, d = ev.train01, args.data_dir
    ddim = {"scheduler": "ddim", "steps": args.sample_steps}
    return {
        "gan": Family("dcgan_mnist.yaml", 2, lambda: dcgan(x), lambda f: f.generate, ev.samples, "DCGAN (PyTorch examples)"),
        "cgan": Family("cgan_mnist.yaml", 2, lambda: dcgan(x, mnist_labels(d)), lambda f: f.generate, ev.conditional,
                       "conditional DCGAN (label concatenated to z and as a D channel)"),
        "vae": Family("vae_binarized_mnist.yaml", 10, lambda: keras_vae(x), lambda f: f.models["model"], ev.vae,
                      f"Keras-style VAE 784-256-16 (dynamic binarization), IW-NLL k={args.nll_k}"),
        "rbm": Family("rbm_mnist.yaml", 2, lambda: sklearn_rbm(x), lambda f: f.models["model"], ev.rbm, "sklearn BernoulliRBM, AIS"),
        "diffusion": Family("diffusion_mnist.yaml", 1, lambda: diffusers_tutorial(x, args.epochs or 1, args.preset, args.sample_steps),
                            lambda f: lambda n, g, labels=None: torch.cat([f.generate(len(c), g, **ddim) for c in torch.arange(n).split(250)]),
                            ev.samples, f"diffusers tutorial loop, `{args.preset}` UNet, DDIM {args.sample_steps} steps",
                            {"model.preset": args.preset}),
    }


def genkit_curve(fam: Family, label: str, overrides: list[str], data_dir: str, epochs: float, points: int, out: Path) -> list[Point]:
    """Train a shipped config (plus `overrides`) for `epochs` with `points` checkpoints; score each one and the final model."""
    config = TrainConfig.load(CONFIGS / fam.config).with_overrides([f"{k}={v}" for k, v in fam.overrides.items()] + overrides)
    config.data.data_dir, config.output_dir, config.log_with, config.progress_bar = data_dir, str(out), "none", False
    per_epoch = len(load_train_eval(config.data, config.seed)[0]) // (config.batch_size * config.gradient_accumulation_steps)
    config.max_steps = math.ceil(epochs * per_epoch)
    config.checkpoint_every, config.keep_last = math.ceil(config.max_steps / (points + 1)), points + 2
    # count training, not the engine's monitoring: one evaluation (the last, on 256 images) and a 10-image grid; the RBM's
    # pseudo-likelihood over the whole test split and its 1,000-step sample grids were ~25 CPU s of a 9-step run
    config.eval_every = config.sample_every = config.max_steps
    config.data.eval_subset, config.num_samples = 256, 10
    started = time.process_time()
    train(config, overwrite=True)
    cpu = time.process_time() - started
    curve = [Point(label, config.max_steps, epochs, cpu, fam.score(fam.of_genkit(load_family(str(out)))), "epochs")]
    for path in ckpt.list_checkpoints(out)[:-1]:  # the last is the final model, scored above
        step = ckpt.read_state(path)["step"]
        config.max_steps = step  # nothing left to train: the engine exports the checkpoint's (EMA) weights
        train(config, resume=str(path))
        curve.append(Point(label, step, step / per_epoch, cpu * step / curve[0].steps, fam.score(fam.of_genkit(load_family(str(out))))))
    return sorted(curve, key=lambda p: p.cpu)


def reference_curve(fam: Family, epochs: float, marks: list[float]) -> list[Point]:
    """Train the reference until it has passed `epochs` and every CPU mark; score it at `epochs` and as each mark is passed."""
    recipe = fam.reference()
    equal_steps, marks, curve = max(1, round(epochs * recipe.per_epoch)), sorted(marks), []
    cpu, step = 0.0, 0
    while step < equal_steps or marks:
        started = time.process_time()
        recipe.step(step)
        cpu, step = cpu + time.process_time() - started, step + 1
        at = "epochs" if step == equal_steps else ""
        while marks and cpu >= marks[0]:
            marks.pop(0)
            at += " cpu"
        if at:
            curve.append(Point("reference", step, step / recipe.per_epoch, cpu, fam.score(recipe.model()), at.strip()))
    return curve


def ratio(ours: float, ref: float, metric: str) -> str:
    """genkit / reference, marked when genkit is ahead."""
    better = ours < ref if LOWER_IS_BETTER[metric] else ours > ref
    return f"**{ours / ref:.2f}**" if better else f"{ours / ref:.2f}"


def nearest(curve: list[Point], cpu: float) -> Point:
    """The reference snapshot taken as its CPU seconds passed `cpu`."""
    return min((p for p in curve if p.cpu >= cpu), key=lambda p: p.cpu, default=curve[-1])


def plot(results: dict[str, list[Point]], path: Path) -> None:
    """Every metric of every family against training CPU seconds, genkit variants and the reference as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, metric) for name, curve in results.items() for metric in curve[0].scores]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, metric) in zip(axes[0], panels):
        for side in dict.fromkeys(p.side for p in results[name]):
            pts = sorted((p for p in results[name] if p.side == side), key=lambda p: p.cpu)
            ax.plot([p.cpu for p in pts], [p.scores[metric] for p in pts], "o-" if side == "reference" else "s-", label=side)
        ax.set(title=f"{name}: {metric}", xlabel="training CPU seconds (one thread)", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    """Train both sides of each family, score them with one evaluator, print the ratio tables, write the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--families", nargs="+", default=["gan", "cgan", "vae", "rbm", "diffusion"], choices=["gan", "cgan", "vae", "rbm", "diffusion"])
    parser.add_argument("--genkit-set", nargs="+", default=[""], metavar="OVERRIDES",
                        help='genkit variants, each a quoted list of config overrides ("" = the shipped config)')
    parser.add_argument("--points", type=int, default=3, help="checkpoints scored along each genkit run, for the plot")
    parser.add_argument("--preset", default="tiny", help="UNet preset of both diffusion models")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for both diffusion models")
    parser.add_argument("--epochs", type=float, default=None, help="one budget for every family (default: each family's)")
    parser.add_argument("--num-samples", type=int, default=1000, help="images per FD")
    parser.add_argument("--nll-k", type=int, default=1000)
    parser.add_argument("--ais-betas", type=int, default=14_500)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "peers_cpu_mnist.png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per side; numpy's (sklearn's) too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    ev = Evaluator(args.data_dir, args.num_samples, args.nll_k, args.ais_betas)
    specs, results = families(args, ev), {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families:
            fam, epochs = specs[name], args.epochs or specs[name].epochs
            ours = [p for i, sets in enumerate(args.genkit_set)
                    for p in genkit_curve(fam, f"genkit {sets}".strip(), shlex.split(sets), args.data_dir, epochs, args.points, Path(tmp) / f"{name}{i}")]
            ref = reference_curve(fam, epochs, [p.cpu for p in ours])
            results[name] = ours + ref
            print_family(name, fam, epochs, ours, ref)
    print(f"\nMNIST, FD on {args.num_samples} samples in genkit-mnist-v1 features (training-data floor "
          f"{ev.fd(ev.train01[: args.num_samples]):.1f}); CPU seconds by time.process_time, one thread, sides run one after the other")
    print("\n| family: reference / genkit | metric | epochs | reference | genkit | genkit / reference, equal epochs | CPU s: genkit "
          "| reference at genkit's CPU s (its epochs) | genkit / reference, equal CPU | CPU s at equal epochs: reference / genkit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, curve in results.items():
        ref = [p for p in curve if p.side == "reference"]
        at_epochs = next(p for p in ref if "epochs" in p.at)
        for final in (p for p in curve if p.side != "reference" and p.at == "epochs"):
            same_cpu = nearest(ref, final.cpu)
            for metric, ours in final.scores.items():
                print(f"| {name}: {specs[name].name} / {final.side} | {metric} | {final.epochs:g} | {at_epochs.scores[metric]:.2f} | {ours:.2f} "
                      f"| {ratio(ours, at_epochs.scores[metric], metric)} | {final.cpu:.0f} | {same_cpu.scores[metric]:.2f} ({same_cpu.epochs:.2f}) "
                      f"| {ratio(ours, same_cpu.scores[metric], metric)} | {at_epochs.cpu:.0f} / {final.cpu:.0f} |")
    plot(results, args.plot)


def print_family(name: str, fam: Family, epochs: float, ours: list[Point], ref: list[Point]) -> None:
    """Every scored point of one family, as soon as it is done."""
    print(f"\n{name}: {fam.name}, {epochs:g} epochs\n\n| side | steps | epochs | CPU s | " + " | ".join(ours[0].scores) + " |")
    print("|---|---|---|---|" + "---|" * len(ours[0].scores))
    for p in sorted(ours + ref, key=lambda p: (p.side, p.cpu)):
        print(f"| {p.side} {p.at} | {p.steps} | {p.epochs:.2f} | {p.cpu:.1f} | " + " | ".join(f"{v:.3f}" for v in p.scores.values()) + " |")


if __name__ == "__main__":
    main()
