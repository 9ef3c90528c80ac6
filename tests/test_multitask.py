import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import n_params
from torch import nn

import abnet
from abnet.models import ABN, BackboneSplit, MultiTaskABN, balanced_pos_weight, group_per_task
from abnet.models.cifar_resnet import cifar_resnet_split
from abnet.models.common import ClassifierHead


def tiny_split(num_classes: int, attention: bool, norm: type[nn.Module] = nn.BatchNorm2d) -> BackboneSplit:
    """8x8 -> 4x4 features with 8 channels; the perception branch ends in ``norm`` over 16 channels."""
    features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    stages = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), norm(16) if norm is nn.BatchNorm2d else norm([16, 2, 2]))
    perception = ClassifierHead(stages, 16, num_classes)
    att = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU()) if attention else None
    return BackboneSplit(features, perception, att, 16)


class DenseLayer(nn.Module):
    """Concatenates its input with a grouped conv of it, as DenseNet does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.cat([x, F.relu(self.bn(self.conv(x)))], 1)


def dense_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), DenseLayer(), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def resnet20_perception() -> nn.Module:
    return cifar_resnet_split(20, num_classes=1, attention=False).perception


@pytest.mark.parametrize("make, in_channels", [(dense_net, 3), (resnet20_perception, 32)])
def test_grouped_network_equals_running_each_copy(make, in_channels):
    torch.manual_seed(0)
    t, n = 3, 4
    copies = [make() for _ in range(t)]
    fused = group_per_task(lambda i: copy.deepcopy(copies[i]), t)
    x = torch.randn(n, t, in_channels, 8, 8)

    def separate():
        return torch.stack([copies[i](x[:, i]) for i in range(t)], 1).reshape(n * t, -1)

    # Training mode: BatchNorm normalises each task over its own batch and updates its own running stats.
    fused_out, loop_out = fused(x.reshape(n * t, *x.shape[2:])), separate()
    torch.testing.assert_close(fused_out, loop_out, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(loop_out)
    (fused_out * weights).sum().backward()
    (loop_out * weights).sum().backward()
    first_conv = next(m for m in fused.modules() if isinstance(m, nn.Conv2d))
    copy_convs = [next(m for m in c.modules() if isinstance(m, nn.Conv2d)) for c in copies]
    torch.testing.assert_close(first_conv.weight.grad, torch.cat([c.weight.grad for c in copy_convs]),
                               rtol=1e-4, atol=1e-5)
    fused.eval()
    for c in copies:
        c.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x.reshape(n * t, *x.shape[2:])), separate(), rtol=1e-4, atol=1e-5)


def test_each_task_is_initialised_like_a_single_copy():
    torch.manual_seed(0)
    t = 4
    fused = group_per_task(lambda i: resnet20_perception(), t)
    conv = fused.stages[0].conv1.layer  # Conv2d(32, 64, 3) per task: He-normal, fan-out 64 * 9
    per_task = conv.weight.view(t, 64, 32, 3, 3)
    assert per_task.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert not torch.equal(per_task[0], per_task[1])
    fc = fused.fc.weight.view(t, 1, 64)  # nn.Linear's default: uniform within 1/sqrt(fan-in)
    assert fc.abs().max().item() <= 1 / 8 and not torch.equal(fc[0], fc[1])


def test_unknown_layer_with_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="LayerNorm.*shared=True"):
        group_per_task(lambda i: nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4)), 2)
    with pytest.raises(ValueError, match="LayerNorm.*shared=True"):
        MultiTaskABN(lambda **kw: tiny_split(norm=nn.LayerNorm, **kw), 3)
    MultiTaskABN(lambda **kw: tiny_split(norm=nn.LayerNorm, **kw), 3, shared=True)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("tasks", [1, 3, 5])
def test_output_shapes_and_map_ranges(tasks, shared):
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn_mt", num_classes=tasks, shared=shared)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.logits.shape == out.att_logits.shape == (2, tasks)
    assert out.attention.shape == (2, tasks, 8, 8)
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert (model.num_tasks, model.shared, model.mask) == (tasks, shared, "residual")
    assert {"features", "attention_branch", "perception"} <= {n for n, _ in model.named_children()}


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("mask", ["residual", "multiply"])
def test_each_map_changes_only_its_own_tasks_logit(shared, mask):
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn_mt", num_classes=3, shared=shared, mask=mask).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        own = model(x)
        for task in range(3):
            edited = own.attention.clone()
            edited[:, task] = torch.rand(2, 8, 8)
            out = model(x, attention=edited)
            changed = ~torch.isclose(out.logits, own.logits, rtol=0, atol=1e-6)
            assert changed[:, task].all() and not changed[:, [i for i in range(3) if i != task]].any()
            torch.testing.assert_close(out.att_logits, own.att_logits)


@pytest.mark.parametrize("shared", [False, True])
def test_one_task_behaves_like_a_single_output_abn(shared):
    torch.manual_seed(0)
    single = ABN(tiny_split(1, True), 1).eval()
    torch.manual_seed(0)
    multi = MultiTaskABN(tiny_split, 1, shared=shared).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(single(x), multi(x), strict=True):
            torch.testing.assert_close(a, b)


def test_unshared_perception_has_one_branch_per_task():
    single = n_params(cifar_resnet_split(20, num_classes=1, attention=False).perception)
    for tasks in (1, 4):
        unshared = abnet.create_model("resnet20_abn_mt", num_classes=tasks)
        shared = abnet.create_model("resnet20_abn_mt", num_classes=tasks, shared=True)
        assert n_params(unshared.perception) == tasks * single
        assert n_params(shared.perception) == single + (tasks - 1) * 65  # the fc's extra outputs
        assert n_params(unshared.attention_branch) == n_params(shared.attention_branch)


def test_given_map_of_wrong_shape_is_a_clear_error():
    model = abnet.create_model("resnet20_abn_mt", num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"does not fit.*\(N, 3, h, w\)"):
        model(x, attention=torch.ones(2, 2, 8, 8))
    with torch.no_grad():  # one map for every task broadcasts
        assert model(x, attention=torch.ones(2, 1, 8, 8)).logits.shape == (2, 3)


def test_registry_has_multitask_variants():
    names = abnet.list_models()
    assert {"resnet20_abn_mt", "resnet18_abn_mt", "densenet100_abn_mt"} <= set(names)
    info = abnet.models.model_info("resnet20_abn_mt")
    assert info.is_abn and info.is_multitask and not abnet.models.model_info("resnet20_abn").is_multitask
    model = abnet.create_model("resnet20_abn_mt", num_classes=4, shared=True)
    assert isinstance(model, MultiTaskABN) and model.shared and model.num_tasks == 4
    assert model.abnet_config == {"model": "resnet20_abn_mt", "num_classes": 4, "shared": True}


def test_pos_weight_scales_the_positive_terms():
    out = abnet.ABNOutput(torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2, 2, 2))
    target = torch.tensor([[1.0, 0.0]])
    plain = abnet.abn_loss(out, target)
    weight = torch.tensor([3.0, 5.0])  # positive in task 0 only: task 1's weight does not matter
    weighted = abnet.abn_loss(out, target, pos_weight=weight)
    expected = plain + 2 * (F.softplus(-torch.tensor(0.5)) + F.softplus(torch.tensor(0.0))) / 2
    torch.testing.assert_close(weighted, expected)
    with pytest.raises(ValueError, match="pos_weight"):
        abnet.abn_loss(out, torch.tensor([1]), pos_weight=weight)


def test_balanced_pos_weight_is_negatives_over_positives_clamped():
    labels = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]])
    torch.testing.assert_close(balanced_pos_weight(labels), torch.tensor([3.0, 10.0, 0.1, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        balanced_pos_weight(torch.ones(4))


@pytest.mark.parametrize("shared", [False, True])
def test_training_on_multi_label_data_lowers_the_loss(shared):
    torch.manual_seed(0)
    model = MultiTaskABN(tiny_split, 3, shared=shared)
    x = torch.randn(8, 3, 8, 8)
    y = (torch.rand(8, 3) < 0.3).float()
    pos_weight = balanced_pos_weight(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = abnet.abn_loss(model(x), y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("size, stride", [(4, 1), (4, 2), (5, 2), (12, 1)])
def test_grouped_conv_matmul_path_equals_the_grouped_convolution(size, stride):
    """Small outputs run as one batched matrix product, larger ones as a grouped conv: the same numbers."""
    from abnet.models.multitask import MATMUL_MAX_POSITIONS, GroupedConv2d

    torch.manual_seed(0)
    layer = GroupedConv2d(torch.nn.Conv2d(6, 5, 3, stride, 1, bias=True), num_tasks=3)
    torch.nn.init.normal_(layer.layer.weight)
    torch.nn.init.normal_(layer.layer.bias)
    x = torch.randn(2 * 3, 6, size, size)
    expected = torch.nn.functional.conv2d(x.reshape(2, 18, size, size), layer.layer.weight, layer.layer.bias,
                                          stride, 1, groups=3).reshape(6, 5, *((size - 1) // stride + 1,) * 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    assert (expected.shape[-1] ** 2 <= MATMUL_MAX_POSITIONS) == (size < 12)  # both paths are exercised
