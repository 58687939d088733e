"""Process groups for data parallel x sequence parallel (world = dp * sp).

The sp ranks of one data-parallel replica are consecutive global ranks: replica d holds ranks
[d*sp, (d+1)*sp). Its sp group shards one sequence; the dp group of sp rank s (ranks s, s+sp, ...) holds the
same shard position of different samples. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longrl.errors import ConfigError


@dataclass(frozen=True)
class ParallelState:
    """Where this process sits in the dp x sp grid. Groups are None when their size is 1 or not distributed."""

    rank: int
    world_size: int
    dp_size: int
    sp_size: int
    dp_rank: int
    sp_rank: int
    device: torch.device
    sp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sp_ranks(self) -> list[int]:
        """Global ranks of this process's sp group, in sp-rank order."""
        return [self.dp_rank * self.sp_size + s for s in range(self.sp_size)]

    def dp_ranks(self) -> list[int]:
        """Global ranks of this process's dp group, in dp-rank order."""
        return [d * self.sp_size + self.sp_rank for d in range(self.dp_size)]


def single_process_state(device: torch.device | str = "cpu") -> ParallelState:
    """The trivial grid: one process, dp = sp = 1."""
    return ParallelState(
        rank=0, world_size=1, dp_size=1, sp_size=1, dp_rank=0, sp_rank=0, device=torch.device(device)
    )


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_parallel(sp_size: int = 1, *, backend: str | None = None, timeout_s: float = 600.0) -> ParallelState:
    """Join the torchrun-style world (RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK env) and build the groups.

    Without WORLD_SIZE in the environment (a plain `python` run) this is the single-process grid, which only
    accepts sp_size == 1. Raises ConfigError when WORLD_SIZE is not divisible by sp_size.
    """
    if sp_size < 1:
        raise ConfigError(f"sp size must be >= 1, got {sp_size}")
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if sp_size != 1:
            raise ConfigError(f"--sp {sp_size} needs {sp_size} processes; launch with --nproc (or torchrun)")
        return single_process_state("cuda" if torch.cuda.is_available() else "cpu")
    # A world someone else started (e.g. the caller's own init_process_group) keeps its backend.
    backend = dist.get_backend() if dist.is_initialized() else (backend or default_backend())
    device = torch.device("cpu")
    if backend == "nccl":
        # Bind the rank to its GPU before NCCL starts, and tell the group which one: otherwise barriers and
        # the communicator guess the device from the global rank (wrong across nodes).
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size != 0:
        raise ConfigError(f"world size {world} is not divisible by sp size {sp_size}")
    dp_size = world // sp_size
    dp_rank, sp_rank = divmod(rank, sp_size)
    # Every rank must create every group, in the same order, even groups it is not part of.
    sp_group = dp_group = None
    for d in range(dp_size):
        group = dist.new_group([d * sp_size + s for s in range(sp_size)])
        if d == dp_rank and sp_size > 1:
            sp_group = group
    for s in range(sp_size):
        group = dist.new_group([d * sp_size + s for d in range(dp_size)])
        if s == sp_rank and dp_size > 1:
            dp_group = group
    return ParallelState(
        rank=rank, world_size=world, dp_size=dp_size, sp_size=sp_size, dp_rank=dp_rank, sp_rank=sp_rank,
        device=device, sp_group=sp_group, dp_group=dp_group,
    )  # fmt: skip


def destroy_parallel() -> None:
    """Tear down the default process group (and with it every subgroup), if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()
