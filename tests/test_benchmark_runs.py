"""benchmarks/runs.py: a finished run's result line names the machines its train.log says it trained on."""

import importlib.util
import shutil
from pathlib import Path

import torch

from abnet.engine.precision import describe_device

REPO = Path(__file__).resolve().parent.parent


def runs_module():
    spec = importlib.util.spec_from_file_location("runs", REPO / "benchmarks" / "runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_result_line_names_the_machine_of_the_start_line(abn_run):
    result = runs_module().run_result(abn_run)
    assert result["model"] == "resnet20_abn" and result["epochs"] == 1
    assert result["machines"] == [describe_device(torch.device("cpu"))]


def test_a_run_resumed_elsewhere_lists_each_machine_once_in_order(abn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(abn_run, run)
    here = describe_device(torch.device("cpu"))
    with open(run / "train.log", "a") as log:
        for device in ("cuda:0 (NVIDIA H200)", here):
            log.write(f"2026-12-02 05:34:46,817 resuming {run} at epoch 2 of 3, step 7, on {device} in bf16\n")
    assert runs_module().run_machines(run) == [here, "cuda:0 (NVIDIA H200)"]
    (run / "train.log").unlink()
    assert runs_module().run_machines(run) == []
