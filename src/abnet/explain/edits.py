"""Edited attention maps at inference (Mitsuhara et al., arXiv 1905.03540): maps a person drew, read from a
folder and fed to an ABN's perception branch in place of its own, so that the prediction with them can be set
beside the model's own.

The folder has the layout of training targets (:func:`abnet.data.targets.target_file`):
``DIR/<split>/<class>/<stem>.png`` for a data set (``<stem>``: the image file's stem, or the image's index in
the split for a generated set; no ``<class>/`` for attribute data), ``DIR/<stem>.png`` for image files; a
multi-task model reads ``<stem>.<attribute>.png``. Maps are read as training reads them
(:func:`abnet.data.targets.read_target_map`), fitted to their stored image, then resized and cropped with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.base import ImageSet
from ..data.folder import FolderIndex
from ..data.images import Inputs
from ..data.targets import image_file_size, read_target_map, sample_stems, target_file, target_name
from ..engine.device import model_device
from ..engine.guidance import area_resize
from ..errors import AbnetError

log = logging.getLogger("abnet")

Place = tuple[list[Path], Path | None]  # one image's map files (one, or one per attribute) and its image file


@dataclass
class EditedMaps:
    """Edited maps aligned with a batch of inputs.

    maps:  uint8 (N, T, S, S), 255 = attend, at the input resolution (0 where none was given).
    found: bool (N, T), which maps were given; an image without any keeps its own map.
    """

    maps: Tensor
    found: Tensor


def data_edit_places(root: Path, data: ImageSet | FolderIndex, split: str,
                     attributes: Sequence[str] | None = None) -> list[Place]:
    """Where each image of a data set split finds its edited map(s) under ``root``; ``attributes``: the task
    names of a multi-task model (one map each)."""
    images = data.paths if data.paths is not None else [None] * len(data)
    single = data.labels.dim() == 1
    return [([target_file(root, split, stem, data.classes[int(label)] if single else None, a)
              for a in attributes or [None]], image)
            for stem, label, image in zip(sample_stems(data), data.labels, images)]


def file_edit_places(root: Path, files: Sequence[Path], attributes: Sequence[str] | None = None) -> list[Place]:
    """Each image file's edited map(s): ``root/<stem>.png`` (multi-task: ``root/<stem>.<attribute>.png``)."""
    return [([root / target_name(f.stem, a) for a in attributes or [None]], f) for f in files]


def require_abn(model: nn.Module, purpose: str) -> None:
    """Refuse a plain classifier for ``purpose`` (what the user asked for, e.g. ``editing attention maps``),
    which needs an ABN's attention map."""
    if not hasattr(model, "attention_branch"):
        raise AbnetError(f"{purpose} needs an ABN model; this checkpoint is a plain classifier without an attention "
                         "map: give an ABN checkpoint (a *_abn model)")


def map_attributes(model: nn.Module, classes: Sequence[str]) -> list[str] | None:
    """The names that tell an ABN's map files apart: a multi-task model's task names (``<stem>.<attribute>.png``,
    one map each), else None (one map, ``<stem>.png``)."""
    return list(classes) if getattr(model, "num_tasks", None) is not None else None


def readable_places(places: Sequence[Place], inputs: Inputs) -> list[Place]:
    """The places of the images ``inputs`` holds, in its order: ``places`` (for every image) less those of the
    files that could not be read."""
    failed = {name for name, _ in inputs.failures}
    kept = [place for place in places if place[1] is None or str(place[1]) not in failed]
    if len(kept) != len(inputs.images):
        raise ValueError(f"{len(places)} places for {len(inputs.images)} images and {len(failed)} failures")
    return kept


def read_edited_maps(root: Path, places: Sequence[Place], inputs: Inputs) -> EditedMaps:
    """The edited maps under ``root`` for ``inputs`` (``places`` as from :func:`data_edit_places` or
    :func:`file_edit_places`, for every image before unreadable ones were dropped). A map file that cannot be
    read is a :class:`DataError`; images without a map are named in one warning; no map for any image is an
    :class:`AbnetError`."""
    if not root.is_dir():
        raise AbnetError(f"--attention {root} is not a folder; give the folder of edited maps "
                         "(<split>/<class>/<stem>.png for a data set, <stem>.png for image files)")
    kept = readable_places(places, inputs)
    size = inputs.images.shape[-1]
    maps = torch.zeros(len(kept), len(places[0][0]) if places else 1, size, size, dtype=torch.uint8)
    found = torch.zeros(maps.shape[:2], dtype=torch.bool)
    for i, (files, image) in enumerate(kept):
        for t, path in enumerate(files):
            if path.is_file():
                fit = image_file_size(image) if image is not None else (size, size)
                maps[i, t] = read_target_map(path, fit, size, role="edited map")
                found[i, t] = True
    edited = found.any(1)
    if kept and not edited.any():
        raise AbnetError(f"no edited map in {root} for any of the {len(kept)} images; expected e.g. {kept[0][0][0]}")
    if not edited.all():
        names = [inputs.names[i] for i in (~edited).nonzero().flatten().tolist()]
        log.warning("%d of %d images have no edited map in %s (%s%s); they are shown with their own map only",
                    len(names), len(kept), root, ", ".join(names[:3]), ", ..." if len(names) > 3 else "")
    return EditedMaps(maps, found)


def predict_with_edits(model: nn.Module, x: Tensor, edits: EditedMaps, batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """An ABN's perception logits for ``x`` with its own maps and with the edited ones (resized to the map by
    area averaging; the own map where none was given), on the CPU in float32. Runs in eval mode and leaves
    the model in the mode it was in."""
    if getattr(model, "mask", None) == "none":
        log.warning("this model's perception branch does not read the map (mask mode none): edits change nothing")
    device = model_device(model)
    was_training = model.training
    model.eval()
    own, edited = [], []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(device)
                out = model(xb)
                given = area_resize(edits.maps[i:i + batch_size].to(device).float() / 255, out.attention.shape[-2:])
                found = edits.found[i:i + batch_size, :, None, None].to(device)
                maps = torch.where(found, given, out.attention.float())
                own.append(out.logits.float().cpu())
                edited.append(model(xb, attention=maps).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(own), torch.cat(edited)
