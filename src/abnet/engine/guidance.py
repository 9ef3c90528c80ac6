"""Losses that guide where a model looks, given target maps (1 = attend) for some of the images.

``map_loss`` compares an ABN's attention map with the target; ``rrr_loss`` penalises a plain model's input
gradients outside it. Both count only the guided images and are computed in float32, also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import perception_logits

MAP_LOSSES = ("l2", "energy", "bce", "rrr")
_EPS = 1e-6


def area_resize(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """(N, C, H, W) maps to (N, C, *size) in float32 by area averaging (a pixel's share of the target)."""
    maps = maps.float()
    return maps if tuple(maps.shape[-2:]) == tuple(size) else F.interpolate(maps, size=tuple(size), mode="area")


def map_loss(attention: Tensor, targets: Tensor, guided: Tensor, kind: str) -> Tensor:
    """The distance of attention maps (N, T, h, w) in [0, 1] from target maps (N, 1 or T, H, W) in [0, 1],
    averaged over the images where ``guided`` (N,) is true; 0 (still part of the graph) when none is.

    ``kind``: ``l2``, the mean squared difference (Mitsuhara et al., arXiv 1905.03540); ``energy``, one minus
    the share of the map's mass inside the target (Rao et al., ICCV 2023); ``bce``, binary cross-entropy less
    the target's own entropy, so that it is 0 for a map equal to a soft target too. Targets are resized to
    the map by area averaging; one target map serves all T maps of a multi-task model.
    """
    if kind not in MAP_LOSSES or kind == "rrr":
        hint = "; rrr is rrr_loss, for plain models" if kind == "rrr" else ""
        raise ValueError(f"unknown map loss {kind!r}; choose from l2, energy, bce{hint}")
    if targets.dim() != 4 or targets.shape[1] not in (1, attention.shape[1]) or len(targets) != len(attention):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not fit attention maps of shape "
                         f"{tuple(attention.shape)}; expected (N, 1 or T, H, W)")
    with torch.autocast(attention.device.type, enabled=False):
        m = attention.float()
        t = area_resize(targets.to(m.device), m.shape[-2:]).expand_as(m)
        if kind == "l2":
            per_map = (m - t).pow(2).mean((2, 3))
        elif kind == "energy":
            per_map = 1 - (m * t).sum((2, 3)) / (m.sum((2, 3)) + _EPS)
        else:
            own_entropy = F.binary_cross_entropy(t, t, reduction="none")
            per_map = (F.binary_cross_entropy(m, t, reduction="none") - own_entropy).mean((2, 3))
        weight = guided.to(m.device, torch.float32)
        return (per_map.mean(1) * weight).sum() / weight.sum().clamp_min(1)


def rrr_loss(model: nn.Module, x: Tensor, y: Tensor, targets: Tensor, guided: Tensor) -> Tensor:
    """Right for the Right Reasons (Ross et al., IJCAI 2017): the squared input gradients of the summed
    log-probabilities outside the target (1 - target at the input's resolution), summed over each image,
    averaged over the guided images; built with ``create_graph=True``, so that it trains.

    Runs its own forward pass, on the guided images only (the unguided ones cost nothing); ``y`` tells class
    indices (log-softmax) from 0/1 attributes (log-sigmoid). 0 when no image is guided.
    """
    guided = guided.to(x.device)
    if not guided.any():
        return x.new_zeros((), dtype=torch.float32)
    inputs = x[guided].detach().requires_grad_(True)
    logits = perception_logits(model(inputs)).float()
    log_p = F.logsigmoid(logits) if y.is_floating_point() else F.log_softmax(logits, 1)
    (grad,) = torch.autograd.grad(log_p.sum(), inputs, create_graph=True)
    with torch.autocast(x.device.type, enabled=False):
        target = targets[guided.to(targets.device)].to(x.device).amax(1, keepdim=True)  # any task's target
        outside = 1 - area_resize(target, inputs.shape[-2:])
        return (outside * grad.float()).pow(2).sum((1, 2, 3)).mean()
