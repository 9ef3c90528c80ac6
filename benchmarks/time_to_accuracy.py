"""Time to accuracy: one `abnet train --config CONFIG` run as a whole process, timed from launch to exit, and the
held-out accuracy it ends with (with flip test-time augmentation where the config asks for it). The fast CIFAR-10
recipe's goal: >= 90 % within 30 minutes on the project's 2-core CPU machine.

    python ../shared/data/cifar10_build.py /work/data/cifar          # 45,000 train / 5,000 held out
    python benchmarks/time_to_accuracy.py configs/fast_cifar10_resnet20_abn.json --root /work/data/cifar \\
        --out /work/runs/fast30/resnet20_abn [--model resnet20] [--log results/time_to_accuracy.jsonl]

Prints one JSON line (and appends it to --log). The run's train.log, metrics.jsonl and config.json stay in --out.
Time it on a quiet machine: another process on the same cores slows it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from runs import append_jsonl, run_result, timed
from ship_pretrained import machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="training settings (JSON), e.g. configs/fast_cifar10_resnet20_abn.json")
    p.add_argument("--root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", required=True, type=Path, help="run folder (replaced)")
    p.add_argument("--model", help="train this model instead of the config's (e.g. plain resnet20)")
    p.add_argument("--goal-accuracy", type=float, default=0.90)
    p.add_argument("--goal-seconds", type=float, default=1800.0)
    p.add_argument("--log", type=Path, help="JSONL file the result is appended to")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "abnet", "train", "--config", str(args.config), "--data-root", args.root,
           "--out", str(args.out), "--force", *(["--model", args.model] if args.model else [])]
    seconds = timed(cmd)
    result = run_result(args.out)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    met = result["held_out_accuracy"] >= args.goal_accuracy and seconds <= args.goal_seconds
    append_jsonl(args.log, {"config": str(args.config), **result,
                            "seconds": round(seconds, 1), "goal_met": met,
                            "goal": f">= {args.goal_accuracy} in <= {args.goal_seconds:.0f} s",
                            "cpu_threads": os.cpu_count(), "machine": machine(), "commit": commit,
                            "command": " ".join(cmd[1:])})

if __name__ == "__main__":
    main()
