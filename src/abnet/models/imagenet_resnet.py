"""ImageNet ResNets (He et al. 2016): ``resnet18`` ... ``resnet152`` and their ``_abn`` variants.

The blocks are torchvision's :class:`~torchvision.models.resnet.BasicBlock` and
:class:`~torchvision.models.resnet.Bottleneck`, stacked as torchvision stacks them (7x7 stem with
max-pool, four stages of 64, 128, 256 and 512 planes at strides 1, 2, 2, 2, a 1x1 conv + BN
projection shortcut wherever the shape changes), so the plain models have torchvision's parameter
counts and load its state dicts with :func:`load_torchvision_state_dict`.

The ABN cut, as in the ABN research code's ImageNet ResNets: stem + layer1-layer3 are the feature
extractor (1024 channels, or 256 with basic blocks; 14x14 for a 224x224 input, 1/16 of the input
in general); the attention branch repeats layer4 with stride 1, so its map is 14x14 too; the
perception branch is layer4 (stride 2), global average pooling and the fully connected layer.
The repeated layer4 keeps its projection shortcut (the width changes), so it has exactly layer4's
parameters, and the ABN counts equal the research code's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial

from torch import Tensor, nn

from .abn import BackboneSplit
from .common import ClassifierHead, init_weights
from .registry import register_pair

# A block class (torchvision's BasicBlock, Bottleneck or a subclass), or the name of torchvision's: the
# names keep torchvision (seconds to import) out of `import abnet` until a model is built.
Block = type[nn.Module] | str

# name -> (block, blocks per stage), torchvision's configurations.
ARCHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2)),
    "resnet34": ("BasicBlock", (3, 4, 6, 3)),
    "resnet50": ("Bottleneck", (3, 4, 6, 3)),
    "resnet101": ("Bottleneck", (3, 4, 23, 3)),
    "resnet152": ("Bottleneck", (3, 8, 36, 3)),
}


def block_class(block: Block) -> type[nn.Module]:
    """A block class as given, or torchvision's ``BasicBlock`` / ``Bottleneck`` by name."""
    if isinstance(block, str):
        from torchvision.models import resnet

        return getattr(resnet, block)
    return block


def make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's ``ResNet._make_layer`` as a function, so a stage can be built again at another stride."""
    from torchvision.models.resnet import conv1x1

    block = block_class(block)
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_channels:
        downsample = nn.Sequential(conv1x1(inplanes, out_channels, stride), nn.BatchNorm2d(out_channels))
    rest = (block(out_channels, planes) for _ in range(blocks - 1))
    return nn.Sequential(block(inplanes, planes, stride, downsample), *rest)


def resnet_split(block: Block, layers: tuple[int, int, int, int], num_classes: int, attention: bool) -> BackboneSplit:
    """The ABN cut of an ImageNet ResNet: stem + layer1-3 | layer4 + classifier; layer4 at stride 1 for attention.

    Module names follow torchvision (``features.conv1``, ``features.layer3``, ``head.stages`` = layer4,
    ``head.fc``), which is what makes its state dicts map key by key.
    """
    block = block_class(block)
    expansion = block.expansion
    features = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, 1),
        layer1=make_stage(block, 64, 64, layers[0], 1),
        layer2=make_stage(block, 64 * expansion, 128, layers[1], 2),
        layer3=make_stage(block, 128 * expansion, 256, layers[2], 2),
    ))
    width = 512 * expansion
    perception = ClassifierHead(make_stage(block, 256 * expansion, 512, layers[3], 2), width, num_classes)
    att_stage = make_stage(block, 256 * expansion, 512, layers[3], 1) if attention else None
    for part in (features, perception.stages, att_stage):
        if part is not None:
            part.apply(init_weights)  # torchvision's ResNet initialisation; the fc keeps nn.Linear's, as there
    return BackboneSplit(features, perception, att_stage, width)


def load_renamed_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], rename: Callable[[str], str], source: str
) -> None:
    """Load ``state_dict``, whose key for each of our keys ``k`` is ``rename(k)``, into ``model``.

    Works for the plain model and its ``_abn`` variant; the ABN attention branch has no counterpart
    and keeps its initialisation. Keys, and shapes (so also the number of classes), must match
    exactly, except that ``num_batches_tracked`` may be absent (old checkpoints lack it). Otherwise
    nothing is loaded and a ValueError names the model, ``source`` and the first mismatches.
    """
    ours = model.state_dict()
    wanted = {rename(key): key for key in ours if not key.startswith("attention_branch.")}
    missing = [k for k in wanted if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in wanted]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(ours[wanted[k]].shape)}"
        for k in wanted
        if k in state_dict and state_dict[k].shape != ours[wanted[k]].shape
    ]
    problems = [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped))
        if keys
    ]
    if problems:
        name = getattr(model, "abnet_config", {}).get("model", type(model).__name__)
        raise ValueError(
            f"this state dict does not fit model {name!r} (expected a {source} state dict of the same "
            f"architecture and number of classes): {'; '.join(problems)}"
        )
    ours.update((wanted[k], v) for k, v in state_dict.items())
    model.load_state_dict(ours)


def torchvision_key(key: str) -> str:
    """Our key -> torchvision's: ``features.X`` -> ``X``, ``head.stages.X`` -> ``layer4.X``, ``head.fc.X`` -> ``fc.X``.

    ``perception.`` (the ABN's name for the head) maps like ``head.``.
    """
    part, rest = key.split(".", 1)
    if part == "features":
        return rest
    return "layer4." + rest.removeprefix("stages.") if rest.startswith("stages.") else rest


def load_torchvision_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet state dict (e.g. ImageNet weights) into ``resnet18`` ... ``resnet152`` (or ``_abn``).

    ``state_dict`` is e.g. ``torchvision.models.resnet50(weights=...).state_dict()`` for ``resnet50``;
    one of another depth or number of classes raises a ValueError (see :func:`load_renamed_state_dict`).
    """
    load_renamed_state_dict(model, state_dict, torchvision_key, "torchvision ResNet")


for _name, (_block, _layers) in ARCHS.items():
    register_pair(_name, partial(resnet_split, _block, _layers), input_size=(3, 224, 224))
