"""Multi-process training with PyTorch's DistributedDataParallel, launched by torchrun
(`torchrun --nproc_per_node N search.py ...`): NCCL on GPUs, gloo on CPU. Rank 0 alone writes
files and logs; metrics are reduced across ranks; alphas stay identical on every rank."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); pick this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: Dist, device: torch.device) -> nn.Module:
    """DDP around `model` when distributed (gradients all-reduced in backward), else `model`."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def average_(tensors: list[torch.Tensor], info: Dist) -> None:
    """In place: the mean over ranks of each tensor (e.g. alpha gradients from autograd.grad,
    which DDP's backward hooks do not see)."""
    if not info.enabled:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(info.world_size)


def reduce_sums(values: dict[str, float], info: Dist, device: torch.device) -> dict[str, float]:
    """Sum each value over ranks (meters send totals and counts)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def max_divergence(tensors: list[torch.Tensor], info: Dist) -> float:
    """Largest |x - x_rank0| over all ranks and tensors: 0.0 when every rank holds the same."""
    if not info.enabled:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        ref = t.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (t.detach() - ref).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def shard(indices: list[int], info: Dist) -> list[int]:
    """This rank's share of an evaluation set (no padding, so totals stay exact)."""
    return indices[info.rank::info.world_size] if info.enabled else indices


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def sync_buffers(model: nn.Module, info: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart after the
    last training step); evaluation then measures exactly the network rank 0 saves."""
    if not info.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


@contextlib.contextmanager
def main_rank_first(info: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads a dataset), the other ranks after it."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)
