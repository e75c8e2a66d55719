"""DDP under torchrun: process-group setup from the environment, and the few collectives the trainer needs.

A plain `python` run is a world of one and every helper degrades to a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group_backend(cuda: bool) -> str:
    """gloo on CPU; on CUDA nccl for the model's tensors plus gloo for the CPU scalars and objects the trainer
    reduces and broadcasts (nccl alone rejects CPU tensors)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed() -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = process_group_backend(torch.cuda.is_available())
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        # rank 0 evaluates the whole dev set while the others wait: allow a long wait before a collective times out
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
        logger.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a world of one)."""
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (pickled through the process group)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's object, in rank order, on every rank (a list of one in a world of one)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of a sequence every rank holds in the same order: the items i with i % world == rank
    (interleaved, so a manifest sorted by speaker or length still gives every rank a like share)."""
    return list(items[info.rank::info.world_size]) if info.enabled else list(items)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a few floats over ranks (train loss and counts)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model in a multi-process job; the model itself otherwise."""
    if not info.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group at the end of a distributed job."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
