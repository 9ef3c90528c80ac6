"""Precision chosen by the hardware, the recipe options (Nesterov, label smoothing, flip TTA, validating on test)."""

import json
import logging
import math
import re

import pytest
import test_formats as formats
import torch
from conftest import assert_one_line_error, run_cli, tiny_config
from safetensors.torch import load_file

import abnet
import abnet.engine.precision as precision
import abnet.engine.train as engine
from abnet.cli import build_parser
from abnet.data.registry import data_spec, make_loader
from abnet.data.shapes import make_shapes
from abnet.engine.config import TrainConfig
from abnet.engine.evaluate import evaluate, model_loss
from abnet.errors import AbnetError
from abnet.models import ABNOutput

CPU = torch.device("cpu")


def fake_cpu(monkeypatch, native_bf16: bool) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_bf16_instructions(monkeypatch, native, expected):
    fake_cpu(monkeypatch, native)
    assert precision.resolve_precision("auto", CPU) == expected
    assert precision.resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"),
                                                  ((6, 1), "fp32")])
def test_auto_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.resolve_precision("auto", torch.device("cuda")) == expected
    assert precision.resolve_precision("fp16", torch.device("cuda")) == "fp16"
    if expected != "bf16":  # asked for explicitly on a GPU without bf16 units: refused in one line
        with pytest.raises(AbnetError, match="has no bf16 units"):
            precision.resolve_precision("bf16", torch.device("cuda"))


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16", True)):
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n")
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected
    precision.cpu_name.cache_clear()
    assert precision.cpu_name() == "Test CPU 9000"
    cpuinfo.unlink()  # unreadable (e.g. not Linux): fp32 stays the choice, and the CPU is named by platform
    precision.cpu_has_native_bf16.cache_clear()
    precision.cpu_name.cache_clear()
    assert precision.cpu_has_native_bf16() is False
    assert precision.cpu_name()  # platform.processor() or at least the architecture
    precision.cpu_has_native_bf16.cache_clear()
    precision.cpu_name.cache_clear()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_config_json_and_log_record_the_precision_used(tmp_path, monkeypatch, caplog, native, expected):
    fake_cpu(monkeypatch, native)
    with caplog.at_level(logging.INFO, logger="abnet"):
        engine.train(tiny_config(tmp_path / "run", precision="auto", device="cpu"), progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == expected
    bf16 = "native bf16" if native else "no native bf16"  # the log names the CPU, so runs on other machines differ
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert re.search(rf"on cpu \(.+, \d+ threads?, {bf16}\) in {expected}", log_text)


@pytest.mark.parametrize("requested, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_computes_in_the_precision_asked_for(tmp_path, monkeypatch, requested, expected):
    """A hook on the first conv records the dtype it computes in while training; weights stay float32."""
    fake_cpu(monkeypatch, True)
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=6)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
    metrics = engine.train(tiny_config(tmp_path / "run", precision=requested, device="cpu"), progress=False,
                           model=model)
    assert {dtype for training, dtype in seen if training} == {expected}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(metrics["train_loss"])


def test_fp16_on_a_cpu_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", "--data", "shapes", "--device", "cpu",
                           "--precision", "fp16", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "fp16 needs a CUDA GPU", "--precision bf16")
    assert not (tmp_path / "r").exists()


def test_bf16_without_bf16_instructions_warns_then_runs(tmp_path, monkeypatch, caplog):
    fake_cpu(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="abnet"):
        metrics = engine.train(tiny_config(tmp_path / "run", precision="bf16", device="cpu"), progress=False)
    assert "no bf16 instructions" in caplog.text and "slower than fp32" in caplog.text
    assert metrics["epoch"] == 1


def test_the_same_seed_gives_the_same_numbers_in_bf16(tmp_path, monkeypatch):
    fake_cpu(monkeypatch, True)
    runs = [engine.train(tiny_config(tmp_path / f"r{i}", precision="bf16", epochs=2), progress=False)
            for i in range(2)]
    assert runs[0] == {**runs[1], "seconds": runs[0]["seconds"], "images_per_s": runs[0]["images_per_s"]}
    weights = [load_file(tmp_path / f"r{i}" / "best.safetensors") for i in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_amp_flag_is_precision_auto_and_old_configs_still_load():
    parser = build_parser()
    assert parser.parse_args(["train", "--amp"]).precision == "auto"
    choices = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                   if a.dest == "precision" and a.choices).choices
    assert tuple(choices) == precision.PRECISIONS
    assert TrainConfig.from_dict({"amp": True}).precision == "auto"
    assert TrainConfig.from_dict({"amp": False}).precision == "fp32"
    assert TrainConfig.from_dict({"amp": True, "precision": "bf16"}).precision == "bf16"  # a flag given wins


def test_label_smoothing_raises_the_loss_of_a_confident_right_answer():
    logits = torch.tensor([[10.0, -10.0, -10.0]])
    target = torch.tensor([0])
    out = ABNOutput(logits, logits, torch.zeros(1, 1, 2, 2))
    assert model_loss(out, target).item() < 1e-6
    assert model_loss(out, target, label_smoothing=0.1).item() > 0.5
    assert model_loss(logits, target, label_smoothing=0.1).item() == pytest.approx(
        model_loss(out, target, label_smoothing=0.1).item() / 2)


def test_label_smoothing_on_attribute_data_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20_abn", "--data", "shapes-multi", "--image-size", "16",
                           "--limit-train", "32", "--label-smoothing", "0.1", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--label-smoothing applies to class labels")
    assert not (tmp_path / "r").exists()


def test_flip_evaluation_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = abnet.create_model("resnet20_abn", num_classes=6).eval()
    data = make_shapes(16, size=16)
    loader = make_loader(data, data_spec("shapes"), 8)
    hits = []
    with torch.no_grad():
        for batch in loader.epoch():
            mean = (model(batch.images).logits + model(batch.images.flip(3)).logits) / 2
            hits.append(mean.argmax(1) == batch.labels)
    assert evaluate(model, loader, flip=True)["accuracy"] == pytest.approx(torch.cat(hits).float().mean().item())


class _RecordsAutocast(torch.nn.Module):
    """Wraps a model and records whether each forward pass ran under CPU autocast, and in which dtype."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return self.model(x)


def test_evaluation_in_bf16_runs_under_autocast_and_scores_like_fp32():
    torch.manual_seed(0)
    model = _RecordsAutocast(abnet.create_model("resnet20_abn", num_classes=6))
    loader = make_loader(make_shapes(64, size=16), data_spec("shapes"), 16)
    fp32 = evaluate(model, loader)
    assert set(model.seen) == {None}
    model.seen.clear()
    bf16 = evaluate(model, loader, flip=True, dtype=torch.bfloat16)
    assert set(model.seen) == {torch.bfloat16} and len(model.seen) == 8  # 4 batches, each also mirrored
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    assert abs(bf16["accuracy"] - evaluate(model, loader, flip=True)["accuracy"]) <= 2 / 64


@pytest.mark.parametrize("requested, dtype", [("bf16", torch.bfloat16), ("fp32", None)])
def test_the_training_loop_validates_in_the_precision_it_trains_in(tmp_path, monkeypatch, requested, dtype):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", spy)
    engine.train(tiny_config(tmp_path / "run", precision=requested), progress=False)
    assert seen and set(seen) == {dtype}


def test_nesterov_reaches_the_optimizer_and_val_split_test_trains_on_the_whole_training_split(tmp_path,
                                                                                              monkeypatch):
    root = tmp_path / "data"
    formats.cifar10(root, n_train=50, n_test=20)
    cfg = TrainConfig(model="resnet20_abn", data="cifar10", data_root=str(root), out=str(tmp_path / "run"),
                      epochs=1, batch_size=25, nesterov=True, val_split="test")
    seen = {}
    original = engine.Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.update(nesterov=self.optimizer.param_groups[0]["nesterov"], train=len(self.train_loader.data),
                    val=len(self.val_loader.data))

    monkeypatch.setattr(engine.Trainer, "__init__", spy)
    engine.train(cfg, progress=False)
    assert seen == {"nesterov": True, "train": 50, "val": 20}
