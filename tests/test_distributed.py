"""A real 2-process torchrun job on the CPU (gloo), against the 1-process run with the same global batch."""

import json
import os
import subprocess
import sys

from abnet.cli import main

ARGS = ["--model", "resnet20_abn", "--data", "shapes", "--image-size", "16", "--limit-train", "256",
        "--limit-val", "64", "--batch-size", "32", "--epochs", "2", "--schedule", "cosine"]


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--standalone", "-m", "abnet", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_two_processes_follow_the_one_process_run(tmp_path, capsys):
    assert main(["train", *ARGS, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    done = torchrun("train", *ARGS, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    reported = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reported) == 1  # only rank 0 reports and writes
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in two] == [1, 2]
    assert [m["lr"] for m in two] == [m["lr"] for m in one]  # the same steps over the same global batches
    # Same data, order and augmentation; what differs is batch-norm statistics (per process, over half the
    # batch, without --sync-bn, which needs CUDA) and float summation order.
    assert abs(two[0]["train_loss"] - one[0]["train_loss"]) < 0.05 * one[0]["train_loss"]


def test_a_global_batch_that_does_not_divide_is_refused(tmp_path):
    done = torchrun("train", "--model", "resnet20_abn", "--data", "shapes", "--batch-size", "33",
                    "--out", str(tmp_path / "odd"))
    assert done.returncode != 0  # each process exits 2 with one line; torchrun then reports the failure
    assert "abnet train: error: --batch-size 33 is the global batch and must divide evenly over 2" in done.stderr
    assert not (tmp_path / "odd").exists()
