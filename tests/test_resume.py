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
from abnet.engine.train import train
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


def wait_for_epochs(out, n, proc, timeout=120):
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

    def loss_that_explodes(output, target, pos_weight=None):
        calls["n"] += 1
        loss = real(output, target, pos_weight)
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
