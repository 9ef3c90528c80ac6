"""Evaluation of both branches, and attention localisation where the data has object masks; per-attribute
scores for multi-label data."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..data.folder import FolderLoader
from ..data.loader import InMemoryLoader
from ..metrics import pointing_game
from ..models import ABNOutput, abn_loss, classification_loss, perception_logits
from .attributes import AttributeCounts, attribute_metrics


def model_loss(
    output: ABNOutput | Tensor, target: Tensor, pos_weight: Tensor | None = None, label_smoothing: float = 0.0
) -> Tensor:
    """ABN loss (both branches) for an ABN, the plain classification loss for a baseline; ``pos_weight``
    (T,) weighs attributes' positives (0/1 targets only), ``label_smoothing`` smooths class-index targets."""
    if isinstance(output, ABNOutput):
        return abn_loss(output, target, pos_weight=pos_weight, label_smoothing=label_smoothing)
    return classification_loss(output, target, pos_weight, label_smoothing)


def flip_averaged(model: nn.Module, images: Tensor, flip: bool = True) -> ABNOutput | Tensor:
    """The model's output on ``images``; with ``flip``, both branches' logits averaged with those of the mirror
    images (test-time augmentation; the attention map stays the unmirrored image's)."""
    output = _fp32(model(images))
    if not flip:
        return output
    mirrored = _fp32(model(images.flip(3)))
    if isinstance(output, ABNOutput):
        return output._replace(logits=(output.logits + mirrored.logits) / 2,
                               att_logits=(output.att_logits + mirrored.att_logits) / 2)
    return (output + mirrored) / 2


def _fp32(output: ABNOutput | Tensor) -> ABNOutput | Tensor:
    """A forward pass's outputs in fp32 (autocast leaves them in bf16 or fp16), so that losses and averages are
    computed at full precision."""
    if isinstance(output, ABNOutput):
        return ABNOutput(*(t.float() for t in output))
    return output.float()


def correct(logits: Tensor, target: Tensor) -> float:
    """Correct predictions in a batch: top-1 hits, or for 0/1 attributes the mean share right per image."""
    if target.is_floating_point():
        return ((logits > 0) == (target > 0.5)).float().mean(1).sum().item()
    return (logits.argmax(1) == target).sum().item()


def class_names(loader: InMemoryLoader | FolderLoader) -> list[str]:
    """The class (or attribute) names of the data set a loader reads."""
    return (loader.data if isinstance(loader, InMemoryLoader) else loader.index).classes


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: InMemoryLoader | FolderLoader, flip: bool = False, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Top-1 accuracy of the perception branch (``accuracy``) and attention branch (``att_accuracy``,
    None for a plain model; for 0/1 attributes, the mean accuracy over attributes), mean ``loss`` (the
    training loss), ``n``, and ``pointing_game`` when the data has object masks and the model makes
    attention maps. ``flip``: test-time augmentation, the logits averaged over each image and its mirror image
    (the map and pointing game stay the unmirrored image's). ``dtype``: run the model under bf16 or fp16 autocast
    (the training loop evaluates in the precision it trains in: on a CPU with native bf16 that is 3x faster);
    None evaluates in fp32, as ``abnet eval`` does.

    For 0/1 attributes (float labels (N, T)) also ``attributes`` ({name: {accuracy, balanced_accuracy,
    positive_rate}} of the perception branch) and ``mean_balanced_accuracy``. With one mask per attribute
    (N, T, H, W), each attribute also gets a ``pointing_game`` over the images where it is present, and
    ``pointing_game`` is their mean; a model with one map (N, 1, h, w) has that map scored against every
    attribute's mask (see :func:`~abnet.engine.attributes.attribute_pointing_game`).
    """
    was_training = model.training
    model.eval()
    n = hits_per = att_hits = hits = 0
    has_masks = False
    loss_sum = 0.0
    is_abn = False
    attributes: AttributeCounts | None = None
    device = next(model.parameters()).device
    for batch in loader.epoch():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = flip_averaged(model, batch.images.to(device), flip)
        y = batch.labels.to(device)
        loss_sum += model_loss(out, y).item() * len(y)
        n += len(y)
        logits = perception_logits(out)
        if y.is_floating_point():
            if attributes is None:
                attributes = AttributeCounts(y.shape[1])
            attributes.add_predictions(logits, y)
        hits_per += correct(logits, y)
        if isinstance(out, ABNOutput):
            is_abn = True
            att_hits += correct(out.att_logits, y)
            if batch.masks is not None and batch.masks.dim() == 4:  # one mask per attribute
                attributes.add_pointing(out.attention.float().cpu(), batch.masks)
            elif batch.masks is not None:
                has_masks = True
                hits += pointing_game(out.attention.float().cpu(), batch.masks).sum().item()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty data set")
    result: dict[str, Any] = {
        "accuracy": hits_per / n,
        "att_accuracy": att_hits / n if is_abn else None,
        "loss": loss_sum / n,
        "n": n,
    }
    if is_abn and has_masks:
        result["pointing_game"] = hits / n
    if attributes is not None:
        scores = attribute_metrics(attributes, class_names(loader))
        result["attributes"] = scores["attributes"]
        result["mean_balanced_accuracy"] = scores["mean_balanced_accuracy"]
        if "pointing_game" in scores:
            result["pointing_game"] = scores["pointing_game"]
    return result
