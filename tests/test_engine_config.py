"""How `abnet train` settles its settings: config file, resumed run and flags; sizes from the model."""

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, assert_one_line_error, run_cli, save_random_image

from abnet.cli import main
from abnet.engine.config import TrainConfig
from abnet.errors import AbnetError

ROOT = Path(__file__).resolve().parents[1]


def test_flags_override_a_config_file_and_a_resumed_run(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "resnet20", "data": "shapes", "epochs": 3, "lr": 0.5}))
    cfg = TrainConfig.from_sources({"out": "r", "lr": 0.2}, str(config))
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.out) == ("resnet20", 3, 0.2, "r")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(model="resnet20_abn", epochs=4, lr=0.1, out=str(run)).to_json())
    resumed = TrainConfig.from_sources({"out": str(run), "epochs": 6}, str(config), resume=True)
    assert (resumed.model, resumed.epochs, resumed.lr) == ("resnet20_abn", 6, 0.1)  # the run's, not --config's
    with pytest.raises(AbnetError, match="--model, --data required"):
        TrainConfig.from_sources({"out": "r"})
    with pytest.raises(AbnetError, match="--resume needs --out"):
        TrainConfig.from_sources({}, resume=True)


def test_folders_are_read_at_the_model_input_size_unless_told():
    assert TrainConfig(model="resnet50_abn", data="imagefolder").resolved().image_size == 224
    assert TrainConfig(model="resnet20_abn", data="celeba").resolved().image_size == 32
    assert TrainConfig(model="resnet50_abn", data="imagefolder", image_size=96).resolved().image_size == 96
    assert TrainConfig(model="resnet50_abn", data="shapes").resolved().image_size is None  # generated: 32


def test_a_folder_of_small_images_trains_at_the_model_size_and_says_so(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(4):
                save_random_image(tmp_path / "data" / split / name / f"{i}.png", (32, 32, 3), rng)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", "--data", "imagefolder", "--data-root",
                           str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8", "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["image_size"] == 32
    assert "of 32x32" in err and "of 32x32" in (out / "train.log").read_text()


def test_a_log_every_of_zero_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "resnet20_abn", "data": "shapes", "log_every": 0}))
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "log-every must be >= 1")
    assert not (tmp_path / "r").exists()


def test_the_default_recipe_scales_the_lr_with_the_batch_and_smooths_class_labels_only():
    default = TrainConfig(model="resnet20_abn", data="cifar10").resolved()
    assert (default.schedule, default.warmup_epochs, default.nesterov, default.weight_decay) == ("cosine", 1.0, True,
                                                                                               5e-4)
    assert (default.batch_size, default.lr, default.label_smoothing) == (128, pytest.approx(0.2), 0.1)
    assert TrainConfig(data="cifar10", batch_size=32).resolved().lr == pytest.approx(0.05)
    assert TrainConfig(data="cifar10", batch_size=32, lr=0.3).resolved().lr == 0.3  # a given lr is kept
    assert TrainConfig(data="celeba").resolved().label_smoothing == 0.0  # attributes: nothing to smooth over
    assert TrainConfig(data="shapes-multi", label_smoothing=0.0).resolved().label_smoothing == 0.0
    # the warm-up: 1 epoch, but at most half the run; a given one is kept
    assert [TrainConfig(epochs=e).resolved().warmup_epochs for e in (1, 2, 30)] == [0.5, 1.0, 1.0]
    assert TrainConfig(epochs=1, warmup_epochs=2).resolved().warmup_epochs == 2
    # the schedule reads the scaled lr: 1/10 of it at step 0, all of it after the 1-epoch warm-up, 0 at the end
    cfg = TrainConfig(data="cifar10", batch_size=64, epochs=3)
    assert [round(cfg.lr_at(s, 10), 6) for s in (0, 10, 20, 30)] == [0.01, 0.1, 0.05, 0.0]


def test_config_json_records_the_lr_and_label_smoothing_used_and_no_nesterov_turns_it_off(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--model", "resnet20_abn", *TINY_ARGS, "--epochs", "1", "--no-nesterov", "--out",
                 str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["label_smoothing"], config["nesterov"]) == (pytest.approx(0.05), 0.1, False)


def test_milestones_with_the_cosine_schedule_are_refused_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", *TINY_ARGS, "--milestones", "10", "20",
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "milestones apply to the step schedule", "--schedule step")
    assert not (tmp_path / "r").exists()


def test_momentum_zero_with_nesterov_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", *TINY_ARGS, "--momentum", "0",
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "Nesterov", "--no-nesterov")
    assert not (tmp_path / "r").exists()


def test_a_run_saved_before_the_default_recipe_resumes_with_the_recipe_it_trained_with(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    saved = {k: v for k, v in json.loads(TrainConfig(model="resnet20_abn", out=str(run)).to_json()).items()
             if k not in ("lr", "weight_decay", "schedule", "warmup_epochs", "nesterov", "label_smoothing")}
    (run / "config.json").write_text(json.dumps(saved))  # the keys an older abnet did not write, or wrote as defaults
    resumed = TrainConfig.from_sources({"out": str(run)}, resume=True).resolved()
    assert (resumed.lr, resumed.weight_decay, resumed.schedule, resumed.warmup_epochs, resumed.nesterov,
            resumed.label_smoothing) == (0.1, 1e-4, "step", 0.0, False, 0.0)
    fresh = TrainConfig.from_sources({"out": "new", "model": "resnet20_abn", "data": "shapes"}).resolved()
    assert (fresh.schedule, fresh.nesterov) == ("cosine", True)  # a new run gets today's defaults


def test_a_paper_config_with_schedule_cosine_drops_its_milestones():
    paper = str(ROOT / "configs" / "table1_cifar100_resnet20_residual.json")
    cfg = TrainConfig.from_sources({"out": "r", "schedule": "cosine"}, paper).validate()
    assert cfg.milestones is None and cfg.schedule == "cosine"
    assert TrainConfig.from_sources({"out": "r"}, paper).milestones == [150, 225]


def test_a_model_cards_train_command_remakes_the_recipe_of_its_run():
    from conftest import benchmark_script

    from abnet.cli import build_parser
    from abnet.engine.config import read_config

    command = benchmark_script("ship_pretrained").train_command
    for path in (ROOT / "results/cifar10_runs/resnet20_abn_e100/config.json",
                 ROOT / "configs/fast_cifar10_resnet20_abn.json"):
        run = replace(TrainConfig.from_run(read_config(path), str(path)).resolved(), source=None)
        args = vars(build_parser().parse_args(shlex.split(command(run))[1:]))
        again = TrainConfig.from_sources({k: v for k, v in args.items() if v is not None and k in
                                          TrainConfig.__dataclass_fields__}).resolved()
        assert again == run
