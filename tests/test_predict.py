"""`abnet predict`: JSON lines and map PNGs from a checkpoint or an ONNX file, streamed batch by batch,
unreadable files skipped and named."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import abnet
from abnet.cli import main
from abnet.data.folder import read_rgb, resize_center
from abnet.data.loader import normalize
from abnet.deploy import ExportInfo, export_model, predict_files
from abnet.engine.checkpoint import load_checkpoint, save_weights

SIZE = 32
CLASSES = ["cat", "dog", "eel"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def write_checkpoint(folder: Path, name: str, multi_label: bool = False) -> Path:
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=len(CLASSES))
    for m in model.modules():  # batch-norm statistics of images like the test's: maps that vary across the image
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches seen
    with torch.no_grad():
        model.train()(torch.rand(16, 3, SIZE, SIZE) * 4 - 2)
    path = folder / name / "best.safetensors"
    path.parent.mkdir()
    save_weights(path, model, {"model_config": model.abnet_config, "classes": CLASSES, "mean": MEAN, "std": STD,
                               "image_size": [SIZE, SIZE], "multi_label": multi_label})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Good images of several sizes and modes (one in a sub-folder) and a corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (64, 40), dtype=np.uint8)).save(folder / "sub" / "tall.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(folder / "square.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


GOOD = ["square.png", "sub/tall.jpg", "wide.png"]  # the order image_files lists them in


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {"abn": write_checkpoint(folder, "resnet20_abn"),
             "mt": write_checkpoint(folder, "resnet20_abn_mt", multi_label=True),
             "plain": write_checkpoint(folder, "resnet20")}
    pytest.importorskip("onnxruntime")
    model, meta = load_checkpoint(paths["abn"])
    paths["onnx"] = folder / "abn.onnx"
    export_model(model, meta, paths["onnx"], "onnx")
    return paths


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(["predict", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_outputs(checkpoint: Path, folder: Path, names: list[str]):
    """The model's outputs for the files, computed directly (eager model, no predictor)."""
    model, _ = load_checkpoint(checkpoint)
    x = torch.stack([torch.from_numpy(np.asarray(resize_center(read_rgb(folder / n), SIZE)).copy()).permute(2, 0, 1)
                     for n in names])
    with torch.no_grad():
        return model(normalize(x, tuple(MEAN), tuple(STD)))


def test_checkpoint_predictions_skip_the_corrupt_file_and_match_the_model(models, images, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    code, err = run([str(models["abn"]), str(images), "--out", str(out), "--top-k", "2", "--batch-size", "2"], capsys)
    assert code == 2
    assert len(err) == 1 and "broken.png" in err[0] and err[0].startswith("abnet predict: skipped")
    lines = read_lines(out)
    assert [Path(r["path"]).relative_to(images).as_posix() for r in lines] == GOOD
    assert [(r["width"], r["height"]) for r in lines] == [(32, 32), (40, 64), (48, 30)]
    expected = expected_outputs(models["abn"], images, GOOD)
    for r, logits, att in zip(lines, expected.logits.softmax(1), expected.att_logits.softmax(1)):
        for branch, probs in (("perception", logits), ("attention_branch", att)):
            top = probs.topk(2)
            assert [c["class"] for c in r[branch]] == [CLASSES[i] for i in top.indices]
            assert np.allclose([c["probability"] for c in r[branch]], top.values, atol=1e-5)
    assert "map" not in lines[0]


def test_onnx_file_gives_the_checkpoints_predictions(models, images, tmp_path, capsys):
    a, b = tmp_path / "ckpt.jsonl", tmp_path / "onnx.jsonl"
    assert run([str(models["abn"]), str(images), "--out", str(a), "--top-k", "3"], capsys)[0] == 2
    assert run([str(models["onnx"]), str(images), "--out", str(b), "--top-k", "3"], capsys)[0] == 2
    for x, y in zip(read_lines(a), read_lines(b), strict=True):
        assert x["path"] == y["path"]
        for branch in ("perception", "attention_branch"):
            assert [c["class"] for c in x[branch]] == [c["class"] for c in y[branch]]
            assert np.allclose([c["probability"] for c in x[branch]], [c["probability"] for c in y[branch]],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("source", ["abn", "onnx"])
def test_maps_are_8_bit_pngs_at_the_image_size_placed_on_the_centre_crop(models, images, tmp_path, capsys, source):
    maps = tmp_path / "maps"
    code, _ = run([str(models[source]), str(images), "--out", str(tmp_path / "p.jsonl"), "--maps", str(maps)], capsys)
    assert code == 2
    lines = read_lines(tmp_path / "p.jsonl")
    assert [Path(r["map"]).relative_to(maps).as_posix() for r in lines] == ["square.png", "sub/tall.png", "wide.png"]
    attention = expected_outputs(models["abn"], images, GOOD).attention
    for r, m in zip(lines, attention):
        img = Image.open(r["map"])
        assert img.mode == "L" and img.size == (r["width"], r["height"])
        got = np.asarray(img).astype(int)
        side = min(img.size)
        left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
        want = F.interpolate(m[None], size=(side, side), mode="bilinear", align_corners=False)[0, 0] * 255
        assert np.abs(got[top:top + side, left:left + side] - want.numpy()).max() <= 1.0
        outside = np.ones_like(got, dtype=bool)
        outside[top:top + side, left:left + side] = False
        assert (got[outside] == 0).all()
        assert got.max() - got.min() > 10  # the map is not flat: placement is tested


def test_multitask_model_lists_every_attribute_and_writes_a_map_per_task(models, images, tmp_path, capsys):
    maps = tmp_path / "maps"
    out = tmp_path / "p.jsonl"
    run([str(models["mt"]), str(images / "wide.png"), "--out", str(out), "--maps", str(maps)], capsys)
    (line,) = read_lines(out)
    expected = expected_outputs(models["mt"], images, ["wide.png"])
    assert list(line["perception"]) == CLASSES
    assert np.allclose(list(line["perception"].values()), expected.logits[0].sigmoid(), atol=1e-5)
    assert np.allclose(list(line["attention_branch"].values()), expected.att_logits[0].sigmoid(), atol=1e-5)
    assert {k: Path(v).name for k, v in line["maps"].items()} == {c: f"wide_{c}.png" for c in CLASSES}
    for path in line["maps"].values():
        assert Image.open(path).size == (48, 30)


def test_plain_model_predicts_perception_only_and_refuses_maps(models, images, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert run([str(models["plain"]), str(images / "wide.png"), "--out", str(out)], capsys)[0] == 0
    (line,) = read_lines(out)
    assert set(line) == {"path", "width", "height", "perception"}
    code, err = run([str(models["plain"]), str(images), "--out", str(tmp_path / "q.jsonl"), "--maps",
                     str(tmp_path / "maps")], capsys)
    assert code == 2 and len(err) == 1 and "plain classifier" in err[0]
    assert not (tmp_path / "q.jsonl").exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(models, images, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.jpg").write_bytes(b"garbage")
    not_abnet = tmp_path / "other.onnx"
    onnx = pytest.importorskip("onnx")
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, SIZE, SIZE]) for n in ("images", "y")]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["y"])], "other", io[:1], io[1:])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), not_abnet)
    for argv, needle in [
        ([str(models["abn"]), str(tmp_path / "missing"), "--out", str(out)], "does not exist"),
        ([str(models["abn"]), str(only_broken), "--out", str(out)], "none of the images could be read"),
        ([str(tmp_path / "missing.onnx"), str(images), "--out", str(out)], "does not exist"),
        ([str(not_abnet), str(images), "--out", str(out)], "was not exported by abnet"),
        ([str(models["abn"]), str(images), "--out", str(out), "--device", "tpu"], "--device"),
    ]:
        code, err = run(argv, capsys)
        assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "other.onnx"]


@pytest.mark.parametrize(("device", "gpus", "needle"), [
    ("cuda", 0, "torch sees none here"), ("cuda:3", 1, "this machine has 1 GPU (cuda:0 to cuda:0)")])
def test_a_missing_gpu_is_refused_in_one_line_before_any_file_is_read(models, images, tmp_path, capsys, monkeypatch,
                                                                      device, gpus, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for source in (tmp_path / "missing.pt", models["onnx"]):
        code, err = run([str(source), str(images), "--out", str(tmp_path / "p.jsonl"), "--device", device], capsys)
        assert code == 2 and len(err) == 1 and f"--device {device}" in err[0] and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_run_on_a_gpu_without_onnxruntimes_cuda_provider_says_so(models, images, tmp_path, capsys,
                                                                         monkeypatch):
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    code, err = run([str(models["onnx"]), str(images), "--out", str(tmp_path / "p.jsonl"), "--device", "cuda:1"],
                    capsys)
    assert code == 2 and len(err) == 1 and "no CUDA provider" in err[0] and "not a readable" not in err[0], err
    assert list(tmp_path.iterdir()) == []


class RecordingPredictor:
    """A stand-in model: records each batch it is given, and fails on call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        self.info = ExportInfo("fake", tuple(CLASSES), tuple(MEAN), tuple(STD), (SIZE, SIZE), False, ("logits",), 0)
        self.batches, self.fail_at = [], fail_at

    def __call__(self, images):
        self.batches.append(tuple(images.shape))
        if len(self.batches) == self.fail_at:
            raise RuntimeError("out of memory")
        return {"logits": images.float().mean((2, 3))}


def test_prediction_streams_in_batches_and_writes_the_output_only_at_the_end(images, tmp_path):
    predictor = RecordingPredictor()
    summary = predict_files(predictor, [images], tmp_path / "p.jsonl", batch_size=2, progress=False)
    # 4 files in batches of 2: the corrupt one leaves 1 image in its batch
    assert predictor.batches == [(1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    assert (summary.images, [Path(f).name for f, _ in summary.failures]) == (3, ["broken.png"])
    failing = RecordingPredictor(fail_at=2)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_files(failing, [images], tmp_path / "q.jsonl", batch_size=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
