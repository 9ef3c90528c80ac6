"""What `abnet train` does on a GPU, checked end to end in a few minutes (run by gpu_check.sh):

* training throughput of resnet20_abn and resnet110_abn in fp32 and with --amp (images/s of the second
  epoch of a real `abnet train` run on the generated shapes set: loader, log steps and all);
* a SIGTERM mid-epoch, then --resume, on CUDA with a dropout model (wrn28_10_abn draws on the CUDA RNG) and
  --deterministic: the final weights must equal an uninterrupted run's, bit for bit;
* torchrun with NCCL: 1 process, and 2 when there are 2 GPUs.

    python benchmarks/gpu_check.py --out results/gpu_check.json [--device cuda] [--small]

``--small`` shrinks every run (for trying the script on a CPU with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from abnet.engine.checkpoint import load_state
from abnet.engine.precision import cpu_name


def abnet_train(*args: str, torchrun: int = 0, **popen) -> subprocess.Popen:
    """Start `python -m abnet train ARGS` (under torchrun with ``torchrun`` processes when > 0)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] \
        if torchrun else [sys.executable]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*launcher, "-m", "abnet", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"abnet train exited {proc.returncode}: {err[-2000:]}")
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def throughput(work: Path, device: str, small: bool) -> dict:
    """images/s of the second epoch, per model and precision."""
    images = "128" if small else "20000"
    results = {}
    for model in ("resnet20_abn", "resnet110_abn"):
        for name, flags in (("fp32", []), ("amp", ["--amp"])):
            run = work / f"{model}-{name}"
            finish(abnet_train("--model", model, "--data", "shapes", "--limit-train", images, "--limit-val", "256",
                               "--epochs", "2", "--batch-size", "32" if small else "128", "--device", device,
                               "--out", str(run), *flags))
            results.setdefault(model, {})[name] = round(metrics(run)[-1]["images_per_s"], 1)
    return results


def resume_is_bit_identical(work: Path, device: str, small: bool) -> dict:
    """SIGTERM during epoch 2, --resume, and compare the final weights with an uninterrupted run."""
    model = "resnet20_abn" if small else "wrn28_10_abn"
    args = ["--model", model, "--data", "shapes", "--limit-train", "512" if small else "4096", "--limit-val", "128",
            "--epochs", "3", "--batch-size", "64", "--device", device, "--deterministic", "--log-every", "4"]
    straight, stopped = work / "straight", work / "stopped"
    finish(abnet_train(*args, "--out", str(straight)))
    proc = abnet_train(*args, "--out", str(stopped))
    deadline = time.time() + 300
    while not (stopped / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1 if small else 0.5)  # inside epoch 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    state = load_state(stopped / "last.pt")
    where = {"code": proc.returncode, "epoch": state["epoch"], "step": state["step"],
             "mid_epoch": proc.returncode == 130 and state["step"] > 0}
    finish(abnet_train("--out", str(stopped), "--resume"))
    a, b = load_state(straight / "last.pt")["model"], load_state(stopped / "last.pt")["model"]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"model": model, "stopped_at": where, "bit_identical": same}


def torchrun_nccl(work: Path, device: str, small: bool) -> list[dict]:
    """A short run under torchrun, 1 process and (with 2 GPUs) 2: exit code and final accuracy."""
    counts = [1] + ([2] if device == "cuda" and torch.cuda.device_count() >= 2 else [])
    results = []
    for n in counts:
        run = work / f"torchrun-{n}"
        started = time.perf_counter()
        finish(abnet_train("--model", "resnet20_abn", "--data", "shapes", "--limit-train", "512" if small else "8192",
                           "--limit-val", "512", "--epochs", "2", "--batch-size", "128", "--device", device,
                           "--out", str(run), torchrun=n))
        last = metrics(run)[-1]
        results.append({"processes": n, "backend": "nccl" if device == "cuda" else "gloo",
                        "val_accuracy": last["val_accuracy"], "seconds": round(time.perf_counter() - started, 1)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU here; run it on a GPU machine (or --device cpu --small to try it)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
            "gpus": torch.cuda.device_count() if args.device == "cuda" else 0,
            "torch": torch.__version__, "small": args.small,
            "train_images_per_s": throughput(work, args.device, args.small),
            "resume": resume_is_bit_identical(work, args.device, args.small),
            "torchrun": torchrun_nccl(work, args.device, args.small),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    if not report["resume"]["bit_identical"]:
        sys.exit("gpu_check: the resumed run's weights differ from the uninterrupted run's")
    if not report["resume"]["stopped_at"]["mid_epoch"]:
        sys.exit("gpu_check: the SIGTERM did not stop the run mid-epoch, so the resume check proves little")


if __name__ == "__main__":
    main()
