"""Evaluation of both branches, and attention localisation where the data has object masks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.folder import FolderLoader
from ..data.loader import InMemoryLoader
from ..explain.metrics import pointing_game
from ..models import ABNOutput, abn_loss


def model_loss(output: ABNOutput | Tensor, target: Tensor) -> Tensor:
    """ABN loss (both branches' cross-entropy) for an ABN, plain cross-entropy for a baseline."""
    return abn_loss(output, target) if isinstance(output, ABNOutput) else F.cross_entropy(output, target)


@torch.no_grad()
def evaluate(model: nn.Module, loader: InMemoryLoader | FolderLoader) -> dict[str, Any]:
    """Top-1 accuracy of the perception branch (``accuracy``) and attention branch (``att_accuracy``,
    None for a plain model), mean ``loss`` (the training loss), ``n``, and ``pointing_game`` when the
    data has object masks and the model makes attention maps."""
    was_training = model.training
    model.eval()
    n = correct = att_correct = hits = 0
    has_masks = False
    loss_sum = 0.0
    is_abn = False
    for batch in loader.epoch():
        out = model(batch.images)
        y = batch.labels
        loss_sum += model_loss(out, y).item() * len(y)
        n += len(y)
        if isinstance(out, ABNOutput):
            is_abn = True
            correct += (out.logits.argmax(1) == y).sum().item()
            att_correct += (out.att_logits.argmax(1) == y).sum().item()
            if batch.masks is not None:
                has_masks = True
                hits += pointing_game(out.attention, batch.masks).sum().item()
        else:
            correct += (out.argmax(1) == y).sum().item()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty data set")
    result: dict[str, Any] = {
        "accuracy": correct / n,
        "att_accuracy": att_correct / n if is_abn else None,
        "loss": loss_sum / n,
        "n": n,
    }
    if is_abn and has_masks:
        result["pointing_game"] = hits / n
    return result
