"""The model zoo table: every registered model with its parameters (K=100 for 32x32 models, K=1000 for
224x224 ones), its attention-map size at its default input, and its forward and training-step time
per image on this machine (eager, fp32, channels-last, batch 8 at 32x32 and 2 at 224x224; the median
of 3 timed calls after one warm-up).

    python benchmarks/model_table.py > results/models.md
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

import abnet
from abnet.engine.evaluate import model_loss
from abnet.models import model_info


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name: str) -> str:
    c, h, w = model_info(name).input_size
    classes, batch = (100, 8) if h <= 64 else (1000, 2)
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=classes).to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    params = sum(p.numel() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
        forward = timed(lambda: model(x))
    size = "–" if isinstance(out, torch.Tensor) else "×".join(map(str, out.attention.shape[2:]))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        loss = model_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step = timed(step)
    return (f"| `{name}` | {h}×{w} | {params:,} | {size} | {1000 * forward / batch:.1f} | "
            f"{1000 * train_step / batch:.1f} |")


def main() -> None:
    print(f"Measured on {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.\n")
    print("| model | input | parameters | attention map | forward ms/img | train step ms/img |")
    print("|---|---|---|---|---|---|")
    for name in sorted(abnet.list_models(), key=lambda n: (model_info(n).input_size[1], n)):
        print(row(name), flush=True)


if __name__ == "__main__":
    main()
