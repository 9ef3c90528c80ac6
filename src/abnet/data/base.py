"""An image data set held in memory as one uint8 tensor: the fast path for small images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class ImageSet:
    """Images (N, 3, H, W) uint8; labels (N,) int64 class indices or (N, T) float 0/1 attributes; class
    (or attribute) names; optional object masks (N, H, W) bool, or (N, T, H, W) one per attribute.

    Optional target maps for map guidance: ``targets`` uint8 (N, H, W), or (N, T, H, W) one per attribute,
    0..255 (255 = attend), aligned with the images, and ``guided`` (N,) bool, the images that have one (the
    others get no map loss). ``paths``: the image files, for a set decoded from files (so that target files
    can be matched to their images).
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    masks: Tensor | None = None
    targets: Tensor | None = None
    guided: Tensor | None = None
    paths: list[Path] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        n = len(self.images)
        if len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        if self.masks is not None and self.masks.shape not in self._mask_shapes():
            raise ValueError(f"masks of shape {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}"
                             f" and labels {tuple(self.labels.shape)}")
        if (self.targets is None) != (self.guided is None):
            raise ValueError("targets and guided go together: give both or neither")
        if self.targets is not None and (self.targets.dtype != torch.uint8
                                         or self.targets.shape not in self._mask_shapes()):
            raise ValueError(f"targets must be uint8 of a mask's shape {self._mask_shapes()}, got "
                             f"{self.targets.dtype} {tuple(self.targets.shape)}")
        if self.guided is not None and (self.guided.dtype != torch.bool or self.guided.shape != (n,)):
            raise ValueError(f"guided must be a ({n},) bool tensor, got {self.guided.dtype} {tuple(self.guided.shape)}")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{n} images but {len(self.paths)} paths")

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

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        paths = None if self.paths is None else select(self.paths, index)
        return ImageSet(self.images[index], self.labels[index], self.classes, take(self.masks), take(self.targets),
                        take(self.guided), paths)


def select(items: list, index: Tensor | slice) -> list:
    """The items of a list at ``index`` (a slice, an index tensor or a bool tensor), as a tensor would index them."""
    if isinstance(index, slice):
        return items[index]
    if index.dtype == torch.bool:
        index = index.nonzero().squeeze(1)
    return [items[i] for i in index.view(-1).tolist()]
