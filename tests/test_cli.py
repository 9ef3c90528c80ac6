"""The command line: one-line errors with exit code 2, nothing overwritten, safe checkpoint loading."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY_ARGS, assert_one_line_error, run_cli

import abnet
from abnet.engine.checkpoint import model_meta, save_weights


def test_train_then_eval_json(abn_run, capsys):
    code, out, _ = run_cli(capsys, "eval", str(abn_run), "--data", "shapes", "--limit", "50", "--json")
    assert code == 0
    result = json.loads(out)
    assert {"accuracy", "att_accuracy", "loss", "n", "pointing_game"} <= set(result)
    assert result["n"] == 50 and 0 <= result["accuracy"] <= 1


def test_eval_flip_averages_with_the_mirror_image_as_training_does(abn_run, capsys):
    """`abnet eval --flip` gives evaluate(..., flip=True)'s figures (the training loop's --eval-flip), not the plain
    evaluation's."""
    from dataclasses import replace

    from abnet.data.registry import data_spec, load_dataset, make_loader
    from abnet.engine.checkpoint import load_checkpoint
    from abnet.engine.evaluate import evaluate

    results = {}
    for flags in ((), ("--flip",)):
        code, out, _ = run_cli(capsys, "eval", str(abn_run), "--data", "shapes", "--limit", "50", "--json", *flags)
        assert code == 0
        results[bool(flags)] = json.loads(out)
    model, meta = load_checkpoint(abn_run)
    data = load_dataset("shapes", "test", 50, meta.data_options(None))
    expected = evaluate(model, make_loader(data, replace(data_spec("shapes"), mean=meta.mean, std=meta.std), 256),
                        flip=True)
    assert results[True]["flip"] and not results[False]["flip"]
    for key in ("accuracy", "att_accuracy", "loss"):
        assert results[True][key] == pytest.approx(expected[key], rel=1e-5), key
    assert results[True]["loss"] != pytest.approx(results[False]["loss"], rel=1e-5)


def test_flip_tta_is_refused_for_data_that_is_never_mirrored(tmp_path, capsys):
    """SVHN's digits are not flipped in training, so averaging with the mirror image is refused before any file is
    read or written."""
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "no-such-run"), "--data", "svhn", "--flip")
    assert_one_line_error(code, err, "--flip", "svhn", "mirror")
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", "--data", "svhn", "--data-root",
                           str(tmp_path), "--eval-flip", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--eval-flip", "svhn", "drop --eval-flip")
    assert not (tmp_path / "r").exists()


def test_unknown_model_suggests_names(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20abn", *TINY_ARGS, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown model", "resnet20_abn")
    assert not (tmp_path / "r").exists()


def test_unknown_data_set(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", "--data", "imagenet21k",
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown data set", "shapes")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [("--epochs", "-3"), ("--batch-size", "0"), ("--lr", "0"),
                                         ("--limit-train", "zero"), ("--seed", "-1")])
def test_nonsense_numbers(tmp_path, capsys, flag, value):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", *TINY_ARGS, flag, value,
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, flag)


def test_missing_or_empty_data_folder(tmp_path, capsys):
    run = ["train", "--model", "resnet20_abn", "--data", "cifar10", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(capsys, *run, "--data-root", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "--data-root", "not a folder", "cifar-10-batches-py/")
    code, _, err = run_cli(capsys, *run)
    assert_one_line_error(code, err, "pass --data-root")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, *run, "--data-root", str(tmp_path / "empty"))
    assert_one_line_error(code, err, "CIFAR-10 not found", "data_batch_1", "test_batch")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_existing_run_folder_is_not_overwritten(abn_run, capsys):
    before = {p.name: p.read_bytes() for p in abn_run.iterdir()}
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", *TINY_ARGS, "--out", str(abn_run))
    assert_one_line_error(code, err, "already holds files", "--resume")
    assert {p.name: p.read_bytes() for p in abn_run.iterdir()} == before


def test_resume_of_another_model_is_refused(abn_run, capsys):
    before = {p.name: p.read_bytes() for p in abn_run.iterdir()}
    code, _, err = run_cli(capsys, "train", "--model", "resnet32_abn", "--out", str(abn_run), "--resume",
                           "--epochs", "2")
    assert_one_line_error(code, err, "cannot resume")
    assert {p.name: p.read_bytes() for p in abn_run.iterdir()} == before


def test_resume_continues_the_run_with_the_flags_given_then_and_later(abn_run, tmp_path, capsys):
    copy = shutil.copytree(abn_run, tmp_path / "copy")
    code, out, _ = run_cli(capsys, "train", "--out", str(copy), "--resume", "--epochs", "2", "--weight-decay", "1e-3")
    assert code == 0 and json.loads(out)["epoch"] == 2
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2
    # The optimizer trained with the new weight decay, not the one its saved state carried.
    assert torch.load(copy / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["weight_decay"] == 1e-3
    # config.json keeps the flags, so a later --resume continues the 2-epoch run, not the 1-epoch one.
    assert json.loads((copy / "config.json").read_text())["epochs"] == 2
    code, _, err = run_cli(capsys, "train", "--out", str(copy), "--resume")
    assert code == 0 and "already trained all 2 epochs" in err


def test_missing_required_flags(capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn")
    assert_one_line_error(code, err, "--data", "--out")


@pytest.mark.parametrize("content", [None, b"", b"this is not a checkpoint at all" * 10])
def test_bad_checkpoints(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_cli(capsys, "eval", str(path), "--data", "shapes")
    assert_one_line_error(code, err, str(path))


class _Exploit:
    def __reduce__(self):
        return (exec, (f"open({_Exploit.target!r}, 'w').write('pwned')",))


def test_malicious_pickle_does_not_run(tmp_path, capsys):
    _Exploit.target = str(tmp_path / "pwned")
    path = tmp_path / "last.pt"
    torch.save({"model": _Exploit(), "meta": {}}, path)
    code, _, err = run_cli(capsys, "eval", str(path), "--data", "shapes")
    assert_one_line_error(code, err, "refused")
    assert not (tmp_path / "pwned").exists()
    torch.load(path, weights_only=False)  # proof that the file is a real exploit (it writes into tmp_path)
    assert (tmp_path / "pwned").read_text() == "pwned"


def test_checkpoint_of_another_model(tmp_path, capsys):
    model = abnet.create_model("resnet32_abn", num_classes=6)
    meta = model_meta(model, classes=list("abcdef"), mean=[0.5] * 3, std=[0.25] * 3, image_size=[32, 32])
    meta["model_config"] = {"model": "resnet20_abn", "num_classes": 6}  # lies about its model
    save_weights(tmp_path / "w.safetensors", model, meta)
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "w.safetensors"), "--data", "shapes")
    assert_one_line_error(code, err, "does not fit model 'resnet20_abn'")


def test_checkpoint_naming_an_unknown_model(tmp_path, capsys):
    model = abnet.create_model("resnet20_abn", num_classes=6)
    meta = model_meta(model, classes=list("abcdef"), mean=[0.5] * 3, std=[0.25] * 3, image_size=[32, 32])
    meta["model_config"] = {"model": "resnet21_abn"}
    save_weights(tmp_path / "w.safetensors", model, meta)
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "w.safetensors"), "--data", "shapes")
    assert_one_line_error(code, err, "cannot build")


def test_models_lists_names(capsys):
    code, out, _ = run_cli(capsys, "models", "*abn")
    assert code == 0 and "resnet110_abn" in out.split()


def test_python_dash_m_and_exit_code_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "abnet", "eval", str(tmp_path / "missing.pt"), "--data", "shapes"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, "-m", "abnet", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "demo" in helped.stdout and "train" in helped.stdout


def test_demo_writes_grid_and_metrics(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import abnet.demo as demo

    monkeypatch.setattr(demo, "DEMO_CONFIG", replace(demo.DEMO_CONFIG, image_size=16, limit_train=64,
                                                      limit_val=32, batch_size=32))
    monkeypatch.setattr(demo, "TEST_IMAGES", 40)
    monkeypatch.setattr(demo, "EXPLAIN_IMAGES", 12)
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1")
    assert code == 0 and "pointing_game" in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert {"accuracy", "pointing_game", "att_accuracy", "n", "explain"} <= set(metrics) and metrics["n"] == 40
    assert [row["method"] for row in metrics["explain"]] == demo.demo_methods()
    assert all(0 <= row["deletion_auc"] <= 1 and row["images"] == 12 for row in metrics["explain"])
    assert (tmp_path / "demo" / "attention_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table" in (tmp_path / "demo" / "explain" / "report.html").read_text()


def test_demo_default_folder_never_overwrites(tmp_path, monkeypatch):
    from abnet.demo import default_out_dir

    monkeypatch.chdir(tmp_path)
    assert str(default_out_dir()) == "abnet-demo"
    (tmp_path / "abnet-demo").mkdir()
    assert str(default_out_dir()) == "abnet-demo"  # empty folder is fine
    (tmp_path / "abnet-demo" / "x").write_text("keep")
    assert str(default_out_dir()) == "abnet-demo-2"


def test_resume_of_a_finished_run_trains_nothing(abn_run, tmp_path, capsys):
    copy = shutil.copytree(abn_run, tmp_path / "done")
    weights = (copy / "last.pt").read_bytes()
    code, out, err = run_cli(capsys, "train", "--out", str(copy), "--resume")
    assert code == 0 and json.loads(out)["epoch"] == 1 and "already trained all 1 epochs" in err
    assert "resuming" not in err  # not "resuming at epoch 2 of 1"
    assert (copy / "last.pt").read_bytes() == weights
