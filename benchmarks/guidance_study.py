"""Does guiding ABN's attention map cure shortcut learning? On `shapes-shortcut` (a class-coloured marker at a
class-specific place in 90 % of the training images, at a random place with a random colour in test images),
train with object masks as target maps for a share of the training images — from scratch, or by fine-tuning
the unguided model — beside RRR on the plain network, and inference-time edits alone (test maps replaced by the
object masks). Each row: test accuracy (2,000 held-out images) and pointing game, one JSON line per run in --log
(runs already there are skipped, so the study resumes).

    python benchmarks/guidance_study.py --log results/attention_guidance.jsonl [--seeds 0 1]
    python benchmarks/guidance_study.py --summary results/attention_guidance.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from runs import append_jsonl

from abnet.data.registry import data_spec, load_dataset, make_loader
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.config import TrainConfig
from abnet.engine.evaluate import evaluate
from abnet.engine.guidance import area_resize
from abnet.engine.train import train

# The recipe every run shares: the demo's (8,000 training images, 5 epochs, cosine, batch 64).
BASE = TrainConfig(model="resnet20_abn", data="shapes-shortcut", epochs=5, batch_size=64, lr=0.1,
                   weight_decay=5e-4, schedule="cosine", warmup_epochs=0.5, nesterov=False, label_smoothing=0.0,
                   limit_train=8000, limit_val=500, precision="auto")
FINE_TUNE_EPOCHS = 2
SHARES = (0.01, 0.05, 0.25, 1.0)
RRR_SHARES = (0.05, 1.0)
TEST_IMAGES = 2000


def variants() -> dict[str, tuple[dict, str | None]]:
    """Run name -> (settings over BASE, the run it fine-tunes from or None)."""
    runs: dict[str, tuple[dict, str | None]] = {
        "clean": ({"data": "shapes"}, None),
        "unguided": ({}, None),
        "plain_unguided": ({"model": "resnet20"}, None),
        "unguided_multiply": ({"mask": "multiply"}, None),
        "guided_multiply_5%": ({"mask": "multiply", "map_targets": "masks", "map_fraction": 0.05, "map_weight": 1.0},
                               None),
    }
    for share in SHARES:
        pct = f"{share:.0%}"
        runs[f"guided_{pct}"] = ({"map_targets": "masks", "map_fraction": share, "map_weight": 1.0}, None)
        runs[f"finetune_{pct}"] = ({"map_targets": "masks", "map_fraction": share, "map_weight": 1.0,
                                    "epochs": FINE_TUNE_EPOCHS, "lr": 0.02, "warmup_epochs": 0.0}, "unguided")
    runs["guided_energy_5%"] = ({"map_targets": "masks", "map_fraction": 0.05, "map_loss": "energy",
                                 "map_weight": 1.0}, None)
    # Round 2, after round 1 showed that weight 1 barely moves the map and that g*(1+M) reads the marker anyway:
    # a 10x weight, and the perception branch reading g*M (what the map leaves out is gone).
    for mask in ("multiply", "residual"):
        for loss in ("l2", "energy"):
            for share in (0.05, 1.0):
                if mask == "residual" and (loss, share) != ("l2", 1.0):
                    continue
                runs[f"{mask}_{loss}_w10_{share:.0%}"] = ({"mask": mask, "map_targets": "masks", "map_loss": loss,
                                                           "map_fraction": share, "map_weight": 10.0}, None)
    # Round 3: at 5 % only a few images per batch carry the map loss; weigh them 50x.
    for mask in ("multiply", "residual"):
        runs[f"{mask}_l2_w50_5%"] = ({"mask": mask, "map_targets": "masks", "map_fraction": 0.05,
                                      "map_weight": 50.0}, None)
    for share in RRR_SHARES:  # RRR: double backward, about three ABN steps; weight 100 diverged (NaN) here
        runs[f"rrr_{share:.0%}"] = ({"model": "resnet20", "map_targets": "masks", "map_loss": "rrr",
                                     "map_fraction": share, "map_weight": 1.0}, None)
    return runs


@torch.no_grad()
def test_scores(run_dir: Path, data: str) -> dict:
    """Test accuracy and pointing game of a run's last weights (shapes-shortcut's val split is shortcut-free like
    its test split, so picking the best epoch on it would peek); for ABN models also with the test maps replaced
    by the object masks (the inference-time edit a person would make)."""
    model, meta = load_checkpoint(run_dir / "last.pt")
    options = replace(BASE, data=data).data_options()
    test = load_dataset(data, "test", TEST_IMAGES, options)
    loader = make_loader(test, data_spec(data), 250)
    scores = evaluate(model, loader)
    result = {"test_accuracy": scores["accuracy"], "pointing_game": scores.get("pointing_game")}
    if scores["att_accuracy"] is not None:
        hits = 0
        for batch in loader.epoch():
            own = model(batch.images)
            edited = area_resize(batch.masks.unsqueeze(1).float(), own.attention.shape[-2:])
            hits += (model(batch.images, attention=edited).logits.argmax(1) == batch.labels).sum().item()
        result["test_accuracy_mask_edits"] = hits / len(test)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", help="only these runs (their fine-tuning bases run first)")
    p.add_argument("--runs", type=Path, default=Path("/work/runs/guidance"))
    p.add_argument("--summary", type=Path, help="print the table of a results file and exit")
    p.add_argument("--plot", type=Path, help="with --summary: also draw accuracy against the guided share here")
    args = p.parse_args()
    if args.summary:
        print(summary(args.summary))
        if args.plot:
            plot(args.summary, args.plot)
        return
    done = {(r["run"], r["seed"]) for r in map(json.loads, args.log.read_text().splitlines())} if (
        args.log and args.log.exists()) else set()
    table = variants()
    names = args.only or list(table)
    for seed in args.seeds:
        for name in names:
            settings, base = table[name]
            if (name, seed) in done:
                continue
            out = args.runs / f"{name}_s{seed}"
            start = time.perf_counter()
            cfg = replace(BASE, **settings, seed=seed, out=str(out))
            if base is not None:
                cfg = replace(cfg, weights=str(args.runs / f"{base}_s{seed}" / "last.pt"))
            metrics = train(cfg, progress=False, force=True)
            row = {"run": name, "seed": seed, "model": cfg.model, "mask": cfg.mask, "map_fraction":
                   cfg.map_fraction if cfg.map_targets else 0.0, "fine_tuned_from": base,
                   "val_accuracy": metrics["val_accuracy"], **test_scores(out, cfg.data),
                   "train_s": round(time.perf_counter() - start, 1)}
            append_jsonl(args.log, row)


def plot(path: Path, out: Path) -> None:
    """Test accuracy against the share of guided images: scratch (weight 1 and 10), fine-tuned, RRR, and the clean
    and unguided references, mean over seeds with the seeds' range."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines()]

    def accuracy(run: str) -> list[float]:
        return [r["test_accuracy"] for r in rows if r["run"] == run]

    series = {"g(1+M), l2, weight 1": "guided_{}", "g(1+M), l2, weight 1, fine-tuned": "finetune_{}",
              "g*M, l2, weight 10": "multiply_l2_w10_{}", "g*M, energy, weight 10": "multiply_energy_w10_{}",
              "plain + RRR, weight 1": "rrr_{}"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pattern in series.items():
        points = [(share, accuracy(pattern.format(f"{share:.0%}"))) for share in SHARES]
        points = [(share * 100, values) for share, values in points if values]
        ax.errorbar([x for x, _ in points], [statistics.mean(v) for _, v in points], marker="o", capsize=3,
                    yerr=[[statistics.mean(v) - min(v) for _, v in points], [max(v) - statistics.mean(v)
                                                                             for _, v in points]], label=label)
    for run, style in (("clean", "--"), ("unguided", ":")):
        ax.axhline(statistics.mean(accuracy(run)), color="grey", linestyle=style, label=f"{run} (no guidance)")
    ax.set(xscale="log", xlabel="training images with a target map (%)", ylabel="test accuracy",
           title="shapes-shortcut: guiding the map (2 seeds)", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def summary(path: Path) -> str:
    """Markdown: mean ± sd over seeds of each run's test accuracy, pointing game and accuracy with mask edits."""
    groups: dict[str, list[dict]] = {}
    for row in map(json.loads, path.read_text().splitlines()):
        groups.setdefault(row["run"], []).append(row)

    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    lines = ["| run | seeds | test accuracy | pointing game | test accuracy, maps edited to the masks |",
             "|---|---|---|---|---|"]
    for name in variants():
        if name in groups:
            rows = groups[name]
            lines.append(f"| {name} | {len(rows)} | {cell(rows, 'test_accuracy')} | {cell(rows, 'pointing_game')} | "
                         f"{cell(rows, 'test_accuracy_mask_edits')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
