"""ABN around a torchvision or timm CNN: ``abnet.wrap(backbone, num_classes)``, or by name
``create_model("tv:resnet50_abn")`` / ``create_model("timm:convnext_atto_abn")``.

The mechanism needs only a CNN that is a sequence of stages: torchvision's ResNet, ResNeXt and
Wide-ResNet (``conv1 ... layer4``), RegNet (``stem`` + ``trunk_output``), and the ``features``
sequence of EfficientNet, MobileNet V2/V3, ConvNeXt, DenseNet, VGG (and MNASNet's ``layers``). A
dummy forward finds the last stage that down-samples; everything from it on is the perception
branch's trunk, the stages before it the feature extractor, and the attention branch starts from a
*copy* of that trunk (with its pretrained weights) that keeps the resolution: strided convs run at
stride 1 with "same" padding, down-sampling pools become identities. (For a flat VGG-style
sequence that ends in a pool, the trunk is the last conv block and its pool.) Anything else is
refused with a message naming the module.

A timm model is cut the same way along its ``forward_features``, opened up into its children (and
its ``stages`` / ``blocks`` sequences); the cut is used only if running those children in order
gives exactly ``forward_features``' output, and the perception branch ends with timm's own
``forward_head``. Either way the perception branch reproduces the backbone's output exactly when
the map is all zeros in ``residual`` mode.

Pretrained weights come from the local torch hub cache or a file, never the network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AbnetError
from .abn import ABN, BackboneSplit, Classifier
from .locate import hf_hub_cache
from .registry import ModelInfo, register_prefix
from .weights import read_state_dict


def stages_of(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's forward path up to its last feature map, as a list of stage modules."""
    children = dict(backbone.named_children())
    if all(f"layer{i}" in children for i in range(1, 5)):  # torchvision ResNet / ResNeXt / Wide-ResNet
        names = list(children)
        stem = [children[k] for k in names[:names.index("layer1")]]
        return [nn.Sequential(*stem), *(children[f"layer{i}"] for i in range(1, 5))]
    if "stem" in children and "trunk_output" in children:  # RegNet
        return [children["stem"], *children["trunk_output"].children()]
    for name in ("features", "layers"):  # EfficientNet, MobileNet, VGG, DenseNet, ConvNeXt; MNASNet
        if isinstance(children.get(name), nn.Sequential):
            return list(children[name].children())
    name = type(backbone).__name__
    raise AbnetError(f"cannot wrap {name}: abnet.wrap needs a stage-structured CNN (conv1..layer4, stem + "
                     f"trunk_output, or a `features` Sequential); {name} has {', '.join(children) or 'no children'}")


def _remove_downsampling(stage: nn.Module, where: str) -> nn.Module:
    """A copy of ``stage`` that keeps the spatial size: strided convs get stride 1 (an even kernel gets
    "same" padding), down-sampling pools become identities. Other strided modules are refused by name."""
    stage = copy.deepcopy(stage)
    replace: dict[str, nn.Module] = {}
    for name, module in stage.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride, module.stride)
        if max(stride) == 1:
            continue
        if not name:
            raise AbnetError(f"cannot repeat {where} without down-sampling: it is a single strided layer")
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            replace[name] = nn.Identity()
        elif module.padding_mode != "zeros":
            raise AbnetError(f"cannot repeat {where} without down-sampling: conv {name} uses "
                             f"padding_mode={module.padding_mode!r}")
        else:
            replace[name] = _unstrided_conv(module)
    for name, new in replace.items():
        parent_name, _, child = name.rpartition(".")
        setattr(stage.get_submodule(parent_name) if parent_name else stage, child, new)
    return stage


def _unstrided_conv(conv: nn.Conv2d) -> nn.Module:
    """The same conv (same weights) at stride 1, zero-padded to keep the size (asymmetrically for an
    even kernel, e.g. ConvNeXt's 2x2 down-sampling)."""
    total = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=1,
                    padding=tuple(t // 2 for t in total) if all(t % 2 == 0 for t in total) else 0,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
    new.load_state_dict(conv.state_dict())
    if all(t % 2 == 0 for t in total):
        return new
    (th, tw) = total
    return nn.Sequential(nn.ZeroPad2d((tw // 2, tw - tw // 2, th // 2, th - th // 2)), new)


class BackboneTail(nn.Module):
    """The perception branch: the trunk, then the backbone's own pooling and classifier, run the way
    its torchvision ``forward`` runs them. The classifier's last layer is replaced by a fresh one when
    ``num_classes`` differs from the backbone's (the pretrained classifier is kept when it matches)."""

    _GLOBAL_POOL = ("DenseNet", "MobileNetV2", "MNASNet")  # pool in forward(), not with an avgpool module

    def __init__(self, trunk: nn.Module, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.trunk = trunk
        self.family = type(backbone).__name__
        self.avgpool = getattr(backbone, "avgpool", nn.Identity())
        classifier = copy.deepcopy(backbone.fc if hasattr(backbone, "fc") else backbone.classifier)
        self.classifier = _resized(classifier, num_classes, self.family)

    def forward(self, x: Tensor) -> Tensor:
        x = self.trunk(x)
        if self.family == "SqueezeNet":  # its classifier ends in a 1x1 conv and a pool
            return self.classifier(x).flatten(1)
        if self.family == "DenseNet":
            x = F.relu(x)
        x = F.adaptive_avg_pool2d(x, 1) if self.family in self._GLOBAL_POOL else self.avgpool(x)
        if self.family != "ConvNeXt":  # ConvNeXt's classifier flattens after its LayerNorm
            x = x.flatten(1)
        return self.classifier(x)


def _resized(classifier: nn.Module, num_classes: int, family: str) -> nn.Module:
    """The classifier with its last Linear / Conv2d giving ``num_classes`` outputs (a fresh layer if needed)."""
    layers = [(n, m) for n, m in classifier.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise AbnetError(f"cannot wrap {family}: its classifier has no Linear or Conv2d layer to resize")
    name, last = layers[-1]
    outputs = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    if outputs == num_classes:
        return classifier
    if isinstance(last, nn.Linear):
        new: nn.Module = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    else:
        new = nn.Conv2d(last.in_channels, num_classes, last.kernel_size, bias=last.bias is not None)
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(classifier.get_submodule(parent) if parent else classifier, child, new)
    return classifier


class TimmTail(nn.Module):
    """The perception branch of a wrapped timm model: the trunk, then timm's own ``forward_head`` on a
    copy of the model from which the feature stages were removed (so no weight is held twice)."""

    def __init__(self, trunk: nn.Module, backbone: nn.Module, used: list[str], num_classes: int):
        super().__init__()
        self.trunk = trunk
        head = copy.deepcopy(backbone)
        for name in used:
            setattr(head, name, nn.Identity())
        if head.num_classes != num_classes:
            head.reset_classifier(num_classes)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head.forward_head(self.trunk(x))


def is_timm_model(backbone: nn.Module) -> bool:
    return type(backbone).__module__.startswith("timm.") and hasattr(backbone, "forward_head")


def timm_stages(backbone: nn.Module, probe: Tensor) -> tuple[list[nn.Module], list[str]]:
    """A timm model's ``forward_features`` as a list of stages (its ``stages`` / ``blocks`` / ``features``
    sequences opened up), checked against ``forward_features`` itself; and the names of the children used."""
    with torch.no_grad():
        target = backbone.forward_features(probe)
        x, stages, used = probe, [], []
        for name, child in backbone.named_children():
            opened = name in ("stages", "blocks", "features") and isinstance(child, nn.Sequential)
            for part in child.children() if opened else [child]:
                try:
                    x = part(x)
                except Exception as err:  # a child that needs more than the previous child's output
                    raise AbnetError(f"cannot wrap {type(backbone).__name__}: its child {name} cannot run on the "
                                     f"output of the children before it ({type(err).__name__})") from None
                stages.append(part)
            used.append(name)
            if x.shape == target.shape and torch.equal(x, target):
                return stages, used
    raise AbnetError(f"cannot wrap {type(backbone).__name__}: its forward_features is not a plain sequence of its "
                     "children, which abnet.wrap needs")


def split_backbone(backbone: nn.Module, num_classes: int, attention: bool = True,
                   probe_size: int = 224) -> BackboneSplit:
    """The ABN cut of a stage-structured CNN (see the module docstring); the perception branch ends in
    the backbone's own classifier, resized to ``num_classes``."""
    was_training = backbone.training
    backbone.eval()
    if is_timm_model(backbone):
        stages, used = timm_stages(backbone, torch.randn(1, 3, probe_size, probe_size))
    else:
        stages, used = stages_of(backbone), []
    backbone.eval()
    sizes, channels = [], []
    with torch.no_grad():
        x = torch.randn(1, 3, probe_size, probe_size)
        for stage in stages:
            x = stage(x)
            if x.dim() != 4:
                raise AbnetError(f"cannot wrap {type(backbone).__name__}: a stage outputs shape {tuple(x.shape)}, "
                                 "not a feature map")
            sizes.append(x.shape[-1])
            channels.append(x.shape[1])
    backbone.train(was_training)
    if x.shape[-1] < 2:
        raise AbnetError(f"cannot wrap {type(backbone).__name__}: its last feature map is {x.shape[-1]}x{x.shape[-1]}"
                         f" for a {probe_size}x{probe_size} input")
    shrinks = [i for i in range(1, len(stages)) if sizes[i] < sizes[i - 1]]
    if not shrinks:
        raise AbnetError(f"cannot wrap {type(backbone).__name__}: no stage after the first down-samples")
    cut = shrinks[-1]
    if not any(p.numel() for s in stages[cut:] for p in s.parameters()) and len(shrinks) > 1:
        cut = shrinks[-2] + 1  # a flat VGG-style sequence ends with a pool: repeat the last conv block
    trunk = nn.Sequential(*stages[cut:])
    att_stage = _remove_downsampling(trunk, f"the last stage of {type(backbone).__name__}") if attention else None
    features = nn.Sequential(*stages[:cut])
    tail = TimmTail(trunk, backbone, used, num_classes) if used else BackboneTail(trunk, backbone, num_classes)
    return BackboneSplit(features, tail, att_stage, channels[-1])


def wrap(backbone: nn.Module, num_classes: int, mask: str = "residual", map_kernel: int = 3) -> ABN:
    """An ABN made from a torchvision or timm CNN, keeping its (pretrained) weights in the feature extractor and
    the perception branch; the attention branch starts from a copy of the stage it repeats."""
    return ABN(split_backbone(backbone, num_classes), num_classes, mask=mask, map_kernel=map_kernel)


def local_pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    """The default ImageNet weights of torchvision model ``arch`` from the local torch hub cache only."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise AbnetError(f"torchvision has no pretrained weights for {arch!r}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise AbnetError(f"pretrained weights for {arch} are not in the local cache: expected {path} "
                         f"(download {weights.url} there on a machine with network; abnet never downloads)")
    return load_state_dict_file(path)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, recognised by content (see :func:`abnet.models.weights.read_state_dict`)."""
    return read_state_dict(path)[0]


def local_timm_state(arch: str) -> dict[str, torch.Tensor]:
    """The default pretrained weights of timm model ``arch`` from the local Hugging Face cache only."""
    import timm

    hub_id = timm.models.get_pretrained_cfg(arch).hf_hub_id if timm.models.get_pretrained_cfg(arch) else None
    if not hub_id:
        raise AbnetError(f"timm has no pretrained weights on the Hugging Face hub for {arch!r}; pass weights=FILE")
    folder = hf_hub_cache() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    files = sorted(folder.glob("*/model.safetensors")) + sorted(folder.glob("*/pytorch_model.bin"))
    if not files:
        raise AbnetError(f"pretrained weights for timm {arch} are not in the local cache: expected "
                         f"{folder}/<revision>/model.safetensors (abnet never downloads)")
    return load_state_dict_file(files[0])


def _make_torchvision(arch: str, **kwargs: Any) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _make_timm(arch: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


def _builder(source: str, arch: str, is_abn: bool):
    make, pretrained_state = {"torchvision": (_make_torchvision, local_pretrained_state),
                              "timm": (_make_timm, local_timm_state)}[source]

    def build(num_classes: int = 1000, pretrained: bool = False, weights: str | Mapping[str, Tensor] | None = None,
              mask: str = "residual", map_kernel: int = 3, **kwargs: Any) -> nn.Module:
        backbone = make(arch, **kwargs)
        if pretrained or weights is not None:  # weights: a file, or the state dict create_model read from one
            state = pretrained_state(arch) if weights is None else (
                weights if isinstance(weights, Mapping) else load_state_dict_file(weights))
            try:
                backbone.load_state_dict(state)
            except RuntimeError as err:
                raise AbnetError(f"weights do not fit {source} {arch}: {str(err).splitlines()[1:2]}") from None
        split = split_backbone(backbone, num_classes, attention=is_abn)
        if is_abn:
            return ABN(split, num_classes, mask=mask, map_kernel=map_kernel)
        if (mask, map_kernel) != ("residual", 3):
            raise TypeError("mask and map_kernel apply to ABN models only")
        return Classifier(split)

    return build


def _resolve_torchvision(name: str) -> ModelInfo | None:
    """``tv:<torchvision classification model>[_abn]``, e.g. ``tv:resnet50_abn``."""
    import torchvision

    arch = name.removeprefix("tv:").removesuffix("_abn")
    if arch not in torchvision.models.list_models(module=torchvision.models):
        return None
    return ModelInfo(name, _builder("torchvision", arch, name.endswith("_abn")), name.endswith("_abn"), (3, 224, 224))


def _resolve_timm(name: str) -> ModelInfo | None:
    """``timm:<timm model>[_abn]``, e.g. ``timm:convnext_atto_abn`` (timm is an optional extra)."""
    try:
        import timm
    except ImportError:
        raise AbnetError(f"{name} needs timm: pip install 'abnet[timm]'") from None
    arch = name.removeprefix("timm:").removesuffix("_abn")
    if not timm.is_model(arch):
        return None
    size = timm.models.get_pretrained_cfg(arch).input_size if timm.models.get_pretrained_cfg(arch) else (3, 224, 224)
    return ModelInfo(name, _builder("timm", arch, name.endswith("_abn")), name.endswith("_abn"), tuple(size))


register_prefix("tv:", _resolve_torchvision)
register_prefix("timm:", _resolve_timm)
