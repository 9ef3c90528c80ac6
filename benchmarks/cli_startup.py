"""How long the command line takes to start, against `python -c "import torch"` (goal: `abnet --help`
at most 0.5 s beyond it; it imports no torch at all).

Each command runs --repeats times, the commands taking turns so that a machine's drift hits all of
them alike; the figures are medians of wall time, and each command's difference from importing torch.

    python benchmarks/cli_startup.py [--repeats 5]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

COMMANDS = {
    "import_torch": ["-c", "import torch"],
    "help": ["-m", "abnet", "--help"],
    "train_help": ["-m", "abnet", "train", "--help"],
    "models": ["-m", "abnet", "models"],
}
GOAL_HELP_BEYOND_TORCH_S = 0.5


def seconds(args: list[str]) -> float:
    """Wall time of one ``python ARGS`` run, which must succeed."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    median = {name: round(statistics.median(t), 3) for name, t in times.items()}
    print(json.dumps({
        "benchmark": "cli_startup", "repeats": args.repeats, "median_s": median,
        "beyond_import_torch_s": {name: round(s - median["import_torch"], 3) for name, s in median.items()
                                  if name != "import_torch"},
        "goal_help_beyond_torch_s": GOAL_HELP_BEYOND_TORCH_S,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
