"""Target maps for map guidance: where the attention map should look, per image, from a data set's own object
masks, from object boxes, or from a folder of maps (a person's edits), for all images or a fixed share of them.

Sources (``--map-targets``):

- ``masks``: the set's object masks (shapes, shapes-multi, shapes-shortcut);
- ``boxes:DIR``: Pascal VOC / ImageNet box files ``<image stem>.xml`` anywhere under DIR, as ``abnet explain
  --boxes`` reads them; the boxes are the target;
- ``DIR``: target maps ``DIR/<split>/<class>/<stem>.png`` beside the images ``<data-root>/<split>/<class>/
  <stem>.<ext>`` (see :func:`target_file`): 8-bit grey, white = attend, any size (resized to the image).

Images without a target get no map loss. A set held in memory gets its targets as one uint8 tensor, resized like
its images (for a set decoded from files, :attr:`ImageSet.paths` matches them to their images); a streamed
:class:`FolderIndex` gets the target files of each image, read and cropped with it by the loader.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import DataError
from .base import ImageSet
from .boxes import read_voc_boxes
from .folder import IMAGE_EXTENSIONS, FolderIndex, TargetFiles, read_target, resize_center

if TYPE_CHECKING:
    from .registry import DataOptions

log = logging.getLogger("abnet")

LAYOUT = "DIR/<split>/<class>/<stem>.png (multi-task: <stem>.<attribute>.png)"


def target_file(root: Path, split: str, stem: str, class_name: str | None = None,
                attribute: str | None = None) -> Path:
    """Where the target map of one image lies: ``root/<split>/<class>/<stem>.png``; without a class (attribute
    data) ``root/<split>/<stem>.<attribute>.png``, one map per attribute."""
    folder = root / split / class_name if class_name is not None else root / split
    return folder / target_name(stem, attribute)


def target_name(stem: str, attribute: str | None = None) -> str:
    """The file name of an image's target map: ``<stem>.png``, or ``<stem>.<attribute>.png`` (one per attribute)."""
    return f"{stem}.{attribute}.png" if attribute is not None else f"{stem}.png"


def sample_stems(data: ImageSet | FolderIndex) -> list[str]:
    """Each image's name in target layouts: its file's stem, or for a generated set its index in the split."""
    return [p.stem for p in data.paths] if data.paths is not None else [str(i) for i in range(len(data))]


def attach_targets(data: ImageSet | FolderIndex, source: str, split: str, options: DataOptions | None = None,
                   fraction: float = 1.0, seed: int = 0, per_attribute: bool = True) -> ImageSet | FolderIndex:
    """``data`` with target maps from ``source`` (``masks``, ``boxes:DIR`` or a DIR of maps; see the module)
    for ``split``. ``fraction`` < 1 keeps targets for that share of the images that have one only, chosen by
    ``seed`` (the same images every run; a smaller share's images are among a larger one's). ``options.root``,
    where given, tells target maps of images that exist but were not loaded (a limited or carved split) from
    maps with no image, which are named in one warning. ``per_attribute``: on attribute data, one target per
    attribute (for a multi-task model, ``<stem>.<attribute>.png``); False gives one per image (``<stem>.png``,
    or the union of the attributes' masks), for a model with one map."""
    if not 0 <= fraction <= 1:
        raise DataError(f"the share of guided images must lie between 0 and 1, got {fraction}")
    if source == "masks":
        return _from_masks(data, fraction, seed, per_attribute)
    if source.startswith("boxes:"):
        folder, files = _folder(source[len("boxes:"):], source), _box_files
    else:
        folder, files = _folder(source, source), _map_files
    found = files(data, folder, split, options, per_attribute)
    guided = _keep_share(torch.tensor([any(f) for f in found], dtype=torch.bool), fraction, seed)
    found = [f if g else (None,) * len(f) for f, g in zip(found, guided.tolist())]
    if isinstance(data, FolderIndex):
        for path in {p for f in found for p in f if p is not None}:
            _check(path)
        return dataclasses.replace(data, target_paths=found)
    return dataclasses.replace(data, targets=_read_in_memory(data, found), guided=guided)


def _folder(text: str, source: str) -> Path:
    folder = Path(text)
    if not text or not folder.is_dir():
        raise DataError(f"map targets {source!r}: {text or '(empty)'} is not a folder; give masks, boxes:DIR (a folder "
                        f"of Pascal VOC <image stem>.xml files) or a folder of target maps {LAYOUT}")
    return folder


def _from_masks(data: ImageSet | FolderIndex, fraction: float, seed: int, per_attribute: bool) -> ImageSet:
    if not isinstance(data, ImageSet) or data.masks is None:
        raise DataError("map targets 'masks' need a data set with object masks (shapes, shapes-multi, "
                        "shapes-shortcut); this one has none: give boxes:DIR or a folder of target maps instead")
    guided = _keep_share(torch.ones(len(data), dtype=torch.bool), fraction, seed)
    masks = data.masks if per_attribute or data.masks.dim() == 3 else data.masks.any(1)  # one map: the union
    view = (-1,) + (1,) * (masks.dim() - 1)
    targets = (masks & guided.view(view)).to(torch.uint8) * 255
    return dataclasses.replace(data, targets=targets, guided=guided)


def _keep_share(has: Tensor, fraction: float, seed: int) -> Tensor:
    """Of the images that ``has`` a target, a ``fraction`` (at least one where it is > 0), in a fixed random order."""
    candidates = has.nonzero().squeeze(1)
    count = 0 if fraction == 0 else max(1, round(fraction * len(candidates)))
    order = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))]
    keep = torch.zeros_like(has)
    keep[order[:count]] = True
    return keep


def _map_files(data: ImageSet | FolderIndex, folder: Path, split: str, options: DataOptions | None,
               per_attribute: bool) -> list[TargetFiles]:
    """Each image's target map files under ``folder`` (None where there is none); warns about maps with no image."""
    attributes = data.labels.dim() == 2
    multi = attributes and per_attribute
    stems = sample_stems(data)
    present = {p for p in (folder / split).rglob("*") if p.is_file() and not p.name.startswith(".")}
    expected = []
    for i, stem in enumerate(stems):
        class_name = None if attributes else data.classes[int(data.labels[i])]
        names = data.classes if multi else [None]
        expected.append(tuple(target_file(folder, split, stem, class_name, a) for a in names))
    found = [tuple(p if p in present else None for p in files) for files in expected]
    if not any(any(f) for f in found):
        raise DataError(f"no target map in {folder / split} for any of the {len(data)} images of split {split!r}; "
                        f"expected {LAYOUT}, e.g. {expected[0][0]}")
    matched = {p for files in found for p in files}
    orphans = sorted(p for p in present - matched if not _image_beside(p, folder / split, options, split, multi))
    if orphans:
        shown = ", ".join(str(p.relative_to(folder)) for p in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        log.warning("%d target maps in %s have no image in split %r: %s%s; name each after its image, %s",
                    len(orphans), folder / split, split, shown, more, LAYOUT)
    return found


def _image_beside(target: Path, split_folder: Path, options: DataOptions | None, split: str, multi: bool) -> bool:
    """Whether an image file of ``target``'s class and stem exists under the data root, at
    ``<root>/<split>/<class>/`` or (a split carved from one folder) ``<root>/<class>/``."""
    root = getattr(options, "root", None)
    if root is None:
        return False
    relative = target.relative_to(split_folder)
    stem = relative.stem.rsplit(".", 1)[0] if multi else relative.stem  # multi-task: <stem>.<attribute>.png
    return any((folder / (stem + e)).is_file()
               for folder in (Path(root) / split / relative.parent, Path(root) / relative.parent)
               for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper()))


def _box_files(data: ImageSet | FolderIndex, folder: Path, split: str, options: DataOptions | None,
               per_attribute: bool) -> list[TargetFiles]:
    """Each image's box file ``<stem>.xml`` anywhere under ``folder`` (None where there is none). Box files of
    other images are not reported: one box folder often serves several splits (ImageNet's)."""
    boxes = {p.stem: p for p in sorted(folder.rglob("*.xml"))}
    found = [(boxes.get(stem),) for stem in sample_stems(data)]
    if not any(f[0] for f in found):
        raise DataError(f"no box file in {folder} for any of the {len(data)} images of split {split!r}; "
                        f"expected <image stem>.xml (Pascal VOC), e.g. {sample_stems(data)[0]}.xml")
    return found


def _check(path: Path) -> None:
    """A target file that is not an image (or not a readable box file) stops the run before training starts."""
    if path.suffix.lower() == ".xml":
        read_voc_boxes(path)
        return
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise _not_an_image(path, err) from None


def _not_an_image(path: Path, err: Exception, role: str = "target map") -> DataError:
    return DataError(f"{role} {path} is not a readable image ({type(err).__name__}); save it as an 8-bit grey "
                     "PNG (white = attend) or remove it")


def guided_count(data: ImageSet | FolderIndex) -> int:
    """How many images of ``data`` have a target map (streamed: any target file; in memory: ``guided``)."""
    if isinstance(data, FolderIndex):
        return sum(any(p is not None for p in files) for files in data.target_paths)
    return int(data.guided.sum())


def _read_in_memory(data: ImageSet, found: list[TargetFiles]) -> Tensor:
    """uint8 targets (N, H, W), or (N, T, H, W) with one file per attribute, resized the way the images were."""
    n, (h, w) = len(data), data.image_size
    targets = torch.zeros(n, len(found[0]), h, w, dtype=torch.uint8)
    for i, files in enumerate(found):
        if not any(files):
            continue
        # A set decoded from files was resized from each file's own size; a generated one is at its size.
        size = image_file_size(data.paths[i]) if data.paths is not None else (w, h)
        for k, path in enumerate(files):
            if path is not None:
                targets[i, k] = read_target_map(path, size, h)
    return targets.squeeze(1) if len(found[0]) == 1 else targets


def read_target_map(path: Path, image_size: tuple[int, int], size: int, role: str = "target map") -> Tensor:
    """One target map file fitted to its image of ``image_size`` (width, height) as training reads it
    (:func:`~abnet.data.folder.read_target`), then resized and centre-cropped as the image is: uint8 (S, S).
    An unreadable file is a one-line :class:`DataError` naming it as ``role`` (a malformed box file's own)."""
    try:
        img = read_target(path, *image_size)
    except DataError:  # a malformed box file, named in the message
        raise
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _not_an_image(path, err, role) from None
    return torch.from_numpy(np.asarray(resize_center(img, size)).copy())


def image_file_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    with Image.open(path) as img:
        return img.size
