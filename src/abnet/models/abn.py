"""The Attention Branch Network (Fukui et al., CVPR 2019) in one module.

A CNN is cut in three. The *feature extractor* gives g(x). The *attention branch* repeats the
last stage(s) without down-sampling and turns them into K class-evidence maps; from these one
head makes the attention logits (1x1 conv, global average pool) and the other the attention map
M(x) (conv to one channel, BN, sigmoid). The *perception branch* (the remaining stages and the
classifier) reads g(x) masked by M(x). Both branches are trained with cross-entropy.

A backbone family only *provides* the three parts as a :class:`BackboneSplit`; :class:`ABN`
builds the attention branch and the masking, so no family re-implements them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import init_weights
from .hub import PretrainedMixin

MASK_MODES = ("residual", "multiply", "none")


class ABNOutput(NamedTuple):
    """What an ABN forward pass returns; unpacks like a tuple, reads by name.

    logits:     (N, K) perception branch, the prediction to use.
    att_logits: (N, K) attention branch.
    attention:  (N, T, h, w) attention map(s) in [0, 1] at the attention branch's resolution
                (T = 1 for a single-task model).
    """

    logits: Tensor
    att_logits: Tensor
    attention: Tensor


@dataclass
class BackboneSplit:
    """The three parts a backbone family provides.

    features:           x -> g(x), the first stages.
    perception:         masked g(x) -> logits, the remaining stages and the classifier.
    attention_stage:    the stage(s) the attention branch repeats, built without down-sampling
                        (None when only the plain network is built).
    attention_channels: channels that ``attention_stage`` outputs.
    """

    features: nn.Module
    perception: nn.Module
    attention_stage: nn.Module | None
    attention_channels: int


class AttentionBranch(nn.Module):
    """Repeated stage -> BN -> 1x1 conv to K -> BN -> ReLU, then two heads.

    The logit head is a 1x1 conv K->K and a global average pool; the map head a conv to
    ``num_maps`` channels (``map_kernel`` x ``map_kernel``: 3 in the research code, 1 in the paper's
    figure), BN and a sigmoid. ``num_maps`` is 1, or one map per task in a multi-task ABN.
    """

    def __init__(self, stage: nn.Module, in_channels: int, num_classes: int, map_kernel: int = 3, num_maps: int = 1):
        super().__init__()
        if map_kernel < 1 or map_kernel % 2 == 0:
            raise ValueError(f"map_kernel must be a positive odd number, got {map_kernel}")
        self.stage = stage
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, num_classes, 1, bias=False)
        self.bn_class = nn.BatchNorm2d(num_classes)
        self.logit_conv = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.map_conv = nn.Conv2d(num_classes, num_maps, map_kernel, padding=map_kernel // 2, bias=False)
        self.map_bn = nn.BatchNorm2d(num_maps)
        for layer in (self.bn, self.conv, self.bn_class, self.logit_conv, self.map_conv, self.map_bn):
            init_weights(layer)
        # The map starts as a positive mix of the class-evidence maps ("evidence for some class here"),
        # where the research code draws signs at random. Same architecture and parameters; on `shapes` it
        # lifts the pointing game of a short run from ~0.7 to ~0.96 (results/shapes_study.md).
        # With one map per task, map t starts from task t's evidence alone, so the maps start apart.
        with torch.no_grad():
            self.map_conv.weight.abs_()
            if num_maps > 1:
                self.map_conv.weight.mul_(torch.eye(num_maps, num_classes).view(num_maps, num_classes, 1, 1))

    def forward(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (attention logits (N, K), attention maps (N, num_maps, h, w) in [0, 1])."""
        evidence = F.relu(self.bn_class(self.conv(self.bn(self.stage(g)))))
        att_logits = self.logit_conv(evidence).mean((2, 3))
        attention = torch.sigmoid(self.map_bn(self.map_conv(evidence)))
        return att_logits, attention


def apply_mask(g: Tensor, attention: Tensor, mode: str) -> Tensor:
    """What the perception branch reads: g(1+M) (``residual``), gM (``multiply``) or g (``none``)."""
    if mode == "residual":
        return g * (1 + attention)
    if mode == "multiply":
        return g * attention
    if mode == "none":
        return g
    raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")


class ABN(PretrainedMixin, nn.Module):
    """An Attention Branch Network around the parts a backbone family provides.

    ``model(x)`` returns an :class:`ABNOutput`; ``model(x, attention=M)`` makes the perception
    branch read the given map M (shape (N, 1, h, w), or anything that broadcasts to it) instead
    of the computed one, for editing and ablations. The three parts are the attributes
    ``features``, ``attention_branch`` and ``perception`` (hook points, e.g. for Grad-CAM).
    """

    def __init__(self, split: BackboneSplit, num_classes: int, mask: str = "residual", map_kernel: int = 3,
                 num_maps: int = 1):
        super().__init__()
        if mask not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mask!r}; choose one of {', '.join(MASK_MODES)}")
        if split.attention_stage is None:
            raise ValueError("the backbone split has no attention_stage; build it with attention=True")
        self.mask = mask
        self.num_classes = num_classes
        self.features = split.features
        self.attention_branch = AttentionBranch(
            split.attention_stage, split.attention_channels, num_classes, map_kernel, num_maps
        )
        self.perception = split.perception

    def forward(self, x: Tensor, attention: Tensor | None = None) -> ABNOutput:
        with _input_size_check(self, x):
            return self._forward(x, attention)

    def _forward(self, x: Tensor, attention: Tensor | None) -> ABNOutput:
        g = self.features(x)
        att_logits, computed = self.attention_branch(g)
        if attention is None:
            attention = computed
        else:
            attention = _as_map(attention, computed.shape).to(dtype=g.dtype)
        return ABNOutput(self._perceive(g, attention), att_logits, attention)

    def _perceive(self, g: Tensor, attention: Tensor) -> Tensor:
        """The perception branch's logits for features g masked by the map(s)."""
        return self.perception(apply_mask(g, attention, self.mask))


def _as_map(attention: Tensor, shape: torch.Size) -> Tensor:
    """A user-given map, (N, T, h, w), (N, h, w) or (h, w), broadcast to the computed map's shape (N, T, h, w)."""
    if attention.dim() == 3:
        attention = attention.unsqueeze(1)
    try:
        return attention.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"attention of shape {tuple(attention.shape)} does not fit this model's map shape "
            f"{tuple(shape)}; pass a map of the attention branch's size (N, {shape[1]}, h, w)"
        ) from None


class Classifier(PretrainedMixin, nn.Module):
    """The plain baseline: the same feature extractor and head, no attention branch.

    Returns logits; ``features`` and ``head`` are the hook points.
    """

    def __init__(self, split: BackboneSplit):
        super().__init__()
        self.features = split.features
        self.head = split.perception

    def forward(self, x: Tensor) -> Tensor:
        with _input_size_check(self, x):
            return self.head(self.features(x))


@contextmanager
def _input_size_check(model: nn.Module, x: Tensor):
    """Turn PyTorch's error for an input that pools down to nothing into one naming the model and the size."""
    try:
        yield
    except RuntimeError as err:
        if "too small" not in str(err) and "greater than actual input size" not in str(err):
            raise
        name = getattr(model, "abnet_config", {}).get("model", type(model).__name__)
        raise ValueError(f"an input of {x.shape[-2]}x{x.shape[-1]} pixels is too small for {name}: its feature maps "
                         "shrink to nothing; use larger images (its default: abnet.models.model_info(name))") from None


def perception_logits(output: ABNOutput | Tensor) -> Tensor:
    """The prediction in a model's output: an ABN's perception logits, or a plain model's logits."""
    return output.logits if isinstance(output, ABNOutput) else output


def probabilities(logits: Tensor, multi_label: bool) -> Tensor:
    """Class probabilities over the last dimension, in float32: a softmax, or a sigmoid per attribute (the
    counterpart of :func:`classification_loss`)."""
    return logits.float().sigmoid() if multi_label else logits.float().softmax(-1)


def classification_loss(
    logits: Tensor, target: Tensor, pos_weight: Tensor | None = None, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy for class indices (N,), with optional label smoothing; binary cross-entropy per attribute
    for 0/1 targets (N, T).

    ``pos_weight`` (T,) scales each attribute's positive term (see :func:`balanced_pos_weight`); it
    applies to 0/1 targets only, as ``label_smoothing`` applies to class indices only.
    """
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    if pos_weight is not None:
        raise ValueError("pos_weight applies to 0/1 attribute targets (float, (N, T)), not to class indices")
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def abn_loss(
    output: ABNOutput, target: Tensor, att_weight: float = 1.0, pos_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """ABN's training loss: the attention branch's loss * att_weight + the perception branch's.

    Cross-entropy for class indices; for multi-label 0/1 targets (N, T), e.g. CelebA's attributes,
    binary cross-entropy per attribute (also the loss of a multi-task ABN), with the optional
    per-attribute ``pos_weight`` (T,) on both branches.
    """
    return (att_weight * classification_loss(output.att_logits, target, pos_weight, label_smoothing)
            + classification_loss(output.logits, target, pos_weight, label_smoothing))


def balanced_pos_weight(labels: Tensor, low: float = 0.1, high: float = 10.0) -> Tensor:
    """Per-attribute ``pos_weight`` (T,) = negatives / positives in 0/1 ``labels`` (N, T), clamped to [low, high].

    With it, binary cross-entropy weighs an attribute's positives and negatives alike, so that rare
    attributes (CelebA's Bald: ~2% positive) are not learnt as "always no"; the clamp keeps an attribute
    with (almost) no positives or negatives in the training labels from dominating the loss.
    """
    if labels.dim() != 2 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty (N, T) 0/1 tensor, got shape {tuple(labels.shape)}")
    positives = (labels > 0.5).sum(0).float()
    return ((len(labels) - positives) / positives).clamp(low, high)
