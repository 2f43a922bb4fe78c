"""Decoded splits as uint8 tensors: in memory, on the device, or memory-mapped from the decode cache, with lazy subsets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageTensors:
    """A decoded split: uint8 images (N, C, H, W), int64 labels and the class names.

    `images` is either in memory (small splits, on the GPU when there is one) or, with `mapped`, memory-mapped from
    the decode cache (large splits: pages are read as batches touch them, shared by every process on the node).
    `rows`, when set, makes this a lazy subset (`view`), so the training part of a held-out split copies no pixels.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mapped: bool = False
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.images)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at `index` (positions within this split or subset)."""
        if self.rows is not None:
            index = self.rows[index.cpu()]
        index = index.to(self.images.device)
        return self.images[index], self.labels[index.to(self.labels.device)]

    def select(self, index: torch.Tensor) -> "ImageTensors":
        """A copy of the subset at `index`, in memory."""
        images, labels = self.take(index)
        return ImageTensors(images, labels, self.class_names)

    def view(self, index: torch.Tensor) -> "ImageTensors":
        """The subset at `index` as a lazy view: no pixel is copied (a 99 % training part of a split costs an index)."""
        rows = index.cpu() if self.rows is None else self.rows[index.cpu()]
        return ImageTensors(self.images, self.labels, self.class_names, self.mapped, rows)

    def in_memory(self) -> "ImageTensors":
        """The same data read whole into memory."""
        if not self.mapped and self.rows is None:
            return self
        images, labels = self.take(torch.arange(len(self)))
        return ImageTensors(images.clone(), labels.clone(), self.class_names)

    def to(self, device: torch.device | str) -> "ImageTensors":
        """Move images and labels to `device` (a memory-mapped split stays mapped on the CPU)."""
        if torch.device(device).type == "cpu" and (self.mapped or self.rows is not None):
            return self
        data = self.in_memory()
        return ImageTensors(data.images.to(device), data.labels.to(device), self.class_names)
