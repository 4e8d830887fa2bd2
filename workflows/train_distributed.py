"""Data-parallel training under torchrun: this process's rank, and the few places where ranks must agree.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper here is a no-op, so ``rsrs train`` runs the same code
in one process. Rank 0 decides what all ranks must do alike (stop on a time box, the best score so far) and is
the only one that writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from rsrs.model.registry import resolve_device


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) job, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DistributedDataParallel when there are several ranks, else itself."""
        if self.world <= 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank (so all ranks stop at the same step)."""
        if self.world <= 1:
            return flag
        tensor = torch.tensor([flag], dtype=torch.int32, device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def share(self, value: float) -> float:
        """Rank 0's ``value``, on every rank."""
        if self.world <= 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.world <= 1:
            return [obj]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()

    def shut_down(self) -> None:
        """Let every rank finish its work, then end the process group.

        The caller drops its DDP wrapper first: its reducer holds the group and gradient buckets, and a gloo group
        torn down with work in flight can deadlock its destructor.
        """
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) and pick this rank's device.

    ``device``: the config's ``auto`` | ``cpu`` | ``cuda``.
    """
    kind = resolve_device(device).type  # 'cuda' without a GPU: one line
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank = 0
    if world > 1:
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        rank = dist.get_rank()
    where = torch.device(f"cuda:{local_rank}") if kind == "cuda" else torch.device("cpu")
    if where.type == "cuda":
        torch.cuda.set_device(where)
    return Distributed(rank=rank, world=world, local_rank=local_rank, device=where)
