"""Scores of a generator: FID, KID and precision / recall / density / coverage in each requested feature space, each
beside its two floors (other real evaluation images; as many training images), and class accuracy.

Protocol: `num_samples` generated images against as many images of the evaluation split (the reference); the
real-vs-real floor compares the reference with the next `num_samples` evaluation images (or, when the split is too
short, its two halves), the training-data floor compares it with `num_samples` training images (what a model that
reproduces its training data scores: the floor a generator can reach). Features of real images are cached, so
evaluating again pays only for the samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..config import DataConfig
from ..eval_classifier import class_accuracy, get_classifier
from ..progress import bar, say
from .distances import cmmd, fid_kid
from .feature_cache import cached_features
from .features import ClassifierSpace, FeatureSpace, feature_space
from .manifold import DENSITY_COVERAGE_K, PRECISION_RECALL_K, prdc
from .reference import reference_sets, reference_split, training_images

logger = logging.getLogger(__name__)

FID_MIN_SAMPLES = 10_000  # below this, FID in the pretrained spaces is biased upward and not comparable with published figures
PRETRAINED_SPACES = ("inception", "dinov2")


def compare(real: torch.Tensor, fake: torch.Tensor, space: str) -> dict[str, float]:
    """Every distance between two feature sets: FID, KID, PRDC (and CMMD in CLIP space)."""
    scores = {**fid_kid(real, fake), **prdc(real, fake)}
    if space == "clip":
        scores["cmmd"] = cmmd(real, fake)
    return scores


def space_scores(space: FeatureSpace, data: DataConfig, real: torch.Tensor, real_pair: tuple[torch.Tensor, torch.Tensor], train: torch.Tensor,
                 fake: torch.Tensor) -> dict[str, float]:
    """Scores of `fake` against `real` in one space, with both floors; keys prefixed by the space (none for the classifier)."""
    split = reference_split(data)
    reference = cached_features(space, real, data.source, split)
    scores = compare(reference, space.extract(fake), space.name)
    same = compare(*(cached_features(space, images, data.source, split) for images in real_pair), space.name)
    seen = compare(reference, cached_features(space, train, data.source, data.split), space.name)
    for name, floor in (("real", same), ("train", seen)):
        scores.update({f"{key}_{name}_floor": value for key, value in floor.items() if key != "kid_std"})
    return {prefix(space) + key: value for key, value in scores.items()}


def prefix(space: FeatureSpace) -> str:
    """The prefix of a space's keys: none for the classifier (the keys genkit always had), else the space's name."""
    return "" if space.name == "classifier" else f"{space.name}_"


def protocol(data: DataConfig, num_samples: int, spaces: list[FeatureSpace]) -> dict[str, str]:
    """What the scores were measured on, in words, to be stated beside them (with a warning when they are not comparable)."""
    result = {"reference_split": reference_split(data), "train_floor_split": data.split, "feature_spaces": ",".join(space.name for space in spaces),
              "prdc_k": f"precision/recall k={PRECISION_RECALL_K}, density/coverage k={DENSITY_COVERAGE_K}",
              **{f"{prefix(space)}feature_space": space.description for space in spaces}}
    small = [space.name for space in spaces if space.name in PRETRAINED_SPACES and num_samples < FID_MIN_SAMPLES]
    if small:
        result["warning"] = (f"{num_samples} samples: FID in {' and '.join(small)} space is biased upward below {FID_MIN_SAMPLES:,} "
                             "and comparable only with scores at the same sample count")
        logger.warning(result["warning"])
    return result


def load_spaces(features: Iterable[str | FeatureSpace], data: DataConfig, device: str | torch.device = "cpu",
                weights: Mapping[str, str] | None = None) -> list[FeatureSpace]:
    """The feature spaces named in `features` (spaces passed as such are kept), their models on `device`."""
    weights = weights or {}
    return [name if isinstance(name, FeatureSpace) else feature_space(name, data, device, weights.get(name)) for name in dict.fromkeys(features)]


def _generate(family, num_samples: int, seed: int, batch_size: int, labels: torch.Tensor | None, **options) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    say(f"generating {num_samples:,} images to score")
    with bar(total=num_samples, desc="generating", unit="img") as progress:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            chunks.append(family.generate(n, generator, None if labels is None else labels[start : start + n], **options).cpu())
            progress.update(n)
    return torch.cat(chunks)


@torch.no_grad()
def evaluate_generation(family, num_samples: int = 1000, device: str | torch.device = "cpu", seed: int = 0, batch_size: int = 250,
                        features: Iterable[str | FeatureSpace] = ("classifier",), feature_weights: Mapping[str, str] | None = None,
                        **options) -> dict[str, float]:
    """FID/KID/PRDC of `num_samples` generated images against the eval split in each feature space, their floors, and class accuracy.

    `features`: space names, or spaces already loaded (`load_spaces`), which a caller that evaluates often keeps. Numbers
    only; `protocol` says in words what they were measured on.
    """
    data = family.config.data
    spaces = load_spaces(features, data, device, feature_weights)  # missing weights fail before sampling
    real, pair = reference_sets(data, num_samples)
    train = training_images(data, num_samples)
    labels = torch.arange(num_samples) % family.info.num_classes if family.conditional else None
    fake = _generate(family, num_samples, seed, batch_size, labels, **options)
    result: dict[str, float] = {"num_samples": num_samples, "real_floor_images": len(pair[0])}
    for space in spaces:
        result.update(space_scores(space, data, real, pair, train, fake))
    if labels is not None:
        classifier = next((space.model for space in spaces if space.name == "classifier"), None) or get_classifier(data, device)
        result["class_accuracy"] = class_accuracy(fake, labels, classifier)
    return result


def feature_distances(real: torch.Tensor, fake: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> dict[str, float]:
    """FID and KID between two image sets in [0, 1], in the classifier's feature space."""
    space = ClassifierSpace(classifier)
    space.batch_size = batch_size
    return fid_kid(space.extract(real), space.extract(fake))


def floors(data: DataConfig, real: torch.Tensor, other_real: torch.Tensor, classifier: nn.Module) -> dict[str, float]:
    """The classifier-space floors of a score against `real`: another set of evaluation images, and as many training images.

    The second is what a perfect model of the training data scores (it reproduces training images); it sits above the
    first because the classifier was fitted on the training split, so it is the floor a generative model can reach.
    """
    space = ClassifierSpace(classifier)
    scores = space_scores(space, data, real, (real, other_real), training_images(data, len(real)), other_real)
    return {key: value for key, value in scores.items() if key.endswith("_floor")}
