"""Distributed glue: ``torchrun --nproc_per_node=N -m rtda.train ...`` runs one process per rank.

gloo on CPU, nccl on GPU. Each process takes ``batch_size / N`` samples of the same global order
(:class:`rtda.train.sampler.ResumableSampler`), models are wrapped in DistributedDataParallel (its
gradient averaging makes N processes with batch B/N match one process with batch B), and only
rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def is_main_process() -> bool:
    """Rank 0 (or no torchrun), known before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def init_world(device_kind: str) -> World:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap(module: torch.nn.Module, world: World, device: torch.device,
         sync_bn: bool = False, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when the run is distributed (SyncBatchNorm first when
    asked: it needs CUDA). ``find_unused_parameters``: the segmenter's auxiliary heads get no
    gradient from the target pass of an adaptation step."""
    if not world.distributed:
        return module
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (SyncBatchNorm does not run on CPU)")
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def mean_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """The per-rank losses averaged over the ranks (what a single process would log)."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / world.size for k, v in zip(keys, tensor)}


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Every buffer of ``module`` set to rank 0's."""
    if not world.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def any_flag(flag: bool, world: World) -> bool:
    """True on every rank when any rank raised ``flag`` (a stop request, a NaN)."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
