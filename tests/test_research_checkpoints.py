"""The ABN research code's checkpoints load exactly: ``create_model(name, num_classes=K, weights=FILE)``.

The research state dicts are generated here from the research code's module layout (names and shapes,
random values), independently of abnet's modules, and a functional reference written from the paper
and that layout computes what the research models compute (eval mode). abnet must give the same
logits, attention logits and attention map.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import abnet
from abnet.errors import CheckpointError
from abnet.models import research

Spec = list[tuple[str, tuple[int, ...]]]
State = dict[str, torch.Tensor]


# ---- the research code's layout: names and shapes -------------------------------------------------

def conv(name: str, out: int, inp: int, k: int, groups: int = 1) -> Spec:
    return [(f"{name}.weight", (out, inp // groups, k, k))]


def bn(name: str, c: int) -> Spec:
    return [(f"{name}.{p}", (c,)) for p in ("weight", "bias", "running_mean", "running_var")] + \
        [(f"{name}.num_batches_tracked", ())]


def linear(name: str, out: int, inp: int) -> Spec:
    return [(f"{name}.weight", (out, inp)), (f"{name}.bias", (out,))]


def attention_head(channels: int, k: int, with_bn_att: bool = True) -> Spec:
    """bn_att, att_conv (1x1 C->K), bn_att2, att_conv2 (1x1 K->K), att_conv3 (3x3 K->1), bn_att3."""
    return ((bn("bn_att", channels) if with_bn_att else []) + conv("att_conv", k, channels, 1) + bn("bn_att2", k)
            + conv("att_conv2", k, k, 1) + conv("att_conv3", 1, k, 3) + bn("bn_att3", 1))


def resnet_stage(name: str, inplanes: int, planes: int, n: int, stride: int, bottleneck: bool) -> Spec:
    """Blocks ``name.i`` (conv1/bn1, conv2/bn2[, conv3/bn3]); ``downsample.0/1`` where the shape changes."""
    expansion, spec = 4 if bottleneck else 1, []
    for i in range(n):
        inp, p = inplanes if i == 0 else planes * expansion, f"{name}.{i}"
        if bottleneck:
            spec += conv(f"{p}.conv1", planes, inp, 1) + bn(f"{p}.bn1", planes) + conv(f"{p}.conv2", planes, planes, 3)
            spec += bn(f"{p}.bn2", planes) + conv(f"{p}.conv3", planes * 4, planes, 1) + bn(f"{p}.bn3", planes * 4)
        else:
            spec += conv(f"{p}.conv1", planes, inp, 3) + bn(f"{p}.bn1", planes) + conv(f"{p}.conv2", planes, planes, 3)
            spec += bn(f"{p}.bn2", planes)
        if i == 0 and (stride != 1 or inp != planes * expansion):
            spec += conv(f"{p}.downsample.0", planes * expansion, inp, 1) + bn(f"{p}.downsample.1", planes * expansion)
    return spec


def cifar_resnet_spec(depth: int, k: int) -> Spec:
    n, bottleneck = (depth - 2) // 6, depth >= 44
    e = 4 if bottleneck else 1
    return (conv("conv1", 16, 3, 3) + bn("bn1", 16) + resnet_stage("layer1", 16, 16, n, 1, bottleneck)
            + resnet_stage("layer2", 16 * e, 32, n, 2, bottleneck)
            + resnet_stage("att_layer3", 32 * e, 64, n, 1, bottleneck) + attention_head(64 * e, k)
            + resnet_stage("layer3", 32 * e, 64, n, 2, bottleneck) + linear("fc", k, 64 * e))


def imagenet_resnet_spec(layers: tuple[int, int, int, int], bottleneck: bool, k: int) -> Spec:
    e = 4 if bottleneck else 1
    spec = conv("conv1", 64, 3, 7) + bn("bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256)):
        spec += resnet_stage(f"layer{i + 1}", inplanes, planes, layers[i], 1 if i == 0 else 2, bottleneck)
        inplanes = planes * e
    return (spec + resnet_stage("att_layer4", inplanes, 512, layers[3], 1, bottleneck) + attention_head(512 * e, k)
            + resnet_stage("layer4", inplanes, 512, layers[3], 2, bottleneck) + linear("fc", k, 512 * e))


def wrn_stage(name: str, inp: int, out: int, n: int) -> Spec:
    spec = []
    for i in range(n):
        c, p = inp if i == 0 else out, f"{name}.layer.{i}"
        spec += bn(f"{p}.bn1", c) + conv(f"{p}.conv1", out, c, 3)
        spec += bn(f"{p}.bn2", out) + conv(f"{p}.conv2", out, out, 3)
        spec += conv(f"{p}.convShortcut", out, c, 1) if c != out else []
    return spec


def wrn_spec(depth: int, widen: int, k: int) -> Spec:
    n, (w1, w2, w3) = (depth - 4) // 6, (16 * widen, 32 * widen, 64 * widen)
    return (conv("conv1", 16, 3, 3) + wrn_stage("block1", 16, w1, n) + wrn_stage("block2", w1, w2, n)
            + wrn_stage("block3", w2, w3, n) + bn("bn1", w3) + wrn_stage("att_block3", w2, w3, n)
            + attention_head(w3, k) + linear("fc", k, w3))


def dense_block(name: str, c: int, n: int, growth: int) -> Spec:
    spec = []
    for i in range(n):
        inp, p = c + i * growth, f"{name}.{i}"
        spec += bn(f"{p}.bn1", inp) + conv(f"{p}.conv1", 4 * growth, inp, 1) + bn(f"{p}.bn2", 4 * growth)
        spec += conv(f"{p}.conv2", growth, 4 * growth, 3)
    return spec


def densenet_spec(depth: int, growth: int, k: int) -> Spec:
    n, c = (depth - 4) // 6, 2 * growth
    spec = conv("conv1", c, 3, 3)
    for i in (1, 2):
        spec += dense_block(f"dense{i}", c, n, growth)
        c += n * growth
        spec += bn(f"trans{i}.bn1", c) + conv(f"trans{i}.conv1", c // 2, c, 1)
        c //= 2
    spec += dense_block("dense3", c, n, growth) + dense_block("att_dense3", c, n, growth)
    c += n * growth
    return spec + attention_head(c, k) + bn("bn", c) + linear("fc", k, c)


def resnext_stage(name: str, inp: int, out: int, n: int, cardinality: int, widen: int) -> Spec:
    spec, d = [], cardinality * out // widen
    for i in range(n):
        c, p = inp if i == 0 else out, f"{name}.{name}_bottleneck_{i}"
        spec += conv(f"{p}.conv_reduce", d, c, 1) + bn(f"{p}.bn_reduce", d)
        spec += conv(f"{p}.conv_conv", d, d, 3, cardinality)
        spec += bn(f"{p}.bn", d) + conv(f"{p}.conv_expand", out, d, 1) + bn(f"{p}.bn_expand", out)
        if c != out:
            spec += conv(f"{p}.shortcut.shortcut_conv", out, c, 1) + bn(f"{p}.shortcut.shortcut_bn", out)
    return spec


def resnext_spec(depth: int, cardinality: int, k: int, widen: int = 4) -> Spec:
    n, (s0, s1, s2, s3) = (depth - 2) // 9, (64, 64 * widen, 128 * widen, 256 * widen)
    return (conv("conv_1_3x3", 64, 3, 3) + bn("bn_1", 64) + resnext_stage("stage_1", s0, s1, n, cardinality, widen)
            + resnext_stage("stage_2", s1, s2, n, cardinality, widen)
            + resnext_stage("stage_3", s2, s3, n, cardinality, widen) + linear("classifier", k, 1024)
            + resnext_stage("stage_att", s2, s3, n, cardinality, widen) + attention_head(s3, k))


def random_state(spec: Spec, seed: int, tracked: bool = True) -> State:
    """Random values: He-normal weights, BN weights in [0.5, 1], BN biases ~ N(0, 0.1^2), running variances in
    [0.5, 1.5] (see :func:`calibrated` for statistics of a sane scale)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in spec:
        if name.endswith("num_batches_tracked"):
            if tracked:
                state[name] = torch.tensor(1000)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("running_mean", "bias")):
            state[name] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # a BN weight
            state[name] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
    return state


def save_research(state: State, path: Path, arch: str | None = None, legacy: bool = False) -> Path:
    """As the research code's cifar.py / imagenet.py save: DataParallel keys, epoch, accuracy, optimizer."""
    checkpoint = {"epoch": 300, "state_dict": {f"module.{k}": v for k, v in state.items()}, "acc": 77.5,
                  "best_acc": 77.9, "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                                                  "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": [0]}]}}
    if arch:
        checkpoint["arch"] = arch
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


# ---- what the research models compute (eval mode), from the paper and the layout above -------------

class Calibrating(dict):
    """A research state dict whose BNs, in one reference pass, take the batch's statistics as their running ones."""


def _bn(x, s, p):
    mean, var = s[f"{p}.running_mean"], s[f"{p}.running_var"]
    if isinstance(s, Calibrating):  # momentum 1: the running statistics become this batch's (updated in place)
        F.batch_norm(x, mean, var, None, None, True, 1.0, 1e-5)
        var.add_(0.01)  # positive, also for a channel that the ReLUs before it silenced
    return F.batch_norm(x, mean, var, s[f"{p}.weight"], s[f"{p}.bias"], False, 0.0, 1e-5)


def _conv(x, s, p, stride=1, padding=0, groups=1):
    return F.conv2d(x, s[f"{p}.weight"], None, stride, padding, 1, groups)


def _n(s, prefix):
    return len({k[len(prefix):].split(".")[0] for k in s if k.startswith(prefix)})


def _resnet_stage(x, s, p, stride):
    for i in range(_n(s, f"{p}.")):
        b, st = f"{p}.{i}", stride if i == 0 else 1
        if f"{b}.conv3.weight" in s:  # bottleneck: 1x1, 3x3 (strided), 1x1
            out = F.relu(_bn(_conv(x, s, f"{b}.conv1"), s, f"{b}.bn1"))
            out = F.relu(_bn(_conv(out, s, f"{b}.conv2", st, 1), s, f"{b}.bn2"))
            out = _bn(_conv(out, s, f"{b}.conv3"), s, f"{b}.bn3")
        else:
            out = F.relu(_bn(_conv(x, s, f"{b}.conv1", st, 1), s, f"{b}.bn1"))
            out = _bn(_conv(out, s, f"{b}.conv2", 1, 1), s, f"{b}.bn2")
        short = _bn(_conv(x, s, f"{b}.downsample.0", st), s, f"{b}.downsample.1") \
            if f"{b}.downsample.0.weight" in s else x
        x = F.relu(out + short)
    return x


def _wrn_stage(x, s, p, stride):
    for i in range(_n(s, f"{p}.layer.")):
        b, st = f"{p}.layer.{i}", stride if i == 0 else 1
        pre = F.relu(_bn(x, s, f"{b}.bn1"))
        out = _conv(F.relu(_bn(_conv(pre, s, f"{b}.conv1", st, 1), s, f"{b}.bn2")), s, f"{b}.conv2", 1, 1)
        x = out + (_conv(pre, s, f"{b}.convShortcut", st) if f"{b}.convShortcut.weight" in s else x)
    return x


def _dense_block(x, s, p):
    for i in range(_n(s, f"{p}.")):
        out = _conv(F.relu(_bn(x, s, f"{p}.{i}.bn1")), s, f"{p}.{i}.conv1")
        x = torch.cat((x, _conv(F.relu(_bn(out, s, f"{p}.{i}.bn2")), s, f"{p}.{i}.conv2", 1, 1)), 1)
    return x


def _transition(x, s, p):
    return F.avg_pool2d(_conv(F.relu(_bn(x, s, f"{p}.bn1")), s, f"{p}.conv1"), 2)


def _resnext_stage(x, s, p, stride, cardinality):
    for i in range(_n(s, f"{p}.")):
        b, st = f"{p}.{p}_bottleneck_{i}", stride if i == 0 else 1
        out = F.relu(_bn(_conv(x, s, f"{b}.conv_reduce"), s, f"{b}.bn_reduce"))
        out = F.relu(_bn(_conv(out, s, f"{b}.conv_conv", st, 1, cardinality), s, f"{b}.bn"))
        out = _bn(_conv(out, s, f"{b}.conv_expand"), s, f"{b}.bn_expand")
        short = _bn(_conv(x, s, f"{b}.shortcut.shortcut_conv", st), s, f"{b}.shortcut.shortcut_bn") \
            if f"{b}.shortcut.shortcut_conv.weight" in s else x
        x = F.relu(out + short)
    return x


def _attention(ax, s, gap, apply_bn_att=True):
    """BN, 1x1 conv to K maps, BN, ReLU; logits: 1x1 conv, average pool; map: 3x3 conv, BN, sigmoid."""
    ax = _bn(ax, s, "bn_att") if apply_bn_att else ax
    ax = F.relu(_bn(_conv(ax, s, "att_conv"), s, "bn_att2"))
    att = torch.sigmoid(_bn(_conv(ax, s, "att_conv3", 1, 1), s, "bn_att3"))
    return F.avg_pool2d(_conv(ax, s, "att_conv2"), gap).flatten(1), att


def _fc(x, s, p="fc"):
    return F.linear(x, s[f"{p}.weight"], s[f"{p}.bias"])


def cifar_resnet_forward(s, x):
    x = _resnet_stage(_resnet_stage(F.relu(_bn(_conv(x, s, "conv1", 1, 1), s, "bn1")), s, "layer1", 1), s, "layer2", 2)
    att_logits, att = _attention(_resnet_stage(x, s, "att_layer3", 1), s, 16)
    rx = _resnet_stage(x * att + x, s, "layer3", 2)
    return _fc(F.avg_pool2d(rx, 8).flatten(1), s), att_logits, att


def imagenet_resnet_forward(s, x):
    x = F.max_pool2d(F.relu(_bn(_conv(x, s, "conv1", 2, 3), s, "bn1")), 3, 2, 1)
    for i, stride in ((1, 1), (2, 2), (3, 2)):
        x = _resnet_stage(x, s, f"layer{i}", stride)
    att_logits, att = _attention(_resnet_stage(x, s, "att_layer4", 1), s, 14)
    rx = _resnet_stage(x * att + x, s, "layer4", 2)
    return _fc(F.avg_pool2d(rx, 7, 1).flatten(1), s), att_logits, att


def wrn_forward(s, x):
    x = _wrn_stage(_wrn_stage(_conv(x, s, "conv1", 1, 1), s, "block1", 1), s, "block2", 2)
    att_logits, att = _attention(_wrn_stage(x, s, "att_block3", 1), s, 16)
    rx = F.relu(_bn(_wrn_stage(x * att + x, s, "block3", 2), s, "bn1"))
    return _fc(F.avg_pool2d(rx, 8).flatten(1), s), att_logits, att


def densenet_forward(s, x):
    x = _conv(x, s, "conv1", 1, 1)
    x = _transition(_dense_block(_transition(_dense_block(x, s, "dense1"), s, "trans1"), s, "dense2"), s, "trans2")
    att_logits, att = _attention(_dense_block(x, s, "att_dense3"), s, 8)
    rx = F.relu(_bn(_dense_block(x * att + x, s, "dense3"), s, "bn"))
    return _fc(F.avg_pool2d(rx, 8).flatten(1), s), att_logits, att


def resnext_forward(s, x, cardinality=8):
    x = F.relu(_bn(_conv(x, s, "conv_1_3x3", 1, 1), s, "bn_1"))
    x = _resnext_stage(_resnext_stage(x, s, "stage_1", 1, cardinality), s, "stage_2", 2, cardinality)
    # the research ResNeXt's forward pass skips its bn_att
    att_logits, att = _attention(_resnext_stage(x, s, "stage_att", 1, cardinality), s, 16, apply_bn_att=False)
    rx = _resnext_stage(x * att + x, s, "stage_3", 2, cardinality)
    return _fc(F.avg_pool2d(rx, 8, 1).flatten(1), s, "classifier"), att_logits, att


# abnet name -> (classes, input size, research layout, research forward)
PUBLISHED = {
    "resnet110_abn": (100, 32, lambda k: cifar_resnet_spec(110, k), cifar_resnet_forward),
    "densenet100_abn": (100, 32, lambda k: densenet_spec(100, 12, k), densenet_forward),
    "wrn28_10_abn": (100, 32, lambda k: wrn_spec(28, 10, k), wrn_forward),
    "resnext29_8x64d_abn": (100, 32, lambda k: resnext_spec(29, 8, k), resnext_forward),
    "resnet50_abn": (1000, 224, lambda k: imagenet_resnet_spec((3, 4, 6, 3), True, k), imagenet_resnet_forward),
    "resnet101_abn": (1000, 224, lambda k: imagenet_resnet_spec((3, 4, 23, 3), True, k), imagenet_resnet_forward),
    "resnet152_abn": (1000, 224, lambda k: imagenet_resnet_spec((3, 8, 36, 3), True, k), imagenet_resnet_forward),
}
OTHER_DEPTHS = {  # basic blocks, another class count
    "resnet20_abn": (10, 32, lambda k: cifar_resnet_spec(20, k), cifar_resnet_forward),
    "resnet18_abn": (1000, 224, lambda k: imagenet_resnet_spec((2, 2, 2, 2), False, k), imagenet_resnet_forward),
}
CASES = {**PUBLISHED, **OTHER_DEPTHS}


def calibrated(name: str, seed: int, classes: int | None = None, tracked: bool = True) -> State:
    """A random research state dict for ``name`` whose BN statistics are those of a batch of random images, as a
    trained network's are of its data: activations keep their scale through 152 layers and the maps do not
    saturate, so that every layer counts in the comparison."""
    k, size, spec, forward = CASES[name]
    state = random_state(spec(classes or k), seed, tracked)
    with torch.no_grad():
        forward(Calibrating(state), torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return state


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max().clamp_min(1e-6))


def outputs_match(name: str, state: State, file: Path) -> bool:
    """Whether abnet's ``name`` with the weights of ``file`` computes what the research model of ``state`` does."""
    classes, size, _, forward = CASES[name]
    model = abnet.create_model(name, num_classes=classes, weights=file).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        logits, att_logits, att = forward(state, x)
    assert att.std() > 1e-3 and 0.01 < att.mean() < 0.99, "the reference map is degenerate: the check would be weak"
    return close(out.logits, logits) and close(out.att_logits, att_logits) and close(out.attention, att)


@pytest.mark.parametrize("name", list(CASES))
def test_a_research_checkpoint_loads_exactly(name, tmp_path):
    state = calibrated(name, seed=0)
    file = save_research(state, tmp_path / "checkpoint.pth.tar", arch=name.removesuffix("_abn"))
    assert outputs_match(name, state, file)


def test_a_pytorch_0_4_checkpoint_and_a_bare_research_state_dict(tmp_path):
    """The research code ran on PyTorch 0.4.0: legacy serialisation, no num_batches_tracked."""
    state = calibrated("resnet20_abn", seed=2, tracked=False)
    assert outputs_match("resnet20_abn", state, save_research(state, tmp_path / "model_best.pth.tar", legacy=True))
    torch.save(state, tmp_path / "bare.pt")
    assert outputs_match("resnet20_abn", state, tmp_path / "bare.pt")


@pytest.mark.parametrize("wrong", [
    {"layer3": "attention_branch.stage", "att_layer3": "perception.stages"},  # a stage and its attention copy
    {"layer2.0.bn1": "features.layer2.0.bn2", "layer2.0.bn2": "features.layer2.0.bn1"},  # two BNs of one block
])
def test_a_key_mapped_to_the_wrong_layer_is_caught(wrong, tmp_path, monkeypatch):
    """Same-shaped layers swapped in the mapping load without complaint; the outputs must then differ."""
    state = calibrated("resnet20_abn", seed=3)
    file = save_research(state, tmp_path / "checkpoint.pth.tar")
    assert outputs_match("resnet20_abn", state, file)
    for research_name, abnet_name in wrong.items():
        monkeypatch.setitem(research.FAMILIES["cifar_resnet"].modules, research_name, abnet_name)
    assert not outputs_match("resnet20_abn", state, file)


def test_another_depth_class_count_or_family_is_refused(tmp_path):
    state = calibrated("resnet20_abn", seed=4, classes=100)
    file = save_research(state, tmp_path / "checkpoint.pth.tar")
    with pytest.raises(CheckpointError, match=r"holds an ABN CIFAR ResNet-20 for 100 classes .* does not fit "
                                              r"resnet32_abn \(num_classes=100\): .*missing keys .*"
                                              r"create_model\('resnet20_abn', num_classes=100"):
        abnet.create_model("resnet32_abn", num_classes=100, weights=file)
    with pytest.raises(CheckpointError, match=r"resnet20_abn \(num_classes=10\): 9 shape mismatches \(e\.g\. "
                                              r"attention_branch\.conv\.weight \(100, 64, 1, 1\) vs \(10, 64, 1, 1\)"):
        abnet.create_model("resnet20_abn", num_classes=10, weights=file)
    with pytest.raises(CheckpointError, match="does not fit densenet100_abn .*unexpected keys"):
        abnet.create_model("densenet100_abn", num_classes=100, weights=file)
    with pytest.raises(CheckpointError, match="does not fit resnet20 .*unexpected keys .*attention_branch"):
        abnet.create_model("resnet20", num_classes=100, weights=file)  # the plain model has no attention branch
    with pytest.raises(CheckpointError, match="map_conv.weight"):
        abnet.create_model("resnet20_abn", num_classes=100, map_kernel=1, weights=file)


def test_a_torchvision_resnet_state_dict_loads_into_the_plain_model(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = abnet.create_model("resnet18", num_classes=1000, weights=tmp_path / "resnet18.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert close(model(x), reference(x))


def test_a_plain_model_in_the_research_names_loads(tmp_path):
    """The baselines the research code builds on (same names, no attention branch) load into abnet's plain models."""
    spec = [(k, s) for k, s in cifar_resnet_spec(20, 10) if not k.startswith(("att_", "bn_att"))]
    state = random_state(spec, seed=5)
    torch.save({"state_dict": state, "epoch": 1, "best_acc": 0.0, "optimizer": {}}, tmp_path / "plain.pth.tar")
    model = abnet.create_model("resnet20", num_classes=10, weights=tmp_path / "plain.pth.tar").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_x = _resnet_stage(_resnet_stage(F.relu(_bn(_conv(x, state, "conv1", 1, 1), state, "bn1")), state,
                                            "layer1", 1), state, "layer2", 2)
        reference = _fc(F.avg_pool2d(_resnet_stage(ref_x, state, "layer3", 2), 8).flatten(1), state)
        assert close(model(x), reference)


def test_a_research_se_resnet_is_refused_in_one_line(tmp_path):
    spec = imagenet_resnet_spec((3, 4, 6, 3), True, 10)
    spec = [(k, s) for k, s in spec if not k.startswith(("att_conv3", "bn_att3"))]
    spec += linear("layer1.0.fc1", 16, 256) + linear("layer1.0.fc2", 256, 16)  # enough to look like one
    torch.save({"state_dict": {k: torch.zeros(s) for k, s in spec}}, tmp_path / "se.pth.tar")
    with pytest.raises(CheckpointError, match=r"^[^\n]*holds an ABN SE-ResNet-50 for 10 classes.*cannot load it "
                                              r"exactly: .*sum\(log\(1 \+ evidence\)\)[^\n]*$"):
        abnet.create_model("se_resnet50_abn", num_classes=10, weights=tmp_path / "se.pth.tar")


def test_a_pickle_that_carries_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": Payload()}, tmp_path / "evil.pth.tar")
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth\.tar: .*could run code"):
        abnet.create_model("resnet20_abn", weights=tmp_path / "evil.pth.tar")
    assert not marker.exists()
    with open(tmp_path / "evil.pth.tar", "rb") as f:  # the control: an unrestricted unpickler runs it
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_truncated_garbage_and_empty_files_are_one_line_errors(tmp_path):
    state = random_state(cifar_resnet_spec(20, 10), seed=6)
    whole = save_research(state, tmp_path / "checkpoint.pth.tar").read_bytes()
    for name, data in (("zip.pth.tar", whole[: len(whole) // 2]), ("garbage.pt", b"not a checkpoint at all"),
                       ("empty.pt", b""), ("half.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=r"^[^\n]+$") as err:
            abnet.create_model("resnet20_abn", weights=tmp_path / name)
        assert name in str(err.value)
    save_research(state, tmp_path / "legacy.pth.tar", legacy=True)
    data = (tmp_path / "legacy.pth.tar").read_bytes()
    (tmp_path / "legacy.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch"):
        abnet.create_model("resnet20_abn", weights=tmp_path / "legacy.pth.tar")
    with pytest.raises(CheckpointError, match="does not exist"):
        abnet.create_model("resnet20_abn", weights=tmp_path / "missing.pt")


def test_abnet_checkpoints_via_weights(tmp_path):
    """best.safetensors, last.pt and a run folder load; the model name and class count in their metadata are
    checked; the path is not kept in abnet_config (a reload from a checkpoint must not read it again)."""
    source = abnet.create_model("resnet20_abn", num_classes=3).eval()
    meta = {"version": 1, "model_config": {"model": "resnet20_abn", "num_classes": 3}, "classes": ["a", "b", "c"],
            "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [32, 32]}
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(tensors, str(tmp_path / "best.safetensors"), metadata={"abnet": json.dumps(meta)})
    (tmp_path / "last").mkdir()
    torch.save({"model": source.state_dict(), "meta": meta, "epoch": 3, "optimizer": {}}, tmp_path / "last" / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    for file in (tmp_path / "best.safetensors", tmp_path / "last" / "last.pt", tmp_path, tmp_path / "last"):
        model = abnet.create_model("resnet20_abn", num_classes=3, weights=file).eval()
        assert model.abnet_config == {"model": "resnet20_abn", "num_classes": 3}
        with torch.no_grad():
            assert torch.equal(model(x).logits, source(x).logits)
    with pytest.raises(CheckpointError, match=r"holds abnet's resnet20_abn, not resnet32_abn"):
        abnet.create_model("resnet32_abn", num_classes=3, weights=tmp_path / "best.safetensors")
    with pytest.raises(CheckpointError, match=r"holds resnet20_abn built with num_classes=3, not num_classes=10"):
        abnet.create_model("resnet20_abn", num_classes=10, weights=tmp_path / "last" / "last.pt")
    four = abnet.create_model("resnet20_abn", num_classes=4)  # weights that contradict their own metadata
    save_file({k: v.contiguous() for k, v in four.state_dict().items()}, str(tmp_path / "lying.safetensors"),
              metadata={"abnet": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"holds abnet's resnet20_abn for 3 classes, which does not fit "
                                              r"resnet20_abn \(num_classes=3\): .*shape mismatches"):
        abnet.create_model("resnet20_abn", weights=tmp_path / "lying.safetensors")


def test_a_plain_safetensors_state_dict_in_abnet_names(tmp_path):
    source = abnet.create_model("resnet20", num_classes=4).eval()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "weights.bin"))
    model = abnet.create_model("resnet20", num_classes=4, weights=tmp_path / "weights.bin").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))

