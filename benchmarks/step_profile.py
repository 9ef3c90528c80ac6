"""Training-step efficiency: each model's step (forward, both branches' loss, backward, SGD) as a share of
this machine's matrix-multiply rate in the same precision, measured in the same run, with the profile's
split of the step's time between convolutions, BatchNorm, elementwise ops and the optimizer.

    python benchmarks/step_profile.py [--models resnet20_abn resnet110_abn] [--precisions fp32 bf16]

The step's FLOPs are counted by torch.utils.flop_counter (convolutions and matrix products, forward and
backward); the rate is a 2048x2048 matmul's. Prints one JSON line per (model, precision) and one for the rates.
Also times the step under torch.compile (``--compile``). Host memory is kept between steps as in `abnet train`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from train_e2e import gemm_flops  # the same yardstick as train_e2e.py's shares

import abnet
from abnet.engine.evaluate import model_loss
from abnet.engine.host_memory import keep_freed_memory
from abnet.engine.precision import cpu_has_native_bf16, cpu_name

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# Profile op names -> the part of the step they belong to (self time; anything else is "other").
PARTS = {"convolution": ("convolution",), "batch norm": ("batch_norm",),
         "elementwise": ("add", "mul", "threshold", "clamp", "relu", "sigmoid", "copy_", "_to_copy", "div", "neg"),
         "optimizer": ("Optimizer", "_foreach")}


def timed_rate(fn: Callable[[], None], work: float, seconds: float = 3.0, rounds: int = 3) -> float:
    """``work`` units per second of ``fn``, the median of ``rounds`` timed rounds of about ``seconds`` each."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / rounds:
        fn()
        calls += 1
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(work * calls / (time.perf_counter() - start))
    return statistics.median(rates)


def make_step(name: str, precision: str, batch: int, compile_model: bool) -> tuple[Callable[[], None], float]:
    """A training step of ``name`` as ``abnet train`` runs it (channels_last, Nesterov SGD, label smoothing),
    and its FLOPs."""
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    dtype = DTYPES[precision]

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model_loss(forward(x), y, None, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (and compilation)
    with FlopCounterMode(display=False) as counter:
        step()
    return step, float(counter.get_total_flops())


def time_split(step: Callable[[], None], steps: int = 3) -> dict[str, float]:
    """Share of the step's CPU self time per part (see PARTS), from torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = dict.fromkeys([*PARTS, "other"], 0.0)
    for event in prof.key_averages():
        part = next((p for p, keys in PARTS.items() if any(k in event.key for k in keys)), "other")
        totals[part] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {part: round(t / whole, 3) for part, t in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20_abn", "resnet110_abn"])
    p.add_argument("--precisions", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=6.0, help="timing per measurement")
    p.add_argument("--compile", action="store_true", help="also time each step under torch.compile")
    args = p.parse_args()
    keep_freed_memory()  # as abnet train does
    rates = {prec: gemm_flops(dtype=DTYPES[prec] or torch.float32) for prec in args.precisions}
    print(json.dumps({"gemm_gflops": {k: round(v / 1e9, 1) for k, v in rates.items()}, "n": 2048,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "machine": platform.machine(), "cpu": cpu_name(), "native_bf16": cpu_has_native_bf16()}),
          flush=True)
    for name in args.models:
        for prec in args.precisions:
            step, flops = make_step(name, prec, args.batch, False)
            steps_per_s = timed_rate(step, 1.0, args.seconds)
            line = {"model": name, "precision": prec, "batch": args.batch, "gflop_per_step": round(flops / 1e9, 2),
                    "images_per_s": round(steps_per_s * args.batch, 1),
                    "share_of_gemm_rate": round(flops * steps_per_s / rates[prec], 3), "time_split": time_split(step)}
            if args.compile:
                compiled, _ = make_step(name, prec, args.batch, True)
                line["compiled_images_per_s"] = round(timed_rate(compiled, 1.0, args.seconds) * args.batch, 1)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
