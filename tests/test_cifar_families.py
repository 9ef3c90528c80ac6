import pytest
import torch
from conftest import n_params, params_without_gradient
from torch import nn

import abnet
from abnet.models import ABNOutput, densenet, resnext, wide_resnet  # noqa: F401  (importing a family registers it)

# The research implementation's ABN parameter counts for num_classes=100.
RESEARCH_ABN_PARAMS = {
    "wrn28_10_abn": 64_475_666,
    "densenet100_abn": 1_122_498,
    "densenet190_40_abn": 35_635_722,
    "resnext29_8x64d_abn": 60_881_666,
    "resnext29_16x64d_abn": 120_324_866,
}

# Plain models for CIFAR-10: exact counts, and the millions that the pytorch-classification README
# (the code the ABN research code forks) publishes, which the exact counts must round to.
PLAIN_CIFAR10_PARAMS = {
    "wrn28_10": (36_479_194, 36.48),
    "densenet100": (769_162, 0.77),
    "densenet190_40": (25_624_430, 25.62),
    "resnext29_8x64d": (34_426_698, 34.43),
    "resnext29_16x64d": (68_155_210, 68.16),
}

# Models small enough for a forward pass on a CPU: (name, family arguments that shrink it, map side).
# The attention map is 16x16 where stage 3 is repeated at stride 1, 8x8 for DenseNet (whose
# feature extractor ends with the second transition).
SMALL_MODELS = [
    ("wrn28_10", {"depth": 10, "widen": 1}, 16),
    ("densenet100", {}, 8),
    ("resnext29_8x64d", {"depth": 11, "cardinality": 2, "base_width": 4}, 16),
]


@pytest.mark.parametrize("name, expected", RESEARCH_ABN_PARAMS.items())
def test_abn_parameter_counts_match_research_code(name, expected):
    assert n_params(abnet.create_model(name, num_classes=100)) == expected


@pytest.mark.parametrize("name, expected", PLAIN_CIFAR10_PARAMS.items())
def test_plain_parameter_counts_match_published(name, expected):
    exact, published_millions = expected
    n = n_params(abnet.create_model(name, num_classes=10))
    assert n == exact and round(n / 1e6, 2) == published_millions


@pytest.mark.parametrize("name, kwargs, side", SMALL_MODELS)
def test_abn_forward_shapes_and_ranges(name, kwargs, side):
    torch.manual_seed(0)
    model = abnet.create_model(f"{name}_abn", num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, ABNOutput)
    assert out.logits.shape == (2, 7) and out.att_logits.shape == (2, 7)
    assert out.attention.shape == (2, 1, side, side)
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.att_logits).all()


@pytest.mark.parametrize("name, kwargs, side", SMALL_MODELS)
def test_plain_model_returns_logits(name, kwargs, side):
    model = abnet.create_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7) and torch.isfinite(out).all()
    assert not any("attention" in n for n, _ in model.named_modules())


@pytest.mark.parametrize("name, kwargs, side", SMALL_MODELS)
def test_every_parameter_gets_a_gradient(name, kwargs, side):
    torch.manual_seed(0)
    model = abnet.create_model(f"{name}_abn", num_classes=4, **kwargs)
    assert params_without_gradient(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])) == []


def test_attention_stage_repeats_the_last_stage():
    """The repeated stage has the same parameters as the perception branch's last stage."""
    model = abnet.create_model("densenet100_abn", num_classes=10)
    assert n_params(model.attention_branch.stage) == n_params(model.perception.stages[0])
    model = abnet.create_model("wrn28_10_abn", num_classes=10, depth=10, widen=2)
    assert n_params(model.attention_branch.stage) == n_params(model.perception.stages[0])


def test_wrn28_10_uses_dropout_0_3():
    model = abnet.create_model("wrn28_10", depth=10, widen=1)
    rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.3}


@pytest.mark.parametrize("name, kwargs", [
    ("wrn28_10", {"depth": 27}),
    ("densenet100", {"depth": 99}),
    ("densenet100", {"compression": 0.0}),
    ("resnext29_8x64d", {"depth": 30}),
])
def test_bad_family_arguments_are_clear_errors(name, kwargs):
    with pytest.raises(ValueError, match="depth|compression"):
        abnet.create_model(name, **kwargs)


def test_families_are_registered_in_pairs():
    names = set(abnet.list_models())
    for name in ("wrn28_10", "densenet100", "densenet190_40", "resnext29_8x64d", "resnext29_16x64d"):
        assert {name, f"{name}_abn"} <= names
