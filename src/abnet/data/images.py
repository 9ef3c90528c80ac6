"""Images to explain or predict, read from files (with object boxes where given) or taken from a data set:
resized to the model's input size, with whatever truth is known and the files that could not be read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import Tensor

from ..errors import AbnetError, DataError
from .boxes import boxes_mask, read_boxes
from .folder import IMAGE_EXTENSIONS, FolderIndex, read_rgb, resize_center

FAR_FROM_TRAINING_SIZE = 2.0  # a resize by more than this factor either way gets a warning in the note


@dataclass
class Inputs:
    """Images resized to the model's input size, with whatever truth is known."""

    images: Tensor  # uint8 (N, 3, S, S)
    names: list[str]
    labels: Tensor | None = None  # (N,) class indices or (N, T) 0/1 attributes
    masks: Tensor | None = None  # (N, H, W) or (N, T, H, W) bool
    notes: list[str | None] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, and those in the folders named (recursively, sorted)."""
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif given.exists():
            files.append(given)
        else:
            raise AbnetError(f"{given} does not exist; give image files or folders of images")
    if not files:
        raise AbnetError(f"no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) in {', '.join(map(str, paths))}")
    return files


class UnreadableImageFile(DataError):
    """An image file that cannot be decoded; the message is the reason, for a list of skipped files."""


def read_resized(path: Path, size: int) -> tuple[Tensor, tuple[int, int]]:
    """One image file decoded to RGB and resized to ``size`` x ``size`` (shorter side, centre crop): uint8
    (3, size, size), and the file's own (width, height). Raises :class:`UnreadableImageFile` naming the reason."""
    try:
        img = read_rgb(path)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UnreadableImageFile(f"unreadable image ({type(err).__name__}: {str(err)[:80]})") from None
    return torch.from_numpy(np.asarray(resize_center(img, size)).copy()).permute(2, 0, 1), img.size


def read_images(files: Sequence[Path], size: int, labels: Tensor | None = None,
                boxes_dir: Path | None = None) -> Inputs:
    """Decode and resize every file to ``size`` x ``size`` (shorter side, centre crop); unreadable ones are
    listed in ``failures`` with the reason instead of stopping the run. ``labels``, one per file, are kept
    for the files read. With ``boxes_dir``, each image's object boxes (``<stem>.xml``, Pascal VOC / ImageNet
    format) become its mask; an image without a readable box file is listed too."""
    images, names, notes, failures, kept, masks = [], [], [], [], [], []
    for i, path in enumerate(files):
        try:
            image, (w, h) = read_resized(path, size)
        except UnreadableImageFile as err:
            failures.append((str(path), str(err)))
            continue
        if boxes_dir is not None:
            try:
                masks.append(_box_mask(boxes_dir / f"{path.stem}.xml", w, h, size))
            except DataError as err:
                failures.append((str(path), str(err)))
                continue
        note = None
        if (w, h) != (size, size):
            scale = size / min(w, h)
            far = scale > FAR_FROM_TRAINING_SIZE or scale < 1 / FAR_FROM_TRAINING_SIZE
            note = (f"resized from {w}x{h} to {size}x{size}" + (" (centre crop)" if w != h else "")
                    + (f"; far from the training size {size}x{size}, maps may be less reliable" if far else ""))
        images.append(image)
        names.append(path.name)
        notes.append(note)
        kept.append(i)
    stacked = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return Inputs(stacked, names, None if labels is None else labels[kept], torch.stack(masks) if masks else None,
                  notes=notes, failures=failures)


def _box_mask(path: Path, width: int, height: int, size: int) -> Tensor:
    """The mask of the boxes in ``path`` for a width x height image resized to ``size``."""
    if not path.is_file():
        raise DataError(f"no box file {path}")
    return boxes_mask(read_boxes(path, width, height), width, height, size)


def dataset_inputs(data: Any, split: str, boxes_dir: Path | None = None) -> Inputs:
    """A data set split (an in-memory ImageSet, or a FolderIndex of files) as inputs with their truth."""
    if isinstance(data, FolderIndex):
        return read_images(data.paths, data.size, data.labels, boxes_dir)
    if boxes_dir is not None:
        raise AbnetError("--boxes applies to images read from files (image folders, your own files), not to "
                         "a data set held in memory")
    names = [f"{split} #{i}" for i in range(len(data))]
    return Inputs(data.images, names, data.labels, data.masks, notes=[None] * len(data))
