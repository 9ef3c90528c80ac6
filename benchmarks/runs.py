"""What the benchmark and study scripts share about `abnet train` processes: timing one from launch to exit, the
result its run folder ends with, and appending a result line to a JSONL log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def timed(cmd: list[str], threads: int | None = None) -> float:
    """Seconds from launching ``cmd`` to its exit (it must succeed; its stderr's end is shown when it fails);
    ``threads`` sets its OMP_NUM_THREADS."""
    env = {**os.environ, "TQDM_DISABLE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


# train.log's start and resume lines end "..., on cpu (AMD EPYC, 1 thread, native bf16) in bf16".
_DEVICE_LINE = re.compile(r"(?: training | resuming ).*, on (.+) in \w+$")


def run_machines(out: Path) -> list[str]:
    """The devices a run trained on, in order, as its train.log's start and resume lines name them (a run resumed
    across sessions may have used several machines)."""
    log = out / "train.log"
    if not log.exists():
        return []
    found = [m.group(1) for line in log.read_text().splitlines() if (m := _DEVICE_LINE.search(line))]
    return list(dict.fromkeys(found))


def run_result(out: Path) -> dict[str, Any]:
    """A finished run's last epoch as a result line: model, epochs, held-out accuracy of both branches (with flip
    test-time augmentation where the run used it), the precision it trained in and the machines it ran on."""
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    config = json.loads((out / "config.json").read_text())
    return {"model": config["model"], "epochs": last["epoch"], "held_out_accuracy": last["val_accuracy"],
            "att_accuracy": last["val_att_accuracy"], "eval_flip": config["eval_flip"],
            "precision": config["precision"], "machines": run_machines(out)}


_append_lock = threading.Lock()


def append_jsonl(path: Path | None, row: dict[str, Any]) -> None:
    """Print ``row`` as one JSON line and, when ``path`` is given, append it there (one whole line at a time, also
    from several threads)."""
    with _append_lock:
        print(json.dumps(row), flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
