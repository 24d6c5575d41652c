"""Process groups and model wrapping for data-parallel training (spec training.md 1.2).

`omnivox train` runs as one process, or as one process per device under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``; the same command works across nodes). Only the CLI
reads that environment; it calls `init_process`, and library code receives a `DistInfo`. Backend: NCCL on
CUDA, gloo on CPU (tests).

Wrapping: DDP by default (``bucket_cap_mb=128``, like the reference); with ``parallel_mode="fsdp"`` each
transformer block and then the model are sharded with FSDP2 ``fully_shard``, so parameters, gradients and
optimiser states are split over the processes (the 1.3B models on smaller cards).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import NoReturn, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process(rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: Optional[str] = None) -> tuple[DistInfo, torch.device]:
    """Join the job (NCCL on CUDA, gloo on CPU) when ``world_size > 1``; returns this process's info and device.

    The CLI reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the ``torchrun`` environment and passes them
    here (``MASTER_ADDR`` / ``MASTER_PORT`` are read by torch's ``env://`` rendezvous).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank), dev


class DataParallel(nn.parallel.DistributedDataParallel):
    """DDP that forwards unknown attributes to the wrapped model, so trainers read ``model.config`` alike."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    device_ids = [device] if device.type == "cuda" else None
    return DataParallel(model, device_ids=device_ids, bucket_cap_mb=128, find_unused_parameters=False)


def shard_fsdp(model: nn.Module, mixed_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2: every child of a ``blocks`` ModuleList first, then the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        for block in blocks:
            fully_shard(block)
    fully_shard(model)
    return model


def all_reduce_mean(sums: dict, counts: dict, info: DistInfo, device: torch.device) -> dict:
    """``{key: sum / count}`` with sums and counts added over the processes (keys may differ per process)."""
    if info.distributed:
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, sorted(sums))
        keys = sorted(set().union(*gathered))
        tensor = torch.tensor([[float(sums.get(k, 0.0)), float(counts.get(k, 0))] for k in keys],
                              dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        sums, counts = dict(zip(keys, tensor[:, 0].tolist())), dict(zip(keys, tensor[:, 1].tolist()))
    return {k: sums[k] / counts[k] for k in sums if counts[k]}


def check_replicas_equal(params, info: DistInfo, device: torch.device) -> None:
    """Raise if any parameter differs between processes (the reference's ``check_ddp``), bit for bit."""
    if not info.distributed:
        return
    for index, p in enumerate(params):
        local = p.detach().to(device).reshape(-1)
        reference = local.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(local, reference):
            raise RuntimeError(f"parameter {index} differs between rank {info.rank} and rank 0: replicas diverged")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def leave_and_exit(code: int = 0) -> NoReturn:
    """Destroy the process group and end this process at once, skipping interpreter shutdown.

    Why not a normal exit: DDP construction leaks references to the process group (torch 2.13), so gloo's
    worker threads outlive ``destroy_process_group``. A worker may still be dropping a finished collective whose
    tensors have Python objects; that needs the GIL, and during interpreter shutdown a GIL request kills the
    thread in the middle of a C++ destructor: SIGABRT ("terminate called without an active exception") after a
    run that succeeded, a few percent of the time on a loaded machine. Everything the run writes (checkpoints,
    logs, TensorBoard) is closed by then, so only the streams need flushing.
    """
    import logging
    import os
    import sys

    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
