"""How hard is `shapes`, and what does each ABN choice do there? Trains each variant with the demo
recipe (abnet.demo.DEMO_CONFIG) and evaluates it on the held-out test split.

Variants: a tiny plain CNN and its ABN (registered here through the public `abnet.register_pair`),
plain resnet20, resnet20_abn as shipped, resnet20_abn with the research code's random-sign init of
the map conv, and resnet20_abn with the g*M mask.

    python benchmarks/shapes_study.py --seeds 0 1 > results/shapes_study.jsonl

Prints one JSON object per (variant, seed), then a summary line with the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from torch import nn

import abnet
from abnet.data.registry import SHAPES, load_dataset, make_loader
from abnet.data.shapes import CLASSES as SHAPES_CLASSES
from abnet.demo import DEMO_CONFIG, TEST_IMAGES
from abnet.engine.checkpoint import load_checkpoint
from abnet.engine.evaluate import evaluate
from abnet.engine.train import build_model, train
from abnet.models.common import ClassifierHead


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def tinycnn_split(num_classes: int, attention: bool) -> abnet.BackboneSplit:
    """Four 3x3 conv layers (16-32-64 channels, ~60k parameters); the last one is the repeated stage."""
    features = nn.Sequential(conv_bn(3, 16, 1), conv_bn(16, 32, 2), conv_bn(32, 32, 1))
    head = ClassifierHead(conv_bn(32, 64, 2), 64, num_classes)
    return abnet.BackboneSplit(features, head, conv_bn(32, 64, 1) if attention else None, 64)


abnet.register_pair("tinycnn", tinycnn_split)


def random_sign_map_init(model: nn.Module) -> nn.Module:
    """The research code's init of the map conv: He-normal weights with random signs."""
    nn.init.kaiming_normal_(model.attention_branch.map_conv.weight, mode="fan_out", nonlinearity="relu")
    return model


VARIANTS = {
    "tinycnn": dict(model="tinycnn"),
    "tinycnn_abn": dict(model="tinycnn_abn"),
    "resnet20": dict(model="resnet20"),
    "resnet20_abn": dict(model="resnet20_abn"),
    "resnet20_abn_random_map_init": dict(model="resnet20_abn", init=random_sign_map_init),
    "resnet20_abn_multiply": dict(model="resnet20_abn", mask="multiply"),
}


def run(variant: str, seed: int) -> dict:
    spec = dict(VARIANTS[variant])
    init = spec.pop("init", None)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        cfg = replace(DEMO_CONFIG, out=out, seed=seed, **spec)
        torch.manual_seed(seed)
        model = init(build_model(cfg, len(SHAPES_CLASSES))) if init else None
        train(cfg, progress=False, model=model)
        model, _ = load_checkpoint(out)
        seconds = time.perf_counter() - started
    test = load_dataset("shapes", "test", limit=TEST_IMAGES, options=cfg.data_options())
    scores = evaluate(model, make_loader(test, SHAPES, 500))
    return {"variant": variant, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            **{k: scores.get(k) for k in ("accuracy", "att_accuracy", "pointing_game", "n")},
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            rows.append(run(variant, seed))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        summary[variant] = {k: round(statistics.mean(r[k] for r in mine), 4)
                            for k in ("accuracy", "att_accuracy", "pointing_game") if mine[0][k] is not None}
    print(json.dumps({"summary": summary, "seeds": args.seeds, "recipe": "abnet.demo.DEMO_CONFIG",
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
