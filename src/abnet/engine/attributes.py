"""Per-attribute scores for multi-label (0/1 attribute) data: accuracy, balanced accuracy, pointing game.

A mean accuracy over attributes hides rare attributes (predicting "absent" scores well on them), so
each attribute also gets its balanced accuracy, and, where the data has one mask per attribute, a
pointing game of its own attention map, counted over the images where the attribute is present.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..metrics import pointing_game


class AttributeCounts:
    """Per-attribute counts summed over batches: prediction outcomes, and pointing-game hits where recorded."""

    def __init__(self, num_attributes: int):
        def zeros() -> Tensor:
            return torch.zeros(num_attributes, dtype=torch.int64)

        self.true_pos, self.true_neg, self.positives, self.negatives = zeros(), zeros(), zeros(), zeros()
        self.pointing_hits, self.pointing_images = zeros(), zeros()
        self.has_pointing = False  # whether add_pointing was called: the summary then reports the pointing game

    def add_predictions(self, logits: Tensor, targets: Tensor) -> None:
        """Count a batch of logits (N, T) against 0/1 targets (N, T); an attribute is predicted where its logit > 0."""
        predicted, true = (logits > 0).cpu(), (targets > 0.5).cpu()
        self.true_pos += (predicted & true).sum(0)
        self.true_neg += (~predicted & ~true).sum(0)
        self.positives += true.sum(0)
        self.negatives += (~true).sum(0)

    def add_pointing(self, maps: Tensor, masks: Tensor) -> None:
        """Count a batch's per-attribute pointing game (see :func:`attribute_pointing_game`)."""
        hits, images = attribute_pointing_game(maps.float().cpu(), masks.cpu())
        self.pointing_hits += hits
        self.pointing_images += images
        self.has_pointing = True


def attribute_pointing_game(maps: Tensor, masks: Tensor, tolerance: int | None = None) -> tuple[Tensor, Tensor]:
    """Per attribute, pointing-game hits and the number of images it was played on: (T,) and (T,) int64.

    maps: (N, T, h, w), attribute t's map in channel t, or (N, 1, h, w), one map shared by all attributes
    (a single-task ABN), scored against every attribute's mask: the baseline that per-attribute maps
    should beat, since one map points at one object only. masks: (N, T, H, W) bool. Image i counts for
    attribute t only where mask (i, t) is non-empty (the attribute is present); a hit is as in
    :func:`~abnet.metrics.pointing_game` (same ``tolerance``).
    """
    n, t, h, w = masks.shape
    if maps.dim() != 4 or maps.shape[0] != n or maps.shape[1] not in (1, t):
        raise ValueError(f"maps must be (N, {t}, h, w) or (N, 1, h, w) for masks {tuple(masks.shape)}, "
                         f"got {tuple(maps.shape)}")
    flat_maps = maps.expand(n, t, *maps.shape[2:]).reshape(n * t, 1, *maps.shape[2:])
    hit = pointing_game(flat_maps, masks.reshape(n * t, h, w), tolerance).view(n, t)
    present = masks.flatten(2).any(2)
    return (hit & present).sum(0), present.sum(0)


def attribute_metrics(counts: AttributeCounts, names: list[str]) -> dict[str, Any]:
    """Per-attribute scores (JSON-serialisable) from counts, keyed by attribute name, and their means.

    Returns ``attributes``: {name: {accuracy, balanced_accuracy, positive_rate[, pointing_game]}},
    ``mean_accuracy``, ``mean_balanced_accuracy`` and, where pointing was counted, ``pointing_game``
    (the mean over the attributes present in some image). Balanced accuracy is (TPR + TNR) / 2; for an
    attribute with no positives in the data it is the TNR alone, with no negatives the TPR alone. An
    attribute's pointing game is None where it is present in no image.
    """
    if len(names) != len(counts.positives):
        raise ValueError(f"{len(names)} attribute names for {len(counts.positives)} counted attributes")
    total = counts.positives + counts.negatives
    if (total == 0).any():
        raise ValueError("attribute_metrics() got counts of no samples")
    accuracy = (counts.true_pos + counts.true_neg) / total
    tpr = counts.true_pos / counts.positives.clamp_min(1)
    tnr = counts.true_neg / counts.negatives.clamp_min(1)
    balanced = torch.where(counts.positives == 0, tnr, torch.where(counts.negatives == 0, tpr, (tpr + tnr) / 2))
    rate = counts.positives / total
    per: dict[str, dict[str, float | None]] = {
        name: {"accuracy": a, "balanced_accuracy": b, "positive_rate": r}
        for name, a, b, r in zip(names, accuracy.tolist(), balanced.tolist(), rate.tolist())
    }
    result: dict[str, Any] = {"attributes": per, "mean_accuracy": accuracy.mean().item(),
                              "mean_balanced_accuracy": balanced.mean().item()}
    if counts.has_pointing:
        played = counts.pointing_images > 0
        scores = counts.pointing_hits / counts.pointing_images.clamp_min(1)
        for name, score, ok in zip(names, scores.tolist(), played.tolist()):
            per[name]["pointing_game"] = score if ok else None
        result["pointing_game"] = scores[played].mean().item() if played.any() else None
    return result
