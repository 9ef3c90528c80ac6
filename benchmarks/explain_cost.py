"""What a prediction *and* its map cost per image: ABN's one forward pass against Grad-CAM, on the same
batch in the same run.

    python benchmarks/explain_cost.py [--model resnet20] [--size 32] [--batch 128] [--rounds 5]

Contenders (each gives class predictions and one map per image at the input's resolution):
  abn_eager       the ABN model as trained: eager, channels-first, autograd off (no_grad)
  abn_fast        abnet's inference copy: batch norm folded into the convs, channels_last, inference mode
  abn_compiled    the same, torch.compile'd with inductor's freezing (compiled once before timing)
  cam_same_model  CAM on the ABN's perception branch: one forward, no backward (abnet's own CAM)
  gradcam_same_model  pytorch-grad-cam's GradCAM on the same ABN, its perception branch's last stage
  gradcam_plain   pytorch-grad-cam's GradCAM on the plain network of the same depth (no attention branch):
                  what a user without ABN would run
Grad-CAM is run the way its package documents (eager model, targets=None: the predicted class; the
predictions are read from ``cam.outputs``). Rounds alternate between contenders so drift in the
machine's speed hits all alike; the median round is reported. Prints one JSON object; ``ratios`` are
images/s of an ABN contender over a Grad-CAM one (> 1: ABN is cheaper).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import abnet
from abnet.engine.precision import cpu_name
from abnet.metrics import upsample_maps
from abnet.models.inference import inference_model


def abn_prediction_and_map(model: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out.logits.argmax(1), upsample_maps(out.attention, tuple(x.shape[2:]))


def grad_cam_runner(model: torch.nn.Module, layer: torch.nn.Module, abn: bool) -> Callable:
    from pytorch_grad_cam import GradCAM

    class Logits(torch.nn.Module):  # pytorch-grad-cam wants a module returning logits
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out.logits if abn else out

    cam = GradCAM(model=Logits(), target_layers=[layer])

    def run(x: torch.Tensor):
        maps = cam(input_tensor=x, targets=None)
        return cam.outputs.argmax(1), maps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", help="plain model name; its _abn variant is the ABN")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="batches per contender per round")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled contender")
    args = parser.parse_args()

    from abnet.explain.methods import explain, target_layer

    torch.manual_seed(0)
    abn = abnet.create_model(f"{args.model}_abn", num_classes=args.classes).eval()
    plain = abnet.create_model(args.model, num_classes=args.classes).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    fast = inference_model(abn)
    contenders: dict[str, Callable] = {"abn_eager": lambda: abn_prediction_and_map(abn, x)}
    contenders["abn_fast"] = lambda: abn_prediction_and_map(fast, x)
    compile_seconds = None
    if not args.no_compile:
        compiled = inference_model(abn, compile=True)
        started = time.perf_counter()
        abn_prediction_and_map(compiled, x)
        compile_seconds = time.perf_counter() - started
        if compiled.compiled is not None:
            contenders["abn_compiled"] = lambda: abn_prediction_and_map(compiled, x)
    contenders["cam_same_model"] = lambda: explain(abn, x, "cam", batch_size=args.batch)
    gradcam_same = grad_cam_runner(abn, target_layer(abn), abn=True)
    gradcam_plain = grad_cam_runner(plain, target_layer(plain), abn=False)
    contenders["gradcam_same_model"] = lambda: gradcam_same(x)
    contenders["gradcam_plain"] = lambda: gradcam_plain(x)

    def timed(run: Callable) -> float:
        with torch.no_grad() if run is contenders["abn_eager"] else torch.enable_grad():
            started = time.perf_counter()
            for _ in range(args.repeats):
                run()
            return args.batch * args.repeats / (time.perf_counter() - started)

    for run in contenders.values():  # warm-up: allocators, first-call costs
        timed(run)
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rounds[name].append(timed(run))
    speed = {name: statistics.median(values) for name, values in rounds.items()}

    # Same predictions? The ABN contenders must agree with each other (same model, folded or not).
    with torch.no_grad():
        reference = abn_prediction_and_map(abn, x)
    folded = abn_prediction_and_map(fast, x)
    agreement = {"abn_fast_same_predictions": bool(torch.equal(reference[0], folded[0])),
                 "abn_fast_max_map_difference": float((reference[1] - folded[1]).abs().max())}
    ratios = {f"{a}/{b}": speed[a] / speed[b]
              for a in ("abn_eager", "abn_fast", "abn_compiled") if a in speed
              for b in ("gradcam_same_model", "gradcam_plain")}
    print(json.dumps({
        "benchmark": "explain_cost", "model": args.model, "input": [args.batch, 3, args.size, args.size],
        "images_per_s": speed, "rounds": rounds, "ratios": ratios, "goals": {"same_model": 3.0, "plain": 2.0},
        "compile_seconds": compile_seconds, **agreement, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": cpu_name(),
    }, indent=1))


if __name__ == "__main__":
    main()
