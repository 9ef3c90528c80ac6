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
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .models.meta import CheckpointMeta

EXIT_USAGE = 2
DATA_NAMES = "shapes, shapes-multi, shapes-shortcut, cifar10, cifar100, svhn, fashion-mnist, imagefolder, celeba"
CHECKPOINT_HELP = ("a run folder, last.pt, best.safetensors, a save_pretrained or convert folder, owner/name "
                   "in the local Hugging Face cache, or a pretrained name such as resnet20_abn:cifar10 (see "
                   "`abnet pretrained`)")
DEVICE_HELP = "auto (default: the GPU if there is one), cpu, cuda, cuda:N"


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


def _add_data_split(p: argparse.ArgumentParser, required: bool) -> None:
    """--data, --data-root, --split, --limit and --seed: the split of a data set a command reads."""
    p.add_argument("--data", required=required, help=f"data set name: {DATA_NAMES}" if required else
                   f"read a data set instead of files: {DATA_NAMES}")
    p.add_argument("--data-root", help="folder holding the data set in its official layout (not for generated sets)")
    p.add_argument("--split", help="split of --data (default: test, or val where there is no test split)")
    p.add_argument("--limit", type=positive_int, help="use at most N images of --data")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of a generated data set (default 0)")


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
    p.add_argument("--lr", type=positive_float, help="peak learning rate (0.2 x batch size / 128)")
    p.add_argument("--momentum", type=non_negative_float, help="SGD momentum (0.9; 0 needs --no-nesterov)")
    p.add_argument("--weight-decay", type=non_negative_float, help="(5e-4)")
    p.add_argument("--schedule", choices=("step", "cosine"),
                   help="cosine (default): to zero after the warm-up; step: x--gamma at --milestones, by default "
                        "at 50%% and 75%% of the epochs (the research code's schedule; its whole recipe is in the "
                        "paper configs, configs/)")
    p.add_argument("--warmup-epochs", type=non_negative_float,
                   help="linear warm-up from lr/10 (1, at most half the run)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (on)")
    p.add_argument("--label-smoothing", type=non_negative_float,
                   help="cross-entropy label smoothing, 0-1 (0.1; 0 on attribute data)")
    p.add_argument("--val-split", choices=("val", "test"),
                   help="split evaluated each epoch: val (the set's own, or --val-fraction of the training images) "
                        "or test, training on the whole training split (val)")
    p.add_argument("--eval-flip", action="store_const", const=True,
                   help="evaluate with flip test-time augmentation (logits averaged with the mirror image's)")
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help="evaluate after every N-th epoch and after the last (1); fewer evaluations, faster runs")
    p.add_argument("--mask", choices=("residual", "multiply", "none"), help="what the perception branch reads "
                   "(ABN models): g*(1+M), g*M or g")
    p.add_argument("--pretrained", action="store_const", const=True,
                   help="tv:/timm: models: start from ImageNet weights in the local torch/timm cache (no download)")
    p.add_argument("--weights", help="start from these weights (a new run with its own schedule): an abnet run "
                                     "folder or checkpoint, a research-code model_best.pth.tar, or a tv:/timm: "
                                     "backbone's state dict")
    p.add_argument("--map-kernel", type=positive_int, help="kernel size of the attention-map conv (3; paper: 1)")
    p.add_argument("--shared-perception", action="store_const", const=True,
                   help="multi-task models (name_abn_mt): one perception branch for all tasks, not one each")
    p.add_argument("--map-targets", metavar="SOURCE",
                   help="guide the attention map: masks (the data set's object masks), boxes:DIR (Pascal VOC box "
                        "files <stem>.xml) or DIR of target maps DIR/<split>/<class>/<stem>.png (white = attend; "
                        "as `abnet edit` saves them)")
    p.add_argument("--map-loss", choices=("l2", "energy", "bce", "rrr"),
                   help="map guidance loss: l2 (default), energy (map mass inside the target), bce; rrr: input "
                        "gradients outside the target, for plain models")
    p.add_argument("--map-weight", type=non_negative_float, help="weight of the map loss (10)")
    p.add_argument("--map-fraction", type=non_negative_float,
                   help="share of the training images whose targets are used, 0-1, fixed by --seed (1)")
    p.add_argument("--pos-weight", choices=("balanced",),
                   help="attribute data: weigh each attribute's positives by negatives/positives in the training set")
    p.add_argument("--seed", type=non_negative_int, help="(0)")
    p.add_argument("--image-size", type=positive_int,
                   help="generated sets: image size (32); imagefolder, celeba: resize/crop size (default: the "
                        "model's input size, e.g. 32 for resnet20_abn, 224 for resnet50_abn; <= 64 in memory)")
    p.add_argument("--limit-train", type=positive_int, help="use at most N training images")
    p.add_argument("--limit-val", type=positive_int, help="use at most N validation images")
    p.add_argument("--val-fraction", type=positive_float,
                   help="share of the training set held out for validation where there is no val split (0.1)")
    p.add_argument("--coarse", action="store_const", const=True, help="cifar100: the 20 coarse classes")
    p.add_argument("--workers", type=non_negative_int, help="DataLoader workers for large images (2)")
    p.add_argument("--cutout", type=non_negative_int, help="Cutout square side in pixels, 0 = off (0)")
    p.add_argument("--crop-padding", type=non_negative_int,
                   help="in-memory data sets: random crops shift images by up to N pixels, 0 = no crops (default: "
                        "the data set's, 4 for CIFAR and SVHN, 2 for Fashion-MNIST); short runs learn faster "
                        "without them (results/recipe_study.md)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="arithmetic: auto = bf16 autocast on CPUs with bf16 instructions (AVX-512 BF16, AMX), "
                        "bf16 or fp16 + loss scaling on GPUs by capability, fp32 elsewhere (auto)")
    p.add_argument("--amp", dest="precision", action="store_const", const="auto", help="= --precision auto")
    p.add_argument("--compile", action="store_const", const=True,
                   help="torch.compile the model (falls back to eager with a message)")
    p.add_argument("--sync-bn", action="store_const", const=True,
                   help="under torchrun on GPUs: batch-norm statistics over the whole global batch")
    p.add_argument("--milestones", type=non_negative_float, nargs="+",
                   help="with --schedule step: epochs where the lr is multiplied by --gamma (default 50%% and 75%%)")
    p.add_argument("--gamma", type=positive_float, help="step schedule factor (0.1)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep tensors channels-first (channels_last is faster on CPUs)")
    p.add_argument("--deterministic", action="store_const", const=True,
                   help="GPUs: deterministic cuDNN/cuBLAS kernels, so the same seed gives the same numbers "
                        "(can be slower; CPU runs are deterministic anyway)")
    p.add_argument("--log-every", type=positive_int,
                   help="steps between reading the loss back and checking for a stop (1 on CPUs, 50 on GPUs, "
                        "where every read makes the GPU wait)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set",
                       description="Evaluate both branches of a checkpoint.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    _add_data_split(p, required=True)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers for large images")
    p.add_argument("--flip", action="store_true",
                   help="flip test-time augmentation: logits averaged with the mirror image's (as train --eval-flip)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("explain", help="attention maps, a report and metrics for images or a data set",
                       description="Explain a checkpoint's predictions: for each image its attention map(s) laid "
                                   "over it and the top classes of both branches, as grid.png and a self-contained "
                                   "report.html; --method adds Grad-CAM-family baselines on the same model and "
                                   "--metrics scores every method (pointing game, energy, IoU where masks are known; "
                                   "deletion/insertion AUC for single-task models). Exit code 2 if some images could "
                                   "not be read. Images are held in memory: use --limit on large data sets.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="*", metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--out", required=True, help="folder for report.html, grid.png and metrics.json")
    p.add_argument("--method", help="comma-separated: abn (default for ABN models), cam, gradcam, gradcam++, "
                                    "hirescam, xgradcam, layercam, eigencam (all but abn and cam need "
                                    "pip install 'abnet[gradcam]')")
    _add_data_split(p, required=False)
    p.add_argument("--metrics", action="store_true", help="score every method; writes metrics.json")
    p.add_argument("--boxes", help="folder of object boxes, <image name>.xml in Pascal VOC / ImageNet format, "
                                   "for localisation scores of image files")
    p.add_argument("--attention", metavar="DIR", help="ABN models: also predict with edited maps fed to the "
                   "perception branch, from DIR/<split>/<class>/<stem>.png for --data (<stem>: the image's index for "
                   "a set held in memory), DIR/<stem>.png for image files (multi-task: <stem>.<attribute>.png); 8-bit "
                   "grayscale, white = attend; both predictions go to the report and edits.json")
    p.add_argument("--show", type=positive_int, default=48, help="images shown in the report (default 48)")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed per branch (default 3)")
    p.add_argument("--steps", type=positive_int, default=16, help="deletion/insertion steps (default 16)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--compile", action="store_true", help="torch.compile the ABN forward (pays off over many images)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("edit", help="paint attention maps in a browser, see the prediction change, save them",
                       description="Serve a page on 127.0.0.1 (its URL carries a random token) showing each image, "
                                   "its attention map and prediction: paint the map up and down with an add and a "
                                   "remove brush, see the perception branch's prediction with the edited map, and "
                                   "save it as an 8-bit grayscale PNG at the model's input size (255 = attend): "
                                   "OUT/<split>/<class>/<stem>.png for --data (the stem of an image held in memory "
                                   "is its index in the split), OUT/<stem>.png for image files; a multi-task model "
                                   "adds .<attribute> to the stem. abnet train --map-targets OUT and abnet explain "
                                   "--attention OUT read them. Stop with Ctrl-C.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP + " (an ABN model)")
    p.add_argument("inputs", nargs="*", metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--out", required=True, help="folder for the edited maps")
    _add_data_split(p, required=False)
    p.add_argument("--port", type=non_negative_int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed per prediction (default 3)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("convert", help="weights trained elsewhere (e.g. the ABN research code) as a model folder",
                       description="Build --model with the weights of FILE (an abnet checkpoint, a state dict, or "
                                   "the ABN research code's model_best.pth.tar) and write a save_pretrained folder: "
                                   "config.json, model.safetensors and a README.md model card, with the research "
                                   "code's input normalisation and, given --data, the data set's class names (an "
                                   "abnet checkpoint keeps its own). abnet eval/explain DIR and "
                                   "abnet.from_pretrained(DIR) read it.")
    p.add_argument("file", help="the weights file")
    p.add_argument("--model", required=True, help="registered model name of the weights, e.g. resnet110_abn")
    p.add_argument("--num-classes", type=positive_int, required=True, help="outputs the weights were trained for")
    p.add_argument("--data", help="data set the weights were trained on, for the class names (cifar10 and cifar100 "
                                  "need no files; others read --data-root)")
    p.add_argument("--data-root", help="folder holding --data in its official layout, to read the class names")
    p.add_argument("--license", help="licence of the weights, for the model card (e.g. mit)")
    p.add_argument("--out", required=True, help="folder to create (must be new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript, attention map included",
                       description="Write a checkpoint's model as one ONNX or TorchScript file. Input `images` "
                                   "(N, 3, H, W) at the model's input size, normalised as the checkpoint says; "
                                   "outputs `logits`, `att_logits` and `attention` (N, T, h, w), the map at its own "
                                   "resolution (T = 1, or one map per task for *_abn_mt models). A plain (non-ABN) "
                                   "model exports `logits` only. The batch axis is dynamic. Normalisation, class "
                                   "names and input size are stored in the file (ONNX metadata_props; TorchScript "
                                   "extra file abnet.json). The file is written only after its outputs were checked "
                                   "against the model's. ONNX needs pip install 'abnet[onnx]'; TorchScript is "
                                   "deprecated in PyTorch and loads with torch.jit.load alone.")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="batch inference: one JSON line per image, maps as PNGs",
                       description="Predict image files or folders (searched recursively) with a checkpoint on "
                                   "PyTorch or an ONNX file (from `abnet export`) on onnxruntime. Writes one JSON "
                                   "object per line: path, width, height, the top-k classes with probabilities of "
                                   "the perception branch and of the attention branch (plain models: perception "
                                   "only; attribute models: every attribute's probability), and with --maps the "
                                   "map file(s): 8-bit grayscale PNGs at the image's own size (0 outside the "
                                   "centre crop the model saw; one per task for *_abn_mt models). Images are "
                                   "resized as explain does (shorter side, centre crop) and streamed batch by "
                                   "batch. Unreadable files are skipped and named; the exit code is then 2.")
    p.add_argument("checkpoint", metavar="CHECKPOINT|FILE.onnx", help=CHECKPOINT_HELP + ", or an .onnx file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--out", required=True, help="JSON-lines file to write, e.g. predictions.jsonl")
    p.add_argument("--maps", help="folder for the attention maps (PNG), mirroring the input folders")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes listed per branch (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list registered models", description="List registered model names.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*abn*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pretrained", help="list the pretrained weights shipped with abnet",
                       description="List the weights shipped inside the abnet package: name (<model>:<data>, "
                                   "accepted wherever a checkpoint is, and as abnet.create_model(MODEL, "
                                   "pretrained=DATA)), data set, classes, held-out accuracy of the perception and "
                                   "attention branches with the weights as stored, stored type and file size.")
    p.add_argument("--json", action="store_true", help="print a JSON list of the index entries")
    p.set_defaults(func=cmd_pretrained)
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
    from .engine.config import TrainConfig
    from .engine.train import train
    from .errors import AbnetError

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    cfg = TrainConfig.from_sources(given, args.config, args.resume)
    guidance = [name for name in ("map_loss", "map_weight", "map_fraction") if name in given]
    if guidance and cfg.map_targets is None:
        raise AbnetError(f"--{guidance[0].replace('_', '-')} sets up map guidance; give --map-targets too")
    metrics = train(cfg, resume=args.resume, force=args.force)
    if metrics and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps(metrics))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .data.registry import check_flip_tta, data_spec, make_loader
    from .engine.evaluate import evaluate

    if args.flip:
        check_flip_tta(args.data, "--flip")
    model, meta = _load_on_device(args)
    data, split = _checkpoint_data(args, meta)
    spec = replace(data_spec(args.data), mean=meta.mean, std=meta.std)  # the model's own
    result = {**evaluate(model, make_loader(data, spec, args.batch_size, workers=args.workers), flip=args.flip),
              "data": args.data, "split": split, "model": meta.model_name, "flip": args.flip}
    if args.json:
        print(json.dumps(result))
    else:
        att = "-" if result["att_accuracy"] is None else f"{result['att_accuracy']:.4f}"
        extra = "".join(f"  {key.replace('_', ' ')} {result[key]:.4f}"
                        for key in ("mean_balanced_accuracy", "pointing_game") if result.get(key) is not None)
        flip = ", with flip test-time augmentation" if args.flip else ""
        print(f"{result['model']} on {args.data}/{split} ({result['n']} images{flip}): accuracy "
              f"{result['accuracy']:.4f}  attention-branch accuracy {att}  loss {result['loss']:.4f}{extra}")
    return 0


def _load_on_device(args: argparse.Namespace) -> tuple[Any, CheckpointMeta]:
    """The checkpoint's model on ``--device``: a missing device is refused before loading; the weights are read
    on the CPU (a checkpoint written on a GPU loads anywhere), then moved."""
    from .engine.checkpoint import load_checkpoint
    from .engine.device import resolve_device

    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint)
    return model.to(device), meta


def _checkpoint_data(args: argparse.Namespace, meta: CheckpointMeta) -> tuple[Any, str]:
    """The split of ``args.data`` to evaluate or explain a checkpoint on, read the way it was trained."""
    from .data.registry import data_spec, load_dataset
    from .errors import AbnetError

    spec = data_spec(args.data)
    options = meta.data_options(Path(args.data_root) if args.data_root else None, args.seed)
    split = args.split or spec.eval_split(options)
    data = load_dataset(args.data, split, args.limit, options)
    if data.num_classes != len(meta.classes):
        raise AbnetError(f"the checkpoint classifies {len(meta.classes)} classes but {args.data} has "
                         f"{data.num_classes}; use the data set it was trained for ({meta.data})")
    return data, split


def cmd_explain(args: argparse.Namespace) -> int:
    from .data.images import dataset_inputs, image_files, read_images
    from .errors import AbnetError
    from .explain.edits import data_edit_places, file_edit_places, map_attributes, read_edited_maps, require_abn
    from .explain.methods import METHODS, check_method
    from .explain.run import edit_info, run_explain

    if bool(args.inputs) == bool(args.data):
        raise AbnetError("give image files/folders or --data NAME (one of the two) to explain")
    methods = [m.strip().lower() for m in args.method.split(",") if m.strip()] if args.method else None
    for method in methods or ():
        if method not in METHODS:
            raise AbnetError(f"unknown method {method!r} in --method; choose from {', '.join(METHODS)}")
    model, meta = _load_on_device(args)
    methods = methods or (["abn"] if hasattr(model, "attention_branch") else ["gradcam"])
    for method in methods:
        check_method(model, method)
    boxes = Path(args.boxes) if args.boxes else None
    if boxes is not None and not boxes.is_dir():
        raise AbnetError(f"--boxes {boxes} is not a folder; give the folder of <image name>.xml box files")
    if args.attention:
        require_abn(model, "--attention (edited maps fed to the perception branch)")
    if args.data:
        data, split = _checkpoint_data(args, meta)
        inputs, source = dataset_inputs(data, split, boxes), f"{args.data}/{split}"
    else:
        files = image_files(args.inputs)
        inputs, source = read_images(files, meta.image_size[0], boxes_dir=boxes), "files"
    edits = None
    if args.attention:
        root, tasks = Path(args.attention), map_attributes(model, meta.classes)
        places = data_edit_places(root, data, split, tasks) if args.data else file_edit_places(root, files, tasks)
        edits = read_edited_maps(root, places, inputs)
    info = {"checkpoint": str(args.checkpoint), "model": meta.model_name, "data": source}
    summary = run_explain(model, meta, inputs, args.out, methods, metrics=args.metrics, show=args.show,
                          top_k=args.top_k, steps=args.steps, batch_size=args.batch_size, compile=args.compile,
                          info=info, edits=edits)
    print(f"explained {summary['images']} images with {', '.join(methods)}: "
          + ", ".join(f"{args.out}/{f}" for f in summary["files"]))
    for row in summary["metrics"]:
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items() if not isinstance(v, list)))
    if summary["edits"]:
        print(f"  edited maps: {edit_info(summary['edits'])}")
    for name, reason in summary["failures"]:
        print(f"abnet explain: skipped {name}: {reason}", file=sys.stderr)
    return EXIT_USAGE if summary["failures"] else 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .data.images import image_files
    from .errors import AbnetError
    from .explain.editor import dataset_items, file_items, serve
    from .explain.edits import map_attributes, require_abn

    if bool(args.inputs) == bool(args.data):
        raise AbnetError("give image files/folders or --data NAME (one of the two) to edit")
    model, meta = _load_on_device(args)
    require_abn(model, "editing attention maps")
    tasks = map_attributes(model, meta.classes)
    if args.data:
        items = dataset_items(*_checkpoint_data(args, meta), tasks)
    else:
        items = file_items(image_files(args.inputs), meta.image_size[0], tasks)
    for name, reason in items.inputs.failures:
        print(f"abnet edit: skipped {name}: {reason}", file=sys.stderr)
    server = serve(model, meta, items, args.out, port=args.port, top_k=args.top_k, open_browser=args.open)
    print(f"abnet edit: {len(items)} images, edited maps go to {args.out}/; open this page (Ctrl-C stops):\n"
          f"    {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("abnet edit: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return EXIT_USAGE if items.inputs.failures else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.convert import convert_checkpoint

    folder = convert_checkpoint(args.file, args.model, args.num_classes, args.out, data=args.data,
                                data_root=args.data_root, license=args.license, overwrite=args.force)
    print(f"wrote {folder}/ (config.json, model.safetensors, README.md); try: abnet eval {folder} --data "
          f"{args.data or 'NAME'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy import export_model
    from .engine.checkpoint import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    info = export_model(model, meta, args.out, args.format)  # creates the folder of --out once the export is checked
    print(f"wrote {args.out} ({args.format}): input images (N, 3, {info.image_size[0]}, {info.image_size[1]}); "
          f"outputs {', '.join(info.outputs)}" + (f" (attention: N, {info.num_maps}, h, w)" if info.is_abn else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .deploy import load_predictor, predict_files

    predictor = load_predictor(args.checkpoint, args.device)
    summary = predict_files(predictor, args.inputs, args.out, maps=args.maps, top_k=args.top_k,
                            batch_size=args.batch_size, progress=sys.stderr.isatty())
    for name, reason in summary.failures:
        print(f"abnet predict: skipped {name}: {reason}", file=sys.stderr)
    print(f"predicted {summary.images} images into {args.out}" + (f", {summary.maps} maps in {args.maps}/"
                                                                   if args.maps else ""))
    return EXIT_USAGE if summary.failures else 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else EXIT_USAGE


def cmd_pretrained(args: argparse.Namespace) -> int:
    from .models.locate import pretrained_index

    index = pretrained_index()
    if args.json:
        print(json.dumps([{"name": name, **entry.to_dict()} for name, entry in index.items()]))
        return 0
    if not index:
        print(f"no pretrained weights are shipped with abnet {__version__} yet")
        return 0
    columns = ("name", "data", "classes", "held-out accuracy (perception / attention)", "dtype", "size")
    rows = [(name, e.data, str(e.classes), f"{e.held_out_accuracy:.4f} / "
             + ("-" if e.att_accuracy is None else f"{e.att_accuracy:.4f}"), e.dtype, _size(e.bytes))
            for name, e in index.items()]
    widths = [max(len(row[i]) for row in (columns, *rows)) for i in range(len(columns))]
    for row in (columns, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    first = next(iter(index))
    print(f"use: abnet eval {first} --data {index[first].data} --data-root DIR, or abnet.from_pretrained({first!r})")
    return 0


def _size(count: int) -> str:
    """A byte count for people: 1.9 MB, 740 kB."""
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `abnet` and `python -m abnet`."""
    from .engine.stopping import TrainingStopped  # plain Python: parsing stays free of torch
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
