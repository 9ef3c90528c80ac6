"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016) as the ABN research code builds them.

WRN-d-k, depth d = 6n + 4: a 3x3 stem with 16 channels, then three stages of n pre-activation
blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3) with 16k, 32k and 64k channels (strides 1, 2, 2),
a final BN-ReLU, global average pooling and a linear classifier. Where a block changes the shape
its shortcut is a bare 1x1 conv that reads the pre-activated input. WRN-28-10 with dropout 0.3 is
the paper's CIFAR model (36.5M parameters for 10 classes).

The ABN cut: stem + stages 1-2 are the feature extractor (16x16 for a 32x32 input); the
attention branch repeats stage 3 with stride 1, so the attention map is 16x16; the perception
branch is stage 3 (stride 2), the final BN-ReLU, global average pooling and the classifier.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .common import ClassifierHead, init_weights
from .registry import register_pair


class WideBlock(nn.Module):
    """A pre-activation basic block with dropout between its two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False) if changes_shape else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        # An identity shortcut carries the raw input; a projection reads the pre-activated one.
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.dropout(self.relu(self.bn2(self.conv1(pre))))
        return self.conv2(out) + shortcut


def make_stage(in_channels: int, out_channels: int, n: int, stride: int, dropout: float) -> nn.Sequential:
    """n wide blocks; the first one changes stride and width."""
    layers = [WideBlock(in_channels, out_channels, stride, dropout)]
    layers += [WideBlock(out_channels, out_channels, 1, dropout) for _ in range(n - 1)]
    return nn.Sequential(*layers)


def wide_resnet_split(depth: int, widen: int, dropout: float, num_classes: int, attention: bool) -> BackboneSplit:
    """The ABN cut of WRN-``depth``-``widen`` (depth = 6n + 4) with the given dropout rate."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a Wide ResNet needs depth = 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    if widen < 1:
        raise ValueError(f"widen must be >= 1, got {widen}")
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    features = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        layer1=make_stage(16, widths[0], n, 1, dropout),
        layer2=make_stage(widths[0], widths[1], n, 2, dropout),
    ))
    last = nn.Sequential(
        make_stage(widths[1], widths[2], n, 2, dropout), nn.BatchNorm2d(widths[2]), nn.ReLU(inplace=True)
    )
    perception = ClassifierHead(last, widths[2], num_classes)
    att_stage = make_stage(widths[1], widths[2], n, 1, dropout) if attention else None
    for part in (features, perception, att_stage):
        if part is not None:
            part.apply(init_weights)
    return BackboneSplit(features, perception, att_stage, widths[2])


register_pair("wrn28_10", partial(wide_resnet_split, depth=28, widen=10, dropout=0.3))
