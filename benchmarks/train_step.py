"""Training-step images/s of abnet's resnet20_abn against a plain eager ABN-ResNet20 written here
(the research code's layout: channels-first fp32, same architecture and parameter count), on the
same random batch in the same run. Rounds alternate between the two so that drift in the
machine's speed hits both alike; the median round is reported.

    python benchmarks/train_step.py [--batch 128] [--steps 10] [--rounds 3]

Prints one JSON object; `ratio` is abnet / reference (> 1: abnet is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import abnet
from abnet.engine.evaluate import model_loss
from abnet.engine.precision import cpu_has_native_bf16, cpu_name


class RefBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


def ref_stage(cin: int, cout: int, stride: int, n: int = 3) -> nn.Sequential:
    return nn.Sequential(RefBlock(cin, cout, stride), *[RefBlock(cout, cout, 1) for _ in range(n - 1)])


class ReferenceABNResNet20(nn.Module):
    """The research code's ABN-ResNet20, written plainly; returns (att_logits, logits, map)."""

    def __init__(self, k: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.s1, self.s2 = ref_stage(16, 16, 1), ref_stage(16, 32, 2)
        self.att_stage = ref_stage(32, 64, 1)
        self.att_bn, self.att_conv = nn.BatchNorm2d(64), nn.Conv2d(64, k, 1, bias=False)
        self.att_bn2 = nn.BatchNorm2d(k)
        self.att_map, self.att_bn3 = nn.Conv2d(k, 1, 3, padding=1, bias=False), nn.BatchNorm2d(1)
        self.att_head = nn.Conv2d(k, k, 1, bias=False)
        self.s3, self.fc = ref_stage(32, 64, 2), nn.Linear(64, k)

    def forward(self, x):
        g = self.s2(self.s1(self.stem(x)))
        a = F.relu(self.att_bn2(self.att_conv(self.att_bn(self.att_stage(g)))))
        m = torch.sigmoid(self.att_bn3(self.att_map(a)))
        return self.att_head(a).mean((2, 3)), self.fc(self.s3(g * (1 + m)).mean((2, 3))), m


def steps_per_second(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, args.classes, (args.batch,))

    reference = ReferenceABNResNet20(args.classes)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def ref_step():
        att, logits, _ = reference(x)
        loss = F.cross_entropy(att, y) + F.cross_entropy(logits, y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()

    # abnet's model as `abnet train` runs it (channels_last is the engine's default).
    model = abnet.create_model("resnet20_abn", num_classes=args.classes).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def abnet_step():
        loss = model_loss(model(x_cl), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_ref, n_abnet = (sum(p.numel() for p in m.parameters()) for m in (reference, model))
    assert n_ref == n_abnet, (n_ref, n_abnet)
    for step in (ref_step, abnet_step):  # warm-up
        steps_per_second(step, 2)
    ref_rates, abnet_rates = [], []
    for _ in range(args.rounds):
        ref_rates.append(steps_per_second(ref_step, args.steps) * args.batch)
        abnet_rates.append(steps_per_second(abnet_step, args.steps) * args.batch)
    ref, ours = statistics.median(ref_rates), statistics.median(abnet_rates)
    print(json.dumps({
        "benchmark": "train_step", "model": "resnet20_abn", "batch": args.batch, "image_size": 32,
        "parameters": n_abnet, "abnet_images_per_s": round(ours, 1), "reference_images_per_s": round(ref, 1),
        "ratio": round(ours / ref, 3), "abnet_rounds": [round(r, 1) for r in abnet_rates],
        "reference_rounds": [round(r, 1) for r in ref_rates], "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_name(),
        "native_bf16": cpu_has_native_bf16(),
    }))


if __name__ == "__main__":
    main()
