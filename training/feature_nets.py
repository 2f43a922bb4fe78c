"""Train genkit's shipped feature networks (genkit/weights/genkit-*-v1.safetensors): the recipe, reproducible from a seed.

    python training/feature_nets.py --dataset mnist          # -> genkit/weights/genkit-mnist-v1.safetensors
    python training/feature_nets.py --dataset fashion_mnist  # -> genkit/weights/genkit-fashion-mnist-v1.safetensors

Recipe (what made the features generalise, so that training images score like unseen ones):
- a held-out split: the last 5,000 training images are never trained on; they pick nothing, they only measure;
- augmentation: every batch is moved by a random affine map (rotation +-12 deg, scale 0.9-1.1, shift +-2.5 px, shear
  +-8 deg), so the network cannot learn individual training images (without it, train-vs-test FD was 7x test-vs-test);
- a small network (FeatureNet: 16-32-64 conv channels down to 3x3, a 64-d feature layer, ~60k weights), weight decay, AdamW with
  a one-cycle learning rate, one CPU thread and deterministic algorithms, so the same seed gives the same file.
The script prints the file's sha256 and the line to put into genkit/feature_nets.py's NETWORKS, and measures the
train-vs-test and test-vs-test Fréchet distances at N = 1,000 (seeded shuffles of each split).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from genkit.data.sources import BUILTIN, _find_idx, _read_idx, locate_idx
from genkit.feature_nets import WEIGHTS_DIR, FeatureNet, sha256

HELD_OUT = 5000
RECIPE = {"epochs": 4, "batch_size": 128, "learning_rate": 3e-3, "weight_decay": 5e-4, "rotation_deg": 12, "scale": [0.9, 1.1], "shift_px": 2.5,
          "shear_deg": 8, "held_out": HELD_OUT, "width": 16, "num_features": 64}


def load_idx(name: str, split: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels) of a built-in data set's split, from its local IDX files."""
    folder = locate_idx(name, split, data_dir)
    if folder is None:
        raise SystemExit(f"no local IDX files for {name} {split}: pass --data-dir (Fashion-MNIST: apt-get install dataset-fashion-mnist)")
    images, labels = (_read_idx(p) for p in _find_idx(folder, split))
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype("int64"))


def augment(x: torch.Tensor, generator: torch.Generator, recipe: dict) -> torch.Tensor:
    """A random affine map per image (rotation, scale, shear, shift), bilinear, zeros outside: the digits' own variation."""
    n = len(x)
    u = lambda lo, hi: torch.rand(n, generator=generator) * (hi - lo) + lo  # noqa: E731
    angle = u(-recipe["rotation_deg"], recipe["rotation_deg"]) * math.pi / 180
    shear = u(-recipe["shear_deg"], recipe["shear_deg"]) * math.pi / 180
    scale = u(*recipe["scale"])
    shift = u(-1, 1) * recipe["shift_px"] * 2 / x.shape[-1], u(-1, 1) * recipe["shift_px"] * 2 / x.shape[-1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + torch.tan(shear) * cos, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def accuracy(model: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images classified right."""
    with torch.no_grad():
        return sum((model(x.float() / 255).argmax(1) == y).sum().item() for x, y in zip(images.split(1000), labels.split(1000))) / len(images)


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance of two feature sets (genkit's own, float64)."""
    from genkit.evaluation.distances import frechet_distance

    return frechet_distance(a, b)


def floors(model: FeatureNet, train: torch.Tensor, test: torch.Tensor, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Train-vs-test and test-vs-test FD at N = n, each set a seeded shuffle of its split."""
    from genkit.feature_nets import extract

    g = torch.Generator().manual_seed(seed)
    test_order, train_order = torch.randperm(len(test), generator=g), torch.randperm(len(train), generator=g)
    model = model.double()
    feats = lambda images: extract(model, images.float() / 255)  # noqa: E731
    reference, other = feats(test[test_order[:n]]), feats(test[test_order[n : 2 * n]])
    seen = feats(train[train_order[:n]])
    model.float()
    result = {"fd_test_vs_test": frechet(reference, other), "fd_train_vs_test": frechet(reference, seen)}
    result["ratio"] = result["fd_train_vs_test"] / result["fd_test_vs_test"]
    return result


def main() -> None:
    """Train one network, write it with its recipe in the metadata, print its sha256 and figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(BUILTIN), required=True)
    parser.add_argument("--data-dir", default=None, help="IDX folder (default: genkit's search: $GENKIT_DATA_DIR/<name>, system folders)")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--epochs", type=float, default=RECIPE["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="weights file (default: genkit/weights/genkit-<data set>-<version>.safetensors)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    recipe = {**RECIPE, "epochs": args.epochs, "seed": args.seed}
    name = f"genkit-{args.dataset.replace('_', '-')}-{args.version}"
    images, labels = load_idx(args.dataset, "train", args.data_dir)
    test_images, test_labels = load_idx(args.dataset, "test", args.data_dir)
    fit_x, fit_y, held_x, held_y = images[:-HELD_OUT], labels[:-HELD_OUT], images[-HELD_OUT:], labels[-HELD_OUT:]
    model = FeatureNet(recipe["width"], recipe["num_features"])
    steps_per_epoch = len(fit_x) // recipe["batch_size"]
    total = int(recipe["epochs"] * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["learning_rate"], total_steps=total)
    generator = torch.Generator().manual_seed(args.seed)
    started, step = time.process_time(), 0
    while step < total:
        order = torch.randperm(len(fit_x), generator=generator)
        for index in order[: steps_per_epoch * recipe["batch_size"]].split(recipe["batch_size"]):
            if step == total:
                break
            x = augment(fit_x[index].float() / 255, generator, recipe)
            loss = F.cross_entropy(model(x), fit_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 200 == 0 or step == total:
                print(f"step {step}/{total} loss {loss.item():.4f} ({time.process_time() - started:.0f} CPU s)", flush=True)
    cpu_seconds = time.process_time() - started
    model.eval()
    figures = {"test_accuracy": accuracy(model, test_images, test_labels), "held_out_accuracy": accuracy(model, held_x, held_y),
               "train_cpu_seconds": round(cpu_seconds, 1)}
    out = Path(args.out) if args.out else WEIGHTS_DIR / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    architecture = {"width": recipe["width"], "num_features": recipe["num_features"], "num_classes": 10}
    metadata = {"name": name, "dataset": args.dataset, "architecture": json.dumps(architecture), "recipe": json.dumps(recipe),
                "figures": json.dumps(figures), "script": "training/feature_nets.py"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out), metadata=metadata)
    figures.update(floors(model, images, test_images))
    print(json.dumps({"name": name, "file": str(out), "bytes": out.stat().st_size, "sha256": sha256(out), **figures}, indent=2))
    print(f'NETWORKS entry: "{name}": NetworkInfo("{name}", "{sha256(out)}", "{args.dataset}", {figures["test_accuracy"]:.4f}),')


if __name__ == "__main__":
    main()
