"""How good attention maps are: localisation against ground-truth masks, faithfulness by deletion and insertion.

Torch only, at the bottom of the package: evaluation (engine) and explanation (explain) both score maps.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _maps_at(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps at image resolution (N, H, W): (N, 1, h, w) maps are upsampled, (N, H, W) ones taken as they are."""
    if attention.dim() == 4:
        return upsample_maps(attention, size)
    if attention.dim() != 3 or tuple(attention.shape[1:]) != tuple(size):
        raise ValueError(f"maps must be (N, 1, h, w) or (N, {size[0]}, {size[1]}), got {tuple(attention.shape)}")
    return attention.float()


def iou_at_threshold(attention: Tensor, masks: Tensor, threshold: float = 0.5, normalize: bool = True) -> Tensor:
    """Per image, the IoU of the thresholded map (at image resolution) with the object mask.

    attention: (N, 1, h, w) maps (upsampled to the masks' size) or (N, H, W) maps already at that
    size; masks: (N, H, W) bool. With ``normalize`` each map is first min-max scaled to [0, 1], so
    the threshold is relative to its own range and maps of any scale (Grad-CAM's included) compare;
    a constant map then selects nothing. The selected region is ``map >= threshold``. Returns (N,)
    float; where both the region and the mask are empty the IoU is undefined and NaN (use nanmean).
    """
    maps = _maps_at(attention, tuple(masks.shape[1:]))
    if normalize:
        low = maps.flatten(1).amin(1).view(-1, 1, 1)
        span = maps.flatten(1).amax(1).view(-1, 1, 1) - low
        maps = torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    region = maps >= threshold
    masks = masks.bool()
    inter = (region & masks).flatten(1).sum(1).float()
    union = (region | masks).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.nan)


def gaussian_blur(images: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Blur (N, C, H, W) images with a separable Gaussian, edges replicated: RISE's insertion start (11 px, sigma 5)."""
    x = torch.arange(size, dtype=images.dtype, device=images.device) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    pad = size // 2
    out = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(out, kernel.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


@torch.no_grad()
def _probability_curve(
    predict: Callable[[Tensor], Tensor],
    start: Tensor,
    end: Tensor,
    order_rank: Tensor,
    counts: Tensor,
    targets: Tensor,
    batch_size: int,
) -> Tensor:
    """Target probability (N, S) when the ``counts[k]`` top-ranked pixels come from ``end`` and the rest from ``start``.

    All N * S inputs are built and evaluated in chunks of ``batch_size``, whatever image they belong to.
    """
    n, c, h, w = start.shape
    steps = len(counts)
    curve = torch.empty(n, steps, device=start.device)
    pairs = torch.arange(n * steps, device=start.device)
    for chunk in pairs.split(batch_size):
        i, k = chunk // steps, chunk % steps
        taken = (order_rank[i] < counts[k].unsqueeze(1)).view(-1, 1, h, w)
        probs = predict(torch.where(taken, end[i], start[i]))
        if probs.dim() != 2 or probs.shape[0] != len(chunk):
            raise ValueError(f"predict must return (B, K) probabilities, got {tuple(probs.shape)} for B={len(chunk)}")
        curve[i, k] = probs.gather(1, targets[i].view(-1, 1).to(probs.device)).squeeze(1).float().to(curve.device)
    return curve


def deletion_insertion_curves(
    predict: Callable[[Tensor], Tensor],
    images: Tensor,
    attention: Tensor,
    targets: Tensor,
    steps: int = 16,
    deletion_baseline: float | Tensor = 0.0,
    insertion_baseline: float | Tensor | None = None,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves (Petsiuk et al., RISE, 2018): (N, steps + 1) target probabilities each.

    predict: batch of model inputs (B, C, H, W) -> class probabilities (B, K), called under no_grad
    on at most ``batch_size`` inputs at a time; images: (N, C, H, W) model inputs (normalised);
    attention: (N, 1, h, w) maps (upsampled to the images) or (N, H, W) at image resolution;
    targets: (N,) class indices. Pixels (all channels at once) are ranked by decreasing map value,
    ties in pixel (row-major) order, and taken in ``steps`` equal chunks: point k covers the first
    ``k * H * W // steps`` pixels, from 0 % to 100 %. Deletion sets them to ``deletion_baseline``
    (default 0, the dataset's mean colour once normalised); insertion reveals them on top of
    ``insertion_baseline`` (default: the image blurred as in RISE, see ``gaussian_blur``).
    Baselines may be scalars or tensors broadcastable to ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n, _, h, w = images.shape
    maps = _maps_at(attention.to(images.device), (h, w)).flatten(1)
    order = maps.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(n, -1))
    counts = torch.arange(steps + 1, device=images.device) * (h * w) // steps
    removed = torch.as_tensor(deletion_baseline, dtype=images.dtype, device=images.device).expand_as(images)
    if insertion_baseline is None:
        hidden = gaussian_blur(images)
    else:
        hidden = torch.as_tensor(insertion_baseline, dtype=images.dtype, device=images.device).expand_as(images)
    targets = targets.to(images.device).long()
    deletion = _probability_curve(predict, images, removed, rank, counts, targets, batch_size)
    insertion = _probability_curve(predict, hidden, images, rank, counts, targets, batch_size)
    return deletion, insertion


def curve_auc(curves: Tensor) -> Tensor:
    """Area under (N, S) curves sampled at S equally spaced points over [0, 1]: the trapezoid mean, (N,)."""
    return torch.trapezoid(curves, dx=1 / (curves.shape[1] - 1), dim=1)


def deletion_insertion(
    predict: Callable[[Tensor], Tensor],
    images: Tensor,
    attention: Tensor,
    targets: Tensor,
    steps: int = 16,
    deletion_baseline: float | Tensor = 0.0,
    insertion_baseline: float | Tensor | None = None,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion AUCs (N,) each, in [0, 1]: low deletion and high insertion mean a faithful map.

    The areas under ``deletion_insertion_curves`` (same arguments), as trapezoid means over the steps.
    """
    deletion, insertion = deletion_insertion_curves(
        predict, images, attention, targets, steps, deletion_baseline, insertion_baseline, batch_size
    )
    return curve_auc(deletion), curve_auc(insertion)
