"""VGG with batch normalisation (Simonyan & Zisserman 2015): ``vgg16_bn``, ``vgg19_bn`` and their ``_abn`` variants.

Built from torchvision's own pieces (``make_layers`` and the ``VGG`` class with its 7x7 adaptive
pool, 4096-4096-K classifier and initialisation), so the plain models have torchvision's
parameter counts and load its state dicts with :func:`load_torchvision_state_dict`.

The ABN cut (the research code has no VGG for ImageNet; this is our choice): blocks 1-4 *including*
the fourth max-pool are the feature extractor (512 channels, 14x14 for a 224x224 input, 1/16 of
the input in general); the attention branch repeats block 5's three (vgg16_bn) or four (vgg19_bn)
conv-BN-ReLU layers without its max-pool, so the attention map is 14x14, as for the ResNets;
the perception branch is block 5 with its max-pool (7x7) and torchvision's classifier. Cutting
after the pool rather than before it keeps the map at the ResNets' resolution and the attention
branch at a quarter of the cost of running block 5 at 28x28. Inputs need to be at least 32x32.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .common import init_weights
from .imagenet_resnet import load_renamed_state_dict
from .registry import register_pair

# name -> torchvision's configuration letter.
CONFIGS = {"vgg16_bn": "D", "vgg19_bn": "E"}


def vgg_split(config: str, num_classes: int, attention: bool) -> BackboneSplit:
    """The ABN cut of a VGG-BN: blocks 1-4 | block 5 + classifier; block 5 without its max-pool for attention.

    The perception branch is a torchvision ``VGG`` whose ``features`` is block 5. Slicing an
    ``nn.Sequential`` keeps the indices, so every key is torchvision's, with ``head.`` in front for
    block 5 and the classifier.
    """
    from torchvision.models import vgg as tv_vgg

    net = tv_vgg.VGG(tv_vgg.make_layers(tv_vgg.cfgs[config], batch_norm=True), num_classes=num_classes)
    pools = [i for i, layer in enumerate(net.features) if isinstance(layer, nn.MaxPool2d)]
    features, net.features = net.features[: pools[3] + 1], net.features[pools[3] + 1 :]
    att_stage = None
    if attention:
        # Block 5 minus its max-pool, with fresh weights (torchvision's initialisation: conv biases stay zero).
        att_stage = copy.deepcopy(net.features[:-1]).apply(init_weights)
    return BackboneSplit(features, net, att_stage, 512)


def torchvision_key(key: str) -> str:
    """Our key -> torchvision's: ``features.X`` stays, ``head.X`` (``perception.X`` in the ABN) -> ``X``."""
    part, rest = key.split(".", 1)
    return key if part == "features" else rest


def load_torchvision_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision VGG-BN state dict (e.g. ImageNet weights) into ``vgg16_bn`` or ``vgg19_bn`` (or ``_abn``).

    ``state_dict`` is e.g. ``torchvision.models.vgg16_bn(weights=...).state_dict()`` for ``vgg16_bn``;
    one of another depth or number of classes raises a ValueError naming the model and the mismatch.
    """
    load_renamed_state_dict(model, state_dict, torchvision_key, "torchvision VGG-BN")


for _name, _config in CONFIGS.items():
    register_pair(_name, partial(vgg_split, _config), input_size=(3, 224, 224))
