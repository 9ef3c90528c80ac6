"""The arithmetic a run trains in, chosen by the hardware: bf16 autocast where the CPU computes bf16 natively,
bf16 or fp16 (with a loss scaler) on GPUs that have the units for it, fp32 elsewhere."""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

from ..errors import AbnetError

log = logging.getLogger("abnet")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 (not emulate it)


def _cpuinfo_field(name: str) -> str | None:
    """The first value of field ``name`` in /proc/cpuinfo; None where it cannot be read (non-Linux machines)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return next((value.strip() for key, value in fields if key.strip() == name), None)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX), from the kernel's CPU flags; False where
    they cannot be read (non-Linux machines), which only means fp32 stays the choice."""
    flags = (_cpuinfo_field("flags") or "").split()
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


@functools.cache
def cpu_name() -> str:
    """This CPU's model name from /proc/cpuinfo, else what ``platform`` knows (the architecture at least)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """``device`` as a run's log names it, so that runs on different machines can be told apart: a GPU's name, or
    the CPU's model, its threads and whether it computes bf16 natively."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"cpu ({cpu_name()}, {threads} thread{'s' * (threads != 1)}, {bf16})"


def cuda_precision(device: torch.device) -> str:
    """bf16 on GPUs with bf16 tensor cores (compute capability 8.0+), fp16 on those with fp16 ones (7.0+), else fp32."""
    major, _ = torch.cuda.get_device_capability(device)
    return "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision ``requested`` ("auto", "fp32", "bf16", "fp16") means on ``device``: "auto" by capability;
    fp16 on a CPU is refused (PyTorch's CPU kernels are slow in fp16 and there is no loss scaler for it); bf16 on
    a CPU without bf16 instructions runs, with a warning that it emulates bf16 and will be slow."""
    if requested not in PRECISIONS:
        raise AbnetError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if requested == "bf16" and cuda_precision(device) != "bf16":
            major, minor = torch.cuda.get_device_capability(device)
            raise AbnetError(f"--precision bf16: this GPU (compute capability {major}.{minor}) has no bf16 units; "
                             "use --precision fp16 or auto")
        return cuda_precision(device) if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16":
        raise AbnetError("--precision fp16 needs a CUDA GPU; on a CPU use --precision bf16 (or auto, which picks "
                         "bf16 where the CPU computes it natively)")
    if requested == "bf16" and not cpu_has_native_bf16():
        log.warning("--precision bf16: this CPU has no bf16 instructions (AVX-512 BF16 or AMX), so bf16 is emulated "
                    "and slower than fp32; --precision auto picks fp32 here")
    return requested
