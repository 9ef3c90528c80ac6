"""The ABN research code's state dicts in abnet's names (machine-perception-robotics-group/attention_branch_network).

The research code's CIFAR ResNet, Wide ResNet, DenseNet-BC and ResNeXt and its ImageNet ResNet
compute what abnet's families compute, layer for layer; only the names differ (``att_layer3``,
``bn_att2``, ``block1.layer.0``, ``stage_1.stage_1_bottleneck_0.conv_reduce``, ...). A family's
table maps the research code's module paths to abnet's (``features`` / ``attention_branch`` /
``perception``, ``head`` in a plain model); blocks keep their index, and a few sub-module names
inside blocks are renamed. Every research model's map head is a 3x3 conv K -> 1 without bias and a
BN, abnet's default (``map_kernel=3``). Two differences are handled here:

* the research ResNeXt builds ``bn_att`` but its forward pass skips it: it is dropped, and abnet's
  BN in that place is set to the identity (in eval mode; fine-tuning then trains it as a BN);
* the research SE-ResNet makes its map as sum(log(1 + evidence)) over the K class maps, unbounded
  and without a map head, which abnet's ABN (maps in [0, 1]) does not compute: it is refused.

A family is recognised by the keys of the state dict, never by a file name. Plain (non-ABN) state
dicts in the same names (torchvision's ImageNet ResNets; the plain CIFAR models of
bearpaw/pytorch-classification, which the research code builds on) load into abnet's plain models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

ATTENTION_HEAD = {
    "bn_att": "attention_branch.bn", "att_conv": "attention_branch.conv", "bn_att2": "attention_branch.bn_class",
    "att_conv2": "attention_branch.logit_conv", "att_conv3": "attention_branch.map_conv",
    "bn_att3": "attention_branch.map_bn",
}


@dataclass(frozen=True)
class Family:
    """How one research-code family's keys become abnet's.

    title:      the family's name in messages.
    marker:     a key that only this family's state dicts hold (families are tried in order); ``arch`` reads it.
    modules:    research module path -> abnet's; the longest matching path of a key wins.
    renames:    research sub-module names inside a module (regex, full match) -> abnet's.
    arch:       state dict -> (architecture as the paper names it, abnet's base model name or None).
    classifier: the research name of the final linear layer.
    unused:     research modules its forward pass never runs (dropped).
    identity:   abnet BNs without a research counterpart, set to the identity.
    refused:    why abnet cannot compute this family's output exactly ("" when it can).
    source:     whose names these are, for messages.
    """

    title: str
    marker: str
    modules: dict[str, str]
    arch: Callable[[Mapping[str, Tensor]], tuple[str, str | None]]
    renames: tuple[tuple[str, str], ...] = ()
    classifier: str = "fc"
    unused: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()
    refused: str = ""
    source: str = "the ABN research code"

    def rename(self, key: str) -> str:
        """abnet's name for a research key (the key itself when no module path matches: reported as unexpected)."""
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            target = self.modules.get(".".join(parts[:cut]))
            if target is not None:
                return ".".join([target, *(self._rename_part(p) for p in parts[cut:-1]), parts[-1]])
        return key

    def _rename_part(self, part: str) -> str:
        for pattern, replacement in self.renames:
            found = re.fullmatch(pattern, part)
            if found:
                return found.expand(replacement)
        return part


def _blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    """How many blocks the research module ``prefix`` (e.g. ``"layer1."``) holds."""
    return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})


def _cifar_resnet(state: Mapping[str, Tensor]) -> tuple[str, str | None]:
    depth = 6 * _blocks(state, "layer1.") + 2  # 6n + 2 with basic or bottleneck blocks alike, as the research code
    return f"CIFAR ResNet-{depth}", f"resnet{depth}"


def _imagenet_resnet(state: Mapping[str, Tensor], se: bool = False) -> tuple[str, str | None]:
    per_block = 3 if "layer1.0.conv3.weight" in state else 2
    depth = per_block * sum(_blocks(state, f"layer{i}.") for i in range(1, 5)) + 2
    return (f"SE-ResNet-{depth}", f"se_resnet{depth}") if se else (f"ImageNet ResNet-{depth}", f"resnet{depth}")


def _wide_resnet(state: Mapping[str, Tensor]) -> tuple[str, str | None]:
    depth = 6 * _blocks(state, "block1.layer.") + 4
    widen = state["block1.layer.0.conv1.weight"].shape[0] // 16
    return f"WRN-{depth}-{widen}", f"wrn{depth}_{widen}"


def _densenet(state: Mapping[str, Tensor]) -> tuple[str, str | None]:
    if "dense1.0.conv2.weight" not in state:
        return "DenseNet without bottleneck layers", None
    depth, growth = 6 * _blocks(state, "dense1.") + 4, state["dense1.0.conv2.weight"].shape[0]
    return f"DenseNet-BC-{depth} (k={growth})", f"densenet{depth}" if growth == 12 else f"densenet{depth}_{growth}"


def _resnext(state: Mapping[str, Tensor]) -> tuple[str, str | None]:
    depth = 9 * _blocks(state, "stage_1.") + 2
    grouped = state["stage_1.stage_1_bottleneck_0.conv_conv.weight"]
    cardinality = grouped.shape[0] // grouped.shape[1]
    width = grouped.shape[0] // cardinality
    return f"ResNeXt-{depth} {cardinality}x{width}d", f"resnext{depth}_{cardinality}x{width}d"


_IMAGENET_MODULES = {
    "conv1": "features.conv1", "bn1": "features.bn1", "layer1": "features.layer1", "layer2": "features.layer2",
    "layer3": "features.layer3", "layer4": "perception.stages", "att_layer4": "attention_branch.stage",
    "fc": "perception.fc", **ATTENTION_HEAD,
}

FAMILIES: dict[str, Family] = {
    "se_resnet": Family(
        title="SE-ResNet", marker="layer1.0.fc1.weight", modules=_IMAGENET_MODULES,
        arch=lambda state: _imagenet_resnet(state, se=True),
        refused="the research SE-ResNet's attention map is sum(log(1 + evidence)) over the K class maps, unbounded "
                "and without the map head (att_conv3, bn_att3) that abnet's ABN and the research code's other "
                "models have, so abnet cannot compute its output",
    ),
    "imagenet_resnet": Family(  # torchvision's names inside the blocks, as abnet's ImageNet ResNets
        title="ImageNet ResNet", marker="layer4.0.conv1.weight", modules=_IMAGENET_MODULES,
        arch=_imagenet_resnet,
        source="the ABN research code (torchvision's)",
    ),
    "cifar_resnet": Family(
        title="CIFAR ResNet", marker="layer1.0.conv1.weight", arch=_cifar_resnet,
        renames=(("downsample", "shortcut"),),
        modules={"conv1": "features.stem.0", "bn1": "features.stem.1", "layer1": "features.layer1",
                 "layer2": "features.layer2", "layer3": "perception.stages", "att_layer3": "attention_branch.stage",
                 "fc": "perception.fc", **ATTENTION_HEAD},
    ),
    "wide_resnet": Family(
        title="Wide ResNet", marker="block1.layer.0.conv1.weight", arch=_wide_resnet,
        renames=(("convShortcut", "shortcut"),),
        modules={"conv1": "features.stem", "block1.layer": "features.layer1", "block2.layer": "features.layer2",
                 "block3.layer": "perception.stages.0", "bn1": "perception.stages.1",
                 "att_block3.layer": "attention_branch.stage", "fc": "perception.fc", **ATTENTION_HEAD},
    ),
    "densenet": Family(
        title="DenseNet", marker="dense1.0.conv1.weight", arch=_densenet,
        modules={"conv1": "features.stem", "dense1": "features.block1", "trans1.bn1": "features.trans1.bn",
                 "trans1.conv1": "features.trans1.conv", "dense2": "features.block2",
                 "trans2.bn1": "features.trans2.bn", "trans2.conv1": "features.trans2.conv",
                 "dense3": "perception.stages.0", "bn": "perception.stages.1", "att_dense3": "attention_branch.stage",
                 "fc": "perception.fc", **ATTENTION_HEAD},
    ),
    "resnext": Family(
        title="CIFAR ResNeXt", marker="stage_1.stage_1_bottleneck_0.conv_conv.weight", arch=_resnext,
        classifier="classifier", unused=("bn_att",), identity=("attention_branch.bn",),
        renames=((r"stage_\w+_bottleneck_(\d+)", r"\1"), ("conv_reduce", "conv1"), ("bn_reduce", "bn1"),
                 ("conv_conv", "conv2"), ("bn", "bn2"), ("conv_expand", "conv3"), ("bn_expand", "bn3"),
                 ("shortcut_conv", "0"), ("shortcut_bn", "1")),
        modules={"conv_1_3x3": "features.stem.0", "bn_1": "features.stem.1", "stage_1": "features.layer1",
                 "stage_2": "features.layer2", "stage_3": "perception.stages", "stage_att": "attention_branch.stage",
                 "classifier": "perception.fc", **ATTENTION_HEAD},
    ),
}


def family_of(state: Mapping[str, Tensor]) -> Family | None:
    """The research-code family whose names ``state`` uses, or None."""
    return next((family for family in FAMILIES.values() if family.marker in state), None)


def describe(family: Family, state: Mapping[str, Tensor]) -> str:
    """What a research state dict holds, e.g. "an ABN CIFAR ResNet-110 for 100 classes in the names of ..."."""
    arch, _ = _arch(family, state)
    kind = "an ABN" if "att_conv.weight" in state else "a plain"
    classes = num_classes(family, state)
    return f"{kind} {arch}" + (f" for {classes} classes" if classes else "") + f" in the names of {family.source}"


def num_classes(family: Family, state: Mapping[str, Tensor]) -> int | None:
    """The number of classes of a research state dict (its classifier's outputs), or None."""
    weight = state.get(f"{family.classifier}.weight")
    return int(weight.shape[0]) if weight is not None else None


def hint(family: Family, state: Mapping[str, Tensor]) -> str:
    """"; load it with create_model(...)" naming abnet's model for a research state dict, if abnet registers it."""
    from .registry import list_models  # the registry imports this module's users; import it when needed

    _, base = _arch(family, state)
    name = f"{base}_abn" if base and "att_conv.weight" in state else base
    if family.refused or name is None or name not in list_models():
        return ""
    return f"; load it with create_model({name!r}, num_classes={num_classes(family, state)}, weights=...)"


def to_abnet(family: Family, state: Mapping[str, Tensor], model: nn.Module, where: str) -> dict[str, Tensor]:
    """``state`` in abnet's names for ``model`` (an ABN, or a plain model: ``perception`` becomes ``head``).

    Raises :class:`CheckpointError` for a family abnet cannot reproduce; ``where`` ("FILE holds ...")
    starts that message.
    """
    if family.refused:
        raise CheckpointError(f"{where}; abnet cannot load it exactly: {family.refused}")
    head = "perception." if hasattr(model, "perception") else "head."
    renamed = {}
    for key, value in state.items():
        if any(key.startswith(f"{module}.") for module in family.unused):
            continue
        new = family.rename(key)
        renamed[head + new.removeprefix("perception.") if new.startswith("perception.") else new] = value
    modules = dict(model.named_modules())
    for name in family.identity:
        if isinstance(modules.get(name), nn.BatchNorm2d):
            renamed.update(_identity_bn(name, modules[name]))
    return renamed


def _identity_bn(name: str, bn: nn.BatchNorm2d) -> dict[str, Tensor]:
    """A BN state that maps x to x in eval mode: mean 0, variance 1 - eps, weight 1, bias 0."""
    channels = bn.num_features
    return {f"{name}.weight": torch.ones(channels), f"{name}.bias": torch.zeros(channels),
            f"{name}.running_mean": torch.zeros(channels), f"{name}.running_var": torch.full((channels,), 1 - bn.eps),
            f"{name}.num_batches_tracked": torch.zeros((), dtype=torch.long)}


def _arch(family: Family, state: Mapping[str, Tensor]) -> tuple[str, str | None]:
    try:
        return family.arch(state)
    except (KeyError, IndexError, ZeroDivisionError):  # a malformed state dict that only looks like the family's
        return family.title, None
