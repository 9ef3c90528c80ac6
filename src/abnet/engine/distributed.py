"""Multi-process training under torchrun: one process per device, DistributedDataParallel, gloo on CPUs
and NCCL on GPUs. Every process sees the same global batch order and augmentation and trains on its
slice of each batch, so a run with N processes follows the 1-process run with the same global batch;
only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import AbnetError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``world == 1`` without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sums(self, *values: float) -> list[float]:
        """The sum of each value over all processes (the values themselves in a 1-process run)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def setup(device_type: str) -> Distributed:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(job: Distributed) -> None:
    if job.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, job: Distributed) -> None:
    if batch_size % job.world:
        raise AbnetError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                         f"{job.world} processes")
