"""How well attention maps localise the object: measured against ground-truth masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_maps(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Attention maps (N, 1, h, w) -> (N, H, W), bilinearly resized to the image size."""
    return F.interpolate(attention.float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


def pointing_game(attention: Tensor, masks: Tensor, tolerance: int | None = None) -> Tensor:
    """Per image, whether the map's maximum (at image resolution) falls on the object.

    attention: (N, 1, h, w) maps; masks: (N, H, W) bool. A hit is an object pixel within
    ``tolerance`` pixels (in x and y) of the maximum; by default 15 pixels per 224, the margin of
    the original pointing game (Zhang et al., 2016), i.e. 2 pixels for a 32x32 image. Returns (N,)
    bool; its mean is the pointing-game score.
    """
    size = tuple(masks.shape[1:])
    if tolerance is None:
        tolerance = round(15 / 224 * max(size))
    maps = upsample_maps(attention, size)
    peak = maps.flatten(1).argmax(1)
    target = masks.float().unsqueeze(1)
    if tolerance > 0:
        target = F.max_pool2d(target, 2 * tolerance + 1, stride=1, padding=tolerance)
    return target.flatten(1).gather(1, peak.view(-1, 1)).squeeze(1) > 0


def energy_in_mask(attention: Tensor, masks: Tensor) -> Tensor:
    """Per image, the share of the map's total mass (at image resolution) that lies on the object."""
    maps = upsample_maps(attention, tuple(masks.shape[1:]))
    total = maps.flatten(1).sum(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps * masks).flatten(1).sum(1) / total
