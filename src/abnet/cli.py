"""The `abnet` command line: parses arguments and wires the library together, nothing more.

Exit codes: 0 done, 2 bad usage or bad input (a one-line message, no traceback), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import __version__

EXIT_USAGE = 2
DATA_NAMES = "shapes, shapes-multi, cifar10, cifar100, svhn, fashion-mnist, imagefolder, celeba"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, minimum: float, inclusive: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, True)
non_negative_int = _number(int, 0, True)
positive_float = _number(float, 0.0, False)
non_negative_float = _number(float, 0.0, True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="abnet", description="Attention Branch Networks: classifiers that explain themselves.")
    parser.add_argument("--version", action="version", version=f"abnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="train an ABN on the embedded shapes set and show its attention maps",
                       description="Train resnet20_abn on the embedded `shapes` data set (a few minutes on two "
                                   "CPU cores), evaluate it on held-out images, and write attention_grid.png, "
                                   "explain/report.html (ABN's maps beside CAM/Grad-CAM's, scored) and "
                                   "metrics.json.")
    p.add_argument("--out", help="run folder (default: ./abnet-demo, or -2, -3, ... if that holds files)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default 5)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model; settings come from --config (JSON, e.g. a run's "
                                   "config.json), then the flags given. --resume continues the run in --out.")
    p.add_argument("--model", help="registered model name, e.g. resnet20_abn (see `abnet models`)")
    p.add_argument("--data", help=f"data set name: {DATA_NAMES}")
    p.add_argument("--data-root", help="folder holding the data set in its official layout (not for generated sets)")
    p.add_argument("--out", help="run folder to create (must be new or empty unless --resume)")
    p.add_argument("--config", help="JSON file of settings; flags given override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--force", action="store_true", help="replace the run in --out (its run files are deleted)")
    p.add_argument("--epochs", type=positive_int, help="(30)")
    p.add_argument("--batch-size", type=positive_int, help="(128)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (0.1)")
    p.add_argument("--momentum", type=non_negative_float, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, help="(1e-4)")
    p.add_argument("--schedule", choices=("step", "cosine"),
                   help="step (default): x0.1 at 50%% and 75%% of the epochs; cosine: to zero")
    p.add_argument("--warmup-epochs", type=non_negative_float, help="linear warm-up from lr/10 (0)")
    p.add_argument("--mask", choices=("residual", "multiply", "none"), help="what the perception branch reads "
                   "(ABN models): g*(1+M), g*M or g")
    p.add_argument("--pretrained", action="store_const", const=True,
                   help="tv:/timm: models: start from ImageNet weights in the local torch/timm cache (no download)")
    p.add_argument("--weights", help="tv:/timm: models: start from this state-dict file (.safetensors or .pt)")
    p.add_argument("--map-kernel", type=positive_int, help="kernel size of the attention-map conv (3; paper: 1)")
    p.add_argument("--shared-perception", action="store_const", const=True,
                   help="multi-task models (name_abn_mt): one perception branch for all tasks, not one each")
    p.add_argument("--pos-weight", choices=("balanced",),
                   help="attribute data: weigh each attribute's positives by negatives/positives in the training set")
    p.add_argument("--seed", type=non_negative_int, help="(0)")
    p.add_argument("--image-size", type=positive_int,
                   help="generated sets: image size (32); imagefolder: resize/crop size (224; <= 64 in memory)")
    p.add_argument("--limit-train", type=positive_int, help="use at most N training images")
    p.add_argument("--limit-val", type=positive_int, help="use at most N validation images")
    p.add_argument("--val-fraction", type=positive_float,
                   help="share of the training set held out for validation where there is no val split (0.1)")
    p.add_argument("--coarse", action="store_const", const=True, help="cifar100: the 20 coarse classes")
    p.add_argument("--workers", type=non_negative_int, help="DataLoader workers for large images (2)")
    p.add_argument("--cutout", type=non_negative_int, help="Cutout square side in pixels, 0 = off (0)")
    p.add_argument("--device", help="auto (default: the GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_const", const=True,
                   help="mixed precision: bf16 autocast on CPU (fast only with bf16 instructions), fp16 on CUDA")
    p.add_argument("--compile", action="store_const", const=True,
                   help="torch.compile the model (falls back to eager with a message)")
    p.add_argument("--sync-bn", action="store_const", const=True,
                   help="under torchrun on GPUs: batch-norm statistics over the whole global batch")
    p.add_argument("--milestones", type=non_negative_float, nargs="+",
                   help="step schedule: epochs where the lr is multiplied by --gamma (default 50%% and 75%%)")
    p.add_argument("--gamma", type=positive_float, help="step schedule factor (0.1)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep tensors channels-first (channels_last is faster on CPUs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set",
                       description="Evaluate both branches of a checkpoint (a run folder, best.safetensors "
                                   "or last.pt).")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help=f"data set name: {DATA_NAMES}")
    p.add_argument("--data-root", help="folder holding the data set in its official layout (not for generated sets)")
    p.add_argument("--split", help="split to evaluate (default: test, or val where there is no test split)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most N images")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of a generated data set (default 0)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers for large images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("explain", help="attention maps, a report and metrics for images or a data set",
                       description="Explain a checkpoint's predictions: for each image its attention map(s) laid "
                                   "over it and the top classes of both branches, as grid.png and a self-contained "
                                   "report.html; --method adds Grad-CAM-family baselines on the same model and "
                                   "--metrics scores every method (pointing game, energy, IoU where masks are known; "
                                   "deletion/insertion AUC for single-task models). Exit code 2 if some images could "
                                   "not be read. Images are held in memory: use --limit on large data sets.")
    p.add_argument("checkpoint", help="a run folder, best.safetensors or last.pt")
    p.add_argument("inputs", nargs="*", metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--out", required=True, help="folder for report.html, grid.png and metrics.json")
    p.add_argument("--method", help="comma-separated: abn (default for ABN models), cam, gradcam, gradcam++, "
                                    "hirescam, xgradcam, layercam, eigencam (all but abn and cam need "
                                    "pip install 'abnet[gradcam]')")
    p.add_argument("--data", help=f"explain a data set instead of files: {DATA_NAMES}")
    p.add_argument("--data-root", help="folder holding the data set in its official layout (not for generated sets)")
    p.add_argument("--split", help="split of --data (default: test, or val where there is no test split)")
    p.add_argument("--limit", type=positive_int, help="use at most N images of --data")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of a generated data set (default 0)")
    p.add_argument("--metrics", action="store_true", help="score every method; writes metrics.json")
    p.add_argument("--boxes", help="folder of object boxes, <image name>.xml in Pascal VOC / ImageNet format, "
                                   "for localisation scores of image files")
    p.add_argument("--show", type=positive_int, default=48, help="images shown in the report (default 48)")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed per branch (default 3)")
    p.add_argument("--steps", type=positive_int, default=16, help="deletion/insertion steps (default 16)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--compile", action="store_true", help="torch.compile the ABN forward (pays off over many images)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("models", help="list registered models", description="List registered model names.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*abn*'")
    p.set_defaults(func=cmd_models)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_out_dir, run_demo

    out = Path(args.out) if args.out else default_out_dir()
    print(f"abnet demo: training resnet20_abn on the embedded shapes set into {out}/ (a few minutes)",
          file=sys.stderr)
    m = run_demo(out, seed=args.seed, epochs=args.epochs, progress=True)
    print(f"""
Done in {m['seconds']:.0f} s. On {m['n']} held-out test images:
  accuracy       {m['accuracy']:.3f}  share classified correctly by the perception branch
  att_accuracy   {m['att_accuracy']:.3f}  the same for the attention branch's own logits
  pointing_game  {m['pointing_game']:.3f}  share of images whose attention maximum falls on the object
How ABN's map compares with baselines on the same model ({m['explain'][0]['images']} test images; pointing game and
energy: higher is better; deletion AUC: lower is better; insertion AUC: higher is better):
{_table(m['explain'], ('method', 'pointing_game', 'energy_in_mask', 'deletion_auc', 'insertion_auc'))}
Files in {out}/:
  attention_grid.png  test images, their attention maps laid over them, prediction and truth
  explain/report.html every method's maps side by side, filterable by class and correctness (open in a browser)
  metrics.json        the figures above
  best.safetensors    the trained weights: abnet eval {out} --data shapes
  metrics.jsonl, train.log, config.json, last.pt   the training run""")
    return 0


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Rows of figures as an aligned text table, three decimals."""
    lines = ["  " + "".join(f"{c:>16}" for c in columns)]
    for row in rows:
        lines.append("  " + "".join(f"{row[c]:>16.3f}" if isinstance(row.get(c), float) else f"{row.get(c, '-'):>16}"
                                    for c in columns))
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import TrainConfig, read_config
    from .engine.train import train
    from .errors import AbnetError

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.resume:
        if not args.out:
            raise AbnetError("--resume needs --out, the run folder to continue")
        values = read_config(Path(args.out) / "config.json")
    else:
        values = read_config(args.config) if args.config else {}
    values.update(given)
    missing = [name for name in ("model", "data", "out") if name not in values]
    if missing:
        raise AbnetError(f"{', '.join('--' + m for m in missing)} required (as flags or in --config)")
    metrics = train(TrainConfig.from_dict(values), resume=args.resume, force=args.force)
    if metrics and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps(metrics))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .data.registry import data_spec, make_loader
    from .engine.checkpoint import load_checkpoint
    from .engine.evaluate import evaluate

    model, meta = load_checkpoint(args.checkpoint)
    data, split = _checkpoint_data(args, meta)
    spec = replace(data_spec(args.data), mean=tuple(meta["mean"]), std=tuple(meta["std"]))  # the model's own
    result = {**evaluate(model, make_loader(data, spec, args.batch_size, workers=args.workers)),
              "data": args.data, "split": split, "model": meta["model_config"]["model"]}
    if args.json:
        print(json.dumps(result))
    else:
        att = "-" if result["att_accuracy"] is None else f"{result['att_accuracy']:.4f}"
        extra = "".join(f"  {key.replace('_', ' ')} {result[key]:.4f}"
                        for key in ("mean_balanced_accuracy", "pointing_game") if result.get(key) is not None)
        print(f"{result['model']} on {args.data}/{split} ({result['n']} images): accuracy "
              f"{result['accuracy']:.4f}  attention-branch accuracy {att}  loss {result['loss']:.4f}{extra}")
    return 0


def _checkpoint_data(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[Any, str]:
    """The split of ``args.data`` to evaluate or explain a checkpoint on, read the way it was trained."""
    from .data.registry import DataOptions, data_spec, load_dataset
    from .errors import AbnetError

    spec = data_spec(args.data)
    trained_with = meta.get("train_config", {})  # how the checkpoint's data was read
    options = DataOptions(root=args.data_root and Path(args.data_root), image_size=meta.get("image_size", [None])[0],
                          seed=args.seed, coarse=trained_with.get("coarse", False),
                          val_fraction=trained_with.get("val_fraction", 0.1))
    split = args.split or spec.eval_split(options)
    data = load_dataset(args.data, split, args.limit, options)
    if data.num_classes != len(meta["classes"]):
        raise AbnetError(f"the checkpoint classifies {len(meta['classes'])} classes but {args.data} has "
                         f"{data.num_classes}; use the data set it was trained for ({meta.get('data')})")
    return data, split


def cmd_explain(args: argparse.Namespace) -> int:
    from .engine.checkpoint import load_checkpoint
    from .errors import AbnetError
    from .explain.methods import METHODS, check_method
    from .explain.run import dataset_inputs, image_files, read_images, run_explain

    if bool(args.inputs) == bool(args.data):
        raise AbnetError("give image files/folders or --data NAME (one of the two) to explain")
    methods = [m.strip().lower() for m in args.method.split(",") if m.strip()] if args.method else None
    for method in methods or ():
        if method not in METHODS:
            raise AbnetError(f"unknown method {method!r} in --method; choose from {', '.join(METHODS)}")
    model, meta = load_checkpoint(args.checkpoint)
    methods = methods or (["abn"] if hasattr(model, "attention_branch") else ["gradcam"])
    for method in methods:
        check_method(model, method)
    boxes = Path(args.boxes) if args.boxes else None
    if boxes is not None and not boxes.is_dir():
        raise AbnetError(f"--boxes {boxes} is not a folder; give the folder of <image name>.xml box files")
    if args.data:
        data, split = _checkpoint_data(args, meta)
        inputs, source = dataset_inputs(data, split, boxes), f"{args.data}/{split}"
    else:
        inputs, source = read_images(image_files(args.inputs), meta["image_size"][0], boxes_dir=boxes), "files"
    info = {"checkpoint": str(args.checkpoint), "model": meta["model_config"]["model"], "data": source}
    summary = run_explain(model, meta, inputs, args.out, methods, metrics=args.metrics, show=args.show,
                          top_k=args.top_k, steps=args.steps, batch_size=args.batch_size, compile=args.compile,
                          info=info)
    print(f"explained {summary['images']} images with {', '.join(methods)}: "
          + ", ".join(f"{args.out}/{f}" for f in summary["files"]))
    for row in summary["metrics"]:
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items() if not isinstance(v, list)))
    for name, reason in summary["failures"]:
        print(f"abnet explain: skipped {name}: {reason}", file=sys.stderr)
    return EXIT_USAGE if summary["failures"] else 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Entry point of `abnet` and `python -m abnet`."""
    from .engine.train import TrainingStopped
    from .errors import AbnetError

    args = build_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("abnet").addHandler(console)
    try:
        return args.func(args)
    except AbnetError as err:
        print(f"abnet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingStopped as stop:
        print(f"abnet {args.command}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"abnet {args.command}: interrupted; a run continues with --resume from its last.pt",
              file=sys.stderr)
        return 130
    finally:
        logging.getLogger("abnet").removeHandler(console)
