"""The `abnet` command line: parses arguments and wires the library together, nothing more.

Exit codes: 0 done, 2 bad usage or bad input (a one-line message, no traceback), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__

EXIT_USAGE = 2


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
                                   "CPU cores), evaluate it on held-out images, and write attention_grid.png and "
                                   "metrics.json.")
    p.add_argument("--out", help="run folder (default: ./abnet-demo, or -2, -3, ... if that holds files)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default 5)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model; settings come from --config (JSON, e.g. a run's "
                                   "config.json), then the flags given. --resume continues the run in --out.")
    p.add_argument("--model", help="registered model name, e.g. resnet20_abn (see `abnet models`)")
    p.add_argument("--data", help="data set name (available: shapes)")
    p.add_argument("--data-root", help="folder holding the data set (not needed for the generated shapes set)")
    p.add_argument("--out", help="run folder to create (must be new or empty unless --resume)")
    p.add_argument("--config", help="JSON file of settings; flags given override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--momentum", type=non_negative_float)
    p.add_argument("--weight-decay", type=non_negative_float)
    p.add_argument("--schedule", choices=("step", "cosine"), help="step: x0.1 at 50%% and 75%% of the epochs")
    p.add_argument("--warmup-epochs", type=non_negative_float)
    p.add_argument("--mask", choices=("residual", "multiply", "none"), help="what the perception branch reads "
                   "(ABN models): g*(1+M), g*M or g")
    p.add_argument("--map-kernel", type=positive_int, help="kernel size of the attention-map conv (3; paper: 1)")
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--image-size", type=positive_int, help="image size of a generated data set")
    p.add_argument("--limit-train", type=positive_int, help="use at most N training images")
    p.add_argument("--limit-val", type=positive_int, help="use at most N validation images")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep tensors channels-first (channels_last is faster on CPUs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set",
                       description="Evaluate both branches of a checkpoint (a run folder, best.safetensors "
                                   "or last.pt).")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="data set name (available: shapes)")
    p.add_argument("--data-root", help="folder holding the data set (not needed for shapes)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most N images")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of a generated data set (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

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
Files in {out}/:
  attention_grid.png  test images, their attention maps laid over them, prediction and truth
  metrics.json        the figures above
  best.safetensors    the trained weights: abnet eval {out} --data shapes
  metrics.jsonl, train.log, config.json, last.pt   the training run""")
    return 0


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
    metrics = train(TrainConfig.from_dict(values), resume=args.resume)
    if metrics:
        print(json.dumps(metrics))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.loader import InMemoryLoader
    from .data.registry import load_dataset
    from .engine.checkpoint import load_checkpoint
    from .engine.evaluate import evaluate
    from .errors import AbnetError

    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise AbnetError(f"--data-root {args.data_root} is not a folder")
    model, meta = load_checkpoint(args.checkpoint)
    image_size = meta.get("image_size", [None])[0]
    data = load_dataset(args.data, args.split, args.limit, image_size, args.seed)
    if data.num_classes != len(meta["classes"]):
        raise AbnetError(f"the checkpoint classifies {len(meta['classes'])} classes but {args.data} has "
                         f"{data.num_classes}; evaluate it on the data set it was trained for ({meta.get('data')})")
    loader = InMemoryLoader(data, args.batch_size, tuple(meta["mean"]), tuple(meta["std"]))
    result = {**evaluate(model, loader), "data": args.data, "split": args.split,
              "model": meta["model_config"]["model"]}
    if args.json:
        print(json.dumps(result))
    else:
        att = "-" if result["att_accuracy"] is None else f"{result['att_accuracy']:.4f}"
        extra = f"  pointing game {result['pointing_game']:.4f}" if "pointing_game" in result else ""
        print(f"{result['model']} on {args.data}/{args.split} ({result['n']} images): accuracy "
              f"{result['accuracy']:.4f}  attention-branch accuracy {att}  loss {result['loss']:.4f}{extra}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Entry point of `abnet` and `python -m abnet`."""
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
    except KeyboardInterrupt:
        print(f"abnet {args.command}: interrupted; a run continues with --resume from its last.pt",
              file=sys.stderr)
        return 130
    finally:
        logging.getLogger("abnet").removeHandler(console)
