"""SE-ResNets (Hu et al. 2018): ``se_resnet50``, ``se_resnet101`` and their ``_abn`` variants.

torchvision's ResNet-50/101 with a squeeze-and-excitation unit (torchvision's
:class:`~torchvision.ops.SqueezeExcitation`, reduction 16: 1x1 convs C -> C/16 -> C with biases)
on each bottleneck's residual branch, after the last BN and before the addition, as in the paper
and the ABN research code. torchvision ships no SE-ResNet, so there is no state dict to load; the
keys are torchvision's ResNet keys plus ``se.fc1`` and ``se.fc2`` in each block.

The ABN cut is the ImageNet ResNet's (see :mod:`abnet.models.imagenet_resnet`): stem +
layer1-layer3 are the feature extractor (1024 channels, 14x14 for a 224x224 input); the attention
branch repeats layer4, SE units included, with stride 1 (14x14 map); the perception branch is
layer4 (stride 2), global average pooling and the fully connected layer.

Parameter counts: the ``_abn`` models have 9K + 2 parameters more than the research code's
(9,002 for K = 1000: se_resnet50_abn 47,695,250 vs 47,686,248, se_resnet101_abn 68,934,098 vs
68,925,096). The research SE-ResNet makes its map as sum(log(1 + evidence)) over the K evidence
maps, without the map head (3x3 conv K -> 1, BN) that its ResNets and abnet's :class:`~abnet.models.abn.ABN`
have; every other layer matches. With ``map_kernel=1`` the difference is K + 2.
"""

from __future__ import annotations

from functools import cache, partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .imagenet_resnet import resnet_split
from .registry import register_pair

REDUCTION = 16

DEPTHS = {"se_resnet50": (3, 4, 6, 3), "se_resnet101": (3, 4, 23, 3)}


@cache
def se_bottleneck() -> type[nn.Module]:
    """The SE bottleneck class, made on first use: importing torchvision takes seconds, ``import abnet`` does not."""
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops import SqueezeExcitation

    class SEBottleneck(Bottleneck):
        """torchvision's bottleneck whose residual branch is rescaled channel-wise by an SE unit."""

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__(inplanes, planes, stride, downsample)
            channels = planes * self.expansion
            self.se = SqueezeExcitation(channels, channels // REDUCTION)

        def forward(self, x: Tensor) -> Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.se(self.bn3(self.conv3(out)))
            return self.relu(out + identity)

    return SEBottleneck


def se_resnet_split(layers: tuple[int, int, int, int], num_classes: int, attention: bool) -> BackboneSplit:
    """The ABN cut of an SE-ResNet: the ImageNet ResNet's, with SE bottlenecks."""
    return resnet_split(se_bottleneck(), layers, num_classes, attention)


for _name, _layers in DEPTHS.items():
    register_pair(_name, partial(se_resnet_split, _layers), input_size=(3, 224, 224))
