"""--device for `abnet eval` and `abnet explain`: resolving the name, refusing a device the machine lacks in one
line, and checkpoints read on the CPU whatever device wrote them."""

import importlib.util
import json

import pytest
import torch
import torch.serialization
from conftest import assert_one_line_error, run_cli

import abnet
from abnet.data import SHAPES_CLASSES
from abnet.data.registry import DataOptions, data_spec, load_dataset, make_loader
from abnet.engine.checkpoint import model_meta, save_state, save_weights
from abnet.engine.device import model_device, resolve_device
from abnet.engine.evaluate import evaluate
from abnet.errors import AbnetError

SIZE = 16
NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(("name", "count", "expected"), [
    ("auto", 0, "cpu"), ("auto", 2, "cuda"), ("cpu", 0, "cpu"), ("cuda", 1, "cuda"), ("cuda:1", 2, "cuda:1"),
])
def test_resolve_device(monkeypatch, name, count, expected):
    _gpus(monkeypatch, count)
    assert resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize(("name", "count", "needle"), [
    ("cuda:3", 2, "this machine has 2 GPUs (cuda:0 to cuda:1)"),
    ("cuda:1", 1, "this machine has 1 GPU (cuda:0 to cuda:0)"),
    ("cuda", 0, "torch sees none here; use --device cpu"),
    ("cuda:0", 0, "torch sees none here"),
    ("mps", 0, "abnet runs on cpu or cuda"),
    ("gpu", 0, "not a device name"),
])
def test_resolve_device_refuses_what_the_machine_lacks(monkeypatch, name, count, needle):
    _gpus(monkeypatch, count)
    with pytest.raises(AbnetError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(name)


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained resnet20_abn for 16x16 shapes, as best.safetensors; and the shapes test split it is scored on."""
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=6).eval()
    spec = data_spec("shapes")
    meta = model_meta(model, classes=list(SHAPES_CLASSES), mean=list(spec.mean), std=list(spec.std),
                      image_size=[SIZE, SIZE], data="shapes")
    path = tmp_path_factory.mktemp("device") / "best.safetensors"
    save_weights(path, model, meta)
    return path, model, meta


def _eval_json(capsys, path, *flags):
    code, out, err = run_cli(capsys, "eval", str(path), "--data", "shapes", "--limit", "40", "--json", *flags)
    assert code == 0, err
    return json.loads(out)


def test_eval_on_the_cpu_matches_evaluate(checkpoint, capsys):
    path, model, _ = checkpoint
    data = load_dataset("shapes", "test", 40, DataOptions(image_size=SIZE))
    expected = evaluate(model, make_loader(data, data_spec("shapes"), 256))
    result = _eval_json(capsys, path, "--device", "cpu")
    assert result["n"] == 40
    for key in ("accuracy", "att_accuracy", "loss", "pointing_game"):
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("command", ["eval", "explain"])
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_a_missing_gpu_is_one_line_before_the_checkpoint_is_read(tmp_path, capsys, monkeypatch, command, device):
    _gpus(monkeypatch, 0)  # this machine, or any, without a GPU
    out = ["--out", str(tmp_path / "ex")] if command == "explain" else []
    code, _, err = run_cli(capsys, command, str(tmp_path / "missing.pt"), "--data", "shapes", *out,
                           "--device", device)
    assert_one_line_error(code, err, f"--device {device}", "--device cpu")
    assert not (tmp_path / "ex").exists()


def test_explain_on_the_cpu(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    code, out, err = run_cli(capsys, "explain", str(path), "--data", "shapes", "--limit", "4", "--metrics",
                             "--steps", "2", "--method", "abn,cam", "--device", "cpu", "--out", str(tmp_path / "ex"))
    assert code == 0, err
    rows = json.loads((tmp_path / "ex" / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["abn", "cam"] and all(r["images"] == 4 for r in rows)


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(checkpoint, tmp_path, capsys, monkeypatch):
    """last.pt whose tensors are tagged as CUDA storages, as torch.save writes them from a GPU."""
    path, model, meta = checkpoint
    gpu_file = tmp_path / "last.pt"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_state(gpu_file, {"model": model.state_dict(), "meta": meta})
    if not torch.cuda.is_available():  # the file really needs map_location to load here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_file, weights_only=True)
    assert _eval_json(capsys, gpu_file, "--device", "cpu") == _eval_json(capsys, path, "--device", "cpu")


@NEEDS_GPU
def test_eval_and_explain_on_the_gpu_match_the_cpu(checkpoint, tmp_path, capsys):
    path, model, _ = checkpoint
    on_cpu, on_gpu = _eval_json(capsys, path, "--device", "cpu"), _eval_json(capsys, path, "--device", "cuda")
    for key in ("accuracy", "att_accuracy", "loss", "pointing_game"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=1e-3), key
    x = torch.randn(5, 3, SIZE, SIZE)
    for method in ("abn", "cam"):
        cpu, gpu = abnet.explain(model, x, method), abnet.explain(model.cuda(), x, method)
        assert gpu.maps.device.type == "cpu" and gpu.logits.device.type == "cpu"
        torch.testing.assert_close(gpu.maps, cpu.maps, atol=1e-3, rtol=1e-3)
        model.cpu()
    methods = "abn,cam" + (",gradcam" if importlib.util.find_spec("pytorch_grad_cam") else "")
    code, _, err = run_cli(capsys, "explain", str(path), "--data", "shapes", "--limit", "4", "--metrics", "--steps",
                           "2", "--method", methods, "--device", "cuda", "--out", str(tmp_path / "ex"))
    assert code == 0, err
