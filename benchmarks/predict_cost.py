"""What a prediction and its map cost per image when deployed: onnxruntime on the exported file, abnet's
inference copy, the eager model and Grad-CAM on the same model, at batch 1 and 64, in the same run.

    python benchmarks/predict_cost.py [--models resnet20_abn:32,resnet50_abn:224] [--batches 1,64]
                                      [--rounds 5] [--min-seconds 0.5]

Contenders (each gives the predicted class and one map per image at the input's resolution):
  onnxruntime     the file `abnet export` writes, on onnxruntime's CPU provider with as many threads as torch
  inference_copy  abnet.models.inference.inference_model: batch norm folded, channels_last, inference mode
  eager           the model as trained, eager, channels-first, autograd off (no_grad)
  gradcam         pytorch-grad-cam's GradCAM on the same ABN (its perception branch's last stage), run as its
                  package documents (see explain_cost.py)
Each timing repeats a contender's call until --min-seconds have passed; rounds alternate between contenders so
drift in the machine's speed hits all alike, and the median round is reported. Prints one JSON object with
images/s per (model, batch) and the ratios the issue sets goals for: onnxruntime / inference_copy (goal >= 1)
and inference_copy / gradcam at batch 64 (goal >= 6).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from explain_cost import abn_prediction_and_map, grad_cam_runner  # same directory: same Grad-CAM, same map

import abnet
from abnet.deploy import export_model
from abnet.engine.precision import cpu_name
from abnet.explain.methods import target_layer
from abnet.models import ABNOutput
from abnet.models.inference import inference_model

GOALS = {"onnxruntime/inference_copy": 1.0, "inference_copy/gradcam@64": 6.0}


def onnx_runner(model: torch.nn.Module, size: int, folder: Path) -> Callable[[torch.Tensor], ABNOutput]:
    """The model exported by abnet, on onnxruntime, returning an ABNOutput of torch tensors."""
    import onnxruntime

    path = folder / "model.onnx"
    meta = {"model_config": {"model": "benchmark"}, "classes": [str(i) for i in range(model.num_classes)],
            "mean": [0.0] * 3, "std": [1.0] * 3, "image_size": [size, size]}
    export_model(model, meta, path, "onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> ABNOutput:
        return ABNOutput(*(torch.from_numpy(a) for a in session.run(None, {"images": x.numpy()})))

    return run


def images_per_s(run: Callable[[], object], batch: int, min_seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return batch * calls / elapsed


def timed(label: str, run: Callable[[], object], batch: int, min_seconds: float) -> float:
    """Images/s of one contender; gradients only for Grad-CAM, which needs them."""
    with torch.enable_grad() if label == "gradcam" else torch.no_grad():
        return images_per_s(run, batch, min_seconds)


def measure(name: str, size: int, batches: list[int], rounds: int, min_seconds: float, folder: Path) -> list[dict]:
    torch.manual_seed(0)
    abn = abnet.create_model(name, num_classes=10).eval()
    fast = inference_model(abn)
    ort = onnx_runner(abn, size, folder)
    gradcam = grad_cam_runner(abn, target_layer(abn), abn=True)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size)
        contenders: dict[str, Callable[[], object]] = {
            "onnxruntime": partial(abn_prediction_and_map, ort, x),
            "inference_copy": partial(abn_prediction_and_map, fast, x),
            "eager": partial(abn_prediction_and_map, abn, x),
            "gradcam": partial(gradcam, x),
        }
        for label, run in contenders.items():  # warm-up: allocators, first-call costs
            timed(label, run, batch, min_seconds)
        per_round: dict[str, list[float]] = {label: [] for label in contenders}
        for _ in range(rounds):
            for label, run in contenders.items():
                per_round[label].append(timed(label, run, batch, min_seconds))
        speed = {label: statistics.median(v) for label, v in per_round.items()}
        with torch.no_grad():
            (want, want_map), (got, got_map) = abn_prediction_and_map(abn, x), abn_prediction_and_map(ort, x)
        rows.append({
            "model": name, "input": [batch, 3, size, size], "images_per_s": speed, "rounds": per_round,
            "ratios": {"onnxruntime/inference_copy": speed["onnxruntime"] / speed["inference_copy"],
                       "inference_copy/gradcam": speed["inference_copy"] / speed["gradcam"],
                       "onnxruntime/gradcam": speed["onnxruntime"] / speed["gradcam"]},
            "onnxruntime_same_predictions": bool(torch.equal(want, got)),
            "onnxruntime_max_map_difference": float((want_map - got_map).abs().max()),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20_abn:32,resnet50_abn:224", help="NAME:SIZE,...")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="length of one timing")
    args = parser.parse_args()

    import onnxruntime

    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.models.split(","):
            name, size = spec.split(":")
            rows += measure(name, int(size), batches, args.rounds, args.min_seconds, Path(folder))
    at_64 = [r["ratios"]["inference_copy/gradcam"] for r in rows if r["input"][0] == 64]
    print(json.dumps({
        "benchmark": "predict_cost", "results": rows, "goals": GOALS,
        "goals_met": {"onnxruntime/inference_copy": all(r["ratios"]["onnxruntime/inference_copy"] >= 1.0
                                                        for r in rows),
                      "inference_copy/gradcam@64": bool(at_64) and min(at_64) >= 6.0},
        "rounds_per_contender": args.rounds, "min_seconds": args.min_seconds, "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
    }, indent=1))


if __name__ == "__main__":
    main()
