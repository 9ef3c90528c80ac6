"""The device a command runs on, from its --device flag: refused in one line when this machine lacks it."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from ..errors import AbnetError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; ``cpu``, ``cuda`` or ``cuda:N`` if this machine has it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AbnetError(f"--device {name!r} is not a device name; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise AbnetError(f"--device {name}: abnet runs on cpu or cuda; use {DEVICE_CHOICES}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise AbnetError(f"--device {name} asks for a CUDA GPU, but torch sees none here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise AbnetError(f"--device {name}: this machine has {count} GPU{'s' if count > 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1}); use one of those or --device cuda")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model with neither)."""
    first = next(chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device
