"""DenseNet-BC for CIFAR (Huang et al., CVPR 2017) as the ABN research code builds it.

Depth L = 6n + 4 with growth rate k: a 3x3 stem with 2k channels, then three dense blocks of n
bottleneck layers (BN-ReLU-conv1x1 to 4k-BN-ReLU-conv3x3 to k, output concatenated to the input)
joined by transitions (BN-ReLU-conv1x1 that keeps ``compression`` of the channels, 2x2 average
pooling), and a final BN-ReLU, global average pooling and a linear classifier.
DenseNet-BC-100 (k = 12) has 0.8M parameters, DenseNet-BC-190 (k = 40) 25.6M (10 classes).

The ABN cut: stem + block 1 + transition 1 + block 2 + transition 2 are the feature extractor,
so g(x) is already 8x8 for a 32x32 input (as in the research code, the second transition stays
in the extractor; a dense block never down-samples). The attention branch repeats block 3, and
the attention map is 8x8. The perception branch is block 3, the final BN-ReLU, global average
pooling and the classifier.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
from torch import Tensor, nn

from .abn import BackboneSplit
from .common import ClassifierHead, init_weights
from .registry import register_pair


class DenseLayer(nn.Module):
    """A bottleneck layer that appends ``growth`` new channels to its input."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to fewer channels, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


def dense_block(in_channels: int, growth: int, n: int) -> nn.Sequential:
    """n dense layers; the block outputs ``in_channels + n * growth`` channels."""
    return nn.Sequential(*(DenseLayer(in_channels + i * growth, growth) for i in range(n)))


def densenet_split(
    depth: int, growth: int, num_classes: int, attention: bool, compression: float = 0.5
) -> BackboneSplit:
    """The ABN cut of DenseNet-BC with the given depth (6n + 4), growth rate and compression."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a DenseNet-BC needs depth = 6n + 4 with n >= 1 (10, 16, ..., 100, ..., 190), got {depth}")
    if not 0 < compression <= 1:
        raise ValueError(f"compression must be in (0, 1], got {compression}")
    n = (depth - 4) // 6
    stem_channels = 2 * growth
    block1_out = stem_channels + n * growth
    trans1_out = math.floor(block1_out * compression)
    block2_out = trans1_out + n * growth
    trans2_out = math.floor(block2_out * compression)
    channels = trans2_out + n * growth
    features = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, stem_channels, 3, 1, 1, bias=False),
        block1=dense_block(stem_channels, growth, n),
        trans1=Transition(block1_out, trans1_out),
        block2=dense_block(trans1_out, growth, n),
        trans2=Transition(block2_out, trans2_out),
    ))
    last = nn.Sequential(dense_block(trans2_out, growth, n), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
    perception = ClassifierHead(last, channels, num_classes)
    att_stage = dense_block(trans2_out, growth, n) if attention else None
    for part in (features, perception, att_stage):
        if part is not None:
            part.apply(init_weights)
    return BackboneSplit(features, perception, att_stage, channels)


register_pair("densenet100", partial(densenet_split, depth=100, growth=12))
register_pair("densenet190_40", partial(densenet_split, depth=190, growth=40))
