"""Each family's figures on MNIST and Fashion-MNIST, trained and evaluated offline with genkit; prints markdown tables.

    python benchmarks/families.py --mnist-dir ../shared/data/mnist --fashion-dir /usr/share/datasets/fashion-mnist

Runs go to benchmarks/runs/<dataset>/<name> (ignored by git); a finished run is evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genkit.config import TrainConfig
from genkit.engine import train
from genkit.evaluation import evaluate_run, real_images, to_unit
from genkit.latents import clustering_scores, encode, has_encoder
from genkit.runs import load_family

CONFIGS = Path(__file__).parents[1] / "training" / "configs"
# name -> (config file, overrides); epochs kept small so both data sets finish on a 2-core CPU in well under an hour
RUNS = {
    "autoencoder (course, 32-d)": ("autoencoder_mnist.yaml", ["epochs=10"]),
    "linear autoencoder (32-d)": ("autoencoder_linear_mnist.yaml", ["epochs=10", "learning_rate=3e-3"]),
    "conv autoencoder (32-d)": ("autoencoder_conv_mnist.yaml", ["epochs=3"]),
    "denoising autoencoder (gaussian 0.4)": ("autoencoder_denoising_mnist.yaml", ["epochs=5"]),
    "anomaly autoencoder (no 7 / no sneaker)": ("autoencoder_anomaly_mnist.yaml", ["epochs=10"]),
    "VAE (MLP, 16-d)": ("vae_mnist.yaml", ["epochs=10"]),
    "DCGAN": ("dcgan_mnist.yaml", ["epochs=3"]),
    "RBM (PCD-1, 500 hidden)": ("rbm_mnist.yaml", ["epochs=3"]),
}
KEYS = ["mse", "pca32_mse", "denoise_mse", "noisy_input_mse", "anomaly_auroc", "elbo", "nll_iw100", "fd", "fd_test_floor", "kid", "kmeans_ari", "kmeans_nmi"]


def run_one(name: str, dataset: str, data_dir: str | None, root: Path, num_samples: int) -> dict:
    """Train (unless done) and evaluate one configuration on one data set."""
    file, overrides = RUNS[name]
    out = root / dataset / file.removesuffix(".yaml")
    extra = [f"data.source={dataset}", f"data.data_dir={data_dir}" if data_dir else "data.data_dir=null", "progress_bar=false", "log_with=none"]
    if dataset == "fashion_mnist" and "anomaly" in file:
        extra.append("data.exclude_labels=[7]")  # Sneaker
    config = TrainConfig.load(CONFIGS / file).with_overrides(overrides + extra)
    config.output_dir = str(out)
    started = time.perf_counter()
    if not (out / "metrics.json").is_file():
        train(config, overwrite=True)
    train_seconds = time.perf_counter() - started
    family = load_family(str(out))
    result = evaluate_run(family, num_samples=num_samples)
    if has_encoder(family):
        test = real_images(family.config.data, "test", 3000)
        scores = clustering_scores(encode(family, to_unit(test)), test.labels.numpy(), family.info.num_classes)["kmeans"]
        result.update(kmeans_ari=scores["ari"], kmeans_nmi=scores["nmi"])
    result["train_seconds"] = round(train_seconds, 1)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    """Train and evaluate every configuration on both data sets; print one table per data set."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--fashion-dir", default=None)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--only", nargs="*", default=None, help="names (substrings) of RUNS to include")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--root", default=str(Path(__file__).parent / "runs"))
    args = parser.parse_args()
    names = [n for n in RUNS if not args.only or any(o.lower() in n.lower() for o in args.only)]
    for dataset in args.datasets:
        data_dir = args.mnist_dir if dataset == "mnist" else args.fashion_dir
        rows = {name: run_one(name, dataset, data_dir, Path(args.root), args.num_samples) for name in names}
        print(f"\n### {dataset}\n")
        print("| model | train s | " + " | ".join(KEYS) + " |")
        print("|---|---|" + "---|" * len(KEYS))
        for name, r in rows.items():
            cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else "" for k in KEYS]
            print(f"| {name} | {r['train_seconds']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
