"""save_pretrained / from_pretrained, the local Hugging Face cache, `abnet convert`, and typed checkpoint metadata."""

import json
import socket
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, randomize_batch_norm, run_cli
from safetensors.torch import save_file

import abnet
from abnet.data.loader import normalize
from abnet.data.registry import DataOptions, load_dataset
from abnet.engine.checkpoint import load_checkpoint, model_meta, save_state, save_weights
from abnet.errors import AbnetError, CheckpointError
from abnet.models.convert import OFFICIAL_CLASSES, RESEARCH_NORMALISATION
from abnet.models.meta import META_VERSION, CheckpointMeta

INPUTS = {"classes": ["a", "b", "c"], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "image_size": [16, 16]}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: nothing here may touch the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny(name="resnet20_abn", num_classes=3):
    torch.manual_seed(0)
    return abnet.create_model(name, num_classes=num_classes).eval()


def same_outputs(a, b, x):
    with torch.no_grad():
        for u, v in zip(a(x), b(x)):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_save_then_from_pretrained_gives_the_same_model(tmp_path):
    model = tiny()
    folder = model.save_pretrained(tmp_path / "m", **INPUTS, data="shapes", license="mit")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = abnet.from_pretrained(folder)
    assert not loaded.training and loaded.abnet_meta.classes == ("a", "b", "c")
    assert loaded.abnet_meta.mean == (0.5, 0.4, 0.3) and loaded.abnet_meta.license == "mit"
    same_outputs(model, loaded, torch.rand(2, 3, 16, 16))
    # A loaded model knows its metadata: saving it again needs no arguments and writes the same config.
    again = loaded.save_pretrained(tmp_path / "again")
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()
    # The folder is accepted everywhere a checkpoint is: load_checkpoint, its model.safetensors, create_model.
    same_outputs(model, load_checkpoint(folder / "model.safetensors")[0], torch.rand(2, 3, 16, 16))
    rebuilt = abnet.create_model("resnet20_abn", num_classes=3, weights=str(folder)).eval()
    same_outputs(model, rebuilt, torch.rand(2, 3, 16, 16))


def test_plain_models_save_too(tmp_path):
    model = tiny("resnet20")
    loaded = abnet.from_pretrained(model.save_pretrained(tmp_path / "p", **INPUTS))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x), rtol=0, atol=0)
    assert "none (a plain classifier" in (tmp_path / "p" / "README.md").read_text()


def test_model_card_says_what_the_model_is_and_how_good(tmp_path):
    model = tiny()
    train_config = {"epochs": 30, "batch_size": 128, "lr": 0.1, "schedule": "cosine", "seed": 7}
    meta = model_meta(model, **INPUTS, data="shapes", train_config=train_config, epoch=30, val_accuracy=0.91234,
                      val_att_accuracy=0.87654)
    save_weights(tmp_path / "best.safetensors", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "best.safetensors")
    card = (loaded.save_pretrained(tmp_path / "m", license="apache-2.0") / "README.md").read_text()
    with torch.no_grad():
        h, w = model(torch.zeros(1, 3, 16, 16)).attention.shape[-2:]
    n_params = sum(p.numel() for p in model.parameters())
    for needle in ("license: apache-2.0", "# resnet20_abn on shapes", f"{n_params:,} parameters", "3 classes: a, b, c",
                   "mean (0.5, 0.4, 0.3) and std (0.25, 0.2, 0.3)", f"1 map of {h} x {w} per image",
                   "perception branch 0.9123, attention branch 0.8765", "epoch 30", "30 epochs", "batch size 128",
                   "lr 0.1", "cosine schedule", "seed 7", "| Licence | apache-2.0 |", "abnet eval", "--data shapes"):
        assert needle in card, needle
    assert (h, w) == (8, 8)


def test_save_pretrained_refuses_bad_input_and_writes_nothing(tmp_path):
    model = tiny()
    with pytest.raises(AbnetError, match="pass classes=, mean=, std=, image_size="):
        model.save_pretrained(tmp_path / "new")
    with pytest.raises(CheckpointError, match="'mean'"):
        model.save_pretrained(tmp_path / "new", **{**INPUTS, "mean": "grey"})
    with pytest.raises(CheckpointError, match="3 outputs but its metadata names 2 classes"):
        model.save_pretrained(tmp_path / "new", **{**INPUTS, "classes": ["a", "b"]})
    assert not (tmp_path / "new").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(AbnetError, match="not empty"):
        model.save_pretrained(full, **INPUTS)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    model.save_pretrained(full, **INPUTS, overwrite=True)
    assert (full / "notes.txt").read_text() == "mine" and (full / "config.json").is_file()


def cache_snapshot(root, repo_id, revision):
    return root / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision


def test_owner_name_is_read_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    model, other = tiny(), tiny(num_classes=4)
    cache = tmp_path / "hf" / "hub"
    model.save_pretrained(cache_snapshot(cache, "owner/name", "abc123"), **INPUTS)
    other.save_pretrained(cache_snapshot(cache, "owner/name", "old999"), **{**INPUTS, "classes": list("wxyz")})
    (cache / "models--owner--name" / "refs").mkdir()
    (cache / "models--owner--name" / "refs" / "main").write_text("abc123\n")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # HF_HOME/hub, as huggingface_hub reads it
    x = torch.rand(2, 3, 16, 16)
    same_outputs(model, abnet.from_pretrained("owner/name"), x)  # refs/main picks the snapshot
    (cache / "models--owner--name" / "refs" / "main").unlink()
    with pytest.raises(CheckpointError, match="2 snapshots"):
        abnet.from_pretrained("owner/name")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # wins over HF_HOME
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    other.save_pretrained(cache_snapshot(cache, "someone/only", "r1"), **{**INPUTS, "classes": list("wxyz")})
    same_outputs(other, abnet.from_pretrained("someone/only"), x)  # the only snapshot, without refs/main


def test_a_model_missing_from_the_cache_is_one_line_saying_where_abnet_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as err:
        abnet.from_pretrained("owner/missing")
    message = str(err.value)
    assert str(tmp_path / "cache" / "models--owner--missing" / "snapshots") in message
    assert "never downloads" in message and "\n" not in message
    code, _, err_text = run_cli(capsys, "eval", "owner/missing", "--data", "shapes")
    assert_one_line_error(code, err_text, "models--owner--missing", "not a file or folder")
    # A name:data is a pretrained name, never looked up in the cache (a name never shipped, whatever the package holds).
    code, _, err_text = run_cli(capsys, "eval", "resnet20_abn:cifar99", "--data", "shapes")
    assert_one_line_error(code, err_text, "no pretrained weights named 'resnet20_abn:cifar99'", "known:")


def test_convert_writes_a_folder_that_eval_explain_and_from_pretrained_accept(tmp_path, capsys):
    model = tiny(num_classes=6)
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a state dict of abnet's names, no metadata
    out = tmp_path / "converted"
    code, printed, _ = run_cli(capsys, "convert", str(tmp_path / "plain.pt"), "--model", "resnet20_abn",
                               "--num-classes", "6", "--data", "shapes", "--license", "mit", "--out", str(out))
    assert code == 0 and str(out) in printed
    config = json.loads((out / "config.json").read_text())
    mean, std = RESEARCH_NORMALISATION[32]
    assert config["version"] == META_VERSION and config["converted_from"] == "plain.pt"
    assert (tuple(config["mean"]), tuple(config["std"]), config["image_size"]) == (mean, std, [32, 32])
    assert config["classes"] == ["circle", "square", "triangle", "plus", "ring", "star"]
    assert "converted by `abnet convert` from `plain.pt`" in (out / "README.md").read_text()
    loaded = abnet.from_pretrained(out)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())

    code, printed, _ = run_cli(capsys, "eval", str(out), "--data", "shapes", "--limit", "20", "--json")
    assert code == 0
    data = load_dataset("shapes", "test", 20, DataOptions(image_size=32))
    with torch.no_grad():  # the loss with the research code's normalisation, computed independently
        expected = abnet.abn_loss(model(normalize(data.images, mean, std)), data.labels).item()
    assert json.loads(printed)["loss"] == pytest.approx(expected, rel=1e-5)

    code, _, _ = run_cli(capsys, "explain", str(out), "--data", "shapes", "--limit", "4", "--out", str(tmp_path / "ex"))
    assert code == 0 and "circle" in (tmp_path / "ex" / "report.html").read_text()


def test_convert_names_cifar_classes_without_the_data_and_refuses_what_does_not_fit(tmp_path, capsys):
    torch.save(tiny(num_classes=10).state_dict(), tmp_path / "c10.pt")
    code, _, _ = run_cli(capsys, "convert", str(tmp_path / "c10.pt"), "--model", "resnet20_abn", "--num-classes",
                         "10", "--data", "cifar10", "--out", str(tmp_path / "c10"))
    assert code == 0
    assert json.loads((tmp_path / "c10" / "config.json").read_text())["classes"] == OFFICIAL_CLASSES["cifar10"]
    assert len(OFFICIAL_CLASSES["cifar100"]) == len(set(OFFICIAL_CLASSES["cifar100"])) == 100
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "c10.pt"), "--model", "resnet20_abn", "--num-classes",
                           "10", "--data", "cifar100", "--out", str(tmp_path / "bad1"))
    assert_one_line_error(code, err, "cifar100 has 100 classes but --num-classes is 10")
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "c10.pt"), "--model", "resnet32_abn", "--num-classes",
                           "10", "--out", str(tmp_path / "bad2"))
    assert_one_line_error(code, err, "does not fit resnet32_abn")
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "c10.pt"), "--model", "resnet20_abn", "--num-classes",
                           "10", "--out", str(tmp_path / "c10"))
    assert_one_line_error(code, err, "not empty", "--force")
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()


def test_metadata_of_older_newer_and_broken_files(tmp_path, capsys):
    model = tiny()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    old = {"model_config": {"model": "resnet20_abn", "num_classes": 3}, **INPUTS, "data": "shapes",
           "train_config": {"epochs": 2}, "epoch": 2, "val_accuracy": 0.5, "val_pointing_game": 0.7}
    save_file(state, str(tmp_path / "old.safetensors"), metadata={"abnet": json.dumps(old)})  # no version field
    loaded, meta = load_checkpoint(tmp_path / "old.safetensors")
    assert (meta.version, meta.multi_label, meta.epoch, meta.data) == (META_VERSION, False, 2, "shapes")
    assert meta.extra == {"val_pointing_game": 0.7}  # a key this version does not know is kept and written back
    assert meta.to_dict()["val_pointing_game"] == 0.7
    same_outputs(model, loaded, torch.rand(1, 3, 16, 16))

    save_state(tmp_path / "last.pt", {"model": state, "meta": model_meta(model, **INPUTS)})
    assert torch.load(tmp_path / "last.pt", weights_only=True)["meta"]["version"] == META_VERSION  # plain data
    assert load_checkpoint(tmp_path / "last.pt")[1].classes == ("a", "b", "c")

    cases = {"newer": ({**old, "version": META_VERSION + 1}, "written by a newer abnet"),
             "mistyped": ({**old, "image_size": "16x16"}, "metadata field 'image_size'"),
             "missing": ({k: v for k, v in old.items() if k != "classes"}, "lacks 'classes'")}
    for name, (raw, needle) in cases.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"), metadata={"abnet": json.dumps(raw)})
        code, _, err = run_cli(capsys, "eval", str(tmp_path / f"{name}.safetensors"), "--data", "shapes")
        assert_one_line_error(code, err, needle, f"{name}.safetensors")
    with pytest.raises(CheckpointError, match="2 mean values but 3 std"):
        CheckpointMeta.from_dict({**old, "mean": [0.5, 0.5]}, "x")


def test_create_model_builds_an_abnet_checkpoint_as_it_was_built_and_refuses_what_contradicts_it(tmp_path):
    torch.manual_seed(0)
    source = randomize_batch_norm(abnet.create_model("wrn28_10_abn", num_classes=3, mask="multiply", map_kernel=1,
                                                     depth=10, widen=1))
    save_weights(tmp_path / "best.safetensors", source, model_meta(source, **{**INPUTS, "image_size": [32, 32]}))
    model = abnet.create_model("wrn28_10_abn", weights=tmp_path / "best.safetensors").eval()
    assert model.abnet_config == {"model": "wrn28_10_abn", "num_classes": 3, "mask": "multiply", "map_kernel": 1,
                                  "depth": 10, "widen": 1}
    assert model.abnet_meta.classes == ("a", "b", "c")
    x = torch.randn(2, 3, 32, 32)
    same_outputs(source, model, x)
    # The default mask fits the file key for key, but computes other logits: what the file says matters.
    residual = abnet.create_model("wrn28_10_abn", num_classes=3, map_kernel=1, depth=10, widen=1).eval()
    residual.load_state_dict(source.state_dict())
    with torch.no_grad():
        assert not torch.allclose(residual(x).logits, source(x).logits)
    for given, needle in [({"mask": "residual"}, "built with mask='multiply', not mask='residual'"),
                          ({"num_classes": 10}, "built with num_classes=3, not num_classes=10"),
                          ({"widen": 2}, "built with widen=1, not widen=2"),
                          ({"dropout": 0.5}, "built with dropout=0.3, not dropout=0.5")]:  # unrecorded: the default
        with pytest.raises(CheckpointError, match=r"^[^\n]*best\.safetensors[^\n]*$") as err:
            abnet.create_model("wrn28_10_abn", weights=tmp_path / "best.safetensors", **given)
        assert needle in str(err.value) and "leave" in str(err.value)
    agreeing = abnet.create_model("wrn28_10_abn", weights=tmp_path / "best.safetensors", mask="multiply", depth=10,
                                  dropout=0.3).eval()
    same_outputs(source, agreeing, x)


def test_convert_keeps_an_abnet_checkpoints_own_normalisation_and_classes(tmp_path, capsys):
    model = tiny()
    meta = model_meta(model, **INPUTS, data="shapes", val_accuracy=0.75)
    save_weights(tmp_path / "best.safetensors", model, meta)
    out = tmp_path / "converted"
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "best.safetensors"), "--model", "resnet20_abn",
                           "--num-classes", "3", "--license", "mit", "--out", str(out))
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    for key in ("classes", "mean", "std", "image_size"):
        assert config[key] == INPUTS[key], key
    assert (config["data"], config["val_accuracy"], config["license"]) == ("shapes", 0.75, "mit")
    assert "converted_from" not in config and "trained by other code" not in (out / "README.md").read_text()
    same_outputs(model, abnet.from_pretrained(out), torch.rand(2, 3, 16, 16))
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "best.safetensors"), "--model", "resnet20_abn",
                           "--num-classes", "3", "--data", "cifar10", "--out", str(tmp_path / "bad"))
    assert_one_line_error(code, err, "trained on shapes, not cifar10", "leave out --data")
    assert not (tmp_path / "bad").exists()


def test_an_overwrite_that_fails_leaves_no_config_json_beside_other_weights(tmp_path, monkeypatch):
    from abnet.models import weights

    folder = tiny().save_pretrained(tmp_path / "m", **INPUTS)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(weights, "atomic_write", disk_full)
    with pytest.raises(OSError, match="No space"):
        tiny(num_classes=4).save_pretrained(folder, **{**INPUTS, "classes": list("wxyz")}, overwrite=True)
    assert not (folder / "config.json").exists()
    with pytest.raises(CheckpointError, match="without config.json"):
        abnet.from_pretrained(folder)


def test_checkpoint_metadata_says_how_its_data_was_read():
    meta = CheckpointMeta.from_dict({"model_config": {"model": "resnet20_abn"}, **INPUTS,
                                     "train_config": {"coarse": True, "val_fraction": 0.2, "epochs": 3}}, "x")
    assert meta.data_options(Path("/data"), seed=4) == DataOptions(root=Path("/data"), image_size=16, seed=4,
                                                                   coarse=True, val_fraction=0.2)
    bare = CheckpointMeta.from_dict({"model_config": {"model": "resnet20_abn"}, **INPUTS}, "x")
    assert bare.data_options() == DataOptions(image_size=16)
    assert CheckpointMeta.of(bare, "y") is bare and CheckpointMeta.of(bare.to_dict(), "y") == bare
