"""`abnet predict`: batch inference for pipelines, one JSON line per image and optionally its attention map(s)
as 8-bit PNGs at the image's own size.

Streams: images are read, predicted and written one batch at a time, so memory stays bounded on any folder.
Each image is resized to the model's input size as ``abnet explain`` does (shorter side, centre crop).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.images import UnreadableImageFile, image_files, read_resized
from ..errors import AbnetError
from ..fileio import atomic_write
from ..models.abn import probabilities
from .info import ExportInfo
from .runtime import Predictor


@dataclass
class PredictSummary:
    """What a run did: images predicted, map files written, files that could not be read (path, reason)."""

    images: int = 0
    maps: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Item:
    path: Path
    map_stem: Path  # where its map goes, relative to the maps folder, without the suffix
    size: tuple[int, int] = (0, 0)  # (width, height) of the file


def predict_files(predictor: Predictor, inputs: Sequence[str | Path], out: str | Path,
                  maps: str | Path | None = None, top_k: int = 3, batch_size: int = 32,
                  progress: bool = True) -> PredictSummary:
    """Predict every image file named in ``inputs`` (files, or folders searched recursively) into the JSON-lines
    file ``out``, written atomically at the end; with ``maps``, each image's attention map(s) as PNGs there.

    Unreadable files are skipped and listed in the summary; if none can be read nothing is written and an
    :class:`~abnet.errors.AbnetError` is raised.
    """
    if maps is not None and not predictor.info.is_abn:
        raise AbnetError(f"--maps needs an ABN model; {predictor.info.model} is a plain classifier without a map")
    items = _items(inputs)
    summary = PredictSummary()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    maps_dir = None if maps is None else Path(maps)

    def write(tmp: str) -> None:
        from tqdm import tqdm

        with open(tmp, "w") as f, tqdm(total=len(items), unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                batch, images = _read(chunk, predictor.info.image_size[0], summary.failures)
                if batch:
                    _predict_batch(predictor, batch, images, f, maps_dir, top_k, summary)
                bar.update(len(chunk))
        if summary.images == 0:
            raise AbnetError("none of the images could be read: "
                             + "; ".join(f"{p}: {r}" for p, r in summary.failures[:3]))

    atomic_write(out, write)
    return summary


def _items(inputs: Sequence[str | Path]) -> list[_Item]:
    """The image files of ``inputs``, each with a distinct map name: its path below the folder given, or its
    file name, with ``-2``, ``-3``, ... where two would collide."""
    items, used = [], set()
    for given in map(Path, inputs):
        for path in image_files([given]):
            stem = path.relative_to(given).with_suffix("") if given.is_dir() else Path(path.stem)
            name, n = stem, 1
            while name in used:
                n += 1
                name = stem.with_name(f"{stem.name}-{n}")
            used.add(name)
            items.append(_Item(path, name))
    return items


def _read(chunk: list[_Item], size: int, failures: list[tuple[str, str]]) -> tuple[list[_Item], Tensor]:
    """The readable items of ``chunk`` and their images, resized to uint8 (N, 3, size, size); the others go to
    ``failures``."""
    kept, images = [], []
    for item in chunk:
        try:
            image, item.size = read_resized(item.path, size)
        except UnreadableImageFile as err:
            failures.append((str(item.path), str(err)))
            continue
        images.append(image)
        kept.append(item)
    return kept, torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def _predict_batch(predictor: Predictor, batch: list[_Item], images: Tensor, f: IO[str], maps_dir: Path | None,
                   top_k: int, summary: PredictSummary) -> None:
    info = predictor.info
    out = predictor(images)
    perception = probabilities(out["logits"], info.multi_label)
    attention = probabilities(out["att_logits"], info.multi_label) if info.is_abn else None
    for i, item in enumerate(batch):
        record: dict[str, Any] = {"path": str(item.path), "width": item.size[0], "height": item.size[1],
                                  "perception": _ranked(perception[i], info, top_k)}
        if attention is not None:
            record["attention_branch"] = _ranked(attention[i], info, top_k)
        if maps_dir is not None:
            record.update(_write_maps(out["attention"][i], item, info, maps_dir))
            summary.maps += out["attention"].shape[1]
        f.write(json.dumps(record) + "\n")
    summary.images += len(batch)


def _ranked(probabilities: Tensor, info: ExportInfo, top_k: int) -> list[dict[str, Any]] | dict[str, float]:
    """The top-k classes with their probabilities; for attributes every attribute's probability, in order."""
    if info.multi_label:
        return dict(zip(info.classes, probabilities.tolist()))
    values, index = probabilities.topk(min(top_k, len(info.classes)))
    return [{"class": info.classes[c], "probability": p} for c, p in zip(index.tolist(), values.tolist())]


def _write_maps(attention: Tensor, item: _Item, info: ExportInfo, maps_dir: Path) -> dict[str, Any]:
    """Write the map(s) (T, h, w) of one image; returns the JSON fields naming the files."""
    files = []
    for t in range(attention.shape[0]):
        suffix = "" if attention.shape[0] == 1 else "_" + re.sub(r"[^A-Za-z0-9_.-]", "_", info.classes[t])
        path = maps_dir / item.map_stem.with_name(item.map_stem.name + suffix + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = Image.fromarray(map_at_image_size(attention[t], item.size))
        atomic_write(path, lambda tmp, img=gray: img.save(tmp, format="PNG"))
        files.append(str(path))
    return {"map": files[0]} if len(files) == 1 else {"maps": dict(zip(info.classes, files))}


def map_at_image_size(attention: Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """One map (h, w) in [0, 1] of an image of ``image_size`` (width, height), which the model saw as its centre
    square (see ``resize_center``), as uint8 (height, width): bilinearly resized onto that square, 0 outside it."""
    width, height = image_size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = F.interpolate(attention.float()[None, None], size=(side, side), mode="bilinear", align_corners=False)
    canvas = np.zeros((height, width), dtype=np.uint8)
    canvas[top:top + side, left:left + side] = (square[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return canvas
