"""Training-step time and peak memory of abnet's multi-task ABN (T perception computations batched into one
call) against a naive one written here (a Python loop over T perception modules, each reading g*(1+M_t)),
for T tasks, shared and unshared perception branches, on CPU.

    python benchmarks/multitask_memory.py [--model resnet18] [--tasks 1 10 40] [--batch 32] [--size 64] [--quick]

Each configuration runs in a fresh subprocess and prints one JSON line. A step is forward, abn_loss on
random 0/1 targets, backward and an SGD step (momentum 0.9). Memory is the process's resident set:
``build_rss_mb`` after building model, optimizer and batch; then the peak is reset (Linux
/proc/self/clear_refs) and ``train_peak_mb`` is the peak during the steps minus ``build_rss_mb``:
activations, gradients, momentum buffers and allocator caches. Configurations whose weights, gradients
and momentum alone would exceed --max-gb are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
from torch import Tensor, nn

import abnet
from abnet.engine.precision import cpu_name
from abnet.models import ABNOutput, AttentionBranch, BackboneSplit
from abnet.models.cifar_resnet import DEPTHS, cifar_resnet_split
from abnet.models.imagenet_resnet import ARCHS, resnet_split

IMPLS = ("batched", "naive")


class NaiveMultiTaskABN(nn.Module):
    """abnet's MultiTaskABN with the perception computations as a loop: branch t reads g*(1+M_t) on its own."""

    def __init__(self, split_fn, num_tasks: int, shared: bool):
        super().__init__()
        split: BackboneSplit = split_fn(num_classes=num_tasks if shared else 1, attention=True)
        self.shared = shared
        self.features = split.features
        self.attention_branch = AttentionBranch(
            split.attention_stage, split.attention_channels, num_tasks, num_maps=num_tasks
        )
        rest = [] if shared else [split_fn(num_classes=1, attention=False).perception for _ in range(num_tasks - 1)]
        self.perceptions = nn.ModuleList([split.perception, *rest])

    def forward(self, x: Tensor) -> ABNOutput:
        g = self.features(x)
        att_logits, maps = self.attention_branch(g)
        logits = []
        for t in range(maps.shape[1]):
            branch = self.perceptions[0 if self.shared else t]
            logits.append(branch(g * (1 + maps[:, t : t + 1]))[:, t if self.shared else 0])
        return ABNOutput(torch.stack(logits, 1), att_logits, maps)


def split_function(model: str):
    """The split function of an ImageNet ResNet (resnet18 ... resnet152) or a CIFAR ResNet (resnet20 ...)."""
    if model in ARCHS:
        return partial(resnet_split, *ARCHS[model])
    depth = model.removeprefix("resnet")
    if depth.isdigit() and int(depth) in DEPTHS:
        return partial(cifar_resnet_split, int(depth))
    raise SystemExit(f"--model must be one of {', '.join([*ARCHS, *(f'resnet{d}' for d in DEPTHS)])}, got {model}")


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) / 1024


def worker(cfg: dict) -> dict:
    """Build one configuration, time its training steps and measure its memory; returns the JSON record."""
    torch.manual_seed(0)
    t, shared = cfg["tasks"], cfg["shared"]
    if cfg["impl"] == "batched":
        model = abnet.create_model(f"{cfg['model']}_abn_mt", num_classes=t, shared=shared)
    else:
        model = NaiveMultiTaskABN(split_function(cfg["model"]), t, shared)
    n_params = sum(p.numel() for p in model.parameters())
    record = {"benchmark": "multitask_memory", "model": f"{cfg['model']}_abn_mt", "impl": cfg["impl"],
              "shared": shared, "tasks": t, "batch": cfg["batch"], "image_size": cfg["size"], "parameters": n_params}
    state_gb = 3 * 4 * n_params / 1e9  # fp32 weights, gradients and momentum
    if state_gb > cfg["max_gb"]:
        return {**record, "skipped": f"weights+gradients+momentum need {state_gb:.1f} GB > --max-gb {cfg['max_gb']}"}
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"])
    y = (torch.rand(cfg["batch"], t) < 0.5).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        loss = abnet.abn_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    build_rss = memory_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM, the peak resident set, to the current one
    for _ in range(cfg["warmup"]):
        step()
    times = []
    for _ in range(cfg["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {**record, "step_s": round(statistics.median(times), 4), "steps": cfg["steps"],
            "build_rss_mb": round(build_rss, 1), "train_peak_mb": round(memory_mb("VmHWM") - build_rss, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
            "cpu": cpu_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="resnet18 ... resnet152, or a CIFAR resnet20 ...")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-gb", type=float, default=3.0,
                        help="skip configurations whose weights, gradients and momentum exceed this")
    parser.add_argument("--quick", action="store_true", help="a check that the script works: T = 1, 3, batch 4")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, as JSON, in this process
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    split_function(args.model)  # a bad --model fails here, not in every subprocess
    if args.quick:
        args.tasks, args.batch, args.steps, args.warmup = [1, 3], 4, 1, 1
    for t in args.tasks:
        for shared in (False, True):
            for impl in IMPLS:
                cfg = {"model": args.model, "tasks": t, "shared": shared, "impl": impl, "batch": args.batch,
                       "size": args.size, "steps": args.steps, "warmup": args.warmup, "max_gb": args.max_gb}
                done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                                      text=True)
                if done.returncode == 0:
                    print(done.stdout.strip(), flush=True)
                else:
                    error = {"returncode": done.returncode, "error": done.stderr.strip().splitlines()[-1:]}
                    print(json.dumps({**cfg, **error}), flush=True)


if __name__ == "__main__":
    main()
