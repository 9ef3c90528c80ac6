"""benchmarks/runs.py: a finished run's result line names the machines its train.log says it trained on."""

import shutil

import torch
from conftest import benchmark_script

from abnet.engine.precision import describe_device


def test_result_line_names_the_machine_of_the_start_line(abn_run):
    result = benchmark_script("runs").run_result(abn_run)
    assert result["model"] == "resnet20_abn" and result["epochs"] == 1
    assert result["machines"] == [describe_device(torch.device("cpu"))]


def test_a_run_resumed_elsewhere_lists_each_machine_once_in_order(abn_run, tmp_path):
    runs = benchmark_script("runs")
    run = tmp_path / "run"
    shutil.copytree(abn_run, run)
    here = describe_device(torch.device("cpu"))
    with open(run / "train.log", "a") as log:
        for device in ("cuda:0 (NVIDIA H200)", here):
            log.write(f"2026-12-02 05:34:46,817 resuming {run} at epoch 2 of 3, step 7, on {device} in bf16\n")
    assert runs.run_machines(run) == [here, "cuda:0 (NVIDIA H200)"]
    (run / "train.log").unlink()
    assert runs.run_machines(run) == []
