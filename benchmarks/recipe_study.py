"""Training recipes compared on real images: each run is a whole `abnet train` process; its last epoch's
held-out accuracy is one JSON line in --log (runs already there are skipped, so the study resumes).

    python ../shared/data/cifar10_build.py /work/data/cifar          # 45,000 train / 5,000 held out
    apt-get install dataset-fashion-mnist                           # /usr/share/datasets/fashion-mnist
    python benchmarks/recipe_study.py --study short --log results/recipe_study.jsonl
    python benchmarks/recipe_study.py --study table1 --log results/table1_study.jsonl --pending
    python benchmarks/recipe_study.py --study table1 --log results/table1_study.jsonl --jobs 2
    python benchmarks/recipe_study.py --summary results/recipe_study.jsonl

Held out: CIFAR-10's 5,000 images in test_batch (not trained on), Fashion-MNIST's official 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from runs import append_jsonl, run_result, timed

DATA = {"cifar10": "/work/data/cifar", "fashion-mnist": "/usr/share/datasets/fashion-mnist"}
# The recipes compared, as `abnet train` flags on top of its defaults.
RECIPES = {
    # abnet train's defaults before this study (the research code's): every setting the default recipe changed.
    "old": ["--schedule", "step", "--weight-decay", "1e-4", "--batch-size", "128", "--lr", "0.1",
            "--warmup-epochs", "0", "--no-nesterov", "--label-smoothing", "0", "--precision", "fp32"],
    # Candidates: cosine to zero after a short linear warm-up, Nesterov, label smoothing, flip TTA, bf16 by hardware.
    "cos_b64": ["--schedule", "cosine", "--warmup-epochs", "0.5", "--nesterov", "--label-smoothing", "0.1",
                "--weight-decay", "5e-4", "--batch-size", "64", "--lr", "0.1", "--eval-flip", "--precision", "auto"],
    "cos_b64_lr02": ["--schedule", "cosine", "--warmup-epochs", "0.5", "--nesterov", "--label-smoothing", "0.1",
                     "--weight-decay", "5e-4", "--batch-size", "64", "--lr", "0.2", "--eval-flip", "--precision",
                     "auto"],
    "cos_b32": ["--schedule", "cosine", "--warmup-epochs", "0.5", "--nesterov", "--label-smoothing", "0.1",
                "--weight-decay", "5e-4", "--batch-size", "32", "--lr", "0.05", "--eval-flip", "--precision", "auto"],
    "cos_b128_lr02": ["--schedule", "cosine", "--warmup-epochs", "0.5", "--nesterov", "--label-smoothing", "0.1",
                      "--weight-decay", "5e-4", "--batch-size", "128", "--lr", "0.2", "--eval-flip", "--precision",
                      "auto"],
}
B32 = RECIPES["cos_b32"]


def variant(base: list[str], **flags: str) -> list[str]:
    """``base`` with some flags' values replaced (``label_smoothing="0.2"`` replaces --label-smoothing's value)."""
    out = list(base)
    for name, value in flags.items():
        out[out.index("--" + name.replace("_", "-")) + 1] = value
    return out


RECIPES.update({"cos_b32_lr01": variant(B32, lr="0.1"), "cos_b16": variant(B32, batch_size="16", lr="0.025"),
                "cos_b32_ls02": variant(B32, label_smoothing="0.2"),
                "cos_b32_wd1e3": variant(B32, weight_decay="1e-3")})
# Random crops slow short runs: no crops, or shifts of at most 2 pixels (CIFAR's are 4).
NOCROP = RECIPES["cos_b32_ls02_nocrop"] = [*RECIPES["cos_b32_ls02"], "--crop-padding", "0"]
RECIPES.update({"cos_b32_ls02_crop2": variant(NOCROP, crop_padding="2"),
                "cos_b32_ls02_nocrop_lr01": variant(NOCROP, lr="0.1"),
                "cos_b16_ls02_nocrop": variant(NOCROP, batch_size="16", lr="0.025")})
# Fashion-MNIST's 6k x 2 epochs stayed under 0.85 without crops: a shorter warm-up, more steps at a higher lr,
# less label smoothing, less weight decay.
RECIPES.update({"cos_b32_ls02_nocrop_wu01": variant(NOCROP, warmup_epochs="0.1"),
                "cos_b16_ls02_nocrop_lr005": variant(NOCROP, batch_size="16", lr="0.05"),
                "cos_b32_ls01_nocrop": variant(NOCROP, label_smoothing="0.1"),
                "cos_b32_ls02_nocrop_wd5e5": variant(NOCROP, weight_decay="5e-5"),
                "cos_b32_ls03_nocrop": variant(NOCROP, label_smoothing="0.3"),
                "cos_b16_ls03_nocrop_lr005": variant(NOCROP, batch_size="16", lr="0.05", label_smoothing="0.3")})
FAST = ["--schedule", "cosine", "--warmup-epochs", "1", "--nesterov", "--label-smoothing", "0.1", "--weight-decay",
        "5e-4", "--batch-size", "128", "--lr", "0.2", "--eval-flip"]
RECIPES.update({"fast_fp32": [*FAST, "--precision", "fp32"], "fast_bf16": [*FAST, "--precision", "bf16"]})
# Long runs compare the recipes, not the precisions (the precision study found bf16 harmless): both in auto,
# evaluated every 5th epoch (the last epoch is always evaluated).
RECIPES.update({"old_auto": [*variant(RECIPES["old"], precision="auto"), "--eval-every", "5"],
                "fast_auto": [*FAST, "--precision", "auto", "--eval-every", "5"]})
# The default recipe (no flip TTA) against the same with a warm-up of a tenth of the run: 0.4 epochs of 4, 0.2 of 2.
DEFAULT = [*(flag for flag in FAST if flag != "--eval-flip"), "--precision", "auto", "--eval-every", "5"]
RECIPES.update({"default": DEFAULT, "default_wu04": variant(DEFAULT, warmup_epochs="0.4"),
                "default_wu02": variant(DEFAULT, warmup_epochs="0.2")})
# The paper's Table 1 (what the perception branch reads) on the same 15-epoch recipe; plain resnet20 runs fast_bf16.
RECIPES.update({f"fast_bf16_{mask}": [*RECIPES["fast_bf16"], "--mask", mask] for mask in ("multiply", "none")})


class Study(NamedTuple):
    """Runs of every recipe x seed x model on ``images`` (None: all 45,000) of ``data`` for ``epochs``."""
    data: str
    images: int | None
    epochs: int
    seeds: tuple[int, ...]
    recipes: list[str]
    models: tuple[str, ...] = ("resnet20_abn",)


STUDIES = {
    "explore": [Study("cifar10", 5000, 4, (0,), [r for r in RECIPES if r.startswith(("old", "cos"))]),
                Study("fashion-mnist", 6000, 2, (0,), ["cos_b32_ls02_nocrop_lr01", "cos_b16_ls02_nocrop"])],
    # Fashion-MNIST's short runs again, seeds 0 and 1, the short study's best (cos_b32_ls02_nocrop) as the control.
    "explore_fmnist": [Study("fashion-mnist", 6000, 2, (0, 1), [
        "cos_b32_ls02_nocrop", "cos_b32_ls02_nocrop_wu01", "cos_b16_ls02_nocrop_lr005", "cos_b32_ls01_nocrop",
        "cos_b32_ls02_nocrop_wd5e5", "cos_b32_ls03_nocrop", "cos_b16_ls03_nocrop_lr005"]),
                       # Does the attention branch slow short runs? Plain resnet20 on the control recipe.
                       Study("fashion-mnist", 6000, 2, (0, 1), ["cos_b32_ls02_nocrop"], ("resnet20",))],
    "precision": [Study("cifar10", None, 15, (0, 1), ["fast_bf16", "fast_fp32"])],
    "short": [Study("cifar10", 5000, 4, (0, 1), ["old", "cos_b32_ls02", "cos_b32_ls02_nocrop"]),
              Study("fashion-mnist", 6000, 2, (0, 1), ["old", "cos_b32_ls02", "cos_b32_ls02_nocrop"])],
    "long": [Study(data, 45000, 30, (0, 1), ["old_auto", "fast_auto"]) for data in ("cifar10", "fashion-mnist")],
    # The long study's new recipe on the short runs: does the candidate default also learn fast?
    "short_fast": [Study("cifar10", 5000, 4, (0, 1), ["fast_auto"]),
                   Study("fashion-mnist", 6000, 2, (0, 1), ["fast_auto"])],
    # Short runs: is the 1-epoch warm-up too long for them?
    "short_warmup": [Study("cifar10", 5000, 4, (0, 1), ["default", "default_wu04"]),
                     Study("fashion-mnist", 6000, 2, (0, 1), ["default", "default_wu02"])],
    # Seeds 0 and 1 of resnet20_abn's fast_bf16 (mask residual) are the precision study's runs.
    "table1": [Study("cifar10", None, 15, (0, 1, 2), ["fast_bf16", "fast_bf16_multiply", "fast_bf16_none"]),
               Study("cifar10", None, 15, (0, 1, 2), ["fast_bf16"], ("resnet20",))],
}


def run(recipe: str, data: str, images: int | None, epochs: int, seed: int, model: str, out: Path,
        threads: int | None = None) -> dict:
    """Train one run as its own process (at ``threads`` threads; default: torch's) and return its result line."""
    cmd = [sys.executable, "-m", "abnet", "train", "--model", model, "--data", data, "--data-root", DATA[data],
           "--val-split", "test", "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
           *(["--limit-train", str(images)] if images else []), *RECIPES[recipe]]
    # A run stopped before (a session's end) continues where it stopped; wall_s then counts this part only.
    cmd += ["--resume"] if (out / "last.pt").is_file() else ["--force"]
    wall = timed(cmd, threads)
    return {"recipe": recipe, "data": data, "images": images, "seed": seed, **run_result(out),
            "wall_s": round(wall, 1), "threads": threads, "command": " ".join(cmd[1:])}


def summary(path: Path) -> str:
    """A markdown table: mean ± sd of held-out accuracy (and of its error, in percent) per (data, images, epochs,
    model, recipe); sd is the sample standard deviation over seeds, 0 for one seed."""
    groups: dict[tuple, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        groups.setdefault((r["data"], r["images"], r["epochs"], r["model"], r["recipe"]), []).append(r)
    rows = ["| data | images x epochs | model | recipe | seeds | held-out accuracy | error % | wall s |",
            "|" + "---|" * 8]
    for (data, images, epochs, model, recipe), runs in sorted(groups.items(), key=str):
        acc = [r["held_out_accuracy"] for r in runs]
        mean, sd = statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0
        rows.append(f"| {data} | {images or 'all'} x {epochs} | {model} | {recipe} | {len(acc)} | "
                    f"{mean:.3f} ± {sd:.3f} | {100 * (1 - mean):.2f} ± {100 * sd:.2f} | "
                    f"{statistics.mean(r['wall_s'] for r in runs):.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=sorted(STUDIES))
    p.add_argument("--recipes", nargs="+", help="only these of the study's recipes")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds (e.g. one per parallel process)")
    p.add_argument("--model", help="only this model: the study's parts that name it, or, where none does, every part "
                                   "trained with it (default: the study's models)")
    p.add_argument("--log", type=Path, help="JSONL file the results are appended to")
    p.add_argument("--runs", type=Path, default=Path("/tmp/recipe_runs"), help="folder of the run folders")
    p.add_argument("--summary", type=Path, help="print the table of a results file and exit")
    p.add_argument("--pending", action="store_true", help="list the runs the log does not hold yet, and exit")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each at cores/jobs threads (default 1)")
    args = p.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    done = set()
    if args.log and args.log.exists():
        done = {(r["recipe"], r["model"], r["data"], r["images"], r["epochs"], r["seed"])
                for r in map(json.loads, args.log.read_text().splitlines())}
    todo = pending(STUDIES[args.study], done, args.model, args.recipes, args.seeds, args.runs)
    if args.pending:
        for recipe, data, images, epochs, seed, model, out in todo:
            print(f"{model} {recipe} seed {seed}: {data}, {images or 'all'} images x {epochs} epochs, {out}"
                  f"{' (resumes from last.pt)' if (out / 'last.pt').is_file() else ''}")
        return
    # --jobs N: N runs at a time, the cores shared out among them. Which is faster depends on the CPU: on the 2-core
    # Intel Xeon with AMX one 2-thread run (--jobs 1) trained resnet20_abn at 745 img/s, two 1-thread runs at
    # 215-300 each. A 2-thread run must have the cores to itself: beside a 1-thread process it fell to 215 img/s.
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, *job, threads=threads) for job in todo]
        try:
            for future in as_completed(futures):  # each result is logged as soon as its run ends
                append_jsonl(args.log, future.result())
        except BaseException:  # a failed run (or Ctrl-C): the runs not started yet are not started
            pool.shutdown(cancel_futures=True)
            raise


def pending(parts: list[Study], done: set[tuple], model: str | None, recipes: list[str] | None,
            seeds: list[int] | None, runs: Path) -> list[tuple]:
    """The runs of ``parts`` not in ``done`` (keys of the log), filtered by --model/--recipes/--seeds, each as
    ``run()``'s arguments; a run two parts share is listed once."""
    named = any(model in study.models for study in parts)  # then --model picks the parts that name it
    todo, keys = [], set(done)
    for study in parts:
        if not model:
            models = study.models
        elif model in study.models or not named:
            models = (model,)
        else:
            models = ()
        for name in models:
            for recipe in [r for r in study.recipes if not recipes or r in recipes]:
                for seed in [s for s in study.seeds if not seeds or s in seeds]:
                    key = (recipe, name, study.data, study.images, study.epochs, seed)
                    if key not in keys:
                        keys.add(key)
                        out = runs / f"{study.data}_{study.images}x{study.epochs}_{name}_{recipe}_s{seed}"
                        todo.append((recipe, study.data, study.images, study.epochs, seed, name, out))
    return todo


if __name__ == "__main__":
    main()
