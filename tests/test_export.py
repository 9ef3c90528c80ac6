"""Export to ONNX and TorchScript: onnxruntime and torch.jit.load (without abnet) reproduce the model's three
outputs for every family of the zoo, single- and multi-task, at batch 1 and 3 from one file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, randomize_batch_norm, run_cli
from torch import nn

import abnet
from abnet.deploy import ExportError, export_model
from abnet.engine.checkpoint import save_weights
from abnet.errors import AbnetError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 32
CLASSES = ["cat", "dog", "eel"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]

# (name, family arguments that shrink it); every family of `abnet models`, plus torchvision and timm wraps.
FAMILIES = [
    ("resnet20_abn", {}),  # CIFAR ResNet
    ("wrn28_10_abn", {"depth": 10, "widen": 1}),
    ("densenet100_abn", {"depth": 10, "growth": 4}),
    ("resnext29_8x64d_abn", {"depth": 11, "cardinality": 2, "base_width": 4}),
    ("resnet18_abn", {}),  # ImageNet ResNet
    ("se_resnet50_abn", {}),
    ("vgg16_bn_abn", {}),  # classifier narrowed below; needs the dynamo exporter at this size
    ("tv:mobilenet_v3_small_abn", {}),
    ("timm:convnext_atto_abn", {}),
    # multi-task: one map and one output per task; grouped (one perception branch per task) and shared
    ("resnet20_abn_mt", {}),
    ("resnet20_abn_mt", {"shared": True}),
    ("wrn28_10_abn_mt", {"depth": 10, "widen": 1}),
    ("densenet100_abn_mt", {"depth": 10, "growth": 4}),
    ("resnext29_8x64d_abn_mt", {"depth": 11, "cardinality": 2, "base_width": 4}),
    ("resnet18_abn_mt", {}),  # its last stage runs as a batched matrix product (2x2 positions)
    ("se_resnet50_abn_mt", {"shared": True}),
    ("resnet20", {}),  # plain: logits only
]
IDS = [name + ("_shared" if kwargs.get("shared") else "") for name, kwargs in FAMILIES]


def meta_for(name: str) -> dict:
    return {"model_config": {"model": name}, "classes": CLASSES, "mean": MEAN, "std": STD,
            "image_size": [SIZE, SIZE], "multi_label": name.endswith("_mt")}


def build(name: str, kwargs: dict) -> nn.Module:
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=len(CLASSES), **kwargs).eval()
    if name == "vgg16_bn_abn":  # 4096-wide layers: a 550 MB file; the same layers at width 16
        model.perception.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(),
                                                    nn.Linear(16, len(CLASSES)))
    return randomize_batch_norm(model)  # batch-norm statistics away from (0, 1), so that they matter


@pytest.fixture(scope="module")
def inputs() -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {n: torch.randn(n, 3, SIZE, SIZE, generator=gen) for n in (1, 3)}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, inputs):
    """Each family exported once to both formats, with the model's own outputs for the test inputs."""
    folder = tmp_path_factory.mktemp("export")
    cases = {}
    for case, (name, kwargs) in zip(IDS, FAMILIES):
        model = build(name, kwargs)
        paths = {fmt: folder / f"{case.replace(':', '_')}.{fmt}" for fmt in ("onnx", "torchscript")}
        for fmt, path in paths.items():
            export_model(model, meta_for(name), path, fmt)
        with torch.no_grad():
            expected = {n: model(x) for n, x in inputs.items()}
        cases[case] = (model, paths, expected)
    return cases


def outputs_of(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def assert_close(got: list[np.ndarray], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for have, want in zip(got, expected):
        assert have.shape == tuple(want.shape)
        scale = want.abs().max().item()
        assert np.abs(have - want.numpy()).max() <= 1e-4 * max(scale, 1e-6)


@pytest.mark.parametrize("case", IDS)
def test_onnxruntime_reproduces_the_three_outputs_at_any_batch_size(zoo, inputs, case):
    model, paths, expected = zoo[case]
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    abn = case != "resnet20"
    names = ["logits", "att_logits", "attention"] if abn else ["logits"]
    assert [o.name for o in session.get_outputs()] == names
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", 3, SIZE, SIZE]
    for n, x in inputs.items():
        got = session.run(None, {"images": x.numpy()})
        assert_close(got, outputs_of(expected[n]))
        if abn:
            tasks = len(CLASSES) if "_mt" in case else 1
            assert got[2].shape[:2] == (n, tasks) and got[2].shape[2] == got[2].shape[3] > 1


@pytest.fixture(scope="module")
def torchscript_run(zoo, inputs, tmp_path_factory):
    """Every TorchScript file loaded and run in one Python process in which abnet cannot be imported."""
    folder = tmp_path_factory.mktemp("torchscript")
    for n, x in inputs.items():
        torch.save(x, folder / f"x{n}.pt")
    script = """
import json, sys
sys.modules["abnet"] = None  # any import of abnet fails
import torch
torch.set_grad_enabled(False)
folder, files = sys.argv[1], sys.argv[2:]
results = {}
for f in files:
    extra = {"abnet.json": ""}
    module = torch.jit.load(f, _extra_files=extra)
    out = {n: module(torch.load(f"{folder}/x{n}.pt")) for n in (1, 3)}
    results[f] = {"meta": json.loads(extra["abnet.json"]),
                  "outputs": {n: list(o) if isinstance(o, tuple) else [o] for n, o in out.items()}}
torch.save(results, f"{folder}/results.pt")
print(json.dumps(sorted(m for m, v in sys.modules.items() if m.startswith("abnet") and v is not None)))
"""
    files = [str(paths["torchscript"]) for _, paths, _ in zoo.values()]
    done = subprocess.run([sys.executable, "-c", script, str(folder), *files], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    return torch.load(folder / "results.pt")


@pytest.mark.parametrize("case", IDS)
def test_torchscript_loads_without_abnet_and_reproduces_the_outputs(zoo, torchscript_run, case):
    model, paths, expected = zoo[case]
    result = torchscript_run[str(paths["torchscript"])]
    for n in (1, 3):
        assert_close([t.numpy() for t in result["outputs"][n]], outputs_of(expected[n]))
    meta = result["meta"]
    assert (meta["classes"], meta["mean"], meta["std"], meta["image_size"]) == (CLASSES, MEAN, STD, [SIZE, SIZE])


@pytest.mark.parametrize("case", ["resnet20_abn", "resnet20_abn_mt", "resnet20"])
def test_onnx_metadata_reads_back(zoo, case):
    _, paths, _ = zoo[case]
    props = {p.key: json.loads(p.value) for p in onnx.load(str(paths["onnx"])).metadata_props}
    assert (props["classes"], props["mean"], props["std"], props["image_size"]) == (CLASSES, MEAN, STD, [SIZE, SIZE])
    assert props["model"] == case
    assert props["outputs"] == (["logits"] if case == "resnet20" else ["logits", "att_logits", "attention"])
    assert props["num_maps"] == {"resnet20_abn": 1, "resnet20_abn_mt": 3, "resnet20": 0}[case]
    assert props["multi_label"] is (case == "resnet20_abn_mt")


class BatchDependent(nn.Module):
    """A model whose forward branches on the batch size: a trace at one size is wrong at another."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, len(CLASSES))

    def forward(self, x):
        y = self.fc(x.mean((2, 3)))
        return y + 1 if x.shape[0] == 2 else y


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_does_not_reproduce_the_model_is_refused_and_nothing_is_written(tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    path.write_text("previous")
    with pytest.raises(ExportError, match="differs from the model in logits"):
        export_model(BatchDependent().eval(), meta_for("batch_dependent"), path, fmt)
    assert path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_model_that_fails_on_its_input_size_is_named(tmp_path, capsys):
    model = abnet.create_model("densenet100_abn", num_classes=3, depth=10, growth=4).eval()
    meta = {**meta_for("densenet100_abn"), "image_size": [2, 2]}
    with pytest.raises(ExportError, match=r"cannot export densenet100_abn: it fails on a \(1, 3, 2, 2\) input .*"
                                          "too small"):
        export_model(model, meta, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    # from the command line too: one line, and not even the folder of --out is made
    save_weights(tmp_path / "best.safetensors", model, {**meta, "model_config": model.abnet_config})
    code, _, err = run_cli(capsys, "export", str(tmp_path / "best.safetensors"), "--format", "torchscript", "--out",
                           str(tmp_path / "new" / "m.torchscript"))
    assert_one_line_error(code, err, "cannot export densenet100_abn")
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_the_check_holds_the_export_to_1e_4_of_each_outputs_scale(tmp_path, monkeypatch):
    """An export that differs from the model by 1e-3 of an output's scale (the old bound) is refused."""
    from abnet.deploy import export as exporter

    model = abnet.create_model("resnet20_abn", num_classes=3).eval()
    checked = exporter._check

    def perturbed(info, expected, got, what):
        scale = got[0].abs().max()
        checked(info, expected, (got[0] + 5e-4 * scale, *got[1:]), what)

    monkeypatch.setattr(exporter, "_check", perturbed)
    with pytest.raises(ExportError, match=r"differs from the model in logits \(relative error [45]\.\de-04\)"):
        export_model(model, meta_for("resnet20_abn"), tmp_path / "m.torchscript", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    model = abnet.create_model("resnet20_abn", num_classes=3).eval()
    with pytest.raises(AbnetError, match=r"pip install 'abnet\[onnx\]'"):
        export_model(model, meta_for("resnet20_abn"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_leaves_the_model_in_its_mode(tmp_path):
    model = abnet.create_model("resnet20_abn", num_classes=3).train()
    export_model(model, meta_for("resnet20_abn"), tmp_path / "m.torchscript", "torchscript")
    assert model.training and all(m.training for m in model.modules())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=3)
    path = tmp_path_factory.mktemp("run") / "best.safetensors"
    save_weights(path, model, {"model_config": model.abnet_config, "classes": CLASSES, "mean": MEAN, "std": STD,
                               "image_size": [SIZE, SIZE]})
    return path


def test_cli_exports_a_checkpoint(checkpoint, tmp_path, capsys):
    from abnet.cli import main

    out = tmp_path / "sub" / "model.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "logits, att_logits, attention" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["classes"] == json.dumps(CLASSES)


@pytest.mark.parametrize("argv, needle", [
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    ([], "the following arguments are required: --format"),
])
def test_cli_refuses_bad_usage(checkpoint, tmp_path, capsys, argv, needle):
    from abnet.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx"), *argv])
    assert stop.value.code == 2 and needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    from abnet.cli import main

    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "abnet export: error:" in err
