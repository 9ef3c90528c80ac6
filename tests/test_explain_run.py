"""abnet.explain, the baselines, the fast inference copy and `abnet explain`."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, break_torch_compile, randomize_batch_norm, run_cli, save_random_image
from PIL import Image

import abnet
from abnet.errors import AbnetError
from abnet.explain.methods import METHODS, minmax
from abnet.models.inference import inference_model

BASELINES = [m for m in METHODS if m != "abn"]


@pytest.fixture(scope="module")
def abn_model():
    torch.manual_seed(0)
    return randomize_batch_norm(abnet.create_model("resnet20_abn", num_classes=4))


@pytest.fixture(scope="module")
def plain_model():
    torch.manual_seed(0)
    return randomize_batch_norm(abnet.create_model("resnet20", num_classes=4))


def test_abn_maps_have_the_image_size_and_lie_in_unit_range(abn_model):
    x = torch.randn(3, 3, 24, 24)
    e = abnet.explain(abn_model, x)
    assert e.maps.shape == (3, 24, 24) and e.method == "abn"
    assert 0 <= e.maps.min() and e.maps.max() <= 1
    with torch.no_grad():
        out = abn_model(x)
    assert torch.equal(e.targets, out.logits.argmax(1))
    torch.testing.assert_close(e.logits, out.logits)


def test_abn_method_on_a_plain_model_is_refused(plain_model):
    with pytest.raises(AbnetError, match="plain classifier"):
        abnet.explain(plain_model, torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("which", ["abn", "plain"])
def test_baselines_on_abn_and_plain_models(method, which, abn_model, plain_model):
    if method != "cam":
        pytest.importorskip("pytorch_grad_cam")
    model = abn_model if which == "abn" else plain_model
    targets = torch.tensor([0, 3])
    e = abnet.explain(model, torch.randn(2, 3, 16, 16), method, targets=targets)
    assert e.maps.shape == (2, 16, 16) and torch.equal(e.targets, targets)
    assert 0 <= e.maps.min() and e.maps.max() <= 1 + 1e-6
    assert (e.att_logits is not None) == (which == "abn")


def test_cam_equals_grad_cam_for_a_pooled_linear_head(plain_model):
    """With global average pooling and one linear layer, Grad-CAM's channel weights are the classifier's
    row / (h w): the same map as CAM once both are scaled to [0, 1]."""
    pytest.importorskip("pytorch_grad_cam")
    x = torch.randn(4, 3, 32, 32)
    cam = abnet.explain(plain_model, x, "cam").maps
    grad_cam = abnet.explain(plain_model, x, "gradcam").maps
    assert (cam - grad_cam).abs().max() < 0.02


def test_a_map_explains_the_class_asked_for(plain_model):
    x = torch.randn(2, 3, 32, 32)
    one = abnet.explain(plain_model, x, "cam", targets=torch.tensor([0, 0])).maps
    other = abnet.explain(plain_model, x, "cam", targets=torch.tensor([1, 1])).maps
    assert not torch.allclose(one, other)


def test_minmax_stretches_each_map():
    maps = torch.stack([torch.linspace(2, 4, 16).view(4, 4), torch.full((4, 4), 7.0)])
    out = minmax(maps)
    assert out[0].min() == 0 and out[0].max() == 1 and torch.equal(out[1], torch.zeros(4, 4))


@pytest.mark.parametrize("name", ["resnet20_abn", "resnet20", "densenet100_abn", "tv:resnet18_abn"])
def test_inference_copy_computes_the_same_function_with_batch_norm_folded(name):
    torch.manual_seed(0)
    model = randomize_batch_norm(abnet.create_model(name, num_classes=5))
    fast = inference_model(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    got = fast(x)
    assert type(got) is type(expected)
    for a, b in zip(*((expected, got) if isinstance(got, tuple) else ((expected,), (got,)))):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert count < sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # original untouched


def test_failing_compile_falls_back_to_the_uncompiled_copy(abn_model, monkeypatch, caplog):
    break_torch_compile(monkeypatch)
    fast = inference_model(abn_model, compile=True)
    out = fast(torch.randn(2, 3, 16, 16))
    assert out.attention.shape == (2, 1, 8, 8) and fast.compiled is None
    assert "torch.compile failed" in caplog.text


# --- the command line -------------------------------------------------------------------------------


def _image_files(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_random_image(folder / "good.png", (16, 16, 3), rng)
    save_random_image(folder / "big_grey.jpg", (90, 60), rng)  # odd mode, size
    (folder / "notes.png").write_text("not an image")
    whole = save_random_image(folder / "cut.png", (16, 16, 3), rng)
    (folder / "truncated.png").write_bytes(whole.read_bytes()[:60])
    whole.unlink()
    return folder


def test_explain_files_lists_bad_ones_and_exits_2(abn_run, tmp_path, capsys):
    images = _image_files(tmp_path / "images")
    code, out, err = run_cli(capsys, "explain", str(abn_run), str(images), "--out", str(tmp_path / "ex"))
    assert code == 2
    assert "explained 2 images" in out
    assert "notes.png" in err and "truncated.png" in err and "Traceback" not in err
    html = (tmp_path / "ex" / "report.html").read_text()
    assert "good.png" in html and "big_grey.jpg" in html and "resized from 60x90 to 16x16" in html
    assert "notes.png" in html  # listed among the failures
    assert (tmp_path / "ex" / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_data_set_with_metrics(abn_run, tmp_path, capsys):
    methods = "abn,cam" + (",gradcam,gradcam++" if _has_grad_cam() else "")
    code, out, _ = run_cli(capsys, "explain", str(abn_run), "--data", "shapes", "--limit", "24", "--metrics",
                           "--method", methods, "--steps", "4", "--out", str(tmp_path / "ex"))
    assert code == 0, out
    rows = json.loads((tmp_path / "ex" / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == methods.split(",")
    for row in rows:
        assert row["images"] == 24
        for key in ("pointing_game", "energy_in_mask", "iou@0.5", "deletion_auc", "insertion_auc"):
            assert 0 <= row[key] <= 1, (row["method"], key)
    html = (tmp_path / "ex" / "report.html").read_text()
    assert "deletion_auc" in html and "test #0" in html


def test_explain_refuses_abn_method_for_a_plain_checkpoint(plain_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(plain_run), "--data", "shapes", "--limit", "4", "--method", "abn",
                           "--out", str(tmp_path / "ex"))
    assert_one_line_error(code, err, "plain classifier")
    assert not (tmp_path / "ex").exists()


def test_explain_plain_checkpoint_defaults_to_a_baseline(plain_run, tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    code, out, _ = run_cli(capsys, "explain", str(plain_run), "--data", "shapes", "--limit", "4",
                           "--out", str(tmp_path / "ex"))
    assert code == 0 and "with gradcam" in out


@pytest.mark.parametrize("argv, needle", [
    (["--method", "magic"], "unknown method 'magic'"),
    ([], "give image files/folders or --data"),
])
def test_explain_usage_errors(abn_run, tmp_path, capsys, argv, needle):
    data = ["--data", "shapes"] if argv else []
    code, _, err = run_cli(capsys, "explain", str(abn_run), *data, *argv, "--out", str(tmp_path / "ex"))
    assert_one_line_error(code, err, needle)


def _has_grad_cam() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytorch_grad_cam") is not None


def _voc(path, width, height, *boxes):
    objects = "".join(f"<object><name>x</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
                    f"{objects}</annotation>")


def test_boxes_follow_the_resize_and_centre_crop(tmp_path):
    from abnet.data.boxes import boxes_mask, read_voc_boxes

    # A 64x32 image resized to 16: 32x16, then columns 8..23 kept. The box covers its columns 33..64
    # (1-based), i.e. the right half: columns 16..31 of the resized image, 8..15 of the crop.
    _voc(tmp_path / "a.xml", 64, 32, (33, 1, 64, 32))
    size, boxes = read_voc_boxes(tmp_path / "a.xml")
    assert size == (64, 32) and boxes == [(33.0, 1.0, 64.0, 32.0)]
    mask = boxes_mask(boxes, 64, 32, 16)
    assert mask[:, 8:].all() and not mask[:, :8].any()
    unscaled = boxes_mask([(1, 1, 8, 8)], 16, 16, 16)  # no resize: pixels 0..7
    assert unscaled.sum() == 64 and unscaled[:8, :8].all()


def test_explain_with_boxes_scores_localisation(abn_run, tmp_path, capsys):
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    images.mkdir(), boxes.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        save_random_image(images / f"{name}.png", (40, 40, 3), rng)
    _voc(boxes / "a.xml", 40, 40, (1, 1, 20, 20))
    _voc(boxes / "b.xml", 80, 80, (41, 41, 80, 80))  # stated at twice the size: scaled down to the file's
    (boxes / "c.xml").write_text("<annotation><broken")
    code, _, err = run_cli(capsys, "explain", str(abn_run), str(images), "--boxes", str(boxes), "--metrics",
                           "--method", "abn,cam", "--steps", "2", "--out", str(tmp_path / "ex"))
    assert code == 2 and "c.png" in err and "not a readable Pascal VOC XML" in err
    rows = json.loads((tmp_path / "ex" / "metrics.json").read_text())["rows"]
    assert all(r["images"] == 2 and 0 <= r["pointing_game"] <= 1 and 0 <= r["iou@0.5"] <= 1 for r in rows)


def test_boxes_stated_for_another_image_size_are_rescaled(tmp_path):
    from abnet.data.images import read_images

    (tmp_path / "boxes").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    _voc(tmp_path / "boxes" / "a.xml", 4, 4, (3, 1, 4, 4))  # the right half of a 4x4 image
    inputs = read_images([tmp_path / "a.png"], 40, boxes_dir=tmp_path / "boxes")
    assert inputs.masks[0][:, 20:].all() and not inputs.masks[0][:, :20].any()


@pytest.mark.parametrize("size", ["<width></width><height>4</height>", "<width>x</width><height>4</height>"])
def test_a_malformed_box_file_is_a_data_error(tmp_path, size):
    from abnet.data.boxes import read_voc_boxes
    from abnet.errors import DataError

    (tmp_path / "a.xml").write_text(f"<annotation><size>{size}</size><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                    "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    if "x</width>" in size:
        with pytest.raises(DataError, match="not a number"):
            read_voc_boxes(tmp_path / "a.xml")
    else:
        assert read_voc_boxes(tmp_path / "a.xml")[0] is None  # an empty size counts as not stated


@pytest.mark.parametrize("method", ["abn", "cam"])
def test_explain_runs_in_eval_mode_and_leaves_the_model_as_it_was(method):
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    e = abnet.explain(model, x, method)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(e.logits, model.eval()(x).logits)


def test_attribute_checkpoints_without_the_multi_label_key_still_explain(tmp_path):
    from abnet.data.images import dataset_inputs
    from abnet.data.shapes import make_shapes_multi
    from abnet.explain.run import run_explain
    from abnet.models.meta import CheckpointMeta

    data = make_shapes_multi(6, 16, split="test")
    model = abnet.create_model("resnet20_abn", num_classes=len(data.classes)).eval()
    old = {"classes": data.classes, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [16, 16],
           "model_config": {"model": "resnet20_abn"}}  # no version, no multi_label: written before both
    meta = CheckpointMeta.from_dict(old, "an old checkpoint")
    summary = run_explain(model, meta, dataset_inputs(data, "test"), tmp_path / "ex", metrics=True, steps=2)
    assert summary["images"] == 6 and "circle" in (tmp_path / "ex" / "report.html").read_text()
