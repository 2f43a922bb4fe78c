"""genkit's evaluation classifier: the network genkit ships for the data set, else a small CNN trained on this machine.

The shipped networks (genkit/feature_nets.py: MNIST, Fashion-MNIST) are the same everywhere; for any other data set
a classifier is trained once per machine (seeded, cached) and its scores are machine-local. Its own module because
both the evaluation and the synthetic-data export (which labels unconditional samples with it) need it, and neither
should import the other for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .config import DataConfig, TrainConfig
from .data import cache_dir

CLASSIFIER_EPOCHS = 3


def classifier_data_config(data: DataConfig) -> DataConfig:
    """The evaluated model's data, as the classifier must see it: same source, size and channels, in [0, 1], clean."""
    return DataConfig(source=data.source, data_dir=data.data_dir, split=data.split, eval_split=data.eval_split,
                      image_size=data.image_size, resize=data.resize, channels=data.channels, value_range="0,1")


def get_classifier(data: DataConfig, device: str | torch.device = "cpu", root: Path | None = None, epochs: float = CLASSIFIER_EPOCHS) -> nn.Module:
    """The evaluation classifier for this data set: genkit's shipped network when there is one, else the machine-local one."""
    from .feature_nets import load_network, network_for

    name = network_for(data.source)
    return load_network(name) if name else train_local_classifier(data, device, root, epochs)


def train_local_classifier(data: DataConfig, device: str | torch.device = "cpu", root: Path | None = None,
                           epochs: float = CLASSIFIER_EPOCHS) -> nn.Module:
    """A classifier for a data set genkit ships no network for, trained once on this machine (seeded) and cached."""
    from .engine import train
    from .runs import load_family

    cfg = classifier_data_config(data)
    key = json.dumps([cfg.source, str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None, cfg.split, cfg.image_size, cfg.resize, cfg.channels, epochs])
    name = f"{Path(cfg.source).name}-{cfg.channels}x{cfg.image_size}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    run_dir = (root or cache_dir()) / "classifiers" / name
    if not (run_dir / "model.safetensors").is_file():
        from .progress import interactive, stage

        config = TrainConfig(family="classifier", data=cfg, output_dir=str(run_dir), epochs=epochs, batch_size=128, learning_rate=1e-3,
                             seed=0, log_with="none", progress_bar=interactive(), keep_last=1, eval_batches=40)
        with stage(f"training a machine-local evaluation classifier on {Path(cfg.source).name} ({epochs:g} epochs, first use only: "
                   f"cached in {run_dir})"), torch.enable_grad():  # callers are often inside no_grad (sampling)
            train(config, overwrite=True)
    return load_family(str(run_dir), device).models["model"]


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> float:
    """How often the classifier assigns generated images (in [0, 1]) their requested label."""
    device = next(classifier.parameters()).device
    hits = sum((classifier(x.to(device).float()).argmax(1).cpu() == y.cpu()).sum().item() for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(images)
