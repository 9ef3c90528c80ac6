"""Shared pytest setup and the helpers that several test files use.

Convention: helpers are plain functions and constants, imported by name (``from conftest import run_cli``);
the only fixtures here are the trained run folders, built once per session and shared read-only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import abnet
from abnet.cli import main
from abnet.engine.config import TrainConfig
from abnet.models.common import ClassifierHead

# `abnet train` arguments for a run of seconds: the generated shapes set at 16x16, 64 training images.
TINY_ARGS = ["--data", "shapes", "--image-size", "16", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32"]


def pytest_configure(config):
    """Register the ``browser`` marker: tests that run a real headless Chromium (select with -m browser)."""
    config.addinivalue_line("markers", "browser: runs a real headless Chromium on a generated page")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `abnet argv...` in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and a single stderr line, no traceback, holding every needle."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def benchmark_script(name: str) -> ModuleType:
    """benchmarks/<name>.py loaded as a module (benchmarks/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(out: str | Path, **overrides) -> TrainConfig:
    """A TrainConfig for one epoch of seconds: resnet20_abn on 64 shapes images of 16x16 (``overrides`` win)."""
    settings = dict(model="resnet20_abn", data="shapes", image_size=16, limit_train=64, limit_val=32, batch_size=32,
                    epochs=1)
    return TrainConfig(**{**settings, **overrides, "out": str(out)})


def _cli_run(tmp_path_factory, model: str) -> Path:
    out = tmp_path_factory.mktemp(model) / "run"
    assert main(["train", "--model", model, *TINY_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def abn_run(tmp_path_factory) -> Path:
    """The run folder of one tiny `abnet train` epoch of resnet20_abn (TINY_ARGS); do not modify it."""
    return _cli_run(tmp_path_factory, "resnet20_abn")


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Path:
    """The run folder of one tiny `abnet train` epoch of the plain resnet20 (TINY_ARGS); do not modify it."""
    return _cli_run(tmp_path_factory, "resnet20")


def n_params(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def params_without_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> list[str]:
    """Names of the parameters of an ABN that one backward pass of the ABN loss leaves without a non-zero
    gradient."""
    abnet.abn_loss(model(x), target).backward()
    return [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def break_torch_compile(monkeypatch) -> None:
    """Make ``torch.compile`` return a callable that fails when called, as it does where no C compiler is found."""

    def compile_(module, **_):
        def fail(*args, **kwargs):
            raise RuntimeError("no C compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", compile_)


def randomize_batch_norm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and scales in every BatchNorm2d, so that an eval-mode output depends on
    each of them (folding, state-dict loading); returns the model in eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model.eval()


def save_random_image(path: Path, shape: tuple[int, ...], rng: np.random.Generator) -> Path:
    """Random 8-bit pixels of ``shape`` ((H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA) saved to ``path``;
    the format follows the file ending."""
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def tiny_cnn_split(num_classes: int, attention: bool) -> abnet.BackboneSplit:
    """Four 3x3 conv layers, 16-32-32 channels (g(x) at half the input size); the last one is repeated at
    stride 1 as the attention stage. A model for training tests that must learn within seconds."""
    features = nn.Sequential(conv_bn(3, 16, 1), conv_bn(16, 32, 2), conv_bn(32, 32, 1))
    stage = conv_bn(32, 32, 1) if attention else None
    return abnet.BackboneSplit(features, ClassifierHead(conv_bn(32, 32, 2), 32, num_classes), stage, 32)


TINY_CNN = "tinycnn_test"


def register_tiny_cnn() -> str:
    """Register :func:`tiny_cnn_split` as ``tinycnn_test`` (plain), ``_abn`` and ``_abn_mt`` once; returns the name.
    Called by the tests that use it, so the models other tests list at collection are not changed."""
    if TINY_CNN not in abnet.list_models():
        abnet.register_pair(TINY_CNN, tiny_cnn_split)
    return TINY_CNN
