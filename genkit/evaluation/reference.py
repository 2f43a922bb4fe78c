"""The real images a generator is scored against: the reference set, the real-vs-real set and the training-data set.

Every set is drawn from a seeded shuffle of its split (seed REFERENCE_SEED), never its first rows: data sets are often
stored in an order (MNIST's test split by writer, some by class), and the first N rows of two splits differ for that
reason alone (at N = 1,000 that made the training-data floor look 7x the test-vs-test floor).
"""

from __future__ import annotations

import torch

from ..config import ConfigError, DataConfig
from ..data import ImageTensors, load_split
from ..eval_classifier import classifier_data_config


def to_unit(images: ImageTensors) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.images.float() / 255.0


REFERENCE_SEED = 0


def shuffled(length: int, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """The seeded order in which a split of `length` rows is drawn from (the same on every machine)."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def real_images(data: DataConfig, split: str, n: int, offset: int = 0) -> ImageTensors:
    """`n` real images of a split, as the classifier sees them: rows offset..offset+n of the split's seeded shuffle."""
    loaded = load_split(classifier_data_config(data), split)
    return loaded.select(shuffled(len(loaded))[offset : offset + n])


def reference_split(data: DataConfig) -> str:
    """The split generated images are compared with: the evaluation split."""
    return data.eval_split or data.split


def real_pair(data: DataConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of real evaluation images in [0, 1]: the reference, and the other half of the real-vs-real floor.

    Both come from the evaluation split: training images would sit closer to the classifier that was fitted on them.
    """
    split = reference_split(data)
    both = real_images(data, split, 2 * n)
    if len(both) < 2 * n:
        raise ConfigError(f"the {split!r} split has {len(both)} images: too few for two disjoint sets of {n}; lower the number of samples")
    images = to_unit(both)
    return images[:n], images[n:]


def reference_sets(data: DataConfig, n: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The reference (`n` evaluation images) and the pair of real sets whose distance is the real-vs-real floor.

    The pair is the reference and the next `n` evaluation images; when the split is shorter than 2n (10,000 samples
    against MNIST's 10,000 test images, the field's protocol) it is the reference's two halves, n/2 images each.
    """
    split = reference_split(data)
    images = real_images(data, split, 2 * n)
    if len(images) < n:
        raise ConfigError(f"the {split!r} split has {len(images)} images: fewer than the {n} samples to compare with; lower the number of samples")
    images = to_unit(images)
    if len(images) >= 2 * n:
        return images[:n], (images[:n], images[n : 2 * n])
    return images[:n], (images[: n // 2], images[n // 2 : 2 * (n // 2)])


def training_images(data: DataConfig, n: int) -> torch.Tensor:
    """`n` training images in [0, 1], disjoint from `real_pair`'s: what a model that reproduces its training data emits."""
    offset = 2 * n if data.split == reference_split(data) else 0
    train = to_unit(real_images(data, data.split, n, offset))
    if len(train) < n:
        raise ConfigError(f"the {data.split!r} split has too few images for a training-data floor of {n}; lower the number of samples")
    return train
