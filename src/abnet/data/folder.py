"""Image folders: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (ImageNet's layout, or a
fine-grained set such as cars), or a single folder of class folders split by fraction.

Small images (CIFAR-size, up to :data:`IN_MEMORY_MAX_SIZE` pixels) are decoded once into one uint8
tensor and take the in-memory fast path. Larger ones stream through DataLoader workers that
decode and augment each image (:class:`FolderLoader`). Both yield the same :class:`Batch` objects,
so the training loop does not know which it got.

Odd files are handled, not fatal: grey, RGBA, palette and 16-bit images are converted to 8-bit RGB;
unreadable or truncated files are skipped, counted and named in one warning.

Target maps for map guidance (see :mod:`abnet.data.targets`) are read with their images: in memory, resized
like them; streamed, cropped and flipped with them by the same transform.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .base import ImageSet, select
from .boxes import boxes_map, read_boxes
from .loader import Batch, cutout, epoch_generator, normalize, steps_per_epoch, target_maps

log = logging.getLogger("abnet")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IN_MEMORY_MAX_SIZE = 64


TargetFiles = tuple[Path | None, ...]  # one image's target files: one map, or one per attribute (None: no file)


@dataclass
class FolderIndex:
    """The files of one split: paths, their labels ((N,) class indices, or (N, T) 0/1 attributes) and the
    class (or attribute) names; optionally each image's target files for map guidance (all None: no map
    loss for that image), a PNG map or a VOC box file (see :func:`read_target`)."""

    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    size: int = 224  # images are resized / cropped to size x size
    target_paths: list[TargetFiles] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> FolderIndex:
        """The files at ``index`` (an index tensor)."""
        targets = None if self.target_paths is None else select(self.target_paths, index)
        return FolderIndex(select(self.paths, index), self.labels[index], self.classes, self.size, targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)


def scan(folder: Path, classes: list[str] | None = None, size: int = 224) -> FolderIndex:
    """List ``folder/<class>/<image>``; ``classes`` fixes the class order (e.g. from train/ for val/)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; expected {folder}/<class name>/<image files>")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class name>/<image files>")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{folder} has class folders not in the training set: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        # A class of the training set may have no folder here (e.g. in val/): it then has no images.
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files and name in found:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...); "
                            "add images or remove the folder")
        paths += files
        labels += [label] * len(files)
    return FolderIndex(paths, torch.tensor(labels, dtype=torch.int64), classes, size)


class UnreadableImage(OSError):
    """An image file PIL fails on with an error other than OSError or ValueError (damaged data), or one of
    more pixels than PIL's decompression-bomb limit."""


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """PIL's decoders meet damaged data with many exception types (SyntaxError, struct.error, EOFError, ...):
    they become :class:`UnreadableImage`, so callers catch one OSError. An image larger than
    ``Image.MAX_IMAGE_PIXELS`` is refused before it is allocated (by default PIL only warns up to twice that);
    PIL's other warnings (odd metadata, which is not used) are not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (OSError, ValueError):
            raise
        except Exception as err:
            raise UnreadableImage(f"{path}: {type(err).__name__}: {err}") from None


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file fully to 8-bit RGB; raises OSError (UnidentifiedImageError, UnreadableImage, ...)
    or ValueError if it is unreadable."""
    with _decoding(path), Image.open(path) as img:
        img.load()  # truncated files fail here, not later in a worker
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits
            arr = np.asarray(img, dtype=np.uint32)
            img = Image.fromarray((arr >> 8 if arr.max(initial=0) > 255 else arr).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def read_target(path: Path, width: int, height: int) -> Image.Image:
    """A target map file as an 8-bit grey ("L") map of its ``width`` x ``height`` image; raises OSError or
    ValueError if it is unreadable, :class:`DataError` for a malformed box file.

    A Pascal VOC box file (``.xml``) becomes white boxes on black. A map image of any size is resized to its
    image; one of another aspect ratio (e.g. a square map of a non-square image, as abnet shows it) is taken
    to cover the image's centre region of that aspect ratio, and the rest of the image is black."""
    if path.suffix.lower() == ".xml":
        return Image.fromarray(boxes_map(read_boxes(path, width, height), width, height).numpy().astype(np.uint8) * 255)
    with _decoding(path), Image.open(path) as img:
        img = img.convert("L")
    scale = min(width / img.width, height / img.height)
    fit = (min(width, round(img.width * scale)), min(height, round(img.height * scale)))
    if abs(fit[0] - width) <= 1 and abs(fit[1] - height) <= 1:  # the same aspect ratio, up to rounding
        return img.resize((width, height), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(img.resize(fit, Image.Resampling.BILINEAR), ((width - fit[0]) // 2, (height - fit[1]) // 2))
    return canvas


def load_folder_in_memory(index: FolderIndex) -> ImageSet:
    """Decode every image of ``index``, resized to its ``size``, into one uint8 tensor."""
    size = index.size
    images, kept, bad = [], [], []
    for i, path in enumerate(index.paths):
        try:
            img = read_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            bad.append(f"{path.name} ({type(err).__name__})")
            continue
        images.append(torch.from_numpy(np.asarray(resize_center(img, size)).copy()).permute(2, 0, 1))
        kept.append(i)
    _warn_skipped(bad, len(index.paths))
    if not images:
        raise DataError(f"none of the {len(index.paths)} image files could be read, e.g. {index.paths[0]} ({bad[0]})")
    return ImageSet(torch.stack(images), index.labels[kept], index.classes, paths=[index.paths[i] for i in kept])


def resize_center(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the centre ``size`` x ``size`` square (no distortion)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def _warn_skipped(bad: list[str], total: int) -> None:
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log.warning("skipped %d of %d image files that could not be read: %s", len(bad), total, shown)


Sample = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, bool]  # image, label, target maps, guided


class _FolderDataset(torch.utils.data.Dataset):
    """Per-sample decode and augmentation in a worker; the random draws are seeded by (seed, epoch, index).
    Target maps, where the index has them, get the image's crop and flip (one joint transform)."""

    def __init__(self, index: FolderIndex, size: int, train: bool, seed: int):
        from torchvision.transforms import v2

        self.index, self.train, self.seed = index, train, seed
        if train:
            self.transform = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        else:
            self.transform = v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.index.paths)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        epoch, i = key
        try:
            rgb = read_rgb(self.index.paths[i])
        except (OSError, UnidentifiedImageError, ValueError):
            return None, self.index.labels[i], None, False  # dropped by the collate function, counted
        img = pil_to_tensor(rgb)
        torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
        if self.index.target_paths is None:
            return self.transform(img), self.index.labels[i], None, False
        maps, guided = self._targets(self.index.target_paths[i], rgb.width, rgb.height)
        img, maps = self.transform(img, tv_tensors.Mask(maps))  # the same random crop and flip for both
        return img, self.index.labels[i], maps.as_subclass(torch.Tensor), guided

    @staticmethod
    def _targets(files: TargetFiles, width: int, height: int) -> tuple[torch.Tensor, bool]:
        """uint8 (len(files), height, width) maps, zero where there is no file (or it fails to decode:
        attach_targets checked the files, so that is damage found late), and whether any was read."""
        maps = torch.zeros(len(files), height, width, dtype=torch.uint8)
        guided = False
        for k, path in enumerate(files):
            if path is not None:
                with contextlib.suppress(OSError, UnidentifiedImageError, ValueError):
                    maps[k] = torch.from_numpy(np.asarray(read_target(path, width, height)).copy())
                    guided = True
        return maps, guided


class _EpochOrder(torch.utils.data.Sampler):
    """Yields, per step, this process's (epoch, index) keys: global batch k of the epoch's order (shuffled by
    (seed, epoch) for training), every world-th image from rank on, from step ``start`` on."""

    def __init__(self, n: int, batch_size: int, train: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.train, self.seed, self.epoch, self.start = n, batch_size, train, seed, 0, 0
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size, self.world)

    def __iter__(self):
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)) if self.train \
            else torch.arange(self.n)
        for step in range(self.start, len(self)):
            keys = order[step * self.batch_size:(step + 1) * self.batch_size][self.rank::self.world]
            yield [(self.epoch, int(i)) for i in keys]


class _Collated(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor
    targets: torch.Tensor | None  # uint8 (N, 1 or T, S, S)
    guided: torch.Tensor | None  # bool (N,)
    bad: int  # unreadable images dropped


def _collate(samples: list[Sample]) -> _Collated:
    good = [s for s in samples if s[0] is not None]
    if not good:
        return _Collated(torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), None, None,
                         len(samples))
    images, labels, targets, guided = zip(*good)
    maps = None if targets[0] is None else torch.stack(targets)
    return _Collated(torch.stack(images), torch.stack(labels), maps,
                     None if maps is None else torch.tensor(guided, dtype=torch.bool), len(samples) - len(good))


class FolderLoader:
    """Batches of large images streamed from files by DataLoader workers (pinned memory, persistent
    workers). Same interface as :class:`~abnet.data.loader.InMemoryLoader`."""

    def __init__(self, index: FolderIndex, batch_size: int, mean, std, train: bool = False,
                 seed: int = 0, workers: int = 2, cutout_size: int = 0, channels_last: bool = False,
                 rank: int = 0, world: int = 1):
        self.index, self.batch_size, self.mean, self.std = index, batch_size, mean, std
        self.cutout_size, self.channels_last = cutout_size if train else 0, channels_last
        self.train = train
        self.order = _EpochOrder(len(index.paths), batch_size, train, seed, rank, world)
        self.loader = torch.utils.data.DataLoader(
            _FolderDataset(index, index.size, train, seed), batch_sampler=self.order, num_workers=workers,
            collate_fn=_collate, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """The batches of one epoch from batch ``start`` on (earlier ones are not read). In training, a batch
        whose images were all unreadable is yielded empty, so that batch k stays step k."""
        self.order.epoch, self.order.start = epoch, start
        skipped = 0
        for step, (images, labels, targets, guided, bad) in enumerate(self.loader, start):
            skipped += bad
            if len(labels) or self.train:
                x = normalize(images, self.mean, self.std)
                if self.cutout_size > 0 and len(labels):
                    cutout(x, self.cutout_size, epoch_generator(self.order.seed, epoch, step))
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield Batch(x, labels, None, None if targets is None else target_maps(targets), guided)
        if skipped:
            log.warning("skipped %d unreadable image files in this pass", skipped)
