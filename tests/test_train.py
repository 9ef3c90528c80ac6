import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from abnet.data.loader import normalize
from abnet.data.registry import SHAPES, DataOptions, load_dataset
from abnet.engine.checkpoint import load_checkpoint, load_state
from abnet.engine.config import TrainConfig
from abnet.engine.train import train

TINY = dict(limit_train=192, limit_val=64)  # on top of conftest.tiny_config; the default recipe (lr 0.05 at batch 32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    metrics = train(tiny_config(out, **TINY, epochs=3), progress=False)
    return out, metrics


def test_short_training_lowers_the_loss(run):
    out, metrics = run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] - 0.2
    assert {"epoch", "train_loss", "val_accuracy", "val_att_accuracy", "val_pointing_game", "lr"} <= set(lines[0])
    assert metrics == lines[-1]


def test_run_folder_holds_config_weights_state_and_log(run):
    out, _ = run
    assert {"config.json", "last.pt", "best.safetensors", "metrics.jsonl", "train.log"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["model"] == "resnet20_abn"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_round_trip_gives_identical_outputs(run):
    out, _ = run
    state = load_state(out / "last.pt")
    from_state, _ = load_checkpoint(out / "last.pt")
    from_weights, meta = load_checkpoint(out / "best.safetensors")
    assert list(meta.classes) == list(load_dataset("shapes", "val", limit=1).classes)
    x = normalize(load_dataset("shapes", "val", 8, DataOptions(image_size=16)).images, SHAPES.mean, SHAPES.std)
    # last.pt holds the final weights exactly
    for name, tensor in from_state.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    weights = load_file(str(out / "best.safetensors"))
    for name, tensor in from_weights.state_dict().items():
        assert torch.equal(tensor, weights[name])
    with torch.no_grad():
        a, b = from_weights(x), load_checkpoint(out)[0](x)  # a run folder loads its best weights
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_resume_after_an_interruption_gives_bit_identical_weights(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(tiny_config(straight, **TINY, epochs=2), progress=False)

    import abnet.engine.train as engine

    calls = []

    def interrupt_second_evaluation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during epoch 2, after epoch 1's checkpoint
        return evaluate(*args, **kwargs)

    evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", interrupt_second_evaluation)
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(split, **TINY, epochs=2), progress=False)
    assert load_state(split / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine, "evaluate", evaluate)
    train(tiny_config(split, **TINY, epochs=2), resume=True, progress=False)
    a, b = load_state(straight / "last.pt")["model"], load_state(split / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (split / "metrics.jsonl").read_text() .count("\n") == 2


def test_plain_baseline_trains_too(tmp_path):
    metrics = train(tiny_config(tmp_path / "plain", **TINY, model="resnet20"), progress=False)
    assert metrics["val_att_accuracy"] is None and 0 <= metrics["val_accuracy"] <= 1


def test_learning_rate_schedules():
    step = TrainConfig(epochs=4, lr=0.1, schedule="step", warmup_epochs=0)
    assert [round(step.lr_at(e * 10, 10), 6) for e in range(4)] == [0.1, 0.1, 0.01, 0.001]
    cosine = TrainConfig(epochs=2, lr=0.1, schedule="cosine", warmup_epochs=1)
    assert cosine.lr_at(0, 10) == pytest.approx(0.01) and cosine.lr_at(10, 10) == pytest.approx(0.1)
    assert cosine.lr_at(20, 10) == pytest.approx(0.0, abs=1e-9)
