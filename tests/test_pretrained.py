"""Weights shipped in the package: the index and its checksums, fp16 storage, pretrained names everywhere a checkpoint
is accepted, `abnet pretrained`, and benchmarks/ship_pretrained.py, all on a tiny model shipped into a tmp root."""

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    assert_one_line_error,
    benchmark_script,
    randomize_batch_norm,
    register_tiny_cnn,
    run_cli,
    tiny_config,
)
from PIL import Image

import abnet
from abnet.data.registry import data_spec, load_dataset, make_loader
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.evaluate import evaluate
from abnet.engine.train import train
from abnet.errors import AbnetError, CheckpointError
from abnet.models import locate
from abnet.models.shipping import publish, staging_folder

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ROOT = locate.PRETRAINED_ROOT  # the package's own folder, before any test points it elsewhere
CIFAR_ROOTS = (Path("/work/data/cifar"), REPO.parent / "data" / "cifar")  # real data: only the shipped-index test
CIFAR_BUILD = REPO.parent / "shared" / "data" / "cifar10_build.py"  # builds one from the shared images (~15 s)
HELD_OUT = 64  # held-out images the tiny model's accuracy is measured on


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny ABN trained one epoch on shapes and shipped in float16 into a package root of its own:
    (root, name, run folder, the script's JSON)."""
    model = register_tiny_cnn() + "_abn"
    base = tmp_path_factory.mktemp("shipped")
    train(tiny_config(base / "run", model=model), progress=False)
    root, name = base / "package", f"{model}:shapes"
    script = benchmark_script("ship_pretrained")
    code = script.main([str(base / "run"), "--name", name, "--root", str(root), "--limit", str(HELD_OUT),
                        "--images", "8", "--steps", "4", "--force"])
    assert code == 0
    return root, name, base / "run"


@pytest.fixture
def package(shipped, monkeypatch):
    """The shipped tiny model as the package's pretrained weights: (root, name)."""
    root, name, _ = shipped
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", root)
    return root, name


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_ship_writes_folder_index_and_card_with_measured_figures(shipped, capsys, monkeypatch):
    root, name, run = shipped
    index = json.loads((root / "index.json").read_text())
    assert list(index) == [name]
    entry = index[name]
    folder = root / entry["folder"]
    assert entry["folder"] == name.replace(":", "-")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert entry["sha256"] == locate.file_sha256(folder / "model.safetensors")
    assert entry["bytes"] == (folder / "model.safetensors").stat().st_size
    assert (entry["data"], entry["classes"], entry["dtype"]) == ("shapes", 6, "float16")
    assert not staging_folder(root, name).exists()
    # The recorded accuracy is what `abnet eval` gives on the same held-out images.
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", root)
    code, out, _ = run_cli(capsys, "eval", name, "--data", "shapes", "--limit", str(HELD_OUT), "--json")
    result = json.loads(out)
    assert code == 0 and result["split"] == "test" and result["n"] == HELD_OUT
    assert (result["accuracy"], result["att_accuracy"]) == (entry["held_out_accuracy"], entry["att_accuracy"])
    card = (folder / "README.md").read_text()
    for needle in (entry["sha256"], "float16", f"abnet train --model {name.split(':')[0]} --data shapes",
                   "1 epoch,", "Shipping machine", f"perception branch {entry['held_out_accuracy']:.4f}",
                   f"attention branch {entry['att_accuracy']:.4f}", "first 8 held-out images", "| abn |", "| cam |",
                   "| gradcam |", "pretrained='shapes'"):
        assert needle in card, needle
    # ... and its flip figure is what `abnet eval --flip` gives.
    code, out, _ = run_cli(capsys, "eval", name, "--data", "shapes", "--limit", str(HELD_OUT), "--json", "--flip")
    flipped = json.loads(out)
    assert code == 0 and flipped["flip"]
    assert (f"with flip test-time augmentation (`abnet eval --flip`): perception branch {flipped['accuracy']:.4f}, "
            f"attention branch {flipped['att_accuracy']:.4f}") in card


def test_float16_that_costs_too_much_is_refused_and_nothing_is_shipped(shipped, tmp_path, capsys, monkeypatch):
    _, name, run = shipped
    script = benchmark_script("ship_pretrained")
    monkeypatch.setattr(script, "MAX_DROP_PP", -1.0)  # any float16 copy now costs too much
    root = tmp_path / "package"
    code = script.main([str(run), "--name", name, "--root", str(root), "--limit", "16", "--images", "4"])
    assert_one_line_error(code, capsys.readouterr().err, "float16 costs", "--dtype float32", "--force")
    assert not (root / "index.json").exists() and not any(root.iterdir())
    code = script.main([str(run), "--name", name, "--root", str(root), "--limit", "16", "--images", "4",
                        "--dtype", "float32"])  # float32 is never refused
    assert code == 0 and json.loads((root / "index.json").read_text())[name]["dtype"] == "float32"
    code = script.main([str(run), "--name", "resnet20_abn:cifar10", "--root", str(root)])
    assert_one_line_error(code, capsys.readouterr().err, f"name it {name}")


def test_float16_folder_loads_as_float32_equal_to_the_rounded_weights(tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norm(abnet.create_model("resnet20_abn", num_classes=3))
    inputs = {"classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [16, 16]}
    half = model.save_pretrained(tmp_path / "half", dtype=torch.float16, **inputs)
    full = model.save_pretrained(tmp_path / "full", **inputs)
    from safetensors.torch import load_file

    stored = load_file(half / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16, torch.int64}
    assert all(t.dtype == torch.int64 for k, t in stored.items() if k.endswith("num_batches_tracked"))
    assert all(t.dtype == torch.float16 for k, t in stored.items() if k.endswith("running_var"))  # BN stats too
    assert (half / "model.safetensors").stat().st_size < 0.55 * (full / "model.safetensors").stat().st_size
    loaded = abnet.from_pretrained(half)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, original[key].half().float(), rtol=0, atol=0)
        else:
            assert torch.equal(value, original[key]), key
    weights = abnet.create_model("resnet20_abn", weights=str(half))  # create_model(weights=) reads it too
    assert all(p.dtype == torch.float32 for p in weights.parameters())


def test_a_pretrained_name_resolves_in_the_python_api(package):
    _, name = package
    model_name, data = name.split(":")
    x = torch.rand(2, 3, 16, 16)
    shipped = abnet.from_pretrained(name)
    made = abnet.create_model(model_name, pretrained=data)
    assert made.abnet_meta.data == "shapes" and made.abnet_meta.classes == shipped.abnet_meta.classes
    assert all(p.dtype == torch.float32 for p in made.parameters())
    for a, b in zip(outputs(made, x), outputs(shipped, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    same = abnet.create_model(model_name, pretrained=data, num_classes=6)  # the shipped count is accepted
    torch.testing.assert_close(outputs(same, x).logits, outputs(shipped, x).logits, rtol=0, atol=0)
    with pytest.raises(AbnetError) as err:
        abnet.create_model(model_name, pretrained=data, num_classes=3)
    assert "classifies 6 classes, not num_classes=3" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AbnetError, match="not both"):
        abnet.create_model(model_name, pretrained=data, weights="x.pt")


def test_every_command_that_takes_a_checkpoint_takes_a_pretrained_name(package, tmp_path, capsys):
    _, name = package
    code, out, _ = run_cli(capsys, "eval", name, "--data", "shapes", "--limit", "8")
    assert code == 0 and "on shapes/test (8 images)" in out
    code, out, _ = run_cli(capsys, "explain", name, "--data", "shapes", "--limit", "4", "--out", str(tmp_path / "ex"))
    assert code == 0 and (tmp_path / "ex" / "report.html").is_file()
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    code, _, _ = run_cli(capsys, "predict", name, str(image), "--out", str(tmp_path / "p.jsonl"))
    line = json.loads((tmp_path / "p.jsonl").read_text())
    assert code == 0 and line["perception"][0]["class"] in ("circle", "square", "triangle", "plus", "ring", "star")
    code, out, _ = run_cli(capsys, "export", name, "--format", "torchscript", "--out", str(tmp_path / "m.pt"))
    assert code == 0 and (tmp_path / "m.pt").is_file()
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(scripted(x)[0], outputs(abnet.from_pretrained(name), x).logits, rtol=1e-5, atol=1e-5)


def test_a_damaged_or_missing_weights_file_is_one_line_saying_reinstall(shipped, tmp_path, monkeypatch, capsys):
    root, name, _ = shipped
    copy = tmp_path / "package"
    shutil.copytree(root, copy)
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", copy)
    weights = copy / name.replace(":", "-") / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside a tensor: the file still reads, the checksum does not
    weights.write_bytes(bytes(raw))
    for call in (lambda: abnet.from_pretrained(name), lambda: abnet.create_model(name.split(":")[0],
                                                                                 pretrained="shapes")):
        with pytest.raises(CheckpointError) as err:
            call()
        message = str(err.value)
        assert str(weights) in message and "damaged" in message and "reinstall abnet" in message
        assert "\n" not in message
    code, _, err = run_cli(capsys, "eval", name, "--data", "shapes")
    assert_one_line_error(code, err, str(weights), "damaged", "sha256", "reinstall abnet")
    weights.unlink()
    code, _, err = run_cli(capsys, "eval", name, "--data", "shapes")
    assert_one_line_error(code, err, str(weights), "damaged", "missing", "reinstall abnet")
    (copy / "index.json").write_text('{"x:y": {"folder": "../elsewhere"}}')
    code, _, err = run_cli(capsys, "pretrained")
    assert_one_line_error(code, err, str(copy / "index.json"), "damaged", "reinstall abnet")


def test_an_unknown_name_lists_the_known_ones(package, tmp_path, monkeypatch, capsys):
    _, name = package
    with pytest.raises(CheckpointError) as err:
        abnet.from_pretrained("resnet20_abn:cifar99")
    assert str(err.value) == f"no pretrained weights named 'resnet20_abn:cifar99'; known: {name}"
    with pytest.raises(CheckpointError, match=f"known: {name}"):
        abnet.create_model("resnet20_abn", pretrained="cifar99")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "index.json").write_text("{}\n")
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", empty)
    code, _, err = run_cli(capsys, "eval", name, "--data", "shapes")
    assert_one_line_error(code, err, f"no pretrained weights named {name!r}", "none yet", "abnet pretrained")


def test_abnet_pretrained_lists_nothing_or_the_shipped_entries(package, tmp_path, monkeypatch, capsys):
    root, name = package
    entry = json.loads((root / "index.json").read_text())[name]
    code, out, _ = run_cli(capsys, "pretrained")
    header, row, use = out.strip().splitlines()
    assert code == 0 and header.split()[:3] == ["name", "data", "classes"]
    accuracy = f"{entry['held_out_accuracy']:.4f} / {entry['att_accuracy']:.4f}"
    assert row.split() == [name, "shapes", "6", *accuracy.split(), "float16", f"{entry['bytes'] / 1e3:.0f}", "kB"]
    assert use.startswith(f"use: abnet eval {name} --data shapes")
    code, out, _ = run_cli(capsys, "pretrained", "--json")
    assert code == 0 and json.loads(out) == [{"name": name, **entry}]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "index.json").write_text("{}\n")
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", empty)
    code, out, err = run_cli(capsys, "pretrained")
    assert code == 0 and err == "" and len(out.strip().splitlines()) == 1 and "no pretrained weights" in out
    code, out, _ = run_cli(capsys, "pretrained", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(capsys, "--help")
    assert "pretrained" in out


def test_a_class_count_other_than_the_data_sets_is_one_line_naming_both(tmp_path, monkeypatch, capsys):
    """A shipped plain 3-class model used on the 6-class shapes set: eval, explain --data and train --weights."""
    model_name = register_tiny_cnn()
    root = tmp_path / "package"
    root.mkdir()
    name = f"{model_name}:three"
    torch.manual_seed(0)
    staged = abnet.create_model(model_name, num_classes=3).save_pretrained(
        staging_folder(root, name), classes=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, image_size=[16, 16],
        data="three", dtype=torch.float16)
    entry = publish(staged, root, name, held_out_accuracy=0.5, att_accuracy=None)
    assert (entry.classes, entry.att_accuracy, entry.dtype) == (3, None, "float16")
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", root)
    code, out, _ = run_cli(capsys, "pretrained")
    assert code == 0 and "0.5000 / -" in out
    for argv in (["eval", name, "--data", "shapes", "--limit", "4"],
                 ["explain", name, "--data", "shapes", "--limit", "4", "--out", str(tmp_path / "ex")]):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "3 classes", "shapes has 6")
    code, _, err = run_cli(capsys, "train", "--model", model_name, "--weights", name, "--data", "shapes",
                           "--image-size", "16", "--limit-train", "8", "--limit-val", "8", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"--weights {name} holds a model for 3 classes, but shapes has 6")
    assert not (tmp_path / "r").exists()


def held_out_cifar10_root(tmp_path: Path) -> Path | None:
    """A folder holding the shared CIFAR-10 copy in its pickle layout: a built one, else one built here from
    ../shared/data, else None."""
    built = next((r for r in CIFAR_ROOTS if (r / "cifar-10-batches-py").is_dir()), None)
    if built is None and CIFAR_BUILD.is_file():
        subprocess.run([sys.executable, str(CIFAR_BUILD), str(tmp_path / "cifar")], check=True, capture_output=True)
        built = tmp_path / "cifar"
    return built


def test_each_really_shipped_model_matches_its_recorded_held_out_accuracy(monkeypatch, tmp_path):
    """The only test that reads real data: each entry of the package's index.json, checked and evaluated on a slice of
    CIFAR-10's held-out images; skipped while nothing is shipped or where the data is absent."""
    monkeypatch.setattr(locate, "PRETRAINED_ROOT", SHIPPED_ROOT)
    index = locate.pretrained_index()
    if not index:
        pytest.skip("no pretrained weights are shipped yet (src/abnet/pretrained/index.json is {})")
    data_root = held_out_cifar10_root(tmp_path)
    checked = 0
    for name, entry in index.items():
        locate.pretrained_folder(name)  # the checksum
        model, meta = load_checkpoint(name)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert (meta.data, len(meta.classes)) == (entry.data, entry.classes)
        if entry.data != "cifar10" or data_root is None:
            continue
        n = 1000
        data = load_dataset("cifar10", "test", n, meta.data_options(data_root))
        result = evaluate(model, make_loader(data, replace(data_spec("cifar10"), mean=meta.mean, std=meta.std), 250))
        for key, recorded in (("accuracy", entry.held_out_accuracy), ("att_accuracy", entry.att_accuracy)):
            if recorded is not None:  # a slice of n images: within 4 standard errors of the full split's figure
                tolerance = 4 * math.sqrt(recorded * (1 - recorded) / n) + 0.005
                assert abs(result[key] - recorded) <= tolerance, (name, key, result[key], recorded)
        checked += 1
    if not checked:
        pytest.skip(f"no CIFAR-10 copy ({', '.join(map(str, CIFAR_ROOTS))}, or {CIFAR_BUILD} to build one) "
                    "for the shipped models")
