"""`abnet demo`: train an ABN on the embedded `shapes` set, evaluate it on held-out images,
and show where it looked; a few minutes on a 2-core laptop."""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .data.images import dataset_inputs
from .data.loader import normalize
from .data.registry import SHAPES, load_dataset, make_loader
from .engine.checkpoint import WEIGHTS_FILE, load_checkpoint
from .engine.config import TrainConfig
from .engine.evaluate import evaluate
from .engine.train import train
from .explain.overlay import save_grid
from .explain.run import run_explain
from .fileio import write_text

# The demo recipe: resnet20_abn with the paper's residual mask g*(1+M), a short cosine schedule
# on 8,000 generated images; about 2.5 minutes on two CPU cores. Every setting is pinned, so the
# demo (and the studies built on it) stay as measured when train's defaults change.
DEMO_CONFIG = TrainConfig(
    model="resnet20_abn", data="shapes", epochs=5, batch_size=64, lr=0.1, weight_decay=5e-4,
    schedule="cosine", warmup_epochs=0.5, nesterov=False, label_smoothing=0.0, limit_train=8000, limit_val=1000,
)
TEST_IMAGES = 2000
GRID_IMAGES = 16
EXPLAIN_IMAGES = 200  # scored by every method (deletion/insertion: 2 x 9 forward passes each)
REPORT_IMAGES = 32


def default_out_dir(base: str = "abnet-demo") -> Path:
    """``abnet-demo``, or ``abnet-demo-2``, ``-3``... if it already holds files: never overwrite a demo."""
    candidate, k = Path(base), 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        k += 1
        candidate = Path(f"{base}-{k}")
    return candidate


def run_demo(out: str | Path, seed: int = 0, epochs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on the held-out test split, write ``attention_grid.png`` and ``metrics.json``."""
    started = time.perf_counter()
    cfg = replace(DEMO_CONFIG, out=str(out), seed=seed, epochs=epochs or DEMO_CONFIG.epochs)
    train(cfg, progress=progress)
    model, meta = load_checkpoint(Path(out) / WEIGHTS_FILE)
    test = load_dataset("shapes", "test", limit=TEST_IMAGES, options=cfg.data_options())
    scores = evaluate(model, make_loader(test, SHAPES, 500))

    shown = test.subset(slice(0, GRID_IMAGES))
    with torch.no_grad():
        out_grid = model(normalize(shown.images, SHAPES.mean, SHAPES.std))
    pred = out_grid.logits.argmax(1)
    names = test.classes
    captions = [f"pred {names[p]}\ntrue {names[t]}" for p, t in zip(pred.tolist(), shown.labels.tolist())]
    save_grid(Path(out) / "attention_grid.png", shown.images, out_grid.attention, captions,
              correct=(pred == shown.labels).tolist())

    metrics = {
        "accuracy": scores["accuracy"],
        "att_accuracy": scores["att_accuracy"],
        "pointing_game": scores["pointing_game"],
        "loss": scores["loss"],
        "n": scores["n"],
        "split": "test",
        "model": cfg.model,
        "mask": cfg.mask,
        "epochs": cfg.epochs,
        "train_images": cfg.limit_train,
        "best_epoch": meta.epoch,
        "seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    explained = run_explain(model, meta, dataset_inputs(test.subset(slice(0, EXPLAIN_IMAGES)), "test"),
                            Path(out) / "explain", demo_methods(), metrics=True, show=REPORT_IMAGES, steps=8,
                            info={"model": cfg.model, "data": "shapes/test"})
    metrics["explain"] = explained["metrics"]
    metrics["seconds"] = time.perf_counter() - started
    write_text(Path(out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def demo_methods() -> list[str]:
    """ABN and CAM always; Grad-CAM and Grad-CAM++ too where pytorch-grad-cam is installed."""
    return ["abn", "cam"] + (["gradcam", "gradcam++"] if importlib.util.find_spec("pytorch_grad_cam") else [])
