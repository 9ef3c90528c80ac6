"""Whole-process training speed: `abnet train` (launch to exit, data loading, evaluation and run files
included) against ../shared/reference/reference_abn.py run as a process, on the same CIFAR-10 images, in
the same run, as a ratio of images per second of wall time.

    python ../shared/data/cifar10_build.py /work/data/cifar
    python benchmarks/train_process.py --root /work/data/cifar [--images 10240] [--repeats 2]

Prints one JSON line per process and a summary line with the ratios (median of --repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from runs import timed

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "reference_abn.py"
# abnet variants timed: name -> extra `abnet train` flags on top of its defaults.
VARIANTS = {"abnet": [], "abnet_fp32": ["--precision", "fp32"], "abnet_auto": ["--precision", "auto"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--images", type=int, default=10240)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in ["reference", *args.variants]}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so drift in the machine's speed hits all alike
            ref = [sys.executable, str(REFERENCE), "--root", args.root, "--n", str(args.images), "--batch", "128"]
            runs = {"reference": ref}
            for name in args.variants:
                runs[name] = [sys.executable, "-m", "abnet", "train", "--model", "resnet20_abn", "--data", "cifar10",
                              "--data-root", args.root, "--limit-train", str(args.images), "--epochs", "1",
                              "--out", str(Path(tmp) / f"{name}{repeat}"), *VARIANTS[name]]
            for name, cmd in runs.items():
                s = timed(cmd)
                seconds[name].append(s)
                print(json.dumps({"process": name, "repeat": repeat, "seconds": round(s, 2),
                                  "images_per_s": round(args.images / s, 1), "command": " ".join(cmd[1:])}),
                      flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(json.dumps({"summary": True, "images": args.images, "cpu_threads": os.cpu_count(),
                      "median_seconds": {k: round(v, 2) for k, v in median.items()},
                      "speedup_vs_reference": {k: round(median["reference"] / v, 2) for k, v in median.items()
                                               if k != "reference"}}))


if __name__ == "__main__":
    main()
