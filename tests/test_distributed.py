"""A real 2-process torchrun job on the CPU (gloo), against the 1-process run with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from abnet.cli import main
from abnet.data.folder import FolderIndex, FolderLoader
from abnet.data.loader import InMemoryLoader
from abnet.data.shapes import make_shapes
from abnet.engine.checkpoint import load_state

ARGS = ["--model", "resnet20_abn", "--data", "shapes", "--image-size", "16", "--limit-train", "256",
        "--limit-val", "64", "--batch-size", "32", "--epochs", "2", "--schedule", "cosine"]


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--standalone", "-m", "abnet", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    done = torchrun("train", *ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done


def test_two_processes_follow_the_one_process_run(tmp_path, capsys, two_process_run):
    assert main(["train", *ARGS, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    out, done = two_process_run
    reported = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reported) == 1  # only rank 0 reports and writes
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
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


def worker_of_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's (``parent``'s) worker process with RANK=rank."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no worker with RANK={rank}")


def test_a_stop_signal_to_one_process_stops_both_at_the_same_step_and_resumes_exactly(tmp_path, two_process_run):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             "-m", "abnet", "train", *ARGS, "--out", str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)  # rank 1 only: the flag is shared at the next log step
    _, err = proc.communicate(timeout=240)
    assert "SIGTERM" in err and "UnboundLocalError" not in err
    state = load_state(out / "last.pt")
    assert (state["epoch"], state["step"]) != (2, 0) and len(state["rng"]) == 2  # both processes' RNG states
    done = torchrun("train", "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_state(out / "last.pt")["model"], load_state(two_process_run[0] / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_process_gets_the_same_steps_and_an_image_at_each(tmp_path):
    data = make_shapes(65, size=16, seed=0, split="train")  # 2 batches of 32 and 1 image left over
    for world in (1, 2):
        loaders = [InMemoryLoader(data, 32, (0.5,) * 3, (0.25,) * 3, train=True, rank=r, world=world)
                   for r in range(world)]
        sizes = [[len(b.labels) for b in loader.epoch(0)] for loader in loaders]
        assert sizes == ([[32, 32, 1]] if world == 1 else [[16, 16], [16, 16]])  # the lone image is dropped
    for i in range(9):
        (tmp_path / "c" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(tmp_path / "c" / str(i % 2) / f"{i}.png")
    index = FolderIndex(sorted((tmp_path / "c").rglob("*.png")), torch.zeros(9, dtype=torch.long), ["0", "1"], 16)
    sizes = [[len(b.labels) for b in FolderLoader(index, 4, (0.5,) * 3, (0.25,) * 3, train=True, workers=0,
                                                     rank=r, world=2).epoch(0)] for r in range(2)]
    assert sizes == [[2, 2], [2, 2]]  # 9 = 2 x 4 + 1: the same two steps on both processes
