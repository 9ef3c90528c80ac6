"""ABN around torchvision CNNs: abnet.wrap and the "tv:" model names."""

import pytest
import torch
import torchvision
from conftest import assert_one_line_error, n_params, run_cli, tiny_config
from safetensors.torch import save_file

import abnet
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.train import train
from abnet.errors import AbnetError
from abnet.models import UnknownModelError

# Families the mechanism supports, small members only (each test builds them).
SUPPORTED = ["resnet18", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5",
             "squeezenet1_1", "vgg11_bn"]


def tv(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.fixture
def timm():
    """The timm module: an optional extra, so its tests skip where it is not installed (the test extra and CI
    install it); the torchvision tests run either way."""
    return pytest.importorskip("timm", reason="timm is not installed (pip install 'abnet[timm]')")


def check_zero_map_gives_the_backbone_output(backbone: torch.nn.Module, x: torch.Tensor) -> None:
    """Wrapped with 1000 classes: a zero map (residual mode) reads g(x) unchanged, so the perception branch is
    the backbone; the map lies in [0, 1]; the wrapped model holds the backbone's parameters exactly once."""
    model = abnet.wrap(backbone, num_classes=1000).eval()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model(x, attention=torch.zeros_like(out.attention)).logits, backbone(x))
    assert out.attention.min() >= 0 and out.attention.max() <= 1 and out.att_logits.shape == (len(x), 1000)
    assert n_params(model.features) + n_params(model.perception) == n_params(backbone)  # nothing twice or lost


@pytest.mark.parametrize("name", SUPPORTED)
def test_zero_map_in_residual_mode_gives_the_backbone_output(name):
    check_zero_map_gives_the_backbone_output(tv(name), torch.randn(2, 3, 96, 96))


def test_weights_are_kept_and_the_attention_stage_is_a_separate_copy():
    backbone = tv("resnet18")
    model = abnet.wrap(backbone, num_classes=7)
    assert torch.equal(model.features[0][0].weight, backbone.conv1.weight)
    trunk, copy = model.perception.trunk[0], model.attention_branch.stage[0]
    for (name, a), (_, b) in zip(trunk.named_parameters(), copy.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    assert trunk[0].conv1.stride == (2, 2) and copy[0].conv1.stride == (1, 1)
    assert model.perception.classifier.out_features == 7
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 224, 224))
    assert out.logits.shape == (1, 7) and out.attention.shape == (1, 1, 14, 14)  # 14x14 at 224, as the paper


def test_even_kernel_down_sampling_is_kept_same_size():
    model = abnet.wrap(tv("convnext_tiny"), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).attention.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "vit_b_16"])
def test_backbones_without_stage_structure_are_refused_by_name(name):
    backbone = torchvision.models.get_model(name, weights=None)
    with pytest.raises(AbnetError, match=f"cannot wrap {type(backbone).__name__}"):
        abnet.wrap(backbone, num_classes=10)


def test_tv_names_build_plain_and_abn_models():
    plain = abnet.create_model("tv:resnet18", num_classes=5).eval()
    abn = abnet.create_model("tv:resnet18_abn", num_classes=5, mask="multiply").eval()
    with torch.no_grad():
        assert plain(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        assert abn(torch.randn(1, 3, 64, 64)).logits.shape == (1, 5)
    assert abn.mask == "multiply" and abnet.models.model_info("tv:resnet18_abn").is_abn
    with pytest.raises(UnknownModelError, match="after .tv:. give a classification model"):
        abnet.create_model("tv:nosuchnet_abn")


def test_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(AbnetError, match="not in the local cache"):
        abnet.create_model("tv:resnet18_abn", num_classes=4, pretrained=True)
    reference = tv("resnet18")
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model = abnet.create_model("tv:resnet18_abn", num_classes=4, pretrained=True)
    assert torch.equal(model.features[0][0].weight, reference.conv1.weight)
    assert torch.equal(model.attention_branch.stage[0][0].conv1.weight, reference.layer4[0].conv1.weight)


def test_weights_from_a_file_and_a_file_of_another_architecture(tmp_path):
    reference = tv("resnet18")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    model = abnet.create_model("tv:resnet18", num_classes=1000, weights=str(tmp_path / "r18.safetensors")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    torch.save(tv("mobilenet_v2").state_dict(), tmp_path / "mnv2.pt")
    with pytest.raises(AbnetError, match="do not fit torchvision resnet18"):
        abnet.create_model("tv:resnet18_abn", weights=str(tmp_path / "mnv2.pt"))


@pytest.mark.parametrize("model, needle", [("tv:resnet18_abn", "not in the local cache"),
                                           ("resnet20_abn", "to tv:<name> and timm:<name> models")])
def test_cli_pretrained_weights_missing_or_misapplied(tmp_path, monkeypatch, capsys, model, needle):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", model, "--pretrained", "--data", "shapes", "--out", str(out))
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_a_wrapped_model_trains_and_its_checkpoint_rebuilds(tmp_path):
    train(tiny_config(tmp_path / "run", model="tv:resnet18_abn", image_size=None), progress=False)
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta.model_name == "tv:resnet18_abn" and isinstance(model, abnet.ABN)


TIMM_SUPPORTED = ["resnet18", "efficientnet_b0", "convnext_atto", "mobilenetv3_small_100", "regnety_002",
                  "cspresnet50", "ese_vovnet19b_dw", "repvgg_a0", "fastvit_t8"]


@pytest.mark.parametrize("name", TIMM_SUPPORTED)
def test_timm_zero_map_gives_the_backbone_output(timm, name):
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False).eval()
    check_zero_map_gives_the_backbone_output(backbone, torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "levit_128s"])
def test_timm_models_without_a_plain_stage_sequence_are_refused(timm, name):
    with pytest.raises(AbnetError, match="cannot wrap"):
        abnet.wrap(timm.create_model(name, pretrained=False), num_classes=10)


def test_timm_names_and_local_weights(timm, tmp_path, monkeypatch):
    model = abnet.create_model("timm:resnet18_abn", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(AbnetError, match="not in the local cache"):
        abnet.create_model("timm:resnet18_abn", pretrained=True)
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    snapshot = tmp_path / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    reference = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    loaded = abnet.create_model("timm:resnet18_abn", pretrained=True)
    assert torch.equal(loaded.features[0].weight, reference.conv1.weight)
