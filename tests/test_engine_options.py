"""Training options: device, torch.compile fallback, step milestones, --eval-every (precision: test_precision.py)."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, break_torch_compile, tiny_config

import abnet.engine.train as engine
from abnet.cli import main
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.config import TrainConfig
from abnet.errors import AbnetError


def test_compile_failure_falls_back_to_eager_with_a_message(tmp_path, monkeypatch, caplog):
    break_torch_compile(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="abnet"):
        metrics = engine.train(tiny_config(tmp_path / "c", compile=True), progress=False)
    assert metrics["epoch"] == 1 and "torch.compile could not compile" in caplog.text


def test_device_that_is_not_here_is_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["train", "--model", "resnet20_abn", "--data", "shapes", "--device", "cuda", "--out",
                 str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "sees none here" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_milestones_and_gamma_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet20_abn", *TINY_ARGS, "--epochs", "2", "--schedule", "step",
                 "--milestones", "1", "--gamma", "0.5", "--lr", "0.2", "--warmup-epochs", "0", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["milestones"] == [1.0] and config["gamma"] == 0.5
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [pytest.approx(0.2), pytest.approx(0.1)]


def test_eval_every_evaluates_every_nth_and_the_last_epoch(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet20_abn", *TINY_ARGS, "--epochs", "3", "--eval-every", "2", "--out",
                 str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("val_accuracy" in r) for r in lines] == [False, True, True]
    assert all(r["train_loss"] > 0 and r["lr"] > 0 for r in lines)
    assert "(not evaluated)" in (out / "train.log").read_text()
    assert load_checkpoint(out / "best.safetensors")[1].epoch in (2, 3)  # the best weights: an evaluated epoch
    assert (out / "curves.png").stat().st_size > 0


def test_eval_every_below_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_ARGS, "--eval-every", "0", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "--eval-every" in capsys.readouterr().err
    with pytest.raises(AbnetError, match="eval-every must be >= 1"):  # from a --config file
        tiny_config(tmp_path / "c", eval_every=0).validate()
    assert not (tmp_path / "r").exists()


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_is_a_valid_config(path):
    from abnet.data.registry import data_spec
    from abnet.engine.config import read_config
    from abnet.models import model_info

    values = read_config(path)
    cfg = TrainConfig.from_dict(values).validate()
    model_info(cfg.model)
    data_spec(cfg.data)
    assert cfg.source
    # every recipe pins the settings the default recipe sets, so that it stays as published when defaults change
    assert {"lr", "batch_size", "epochs", "schedule", "warmup_epochs", "weight_decay", "nesterov",
            "label_smoothing"} <= set(values)
    if cfg.schedule == "step":  # the paper recipes
        assert cfg.milestones and cfg.milestones[-1] < cfg.epochs and not cfg.nesterov and not cfg.label_smoothing


def test_recipes_cover_table_1():
    names = {p.stem for p in CONFIGS}
    assert {f"table1_cifar100_resnet{d}_{m}" for d in (20, 32, 44, 56, 110)
            for m in ("none", "multiply", "residual")} <= names


def test_a_recipe_runs_with_flag_overrides(tmp_path, capsys):
    out = tmp_path / "r"
    path = [p for p in CONFIGS if p.stem == "table1_cifar100_resnet20_residual"][0]
    code = main(["train", "--config", str(path), "--data", "shapes", "--image-size", "16", "--limit-train", "32",
                 "--limit-val", "16", "--epochs", "1", "--out", str(out)])
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["milestones"] == [150, 225] and saved["epochs"] == 1 and saved["source"].startswith("ABN")


def test_crop_padding_is_recorded_and_negative_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet20_abn", *TINY_ARGS, "--crop-padding", "0", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["crop_padding"] == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_ARGS, "--crop-padding", "-1", "--out", str(tmp_path / "n")])
    assert exit_info.value.code == 2 and "--crop-padding" in capsys.readouterr().err
