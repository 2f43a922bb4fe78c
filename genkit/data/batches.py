"""Batches from decoded splits: model value ranges, binarisation, flips, corruption, and seeded sharded batch order."""

from __future__ import annotations

import torch

from ..config import DataConfig
from ..corruption import corrupt
from .sources import DataSourceError
from .tensors import ImageTensors


def to_model_range(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """uint8 [0, 255] -> float in [0, 1] or [-1, 1]."""
    x = images.float() / 255.0
    return x * 2 - 1 if value_range == "-1,1" else x


def to_unit_range(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """Model range -> [0, 1] (for images, grids and metrics)."""
    return ((x + 1) / 2).clamp(0, 1) if value_range == "-1,1" else x.clamp(0, 1)


def make_batch(data: ImageTensors, index: torch.Tensor, cfg: DataConfig, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, augment: bool = False) -> dict[str, torch.Tensor]:
    """A batch on `device`: `image` (clean, model range), `input` (corrupted when configured) and `label`.

    `augment` applies the training-time augmentation (`data.hflip`); evaluation batches leave it off.
    """
    images, labels = data.take(index)
    if device is not None and images.device != torch.device(device):  # a memory-mapped split: only the batch travels
        pin = torch.device(device).type == "cuda"
        images = (images.pin_memory() if pin else images).to(device, non_blocking=pin)
        labels = labels.to(device, non_blocking=pin)
    clean01 = images.float() / 255.0
    if cfg.binarize == "dynamic" and augment:  # a fresh draw every time an image is seen (Salakhutdinov & Murray's MNIST)
        clean01 = torch.bernoulli(clean01, generator=generator)
    elif cfg.binarize != "none":  # "fixed", and evaluation batches of "dynamic": one draw per image, forever
        clean01 = binarize_fixed(clean01, index.to(clean01.device))
    if augment and cfg.hflip:
        flip = torch.rand(len(clean01), generator=generator, device=generator.device if generator else "cpu") < 0.5
        clean01 = torch.where(flip.to(clean01.device)[:, None, None, None], clean01.flip(-1), clean01)
    image = clean01 * 2 - 1 if cfg.value_range == "-1,1" else clean01
    batch = {"image": image, "label": labels}
    if cfg.corruption:
        noisy01 = corrupt(clean01, cfg.corruption, cfg.corruption_level, generator)
        batch["input"] = noisy01 * 2 - 1 if cfg.value_range == "-1,1" else noisy01
    else:
        batch["input"] = image
    return batch


def binarize_fixed(images01: torch.Tensor, rows: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One Bernoulli draw per pixel that depends only on (seed, row, pixel): the same binary image in every batch.

    The uniform numbers come from a counter-based hash (splitmix64's finaliser), so no generator state or stored copy
    of the binarised set is needed, whatever the batch composition or storage.
    """
    n = images01[0].numel()
    x = (rows.long()[:, None] * n + torch.arange(n, device=rows.device)[None] + seed * 0x632BE59BD9B4E019) & 0x7FFFFFFFFFFFFFFF
    for shift, multiplier in [(30, 0x3F58476D1CE4E5B9), (27, 0x14D049BB133111EB)]:
        x = ((x ^ (x >> shift)) * multiplier) & 0x7FFFFFFFFFFFFFFF
    uniform = ((x ^ (x >> 31)) & 0xFFFFFF).float() / 2**24
    return (uniform.view(images01.shape) < images01).float()


class ShardedBatches:
    """Seeded, epoch-shuffled batch indices addressed by step, so a resumed run continues exactly.

    Every process draws the same permutation and takes its own slice of each global batch (drop_last keeps
    the processes in step).
    """

    def __init__(self, n: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.per_epoch = n // (batch_size * num_processes)
        if self.per_epoch == 0:
            raise DataSourceError(f"{n} training images are fewer than one global batch ({batch_size} x {num_processes} processes); lower batch_size")
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        """Indices of this process's share of micro-batch number `step`."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        start = (i * self.num_processes + self.process_index) * self.batch_size
        return self._perm[start : start + self.batch_size]
