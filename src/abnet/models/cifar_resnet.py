"""CIFAR ResNets (He et al. 2016) as the ABN research code builds them.

depth = 6n + 2: a 3x3 stem with 16 channels, then three stages of n blocks with 16, 32 and 64
planes (strides 1, 2, 2). Basic blocks below depth 44 and bottleneck blocks (expansion 4) from
44 on, and a 1x1 conv + BN projection shortcut wherever the shape changes: the research code's
choices, so that parameter counts and accuracies compare with the paper's Table 1.

The ABN cut: stem + stages 1-2 are the feature extractor (16x16 for a 32x32 input); the
attention branch repeats stage 3 with stride 1; the perception branch is stage 3 (stride 2),
global average pooling and the fully connected layer.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .common import ClassifierHead, init_weights
from .registry import register_pair

DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


def make_stage(
    block: type[BasicBlock | Bottleneck], in_channels: int, planes: int, n: int, stride: int
) -> nn.Sequential:
    """n blocks; the first one changes stride and width."""
    layers = [block(in_channels, planes, stride)]
    layers += [block(planes * block.expansion, planes) for _ in range(n - 1)]
    return nn.Sequential(*layers)


def cifar_resnet_split(depth: int, num_classes: int, attention: bool) -> BackboneSplit:
    """The ABN cut of a CIFAR ResNet of the given depth (6n + 2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet needs depth = 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    block = Bottleneck if depth >= 44 else BasicBlock
    width = 64 * block.expansion
    features = nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
        layer1=make_stage(block, 16, 16, n, 1),
        layer2=make_stage(block, 16 * block.expansion, 32, n, 2),
    ))
    perception = ClassifierHead(make_stage(block, 32 * block.expansion, 64, n, 2), width, num_classes)
    att_stage = make_stage(block, 32 * block.expansion, 64, n, 1) if attention else None
    split = BackboneSplit(features, perception, att_stage, width)
    for part in (features, perception, att_stage):
        if part is not None:
            part.apply(init_weights)
    return split


for _depth in DEPTHS:
    register_pair(f"resnet{_depth}", partial(cifar_resnet_split, _depth))
