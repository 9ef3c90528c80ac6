"""ResNeXt for CIFAR (Xie et al., CVPR 2017) as the ABN research code builds it.

ResNeXt-29 (depth = 9n + 2, n = 3): a 3x3 stem with 64 channels + BN-ReLU, then three stages of
n bottleneck blocks (conv1x1 to D, grouped conv3x3 with ``cardinality`` groups, conv1x1 to the
stage width, each followed by BN; ReLU after the sum) with widths 256, 512 and 1024 (strides 1,
2, 2), global average pooling and a linear classifier. The bottleneck width D is cardinality x
base_width in stage 1 and doubles with each stage; a 1x1 conv + BN projection shortcut sits
wherever the shape changes. ResNeXt-29 8x64d has 34.4M parameters, 16x64d 68.1M (10 classes).

The ABN cut: stem + stages 1-2 are the feature extractor (16x16 for a 32x32 input); the
attention branch repeats stage 3 with stride 1, so the attention map is 16x16; the perception
branch is stage 3 (stride 2), global average pooling and the classifier. (The research code
creates the attention branch's first BN but skips it in its forward pass; ABN applies it. The
parameters are the same.)
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .common import ClassifierHead, init_weights
from .registry import register_pair

STAGE_WIDTHS = (256, 512, 1024)


class ResNeXtBlock(nn.Module):
    """Aggregated residual transformations: 1x1 reduce, grouped 3x3, 1x1 expand, with a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, bottleneck: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, bottleneck, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, bottleneck, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv3 = nn.Conv2d(bottleneck, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def make_stage(
    in_channels: int, out_channels: int, n: int, stride: int, cardinality: int, bottleneck: int
) -> nn.Sequential:
    """n ResNeXt blocks; the first one changes stride and width."""
    layers = [ResNeXtBlock(in_channels, out_channels, stride, cardinality, bottleneck)]
    layers += [ResNeXtBlock(out_channels, out_channels, 1, cardinality, bottleneck) for _ in range(n - 1)]
    return nn.Sequential(*layers)


def resnext_split(
    depth: int, cardinality: int, base_width: int, num_classes: int, attention: bool
) -> BackboneSplit:
    """The ABN cut of a CIFAR ResNeXt-``depth`` (9n + 2), ``cardinality`` x ``base_width``d."""
    if depth < 11 or (depth - 2) % 9:
        raise ValueError(f"a CIFAR ResNeXt needs depth = 9n + 2 with n >= 1 (11, 20, 29, ...), got {depth}")
    if cardinality < 1 or base_width < 1:
        raise ValueError(f"cardinality and base_width must be >= 1, got {cardinality} and {base_width}")
    n = (depth - 2) // 9
    d = cardinality * base_width  # the grouped conv's width in stage 1; doubles per stage like the stage width
    w1, w2, w3 = STAGE_WIDTHS
    features = nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)),
        layer1=make_stage(64, w1, n, 1, cardinality, d),
        layer2=make_stage(w1, w2, n, 2, cardinality, 2 * d),
    ))
    perception = ClassifierHead(make_stage(w2, w3, n, 2, cardinality, 4 * d), w3, num_classes)
    att_stage = make_stage(w2, w3, n, 1, cardinality, 4 * d) if attention else None
    for part in (features, perception, att_stage):
        if part is not None:
            part.apply(init_weights)
    return BackboneSplit(features, perception, att_stage, w3)


register_pair("resnext29_8x64d", partial(resnext_split, depth=29, cardinality=8, base_width=64))
register_pair("resnext29_16x64d", partial(resnext_split, depth=29, cardinality=16, base_width=64))
