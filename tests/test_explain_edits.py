"""`abnet explain --attention DIR`: edited maps fed to the perception branch, both predictions reported."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, randomize_batch_norm, run_cli, save_random_image
from PIL import Image

import abnet
from abnet.data.images import dataset_inputs, read_images
from abnet.data.registry import DataOptions, data_spec, load_dataset
from abnet.data.shapes import make_shapes_multi
from abnet.engine.checkpoint import load_checkpoint, model_meta, save_weights
from abnet.explain.edits import EditedMaps, data_edit_places, file_edit_places, predict_with_edits, read_edited_maps

SIZE = 16


def _checkpoint(folder, name, **kwargs):
    torch.manual_seed(0)
    data = load_dataset("shapes", "test", 1, DataOptions(image_size=SIZE))
    model = randomize_batch_norm(abnet.create_model(name, num_classes=len(data.classes), **kwargs))
    spec = data_spec("shapes")
    meta = model_meta(model, classes=list(data.classes), mean=list(spec.mean), std=list(spec.std),
                      image_size=[SIZE, SIZE], data="shapes")
    path = folder / "best.safetensors"
    save_weights(path, model, meta)
    return path


@pytest.fixture(scope="module")
def multiply_abn(tmp_path_factory):
    """An untrained resnet20_abn for 16x16 shapes whose perception branch reads g * M."""
    return _checkpoint(tmp_path_factory.mktemp("multiply"), "resnet20_abn", mask="multiply")


def _shapes_edits(root, value, count):
    """Edited maps of one grey level for the first ``count`` test images of shapes, in the data set layout."""
    data = load_dataset("shapes", "test", count, DataOptions(image_size=SIZE))
    for i, label in enumerate(data.labels.tolist()):
        folder = root / "test" / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _explain_with(capsys, checkpoint, edits, out, *argv):
    code, stdout, err = run_cli(capsys, "explain", str(checkpoint), *argv, "--attention", str(edits),
                                "--out", str(out))
    assert code == 0, err
    return json.loads((out / "edits.json").read_text()), stdout, err


def test_edited_maps_change_the_prediction_and_both_are_reported(multiply_abn, tmp_path, capsys):
    args = ("--data", "shapes", "--limit", "6")
    zeros, stdout, err = _explain_with(capsys, multiply_abn, _shapes_edits(tmp_path / "zeros", 0, 4),
                                       tmp_path / "ex0", *args)
    ones, _, _ = _explain_with(capsys, multiply_abn, _shapes_edits(tmp_path / "ones", 255, 4), tmp_path / "ex1", *args)
    assert "2 of 6 images have no edited map" in err and "test #4" in err
    assert "edits.json" in stdout and "edited maps: 4 of 6 images" in stdout
    assert zeros["summary"]["images"] == 6 and zeros["summary"]["edited"] == 4
    for z, o in zip(zeros["images"], ones["images"]):
        assert z["prediction"] == o["prediction"] and z["truth"] == o["truth"]  # the model's own map: unchanged
    for record in zeros["images"][4:]:
        assert not record["edited"] and record["edited_prediction"] is None
    edited_zero = [r["edited_prediction"] for r in zeros["images"][:4]]
    edited_one = [r["edited_prediction"] for r in ones["images"][:4]]
    assert all(a != b for a, b in zip(edited_zero, edited_one))
    assert all(p == edited_zero[0] for p in edited_zero)  # g * 0 is the same input to perception for every image
    html = (tmp_path / "ex0" / "report.html").read_text()
    assert html.count("<h3>perception, edited map</h3>") == 4 and html.count("<figcaption>edited map<") == 4
    assert "edited maps" in html  # the summary in the report's header


def test_an_all_zero_and_an_all_one_map_give_other_logits_for_multiply(multiply_abn):
    model, _ = load_checkpoint(multiply_abn)
    x = torch.randn(3, 3, SIZE, SIZE)
    found = torch.ones(3, 1, dtype=torch.bool)
    white = torch.full((3, 1, SIZE, SIZE), 255, dtype=torch.uint8)
    own, zero = predict_with_edits(model, x, EditedMaps(torch.zeros_like(white), found))
    _, one = predict_with_edits(model, x, EditedMaps(white, found))
    with torch.no_grad():
        torch.testing.assert_close(one, model(x, attention=torch.ones(1, 1, 8, 8)).logits)
        torch.testing.assert_close(own, model(x).logits)
    assert (zero - one).abs().max() > 1e-3 and (zero - zero[0]).abs().max() < 1e-5
    _, untouched = predict_with_edits(model, x, EditedMaps(white, ~found))
    torch.testing.assert_close(untouched, own)  # no map given: the model's own


def test_image_files_read_their_maps_by_stem(multiply_abn, tmp_path, capsys):
    images, edits = tmp_path / "images", tmp_path / "edits"
    images.mkdir(), edits.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_random_image(images / f"{name}.png", (SIZE, SIZE, 3), rng)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(edits / "a.png")  # any size
    record, _, err = _explain_with(capsys, multiply_abn, edits, tmp_path / "ex", str(images))
    assert [r["edited"] for r in record["images"]] == [True, False] and "1 of 2 images" in err


def test_a_map_is_laid_over_the_stored_image_then_resized_and_cropped_with_it(tmp_path):
    """A 60x90 (w x h) image becomes 16x24, cropped to rows 4..19. Its map, stored at half the size with the
    top quarter white, covers rows 0..5 of the 16x24 image, so rows 0..1 of the crop (a plain resize of
    the map to 16x16 would whiten rows 0..3)."""
    (tmp_path / "maps").mkdir()
    Image.fromarray(np.zeros((90, 60, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    top = np.zeros((45, 30), dtype=np.uint8)
    top[:11] = 255
    Image.fromarray(top).save(tmp_path / "maps" / "tall.png")
    files = [tmp_path / "tall.png"]
    edits = read_edited_maps(tmp_path / "maps", file_edit_places(tmp_path / "maps", files), read_images(files, SIZE))
    rows = edits.maps[0, 0].float().mean(1) / 255
    assert rows[0] > 0.9 and rows[3:].max() < 0.05 and edits.found.all()


def test_a_square_map_of_a_tall_image_covers_the_crop_the_model_sees(tmp_path):
    """A map at the model's input size (as `abnet edit` saves it) is the centre crop: it comes back as it was."""
    (tmp_path / "maps").mkdir()
    Image.fromarray(np.zeros((90, 60, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    top = np.zeros((SIZE, SIZE), dtype=np.uint8)
    top[:4] = 255
    Image.fromarray(top).save(tmp_path / "maps" / "tall.png")
    files = [tmp_path / "tall.png"]
    edits = read_edited_maps(tmp_path / "maps", file_edit_places(tmp_path / "maps", files), read_images(files, SIZE))
    rows = edits.maps[0, 0].float().mean(1)  # up to 60 x 60 and back: some blur at the edges
    assert rows[:4].min() > 200 and rows[4] < 64 and rows[5:].max() == 0


def test_a_multi_task_model_reads_a_map_per_attribute(tmp_path):
    """Task t of a multi-task ABN reads map t only: editing one attribute's map changes that task's logit alone."""
    data = make_shapes_multi(3, SIZE, split="test")
    (tmp_path / "test").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((SIZE, SIZE), dtype=np.uint8)).save(tmp_path / "test" / f"{i}.{data.classes[2]}.png")
    inputs = dataset_inputs(data, "test")
    edits = read_edited_maps(tmp_path, data_edit_places(tmp_path, data, "test", data.classes), inputs)
    assert edits.found[:, 2].all() and edits.found.sum() == 3
    torch.manual_seed(0)
    model = randomize_batch_norm(abnet.create_model("resnet20_abn_mt", num_classes=len(data.classes),
                                                    mask="multiply"))
    own, edited = predict_with_edits(model, inputs.images.float() / 255, edits)
    changed = (own - edited).abs().amax(0) > 1e-4
    assert changed.tolist() == [t == 2 for t in range(len(data.classes))]


def test_data_set_places_follow_the_target_layout(tmp_path):
    data = load_dataset("shapes", "test", 3, DataOptions(image_size=SIZE))
    assert data_edit_places(tmp_path, data, "test") == [([tmp_path / "test" / data.classes[c] / f"{i}.png"], None)
                                                       for i, c in enumerate(data.labels.tolist())]
    multi = make_shapes_multi(2, SIZE, split="val")
    assert data_edit_places(tmp_path, multi, "val", ["red", "blue"])[1] == (
        [tmp_path / "val" / "1.red.png", tmp_path / "val" / "1.blue.png"], None)


def _plain_checkpoint(tmp_path):
    (tmp_path / "plain").mkdir()
    return _checkpoint(tmp_path / "plain", "resnet20")


@pytest.mark.parametrize("case", ["plain model", "not an image", "not a folder", "no map for any image"])
def test_bad_edits_are_one_line_errors_and_write_nothing(case, multiply_abn, tmp_path, capsys):
    edits = tmp_path / "edits"
    _shapes_edits(edits, 255, 2)
    checkpoint, needle = multiply_abn, ""
    if case == "plain model":
        checkpoint, needle = _plain_checkpoint(tmp_path), "plain classifier"
    elif case == "not an image":
        broken = next((edits / "test").rglob("1.png"))
        broken.write_text("not a png")
        needle = f"edited map {broken} is not a readable image"
    elif case == "not a folder":
        edits, needle = tmp_path / "missing", "is not a folder"
    else:
        edits, needle = tmp_path / "empty", "no edited map in"
        edits.mkdir()
    code, _, err = run_cli(capsys, "explain", str(checkpoint), "--data", "shapes", "--limit", "3",
                           "--attention", str(edits), "--out", str(tmp_path / "ex"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "ex").exists()
