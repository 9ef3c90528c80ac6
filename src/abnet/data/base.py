"""An image data set held in memory as one uint8 tensor: the fast path for small images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageSet:
    """Images (N, 3, H, W) uint8; labels (N,) int64 class indices or (N, T) float 0/1 attributes; class
    (or attribute) names; optional object masks (N, H, W) bool, or (N, T, H, W) one per attribute."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    masks: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.masks is not None and self.masks.shape not in self._mask_shapes():
            raise ValueError(f"masks of shape {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}"
                             f" and labels {tuple(self.labels.shape)}")

    def _mask_shapes(self) -> list[tuple[int, ...]]:
        """(N, H, W), and (N, T, H, W) where labels are (N, T) attributes."""
        n, hw = len(self.images), tuple(self.images.shape[2:])
        return [(n, *hw)] + ([(n, self.labels.shape[1], *hw)] if self.labels.dim() == 2 else [])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, index: Tensor | slice) -> ImageSet:
        """The samples at ``index`` (a slice or an index tensor), sharing class names."""
        masks = None if self.masks is None else self.masks[index]
        return ImageSet(self.images[index], self.labels[index], self.classes, masks)
