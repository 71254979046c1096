"""Many processes, PyTorch's way: `torchrun` starts them and sets RANK / WORLD_SIZE / LOCAL_RANK; this module
joins them into one process group (NCCL on CUDA, gloo on CPU) and offers the few collectives training needs.

One process is the special case: with no torchrun environment every helper here is a no-op on rank 0 of 1,
so the same training code runs either way.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes metrics, reports and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, global_batch: int) -> slice:
        """This rank's slice of a global batch (the batch size must divide evenly)."""
        per_rank = global_batch // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


ONE_PROCESS = World()


def world_from_environment() -> World:
    """The process's place as torchrun describes it; rank 0 of 1 without torchrun."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_process_group(world: World, device_type: str, timeout_minutes: float) -> None:
    """Join the run's process group: NCCL for CUDA, gloo for CPU. A collective that waits longer than
    `timeout_minutes` (a rank died or hangs) fails with an error instead of blocking forever."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("process group: rank %d of %d (%s)", world.rank, world.size, backend)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_mean(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scalars averaged over the ranks, in one collective (per-step statistics for logging)."""
    if not active() or not values:
        return values
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked.unbind(), strict=True))


def all_reduce_int(value: int, op: str = "sum") -> int:
    """An integer summed (or its min / max taken) over the ranks: counts and flags every rank must agree on."""
    if not active():
        return value
    t = torch.tensor(value, dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return int(t.item())


def computed_on_main(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only, its result sent to every rank (e.g. a folder's file list, read once)."""
    if not active():
        return compute()
    holder = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] in one process)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def new_gloo_group() -> dist.ProcessGroup:
    """A second group over all ranks (every rank must call it), for collectives run in a background thread
    (asynchronous checkpoint writes) so that they never interleave with the training's on the main group."""
    return dist.new_group(backend="gloo")


def barrier() -> None:
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL collectives need CUDA tensors; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
