"""Multi-process training under torchrun: one process per device, DistributedDataParallel, gloo on CPUs
and NCCL on GPUs. Every process sees the same global batch order and augmentation and trains on its
slice of each batch, so a run with N processes follows the 1-process run with the same global batch;
only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ..errors import AbnetError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``world == 1`` without torchrun. ``device`` is where collectives
    run: this process's GPU under NCCL (which reduces CUDA tensors only), the CPU under gloo."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    launched: bool = False  # started by torchrun: a process group exists (even of one process)
    owns_group: bool = False  # the process group was made by setup(), which also closes it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.launched:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sums(self, *values: float | torch.Tensor) -> list[float]:
        """The sum of each value (a number or a one-element tensor on any device) over all processes, read
        back to the host: the one synchronisation point of a training step that has one."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(self.device).reshape(()) for v in values])
        if self.launched:
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (plain data or CPU tensors), in rank order."""
        if not self.launched:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def setup(device_type: str) -> Distributed:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), if
    there is one: its process group is made even for one process, so a 1-process torchrun runs the same
    collectives (and DistributedDataParallel) as a larger job.

    On GPUs each process takes the GPU of its local rank (``torch.cuda.set_device``) before the process group
    is made, so NCCL's communicators and barriers use one device per process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # not started by torchrun
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if count == 1:  # each process sees only its own GPU (e.g. SLURM --gpus-per-task=1)
            device = torch.device("cuda", 0)
        elif local_rank < count:
            device = torch.device("cuda", local_rank)
        else:
            raise AbnetError(f"process {local_rank} of this machine has no GPU of its own: torch sees {count}; "
                             "start at most that many processes per machine")
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device, launched=True,
                       owns_group=owns_group)


def shutdown(job: Distributed) -> None:
    """Close the process group if :func:`setup` made it (one the caller made is the caller's)."""
    if job.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, job: Distributed) -> None:
    if batch_size % job.world:
        raise AbnetError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                         f"{job.world} processes")
