"""Two checkpoints on the same held-out images: how often exactly one of them is right, and the exact McNemar
test of whether those disagreements lean one way more than chance (two-sided binomial p-value). One seed each
says nothing about seed-to-seed spread; this says only whether the difference on these images is noise.

    python benchmarks/paired_compare.py resnet20:cifar10 resnet20_abn:cifar10 --data cifar10 \\
        --data-root /work/data/cifar [--flip]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from abnet.data.registry import check_flip_tta, data_spec, load_dataset, make_loader
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.evaluate import flip_averaged
from abnet.errors import AbnetError
from abnet.models import perception_logits


def correct(checkpoint: str, data: str, root: str | None, flip: bool) -> torch.Tensor:
    """Whether the checkpoint's perception branch gets each image of the data set's held-out split right."""
    model, meta = load_checkpoint(checkpoint)
    options = meta.data_options(Path(root) if root else None)
    held_out = load_dataset(data, data_spec(data).eval_split(options), None, options)
    loader = make_loader(held_out, replace(data_spec(data), mean=meta.mean, std=meta.std), 250)
    hits = []
    with torch.no_grad():
        model.eval()
        for batch in loader.epoch():
            logits = perception_logits(flip_averaged(model, batch.images, flip))
            hits.append(logits.argmax(1) == batch.labels)
    return torch.cat(hits)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the binomial(only_a + only_b, 1/2) tail at least as far out as observed."""
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="checkpoint or pretrained name")
    p.add_argument("b", help="checkpoint or pretrained name")
    p.add_argument("--data", required=True)
    p.add_argument("--data-root")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation (as abnet eval --flip)")
    args = p.parse_args()
    try:
        if args.flip:
            check_flip_tta(args.data, "--flip")
        a, b = (correct(name, args.data, args.data_root, args.flip) for name in (args.a, args.b))
    except AbnetError as e:
        p.exit(2, f"paired_compare: error: {e}\n")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    print(json.dumps({"a": args.a, "b": args.b, "data": args.data, "flip": args.flip, "images": len(a),
                      "accuracy_a": a.float().mean().item(), "accuracy_b": b.float().mean().item(),
                      "only_a_right": only_a, "only_b_right": only_b, "both_right": int((a & b).sum()),
                      "mcnemar_p": mcnemar_p(only_a, only_b)}))


if __name__ == "__main__":
    main()
