"""Training curves from a run's metrics.jsonl, as a PNG (both branches' accuracy, the losses, the lr)."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> None:
    """Write ``png_path``: loss, accuracy (perception and attention branch) and learning rate per epoch."""
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    evaluated = [r for r in rows if "val_accuracy" in r]  # every epoch, unless --eval-every skipped some
    at = [r["epoch"] for r in evaluated]
    fig = Figure(figsize=(11, 3.2), dpi=100)
    loss, acc, lr = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    loss.plot(at, [r["val_loss"] for r in evaluated], label="val", marker=".")
    acc.plot(at, [r["val_accuracy"] for r in evaluated], label="perception branch", marker=".")
    last = evaluated[-1] if evaluated else {}
    if last.get("val_att_accuracy") is not None:
        acc.plot(at, [r["val_att_accuracy"] for r in evaluated], label="attention branch", marker=".")
    if last.get("val_pointing_game") is not None:
        acc.plot(at, [r["val_pointing_game"] for r in evaluated], label="pointing game", linestyle="--")
    lr.plot(epochs, [r["lr"] for r in rows])
    for ax, title in ((loss, "loss"), (acc, "validation"), (lr, "learning rate (end of epoch)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    loss.legend(fontsize=7)
    acc.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
