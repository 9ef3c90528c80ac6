import pytest
import torch
from conftest import n_params, params_without_gradient

import abnet
from abnet.models import ABNOutput, UnknownModelError

# The research implementation's parameter counts for num_classes=100 (issue 2).
RESEARCH_PARAMS = {
    "resnet20_abn": 501_650,
    "resnet32_abn": 844_050,
    "resnet44_abn": 1_262_290,
    "resnet56_abn": 1_588_562,
    "resnet110_abn": 3_056_786,
}


@pytest.mark.parametrize("name, expected", RESEARCH_PARAMS.items())
def test_parameter_counts_match_research_code(name, expected):
    assert n_params(abnet.create_model(name, num_classes=100)) == expected


@pytest.mark.parametrize("name", [n for n in abnet.list_models() if not n.endswith("_abn_mt")])
def test_every_model_output_shapes_and_ranges(name):
    """At its default input size (32x32 or 224x224), batch 1 for the big ones (multi-task ABNs: test_multitask.py)."""
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=7).eval()
    c, h, w = abnet.models.model_info(name).input_size
    n = 2 if h <= 64 else 1
    x = torch.randn(n, c, h, w)
    with torch.no_grad():
        out = model(x)
        g = model.features(x)
    if name.endswith("_abn"):
        assert isinstance(out, ABNOutput)
        assert out.logits.shape == (n, 7) and out.att_logits.shape == (n, 7)
        assert out.attention.shape == (n, 1, *g.shape[2:])  # the size of the feature map g(x)
        assert out.attention.shape[2:] == ((16, 16) if h == 32 and "densenet" not in name else
                                           (8, 8) if h == 32 else (14, 14))
        assert out.attention.min() >= 0 and out.attention.max() <= 1
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.att_logits).all()
    else:
        assert out.shape == (n, 7) and torch.isfinite(out).all()


def test_abn_exposes_three_parts_and_plain_model_has_none():
    model = abnet.create_model("resnet20_abn")
    assert {"features", "attention_branch", "perception"} <= {n for n, _ in model.named_children()}
    plain = abnet.create_model("resnet20")
    assert not any("attention" in n for n, _ in plain.named_modules())


@pytest.mark.parametrize("size", [(40, 24), (64, 64), (8, 8)])
def test_any_input_size_gives_a_map_of_the_feature_size(size):
    model = abnet.create_model("resnet20_abn", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.attention.shape == (1, 1, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert out.logits.shape == (1, 3)


def test_output_unpacks_like_a_tuple():
    model = abnet.create_model("resnet20_abn", num_classes=4).eval()
    with torch.no_grad():
        logits, att_logits, attention = model(torch.randn(1, 3, 32, 32))
    assert logits.shape == att_logits.shape == (1, 4) and attention.dim() == 4


def _logits_with_maps(mask: str):
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=5, mask=mask).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        zeros = model(x, attention=torch.zeros(2, 1, 16, 16))
        ones = model(x, attention=torch.ones(2, 1, 16, 16))
        own = model(x)
        random = model(x, attention=torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    return zeros, ones, own, random


def test_mask_none_ignores_the_map():
    zeros, ones, own, random = _logits_with_maps("none")
    torch.testing.assert_close(zeros.logits, ones.logits)
    torch.testing.assert_close(zeros.logits, own.logits)
    torch.testing.assert_close(zeros.logits, random.logits)


@pytest.mark.parametrize("mask", ["residual", "multiply"])
def test_masking_modes_use_the_map(mask):
    zeros, ones, own, random = _logits_with_maps(mask)
    assert not torch.allclose(zeros.logits, ones.logits, atol=1e-4)
    assert not torch.allclose(own.logits, random.logits, atol=1e-4)
    # The attention branch does not depend on a given map; the output carries the map that was read.
    torch.testing.assert_close(zeros.att_logits, ones.att_logits)
    assert torch.equal(ones.attention, torch.ones(2, 1, 16, 16))


def test_residual_with_zero_map_equals_none():
    torch.manual_seed(0)
    residual = abnet.create_model("resnet20_abn", num_classes=5, mask="residual").eval()
    none = abnet.create_model("resnet20_abn", num_classes=5, mask="none").eval()
    none.load_state_dict(residual.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(residual(x, attention=torch.zeros(16, 16)).logits, none(x).logits)


def test_given_map_of_wrong_size_is_a_clear_error():
    model = abnet.create_model("resnet20_abn").eval()
    with pytest.raises(ValueError, match="does not fit"):
        model(torch.randn(2, 3, 32, 32), attention=torch.ones(2, 1, 8, 8))


@pytest.mark.parametrize("mask", ["residual", "multiply"])
def test_every_parameter_gets_a_gradient(mask):
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=4, mask=mask)
    assert params_without_gradient(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])) == []


def test_in_mask_none_only_the_map_head_gets_no_gradient():
    model = abnet.create_model("resnet20_abn", num_classes=4, mask="none")
    abnet.abn_loss(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None}
    assert missing == {"attention_branch.map_conv.weight", "attention_branch.map_bn.weight",
                       "attention_branch.map_bn.bias"}


def test_abn_loss_is_the_sum_of_both_cross_entropies():
    out = ABNOutput(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 1, 2, 2))
    target = torch.tensor([0])
    expected = torch.nn.functional.cross_entropy(out.logits, target) + torch.nn.functional.cross_entropy(
        out.att_logits, target)
    torch.testing.assert_close(abnet.abn_loss(out, target), expected)


def test_map_kernel_is_a_parameter():
    m1 = abnet.create_model("resnet20_abn", num_classes=10, map_kernel=1)
    m3 = abnet.create_model("resnet20_abn", num_classes=10)
    assert m1.attention_branch.map_conv.kernel_size == (1, 1)
    assert n_params(m3) - n_params(m1) == 10 * 8  # K * (3*3 - 1*1)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mask"):
        abnet.create_model("resnet20_abn", mask="add")
    with pytest.raises(ValueError, match="map_kernel"):
        abnet.create_model("resnet20_abn", map_kernel=2)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="resnet20_abn"):
        abnet.create_model("resnet20abn")


def test_list_models_filters_by_pattern():
    assert abnet.list_models("resnet??_abn") == [f"resnet{d}_abn" for d in (18, 20, 32, 34, 44, 50, 56)]
    abn = abnet.list_models("*abn")
    assert all(n.endswith("_abn") for n in abn) and len(abn) * 3 == len(abnet.list_models())
    assert abnet.list_models("*_abn_mt") == [f"{n}_mt" for n in abn]
    assert "resnet56" in abnet.list_models() and abnet.list_models("nothing*") == []


def test_blocks_follow_the_research_code():
    from abnet.models.cifar_resnet import BasicBlock, Bottleneck

    def block_types(model):
        return {type(m) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))}

    assert block_types(abnet.create_model("resnet32")) == {BasicBlock}
    assert block_types(abnet.create_model("resnet44")) == {Bottleneck}
    n = sum(isinstance(m, (BasicBlock, Bottleneck)) for m in abnet.create_model("resnet110").modules())
    assert n == 3 * 18


@pytest.mark.parametrize("name", abnet.list_models("*_abn"))
def test_every_abn_model_trains_every_parameter_and_reads_a_given_map(name):
    """Small inputs (32x32, or 64x64 for the ImageNet-size models) keep the backward passes cheap."""
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=3)
    size = 32 if abnet.models.model_info(name).input_size[1] <= 64 else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    abnet.abn_loss(out, torch.tensor([0, 2])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        ones = model(x, attention=torch.ones_like(out.attention))
        zeros = model(x, attention=torch.zeros_like(out.attention))
    assert not torch.allclose(ones.logits, zeros.logits)


@pytest.mark.parametrize("name", ["vgg16_bn_abn", "densenet100"])
def test_an_input_too_small_for_the_network_is_a_clear_error(name):
    model = abnet.create_model(name, num_classes=3).eval()
    with pytest.raises(ValueError, match=f"an input of 2x2 pixels is too small for {name}"):
        model(torch.randn(1, 3, 2, 2))
