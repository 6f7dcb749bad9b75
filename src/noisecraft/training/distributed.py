"""Device choice and torch.distributed set-up: one process per device, launched by ``torchrun``.

``torchrun --nproc_per_node N -m noisecraft train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
without them training runs in a single process. Gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_choice: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, pick the device (``devices.resolve_device``: auto is this process's
    GPU, then MPS, else the CPU) and join the process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_choice, info.local_rank)
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown_distributed() -> None:
    """Leave the process group. Call it after dropping every DistributedDataParallel wrapper: a DDP
    reducer that outlives the group destroys it with the GIL held, while a gloo worker thread may
    still need the GIL to free a finished collective's tensor, and the process hangs at exit (seen
    under load: 2 runs in 7). Destroyed here, the group's own binding releases the GIL first."""
    if dist.is_initialized():
        gc.collect()  # a reference cycle may still hold a dropped wrapper's reducer
        dist.destroy_process_group()


def all_reduce(values: Tensor, op: str = "mean") -> Tensor:
    """Mean or max of ``values`` over all processes (a no-op in a single process)."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return values / dist.get_world_size() if op == "mean" else values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
