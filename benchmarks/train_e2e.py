"""End-to-end training images/s of `abnet train` (resnet20_abn, resnet110_abn) on CIFAR-format data, with
and without --amp / --compile, against a plain eager loop written here (per-sample PIL transforms in
a 2-worker DataLoader, fp32, channels-first: the research code's way) in the same run; and the share
of this machine's dense matrix-multiply rate that each reaches (training FLOPs per image x images/s
/ measured 2048x2048 fp32 GEMM FLOP/s).

    python ../shared/data/cifar10_build.py /tmp/cifar
    python benchmarks/train_e2e.py --root /tmp/cifar [--images 1280] [--models resnet20_abn resnet110_abn]

Prints one JSON object per line, then a summary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from data_pipeline import per_sample_loader
from torch.utils.flop_counter import FlopCounterMode

import abnet
from abnet.data.registry import DataOptions, load_dataset
from abnet.engine.config import TrainConfig
from abnet.engine.evaluate import model_loss
from abnet.engine.train import train


def gemm_flops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (the yardstick of the GEMM shares here and in step_profile.py)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def train_flops_per_image(name: str, batch: int = 8) -> float:
    model = abnet.create_model(name, num_classes=10)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        model_loss(model(x), y).backward()
    return counter.get_total_flops() / batch


def plain_loop(name: str, data, n: int) -> float:
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    seen, start = 0, time.perf_counter()
    for x, y in per_sample_loader(data, n):
        loss = model_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def abnet_epoch(name: str, root: str, n: int, **options) -> float:
    """images/s of the second epoch (the first pays for torch.compile's compilation)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=name, data="cifar10", data_root=root, out=out, epochs=2, limit_train=n,
                          limit_val=128, nesterov=False, label_smoothing=0.0, **options)  # the reference's SGD
        train(cfg, progress=False)
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--models", nargs="+", default=["resnet20_abn", "resnet110_abn"])
    args = parser.parse_args()
    data = load_dataset("cifar10", "train", options=DataOptions(root=Path(args.root)))
    gemm = gemm_flops()
    rows = []
    for name in args.models:
        flops = train_flops_per_image(name)
        rates = {"plain_eager_loop": plain_loop(name, data, args.images)}
        variants = (("abnet", {}), ("abnet_amp", {"precision": "auto"}), ("abnet_compile", {"compile": True}))
        for label, options in variants:
            rates[label] = abnet_epoch(name, args.root, args.images, **options)
        row = {"model": name, "train_gflops_per_image": round(flops / 1e9, 3),
               **{f"{k}_images_per_s": round(v, 1) for k, v in rates.items()},
               **{f"{k}_gemm_share": round(flops * v / gemm, 3) for k, v in rates.items()},
               "abnet_vs_plain": round(rates["abnet"] / rates["plain_eager_loop"], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"gemm_gflops": round(gemm / 1e9, 1), "images": args.images,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
