"""Offline-first evaluation of genkit runs.

Generative models are scored in the feature space of the frozen network genkit ships for the data set (offline, the
default, the same on every machine: `genkit-mnist-v1`, `genkit-fashion-mnist-v1`; a machine-local classifier for
data sets without one) and, on request, in the pretrained spaces the field reports (Inception-v3, DINOv2, CLIP): FD
(FID in Inception space), KID, precision / recall / density / coverage, each beside two floors, with the protocol
beside them. Autoencoders, VAEs and RBMs also get their reconstruction and likelihood scores; conditional models the Classification Accuracy Score.

One module per concern: `reference` (the real image sets), `features` (the spaces), `feature_cache`, `distances`
(FD, KID, CMMD), `manifold` (precision, recall, density, coverage), `generation`, `likelihood`, `cas`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..eval_classifier import class_accuracy, classifier_data_config, get_classifier
from ..progress import stage
from .cas import classification_accuracy_score, save_image_tensors, train_and_test_classifier
from .distances import cmmd, fd_kid, frechet_distance, kernel_distance
from .features import SPACES, FeatureSpace, feature_space, parse_spaces
from .generation import evaluate_generation, feature_distances, floors, load_spaces, protocol, run_protocol
from .likelihood import evaluate_likelihood, evaluate_rbm_likelihood, evaluate_reconstruction
from .manifold import density_coverage, prdc, precision_recall
from .reference import real_images, real_pair, reference_sets, reference_split, to_unit, training_images

__all__ = [
    "FeatureSpace", "SPACES", "class_accuracy", "classification_accuracy_score", "classifier_data_config", "cmmd", "density_coverage",
    "evaluate_generation", "evaluate_likelihood", "evaluate_rbm_likelihood", "evaluate_reconstruction", "evaluate_run", "feature_distances",
    "feature_space", "fd_kid", "frechet_distance", "kernel_distance", "floors", "get_classifier", "load_spaces", "parse_spaces", "prdc",
    "precision_recall", "protocol", "run_protocol", "real_images", "real_pair",
    "reference_sets", "reference_split", "save_image_tensors", "to_unit", "train_and_test_classifier", "training_images",
]


def evaluate_run(family, num_samples: int = 1000, device: str | torch.device = "cpu", seed: int = 0, cas: int | None = None,
                 cas_real_subset: int = 1000, nll_k: int = 100, nll_images: int | None = 1000, features: Iterable[str] = ("genkit",),
                 feature_weights: Mapping[str, str] | None = None, **options) -> dict[str, float | str]:
    """Every metric that applies to this family (generative ones in each of `features`; CAS with `cas` generated images)."""
    from ..families import Family

    generates = type(family).generate is not Family.generate
    spaces = load_spaces(features, family.config.data, device, feature_weights) if generates else []  # missing weights: fail first
    result: dict[str, float | str] = {}
    model = family.models.get("model")
    if model is not None and hasattr(model, "reconstruct"):
        with stage("reconstruction error on the evaluation split (and the PCA baseline)"):
            result.update(evaluate_reconstruction(family, device=device))
    if model is not None and hasattr(model, "importance_nll"):
        with stage(f"likelihood: ELBO and importance-sampled NLL ({nll_k} samples per image)"):
            result.update(evaluate_likelihood(family, nll_images, nll_k, device=device))
    if model is not None and hasattr(model, "ais_log_partition"):
        with stage("likelihood: annealed importance sampling of the RBM's partition function"):
            result.update(evaluate_rbm_likelihood(family, device=device))
    if generates:
        result.update(run_protocol(family.config, num_samples, seed, options))
        result.update(protocol(family.config.data, num_samples, spaces))
        with stage(f"generation metrics of {num_samples:,} samples in {', '.join(space.network for space in spaces)} space"):
            result.update(evaluate_generation(family, num_samples, device, seed, features=spaces, **options))
    if cas:
        with stage(f"classification accuracy score: a classifier trained on {cas:,} generated images"):
            result.update(classification_accuracy_score(family, cas, cas_real_subset, seed=seed, **options))
    return result
