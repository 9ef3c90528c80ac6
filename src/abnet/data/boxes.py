"""Object boxes in Pascal VOC XML (ImageNet's validation boxes use the same format), as masks aligned with
images resized the way abnet resizes them, so attention maps can be scored against boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError


def read_voc_boxes(path: str | Path) -> tuple[tuple[int, int] | None, list[tuple[float, float, float, float]]]:
    """The image size (width, height) the file states, if any, and its boxes (xmin, ymin, xmax, ymax) in pixels."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(f"{path} is not a readable Pascal VOC XML file ({err})") from None
    size = None
    try:
        stated = (int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0)))
    except ValueError:
        raise DataError(f"{path}: <size> holds a width or height that is not a number") from None
    if min(stated) > 0:  # an absent or zero size means "not stated"
        size = stated
    boxes = []
    for box in root.iter("bndbox"):
        try:
            boxes.append(tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        except (TypeError, ValueError):
            raise DataError(f"{path}: a <bndbox> lacks a number in xmin, ymin, xmax or ymax") from None
    if not boxes:
        raise DataError(f"{path} holds no <object><bndbox>: no box to score the map against")
    return size, boxes


def read_boxes(path: Path, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """The boxes of the VOC file ``path`` in the pixels of a ``width`` x ``height`` image: boxes drawn on another
    size of the same image (the size the file states) are scaled to it."""
    stated, boxes = read_voc_boxes(path)
    if stated is not None and stated != (width, height):
        sx, sy = width / stated[0], height / stated[1]  # 1-based inclusive: pixel x0 starts at x0 - 1
        boxes = [((x0 - 1) * sx + 1, (y0 - 1) * sy + 1, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]
    return boxes


def boxes_mask(boxes: list[tuple[float, float, float, float]], width: int, height: int, size: int) -> Tensor:
    """(size, size) bool mask of the boxes of a width x height image after abnet's resize (shorter side to
    ``size``, centre crop): a pixel is in when its centre lies in a box."""
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    # VOC boxes are 1-based and inclusive: pixel x0 .. x1, the span [x0 - 1, x1] of 0-based pixel edges.
    spans = [((x0 - 1) * new_w / width - left, (y0 - 1) * new_h / height - top,
              x1 * new_w / width - left, y1 * new_h / height - top) for x0, y0, x1, y1 in boxes]
    return _fill(spans, size, size)


def boxes_map(boxes: list[tuple[float, float, float, float]], width: int, height: int) -> Tensor:
    """(height, width) bool mask of the boxes on the image itself, before any resize."""
    return _fill([(x0 - 1, y0 - 1, x1, y1) for x0, y0, x1, y1 in boxes], width, height)


def _fill(spans: list[tuple[float, float, float, float]], width: int, height: int) -> Tensor:
    """(height, width) bool: the pixels whose centres lie in one of the spans (x0, y0, x1, y1), 0-based edges."""
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in spans:
        mask |= ((cy >= y0) & (cy <= y1)).view(-1, 1) & ((cx >= x0) & (cx <= x1)).view(1, -1)
    return mask
