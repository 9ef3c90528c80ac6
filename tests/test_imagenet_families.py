"""ImageNet families: parameter parity with torchvision and the ABN research code, state dict loading, map sizes.

Parameter counts are taken on the meta device (no memory, no initialisation cost); only the
loading and forward tests build real weights, on 64x64 inputs.
"""

import pytest
import torch
import torchvision
from conftest import n_params, randomize_batch_norm

import abnet
from abnet.models import imagenet_resnet, se_resnet, vgg  # noqa: F401  (importing a family registers it)

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}

# The ABN research code's ImageNet models, num_classes=1000.
RESEARCH_ABN_PARAMS = {
    "resnet18_abn": 21_607_266,
    "resnet34_abn": 36_436_066,
    "resnet50_abn": 43_584_866,
    "resnet101_abn": 62_576_994,
    "resnet152_abn": 78_220_642,
    "se_resnet50_abn": 47_686_248,
    "se_resnet101_abn": 68_925_096,
}

# The research SE-ResNet makes its map as sum(log(1 + evidence)) over the K evidence maps, without
# the map head (3x3 conv K->1 and a BN of one channel) that its ResNets and abnet's ABN have.
SE_MAP_HEAD = 1000 * 3 * 3 + 2

LOADERS = {"resnet": imagenet_resnet.load_torchvision_state_dict, "vgg": vgg.load_torchvision_state_dict}


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return abnet.create_model(name, **kwargs)


def torchvision_model(name: str, **kwargs) -> torch.nn.Module:
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def loader(name: str):
    return LOADERS["vgg" if name.startswith("vgg") else "resnet"]


def test_families_register_at_imagenet_size_beside_the_cifar_resnets():
    for name in [*TORCHVISION_PARAMS, "se_resnet50", "se_resnet101"]:
        for key in (name, f"{name}_abn"):
            assert abnet.models.model_info(key).input_size == (3, 224, 224)
    assert abnet.models.model_info("resnet20_abn").input_size == (3, 32, 32)


@pytest.mark.parametrize("name, expected", TORCHVISION_PARAMS.items())
def test_plain_models_have_torchvision_parameter_counts(name, expected):
    with torch.device("meta"):
        reference = n_params(torchvision_model(name))
    assert n_params(on_meta(name, num_classes=1000)) == reference == expected


@pytest.mark.parametrize("name, expected", RESEARCH_ABN_PARAMS.items())
def test_abn_parameter_counts_match_research_code(name, expected):
    extra = SE_MAP_HEAD if name.startswith("se_") else 0
    assert n_params(on_meta(name, num_classes=1000)) == expected + extra


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16_bn"])
def test_torchvision_state_dict_loads_and_gives_the_same_output(name):
    torch.manual_seed(0)
    reference = randomize_batch_norm(torchvision_model(name, num_classes=10))
    model = abnet.create_model(name, num_classes=10).eval()
    loader(name)(model, reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_torchvision_state_dict_loads_into_the_abn_backbone():
    """With a zero map the residual mask reads g(x) unchanged, so the perception branch is torchvision's net."""
    torch.manual_seed(0)
    reference = randomize_batch_norm(torchvision_model("resnet18", num_classes=10))
    model = abnet.create_model("resnet18_abn", num_classes=10).eval()
    branch_before = {k: v.clone() for k, v in model.attention_branch.state_dict().items()}
    imagenet_resnet.load_torchvision_state_dict(model, reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, attention=torch.zeros(4, 4)).logits, reference(x))
    for key, value in model.attention_branch.state_dict().items():
        assert torch.equal(value, branch_before[key]), key


@pytest.mark.parametrize("name, other, kwargs, needle", [
    ("resnet50", "resnet18", {}, "missing keys"),
    ("resnet18", "resnet34", {}, "unexpected keys"),
    ("resnet18", "resnet18", {"num_classes": 10}, "shape mismatches"),
    ("vgg16_bn", "vgg19_bn", {}, "unexpected keys"),
    ("vgg16_bn", "resnet18", {}, "missing keys"),
])
def test_state_dict_of_another_architecture_is_a_clear_error(name, other, kwargs, needle):
    with torch.device("meta"):
        state_dict = torchvision_model(other, **kwargs).state_dict()
    with pytest.raises(ValueError, match=rf"model '{name}'.*{needle}"):
        loader(name)(on_meta(name, num_classes=1000), state_dict)


@pytest.mark.parametrize("name", ["resnet18_abn", "se_resnet50_abn", "vgg16_bn_abn"])
def test_abn_forward_gives_a_map_at_one_sixteenth_of_the_input(name):
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == out.att_logits.shape == (1, 5)
    assert out.attention.shape == (1, 1, 4, 4)  # 14x14 for 224x224
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.att_logits).all()
