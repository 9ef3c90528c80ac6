"""Batches from an in-memory :class:`ImageSet`, augmented a whole batch at a time.

Per-sample PIL transforms in DataLoader workers (the research code's way) cost more than the
model step for 32x32 images on a CPU. Here the set is one uint8 tensor; a batch is gathered,
randomly cropped (with zero padding) and flipped by tensor indexing, then normalised. The order
of epoch e is drawn from a generator seeded by (seed, epoch) and batch k's augmentation from one
seeded by (seed, epoch, k), so a resumed run starts at any batch without replaying the ones before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ImageSet


def draw_crop_flip(
    n: int, height: int, width: int, padding: int, generator: torch.Generator, flip: bool = True
) -> Callable[[Tensor], Tensor]:
    """Draw random ``padding``-pixel shifts (zero fill) and horizontal flips for a batch of ``n`` images of
    ``height`` x ``width``, and return the function that applies them to any (n, H, W) or (n, C, H, W) tensor,
    so that images, masks and target maps get the same crop and flip.

    Two gathers do it for the whole batch: the rows each crop keeps, then its (possibly reversed)
    columns; several times faster than indexing pixels one by one.
    """
    h, w = height, width
    off_y = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    cols = torch.arange(w).view(1, w)
    cols = torch.where(flipped.view(n, 1), w - 1 - cols, cols) + off_x  # (n, w) in padded coordinates

    def crop(t: Tensor) -> Tensor:  # (n, c, h, w) -> same shape, cropped and flipped
        c, hp, wp = t.shape[1], h + 2 * padding, w + 2 * padding
        padded = F.pad(t, (padding,) * 4)
        rows = (torch.arange(n * c).view(n, c, 1) * hp + off_y.view(n, 1, 1) + torch.arange(h)).view(-1)
        kept = padded.view(n * c * hp, wp).index_select(0, rows).view(n, c, h, wp)
        return kept.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    return lambda t: crop(t) if t.dim() == 4 else crop(t.unsqueeze(1)).squeeze(1)


def cutout(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one ``size`` x ``size`` square per image, at a random centre
    (the square may reach past the border). In place on a normalised batch, so zero is the mean colour."""
    n, _, h, w = images.shape
    top = torch.randint(0, h, (n, 1, 1), generator=generator) - size // 2
    left = torch.randint(0, w, (n, 1, 1), generator=generator) - size // 2
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    square = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill_(square.unsqueeze(1), 0.0)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std per channel, as one scale and shift in place."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    scale = 1 / (255 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
    return images.contiguous().float().mul_(scale).add_(shift)


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Batches in an epoch of ``n`` images; under torchrun a last batch with fewer images than processes is
    dropped, so that every process trains on at least one image at every step."""
    full, rest = divmod(n, batch_size)
    return full + (rest >= world)


def epoch_generator(seed: int, epoch: int, step: int | None = None) -> torch.Generator:
    """The generator of epoch ``epoch``'s order (``step`` None) or of batch ``step``'s augmentation."""
    key = seed * 100_003 + epoch if step is None else ((seed * 100_003 + epoch) * 1_000_003 + step) * 7 + 1
    return torch.Generator().manual_seed(key)


@dataclass
class Batch:
    images: Tensor  # normalised float32 (N, C, H, W)
    labels: Tensor  # (N,) class indices, or (N, T) float 0/1 attributes
    masks: Tensor | None  # bool, aligned with images: (N, H, W), or (N, T, H, W) one per attribute
    targets: Tensor | None = None  # float32 (N, 1 or T, H, W) in [0, 1] target maps, aligned with images
    guided: Tensor | None = None  # bool (N,): the images with a target map (the others get no map loss)


def target_maps(targets: Tensor) -> Tensor:
    """uint8 target maps (N, H, W) or (N, T, H, W), 0..255, as a batch's float32 (N, 1 or T, H, W) in [0, 1]."""
    return (targets if targets.dim() == 4 else targets.unsqueeze(1)).float().div_(255)


class InMemoryLoader:
    """Batches of an :class:`ImageSet`: shuffled and augmented for training, in order for evaluation."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool = False,
        seed: int = 0,
        padding: int = 4,
        flip: bool = True,
        cutout_size: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.mean, self.std = data, batch_size, mean, std
        self.train, self.seed, self.padding, self.flip = train, seed, padding, flip
        self.cutout_size, self.channels_last = cutout_size, channels_last
        self.rank, self.world = rank, world  # multi-process training: this process's share of each batch

    def __len__(self) -> int:
        return steps_per_epoch(len(self.data), self.batch_size, self.world)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """The batches of one epoch from batch ``start`` on; for training, a function of (seed, epoch) only."""
        n = len(self.data)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if self.train else torch.arange(n)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            images = self.data.images[idx]
            masks, targets, guided = (None if t is None else t[idx]
                                      for t in (self.data.masks, self.data.targets, self.data.guided))
            gen = epoch_generator(self.seed, epoch, step)
            if self.train:
                crop = draw_crop_flip(len(idx), *images.shape[2:], self.padding, gen, self.flip)
                images, masks, targets = (None if t is None else crop(t) for t in (images, masks, targets))
            x = normalize(images, self.mean, self.std)
            if self.train and self.cutout_size > 0:
                cutout(x, self.cutout_size, gen)
            labels = self.data.labels[idx]
            targets = None if targets is None else target_maps(targets)
            if self.world > 1:  # every process augments the whole batch alike, then keeps its slice
                x, labels, masks, targets, guided = (None if t is None else t[self.rank::self.world]
                                                     for t in (x, labels, masks, targets, guided))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, labels, masks, targets, guided)
