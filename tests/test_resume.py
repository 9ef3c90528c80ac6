"""Crashes and stops: a killed or stopped `abnet train` resumes to bit-identical weights; NaN stops cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from abnet.cli import main
from abnet.engine.checkpoint import load_state
from abnet.engine.config import TrainConfig
from abnet.engine.train import TrainingStopped, train
from abnet.errors import AbnetError

ARGS = ["--model", "resnet20_abn", "--data", "shapes", "--image-size", "16", "--limit-train", "640",
        "--limit-val", "64", "--batch-size", "32", "--epochs", "3", "--schedule", "cosine"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *ARGS, "--out", str(out)]) == 0
    return load_state(out / "last.pt")["model"]


def start(out):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "abnet", "train", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(out, n, proc, timeout=300):  # a deadline for loaded CI machines, not a speed test
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = out / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not reach the epoch in time")


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_kill_9_then_resume_gives_identical_weights(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_epochs(out, 1, proc)
    time.sleep(0.05)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_state(out / "last.pt")["epoch"] >= 1  # the last complete checkpoint survived the kill
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert same_weights(load_state(out / "last.pt")["model"], uninterrupted)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_sigterm_saves_mid_epoch_and_resume_gives_identical_weights(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_epochs(out, 1, proc)
    time.sleep(0.05)  # inside epoch 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    state = load_state(out / "last.pt")
    assert (state["epoch"], state["step"]) != (3, 0)  # it stopped before the end
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert same_weights(load_state(out / "last.pt")["model"], uninterrupted)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import abnet.engine.train as engine

    calls = {"n": 0}
    real = engine.model_loss

    def loss_that_explodes(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(engine, "model_loss", loss_that_explodes)
    cfg = TrainConfig(model="resnet20_abn", image_size=16, limit_train=96, limit_val=32, batch_size=32, epochs=3,
                      out=str(tmp_path / "run"))
    with pytest.raises(AbnetError, match="the loss became nan at epoch 2, step 1"):
        train(cfg, progress=False)
    state = load_state(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if v.is_floating_point())


def test_curves_png_and_force_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    small = [a if a != "3" else "1" for a in ARGS]
    assert main(["train", *small, "--out", str(out)]) == 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (out / "notes.txt").write_text("mine")
    assert main(["train", *small, "--out", str(out), "--seed", "1", "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # only run files are replaced


def test_config_file_with_a_misspelt_key_names_the_nearest(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "resnet20_abn", "data": "shapes", "epoch": 3}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'epoch' (did you mean 'epochs'?)" in err and len(err.strip().splitlines()) == 1


def test_a_crash_while_writing_a_checkpoint_leaves_the_old_one_readable(tmp_path, monkeypatch):
    cfg = TrainConfig(model="resnet20_abn", image_size=16, limit_train=64, limit_val=32, batch_size=32, epochs=1,
                      out=str(tmp_path / "run"))
    train(cfg, progress=False)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    real_save = torch.save

    def save_then_crash(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:  # half-written, then the process dies
            f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 2}), resume=True, progress=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert load_state(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


SMALL = dict(model="resnet20_abn", image_size=16, limit_train=192, limit_val=32, batch_size=32, epochs=2,
             schedule="cosine")  # 6 steps per epoch


@pytest.fixture(scope="module")
def small_uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "run"
    train(TrainConfig(**SMALL, out=str(out)), progress=False)
    return load_state(out / "last.pt")["model"], (out / "metrics.jsonl").read_text()


def stop_at_call(monkeypatch, n):
    """SIGTERM this process during the n-th training step (1-based): the run stops after that step's log step."""
    import abnet.engine.train as engine

    calls = {"n": 0}
    real = engine.model_loss

    def loss_then_signal(*args):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(engine, "model_loss", loss_then_signal)


def count_rendered_batches(monkeypatch):
    """Count the training batches the loader augments (each is cropped and flipped once)."""
    import abnet.data.loader as loader

    seen = {"n": 0}
    real = loader.draw_crop_flip

    def counted(*args, **kwargs):
        seen["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "draw_crop_flip", counted)
    return seen


@pytest.mark.parametrize("stop_step, saved", [(6, (0, 6)), (12, (1, 6)), (3, (0, 3))],
                         ids=["last-step-of-an-epoch", "last-step-of-the-last-epoch", "mid-epoch"])
def test_a_stop_after_any_step_resumes_to_identical_weights(tmp_path, monkeypatch, small_uninterrupted, stop_step,
                                                            saved):
    out = tmp_path / "run"
    cfg = TrainConfig(**SMALL, out=str(out))
    with monkeypatch.context() as patch:
        stop_at_call(patch, stop_step)
        with pytest.raises(TrainingStopped, match=f"step {saved[1]};"):
            train(cfg, progress=False)
    state = load_state(out / "last.pt")
    assert (state["epoch"], state["step"]) == saved
    rendered = count_rendered_batches(monkeypatch)
    metrics = train(cfg, resume=True, progress=False)
    assert rendered["n"] == 12 - stop_step  # the batches already trained are not rendered again
    weights, lines = small_uninterrupted
    assert same_weights(load_state(out / "last.pt")["model"], weights)
    assert metrics["epoch"] == 2
    drop = ("images_per_s", "seconds")
    strip = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines.splitlines()]
    assert [{k: v for k, v in json.loads(x).items() if k not in drop}
            for x in (out / "metrics.jsonl").read_text().splitlines()] == strip


def test_log_every_reads_the_loss_back_every_n_steps_and_stops_there(tmp_path, monkeypatch, small_uninterrupted):
    import abnet.engine.distributed as distributed

    reads = {"n": 0}
    real = distributed.Distributed.sums

    def counted(self, *values):
        reads["n"] += 1
        return real(self, *values)

    monkeypatch.setattr(distributed.Distributed, "sums", counted)
    out = tmp_path / "run"
    cfg = TrainConfig(**SMALL, out=str(out), log_every=4)
    with monkeypatch.context() as patch:
        stop_at_call(patch, 2)  # the signal arrives at step 2; the next log step is step 4
        with pytest.raises(TrainingStopped, match="step 4;"):
            train(cfg, progress=False)
    assert reads["n"] == 1
    assert (load_state(out / "last.pt")["epoch"], load_state(out / "last.pt")["step"]) == (0, 4)
    reads["n"] = 0
    train(cfg, resume=True, progress=False)
    # epoch 1: step 6 (its end) and the stop check after it; epoch 2: steps 4 and 6 (no stop check after the last)
    assert reads["n"] == 4
    assert same_weights(load_state(out / "last.pt")["model"], small_uninterrupted[0])


def test_resume_of_a_truncated_state_is_one_line_and_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20_abn", "--data", "shapes", "--image-size", "16", "--limit-train", "64",
            "--limit-val", "32", "--batch-size", "32", "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    state = out / "last.pt"
    state.write_bytes(state.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "last.pt" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("flag, value", [("--log-every", "0"), ("--device", "cuda:3")])
def test_bad_engine_flags_are_one_line(tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "run"
    try:
        code = main(["train", "--model", "resnet20_abn", "--data", "shapes", "--out", str(out), flag, value])
    except SystemExit as exit:  # argparse's own checks
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert not out.exists()
