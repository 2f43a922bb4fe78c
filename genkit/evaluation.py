"""Offline evaluation: Fréchet distance and KID in the feature space of a small classifier that genkit trains itself.

Inception features need a download and are meaningless on 28x28 digits; a CNN trained on the same data set (seeded,
cached) gives features that separate the classes. Two floors are reported beside every score: evaluation images
against other evaluation images, and training images against evaluation images — the second is what a model that
reproduces its training data exactly scores, so it is the floor a generative model can reach.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, DataConfig, TrainConfig
from .data import ImageTensors, binarize_fixed, cache_dir, load_split

CLASSIFIER_EPOCHS = 3


def classifier_data_config(data: DataConfig) -> DataConfig:
    """The evaluated model's data, as the classifier must see it: same source, size and channels, in [0, 1], clean."""
    return DataConfig(source=data.source, data_dir=data.data_dir, split=data.split, eval_split=data.eval_split,
                      image_size=data.image_size, resize=data.resize, channels=data.channels, value_range="0,1")


def get_classifier(data: DataConfig, device: str | torch.device = "cpu", root: Path | None = None, epochs: float = CLASSIFIER_EPOCHS) -> nn.Module:
    """The evaluation classifier for this data set, trained once (seeded) with the genkit engine and cached."""
    from .engine import train
    from .runs import load_family

    cfg = classifier_data_config(data)
    key = json.dumps([cfg.source, str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None, cfg.split, cfg.image_size, cfg.resize, cfg.channels, epochs])
    name = f"{Path(cfg.source).name}-{cfg.channels}x{cfg.image_size}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    run_dir = (root or cache_dir()) / "classifiers" / name
    if not (run_dir / "model.safetensors").is_file():
        config = TrainConfig(family="classifier", data=cfg, output_dir=str(run_dir), epochs=epochs, batch_size=128, learning_rate=1e-3,
                             seed=0, log_with="none", progress_bar=False, keep_last=1, eval_batches=40)
        with torch.enable_grad():  # callers are often inside no_grad (sampling)
            train(config, overwrite=True)
    return load_family(str(run_dir), device).models["model"]


class ClassifierFeatures(nn.Module):
    """The torchmetrics feature-extractor interface over a classifier's `features`."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> features."""
        return self.classifier.features(images.float())


@torch.no_grad()
def feature_distances(real: torch.Tensor, fake: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> dict[str, float]:
    """FID and KID between two image sets in [0, 1], in the classifier's feature space (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    device = next(classifier.parameters()).device
    extractor = ClassifierFeatures(classifier).eval()
    subset = min(len(real), len(fake), 1000)
    fid = FrechetInceptionDistance(feature=extractor, normalize=True).to(device)
    kid = KernelInceptionDistance(feature=extractor, normalize=True, subset_size=max(2, subset // 2), subsets=20).to(device)
    for metric in (fid, kid):
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(batch_size):
                metric.update(chunk.to(device), real=is_real)
    with torch.random.fork_rng(devices=[]):  # KID's random subsets, seeded: the same images give the same score
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> float:
    """How often the classifier assigns generated images (in [0, 1]) their requested label."""
    device = next(classifier.parameters()).device
    hits = sum((classifier(x.to(device).float()).argmax(1).cpu() == y.cpu()).sum().item() for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(images)


def real_images(data: DataConfig, split: str, n: int, offset: int = 0) -> ImageTensors:
    """`n` real images of a split (from `offset`), as the classifier sees them."""
    loaded = load_split(classifier_data_config(data), split, subset=offset + n)
    return loaded.select(torch.arange(offset, len(loaded)))


def real_pair(data: DataConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of real evaluation images in [0, 1]: the reference, and the other half of the real-vs-real floor.

    Both come from the evaluation split: training images would sit closer to the classifier that was fitted on them.
    """
    split = data.eval_split or data.split
    both = real_images(data, split, 2 * n)
    if len(both) < 2 * n:
        raise ConfigError(f"the {split!r} split has {len(both)} images: too few for two disjoint sets of {n}; lower the number of samples")
    images = to_unit(both)
    return images[:n], images[n:]


def floors(data: DataConfig, real: torch.Tensor, other_real: torch.Tensor, classifier: nn.Module) -> dict[str, float]:
    """The two floors of a score against `real`: another set of evaluation images, and as many training images.

    The second is what a perfect model of the training data scores (it reproduces training images); it sits above the
    first because the classifier was fitted on the training split, so it is the floor a generative model can reach.
    """
    n, split = len(real), data.split
    offset = 2 * n if split == (data.eval_split or data.split) else 0  # disjoint from real_pair's images
    train = to_unit(real_images(data, split, n, offset))
    if len(train) < n:
        raise ConfigError(f"the {split!r} split has too few images for a training-data floor of {n}; lower the number of samples")
    same, seen = feature_distances(real, other_real, classifier), feature_distances(real, train, classifier)
    return {"fid_real_floor": same["fid"], "kid_real_floor": same["kid"], "fid_train_floor": seen["fid"], "kid_train_floor": seen["kid"]}


def to_unit(images: ImageTensors) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.images.float() / 255.0


@torch.no_grad()
def evaluate_generation(family, num_samples: int = 1000, device: str | torch.device = "cpu", seed: int = 0, batch_size: int = 250,
                        **options) -> dict[str, float]:
    """FID/KID of `num_samples` generated images against the eval split, the real-vs-real floor, and class accuracy."""
    data = family.config.data
    classifier = get_classifier(data, device)
    real, other_real = real_pair(data, num_samples)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % family.info.num_classes if family.conditional else None
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        chunks.append(family.generate(n, generator, None if labels is None else labels[start : start + n], **options).cpu())
    fake = torch.cat(chunks)
    scores = feature_distances(real, fake, classifier)
    result = {**scores, **floors(data, real, other_real, classifier), "num_samples": num_samples}
    if labels is not None:
        result["class_accuracy"] = class_accuracy(fake, labels, classifier)
    return result


@torch.no_grad()
def evaluate_reconstruction(family, num_images: int = 10000, pca_train: int = 10000, device: str | torch.device = "cpu") -> dict[str, float]:
    """Reconstruction MSE / PSNR on the eval split beside PCA with as many components as the model has latents."""
    from .corruption import corrupt
    from .latents import (
        anomaly_auroc,
        encode,
        pca_baseline,
        psnr,
        reconstruction_errors,
        to_flat,
    )

    data = family.config.data
    test = real_images(data, data.eval_split or data.split, num_images)
    images = to_unit(test)
    errors = reconstruction_errors(family, images)
    result = {"mse": float(errors.mean()), "psnr": psnr(float(errors.mean())), "num_images": len(test)}
    if data.corruption:  # denoisers: corrupted input -> clean target
        noisy = corrupt(images, data.corruption, data.corruption_level, torch.Generator().manual_seed(0))
        model = family.models["model"]
        recon = torch.cat([model.reconstruct(x.to(device)).float().cpu() for x in noisy.split(1000)])
        result["denoise_mse"] = float((recon - images).pow(2).mean())
        result["noisy_input_mse"] = float((noisy - images).pow(2).mean())
    k = encode(family, images[:2]).shape[1]
    if k < images[0].numel():
        train_flat = to_flat(real_images(data, data.split, pca_train))
        result[f"pca{k}_mse"], _ = pca_baseline(train_flat, images.flatten(1).numpy(), k)
        result[f"pca{k}_psnr"] = psnr(result[f"pca{k}_mse"])
    if data.exclude_labels:
        result["anomaly_auroc"] = anomaly_auroc(errors, test.labels.numpy(), data.exclude_labels)
    return result


@torch.no_grad()
def evaluate_likelihood(family, num_images: int | None = 1000, k: int = 100, device: str | torch.device = "cpu") -> dict[str, float]:
    """VAE: mean ELBO and importance-weighted NLL (k samples) on the eval split (`num_images` None: all of it), in nats.

    A run trained with `data.binarize` is scored on the binarised test set (one fixed draw per image), as in the
    literature; otherwise on grey levels, which is no likelihood of a discrete distribution and not comparable with it.
    """
    data = family.config.data
    split = data.eval_split or data.split
    images = to_unit(real_images(data, split, num_images) if num_images else load_split(classifier_data_config(data), split)).to(device)
    if data.binarize != "none":
        images = binarize_fixed(images, torch.arange(len(images), device=images.device))
    model = family.models["model"]
    generator = torch.Generator(device).manual_seed(0)
    batch = max(1, 50_000 // max(k, 100))  # k draws of a batch decoded at once, in chunks of 500: bounded memory
    elbo = torch.cat([-model(x, generator=generator)["loss"] for x in images.split(500)]).mean().item()
    nll = torch.cat([model.importance_nll(x, k, generator) for x in images.split(batch)]).mean().item()
    return {"elbo": elbo, f"nll_iw{k}": nll, "likelihood_images": len(images), "likelihood_data": "binarized" if data.binarize != "none" else "grey levels"}


@torch.no_grad()
def evaluate_rbm_likelihood(family, num_images: int = 10000, runs: int = 100, betas: int = 14_500, device: str | torch.device = "cpu") -> dict[str, float]:
    """RBM: test log-likelihood in nats per image, log Z by annealed importance sampling (Salakhutdinov & Murray 2008).

    Test images are binarised once with a fixed seed; the AIS base model takes the training pixels' mean rates.
    """
    data = family.config.data
    model = family.models["model"]
    train = to_unit(real_images(data, data.split, 10_000)).to(device).flatten(1)
    rate = train.mean(0).clamp(0.5 / len(train), 1 - 0.5 / len(train))  # smoothed: no infinite logits for always-black pixels
    log_z, stderr = model.ais_log_partition(torch.log(rate) - torch.log1p(-rate), runs, betas, torch.Generator(device).manual_seed(0))
    test = to_unit(real_images(data, data.eval_split or data.split, num_images)).to(device)
    test = binarize_fixed(test, torch.arange(len(test), device=test.device)).flatten(1)
    log_likelihood = torch.cat([model.log_likelihood(x, log_z) for x in test.split(1000)]).mean().item()
    return {"test_log_likelihood": log_likelihood, "ais_log_z": log_z, "ais_log_z_stderr": stderr, "ais_runs": runs, "ais_betas": betas,
            "likelihood_images": len(test)}


def evaluate_run(family, num_samples: int = 1000, device: str | torch.device = "cpu", seed: int = 0, cas: int | None = None,
                 cas_real_subset: int = 1000, nll_k: int = 100, nll_images: int | None = 1000, **options) -> dict[str, float]:
    """Every offline metric that applies to this family (and CAS with `cas` generated images, for conditional models)."""
    from .families import Family

    result: dict[str, float] = {}
    model = family.models.get("model")
    if model is not None and hasattr(model, "reconstruct"):
        result.update(evaluate_reconstruction(family, device=device))
    if model is not None and hasattr(model, "importance_nll"):
        result.update(evaluate_likelihood(family, nll_images, nll_k, device=device))
    if model is not None and hasattr(model, "ais_log_partition"):
        result.update(evaluate_rbm_likelihood(family, device=device))
    if type(family).generate is not Family.generate:
        result.update(evaluate_generation(family, num_samples, device, seed, **options))
    if cas:
        result.update(classification_accuracy_score(family, cas, cas_real_subset, seed=seed, **options))
    return result


# ---- Classification Accuracy Score (Ravuri & Vinyals 2019) and the augmentation gain ------------------------------


def save_image_tensors(data: ImageTensors, folder: str | Path) -> Path:
    """Write uint8 images and labels as a `datasets` save_to_disk folder (split `train`) that genkit can train on."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=data.class_names)})
    arrays = data.images.permute(0, 2, 3, 1).numpy()
    images = [a[..., 0] if a.shape[2] == 1 else a for a in arrays]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images, "label": data.labels.tolist()}, features=features)}).save_to_disk(str(folder))
    return Path(folder)


def _folder_config(folder: Path, like: DataConfig) -> DataConfig:
    """A saved image set, shaped like `like`'s data (its held-out share evaluates; the real test split is scored apart)."""
    return DataConfig(source=str(folder), eval_split=None, image_size=like.image_size, resize=like.resize, channels=like.channels)


def train_and_test_classifier(folder: Path, like: DataConfig, test: ImageTensors, steps: int, seed: int = 0, batch_size: int = 128) -> float:
    """Train genkit's evaluation classifier on the images in `folder` for `steps` steps; its accuracy on `test`."""
    from .engine import train
    from .runs import load_family

    data = _folder_config(folder, like)
    run = folder.parent / f"{folder.name}-classifier"
    config = TrainConfig(family="classifier", data=data, output_dir=str(run), max_steps=steps, batch_size=batch_size, learning_rate=1e-3,
                         seed=seed, log_with="none", progress_bar=False, keep_last=1, eval_batches=5, checkpoint_every=steps)
    with torch.enable_grad():
        train(config, overwrite=True)
    classifier = load_family(str(run)).models["model"]
    return class_accuracy(to_unit(test), test.labels, classifier)


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """Point genkit's cache at `folder` for the duration of the block."""
    previous = os.environ.get("GENKIT_CACHE")
    os.environ["GENKIT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GENKIT_CACHE", None)
        else:
            os.environ["GENKIT_CACHE"] = previous


def classification_accuracy_score(family, num_images: int = 10000, real_subset: int = 1000, steps: int = 1500, seed: int = 0,
                                  test_images: int = 10000, **options) -> dict[str, float]:
    """CAS: a classifier trained on generated images, tested on the real test split, beside one trained on as many real
    images; and the augmentation gain: a small real subset alone vs the same subset plus the generated images.

    Every classifier gets the same architecture and the same number of optimizer steps.
    """
    import tempfile

    from .synthetic import export

    if not family.conditional:
        raise ConfigError("the Classification Accuracy Score needs a class-conditional model (it asks for each class)")
    data = family.config.data
    test = real_images(data, data.eval_split or "test", test_images)
    train_pool = load_split(classifier_data_config(data), data.split)
    order = torch.randperm(len(train_pool), generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix="genkit-cas-") as tmp, _cache_in(Path(tmp) / "cache"):  # temporary sets: no cache entries left behind
        root = Path(tmp)
        export(family, root / "generated", num_images, "save_to_disk", seed=seed, progress=False, **options)
        generated = load_split(_folder_config(root / "generated", data), "train")
        real = train_pool.select(order[:num_images])
        small = train_pool.select(order[:real_subset])
        both = ImageTensors(torch.cat([small.images, generated.images]), torch.cat([small.labels, generated.labels]), small.class_names)
        accuracy = {}
        for name, images in [("generated", generated), ("real", real), ("real_subset", small), ("real_subset_plus_generated", both)]:
            batch = min(128, max(1, len(images) // 4))  # small sets (the real subset) still give whole batches
            accuracy[name] = train_and_test_classifier(save_image_tensors(images, root / name), data, test, steps, seed, batch)
    return {"cas": accuracy["generated"], "cas_real_baseline": accuracy["real"], "cas_ratio": accuracy["generated"] / accuracy["real"],
            "cas_num_images": num_images, "augment_real_only": accuracy["real_subset"], "augment_real_plus_generated": accuracy["real_subset_plus_generated"],
            "augment_gain": accuracy["real_subset_plus_generated"] - accuracy["real_subset"], "augment_real_images": real_subset,
            "cas_classifier_steps": steps}
