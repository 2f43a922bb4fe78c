"""Scores of a generator: FD, KID and precision / recall / density / coverage in each requested feature space, each
beside its two floors (other real test images; as many training images), and class accuracy.

Protocol: `num_samples` generated images against as many images of the evaluation split (the reference, drawn by a
seeded shuffle of the split); the test floor compares the reference with the next `num_samples` images of that shuffle
(or, when the split is too short, its two halves), the training floor compares it with `num_samples` training images
(what a model that reproduces its training data scores). Features of real images are cached, so evaluating again pays
only for the samples.

Names: the Fréchet distance is `fd` in genkit's space (`FD_genkit-mnist-v1` on a model card), `dinov2_fd` and `clip_fd`
in those spaces, and FID (`inception_fid`) only in Inception's, where it is the FID of the literature.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DataConfig
from ..eval_classifier import class_accuracy, get_classifier
from ..progress import bar, say
from .distances import cmmd, fd_kid
from .feature_cache import cached_features
from .features import ClassifierSpace, FeatureSpace, NetworkSpace, feature_space
from .manifold import DENSITY_COVERAGE_K, PRECISION_RECALL_K, prdc
from .reference import REFERENCE_SEED, reference_sets, reference_split, training_images

logger = logging.getLogger(__name__)

FID_MIN_SAMPLES = 10_000  # below this, FID in the pretrained spaces is biased upward and not comparable with published figures
PRETRAINED_SPACES = ("inception", "dinov2")


def compare(real: torch.Tensor, fake: torch.Tensor, space: str) -> dict[str, float]:
    """Every distance between two feature sets: FD (FID in Inception space), KID, PRDC (and CMMD in CLIP space)."""
    scores = {**fd_kid(real, fake), **prdc(real, fake)}
    if space == "inception":
        scores = {"fid" if key == "fd" else key: value for key, value in scores.items()}
    if space == "clip":
        scores["cmmd"] = cmmd(real, fake)
    return scores


def space_scores(space: FeatureSpace, data: DataConfig, real: torch.Tensor, real_pair: tuple[torch.Tensor, torch.Tensor], train: torch.Tensor,
                 fake: torch.Tensor) -> dict[str, float]:
    """Scores of `fake` against `real` in one space, with both floors; keys prefixed by the space (none for genkit's)."""
    split = reference_split(data)
    reference = cached_features(space, real, data.source, split)
    scores = compare(reference, space.extract(fake), space.name)
    same = compare(*(cached_features(space, images, data.source, split) for images in real_pair), space.name)
    seen = compare(reference, cached_features(space, train, data.source, data.split), space.name)
    for name, floor in (("test", same), ("train", seen)):
        scores.update({f"{key}_{name}_floor": value for key, value in floor.items() if key != "kid_std"})
    return {prefix(space) + key: value for key, value in scores.items()}


def prefix(space: FeatureSpace) -> str:
    """The prefix of a space's keys: none for genkit's space (the default), else the space's name."""
    return "" if space.name == "genkit" else f"{space.name}_"


def network_name(data: DataConfig) -> str:
    """The feature network genkit's space uses for this data: the shipped one's name, else the machine-local classifier."""
    from ..feature_nets import network_for
    from .features import MACHINE_LOCAL

    return network_for(data.source) or MACHINE_LOCAL


def run_protocol(config, num_samples: int, seed: int, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run's generation scores were measured with: N, reference split, feature network, sampler and NFE, guidance, seed.

    The sampler, steps and guidance are the run's own (those `genkit sample` uses) unless `options` overrides them;
    families that sample in one pass (GAN, VAE) report NFE 1, the RBM its Gibbs steps.
    """
    data = config.data
    options = dict(options or {})
    result: dict[str, Any] = {"num_samples": num_samples, "reference_split": reference_split(data),
                              "reference_selection": f"seeded shuffle of the split (seed {REFERENCE_SEED})", "train_floor_split": data.split,
                              "feature_network": network_name(data), "seed": seed}
    if config.family == "diffusion":
        from ..hub import sampling_defaults

        run = sampling_defaults(config)
        result["sampler"] = options.get("scheduler") or run["sampler"]
        result["nfe"] = int(options.get("steps") or run["steps"])
        conditional = bool(config.model.get("class_conditional"))
        result["guidance"] = float(options["guidance_scale"]) if options.get("guidance_scale") is not None else (run["guidance"] if conditional else None)
    elif config.family == "rbm":
        result["sampler"], result["nfe"], result["guidance"] = "gibbs", int(config.model.get("sample_steps", 1000)), None
    else:
        result["sampler"], result["nfe"], result["guidance"] = "one forward pass", 1, None
    metrics = Path(config.output_dir) / "metrics.json" if config.output_dir else None
    if metrics is not None and metrics.is_file():  # the training budget behind the scores
        try:
            result["train_cpu_seconds"] = json.loads(metrics.read_text()).get("final", {}).get("train_cpu_seconds")
        except (OSError, ValueError):
            pass
    return result


def protocol(data: DataConfig, num_samples: int, spaces: list[FeatureSpace]) -> dict[str, str]:
    """What the scores were measured on, in words, to be stated beside them (with a warning when they are not comparable)."""
    result = {"reference_split": reference_split(data), "train_floor_split": data.split, "feature_spaces": ",".join(space.name for space in spaces),
              "prdc_k": f"precision/recall k={PRECISION_RECALL_K}, density/coverage k={DENSITY_COVERAGE_K}",
              "kid": "unbiased MMD^2, cubic kernel, subsets of at most 1,000 (clean-fid)",
              **{f"{prefix(space)}feature_space": space.description for space in spaces},
              **{f"{prefix(space)}feature_network": space.network for space in spaces}}
    small = [space.name for space in spaces if space.name in PRETRAINED_SPACES and num_samples < FID_MIN_SAMPLES]
    if small:
        result["warning"] = (f"{num_samples} samples: FID/FD in {' and '.join(small)} space is biased upward below {FID_MIN_SAMPLES:,} "
                             "and comparable only with scores at the same sample count")
        logger.warning(result["warning"])
    local = [space for space in spaces if isinstance(space, ClassifierSpace)]
    if local:
        result["machine_local"] = ("genkit ships no feature network for this data set: its scores are in a classifier trained on this machine "
                                   "and compare runs scored here only")
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
                        features: Iterable[str | FeatureSpace] = ("genkit",), feature_weights: Mapping[str, str] | None = None,
                        **options) -> dict[str, float]:
    """FD/KID/PRDC of `num_samples` generated images against the eval split in each feature space, their floors, and class accuracy.

    `features`: space names, or spaces already loaded (`load_spaces`), which a caller that evaluates often keeps. Numbers
    only; `protocol` says in words what they were measured on.
    """
    data = family.config.data
    spaces = load_spaces(features, data, device, feature_weights)  # missing weights fail before sampling
    real, pair = reference_sets(data, num_samples)
    train = training_images(data, num_samples)
    labels = torch.arange(num_samples) % family.info.num_classes if family.conditional else None
    fake = _generate(family, num_samples, seed, batch_size, labels, **options)
    result: dict[str, float] = {"num_samples": num_samples, "test_floor_images": len(pair[0])}
    for space in spaces:
        result.update(space_scores(space, data, real, pair, train, fake))
    if labels is not None:
        classifier = next((space.model for space in spaces if space.name == "genkit"), None) or get_classifier(data, device)
        result["class_accuracy"] = class_accuracy(fake, labels, classifier)
    return result


def _space_of(classifier: nn.Module) -> FeatureSpace:
    """The feature space of an evaluation classifier: a shipped network's, or a machine-local classifier's."""
    from ..feature_nets import FeatureNet

    return NetworkSpace(classifier) if isinstance(classifier, FeatureNet) else ClassifierSpace(classifier)


def feature_distances(real: torch.Tensor, fake: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> dict[str, float]:
    """FD and KID between two image sets in [0, 1], in the classifier's (or shipped network's) feature space."""
    space = _space_of(classifier)
    space.batch_size = batch_size
    return fd_kid(space.extract(real), space.extract(fake))


def floors(data: DataConfig, real: torch.Tensor, other_real: torch.Tensor, classifier: nn.Module) -> dict[str, float]:
    """The floors of a score against `real` in the classifier's space: another set of evaluation images, and as many training images.

    The second is what a perfect model of the training data scores (it reproduces training images): the floor a
    generative model can reach. In a shipped network's space it sits near the first (they generalise: trained with
    augmentation and a held-out split); in a machine-local classifier's it can sit far above it.
    """
    space = _space_of(classifier)
    scores = space_scores(space, data, real, (real, other_real), training_images(data, len(real)), other_real)
    return {key: value for key, value in scores.items() if key.endswith("_floor")}
