"""Multi-process training with PyTorch's DistributedDataParallel, launched by torchrun
(`torchrun --nproc_per_node N search.py ...`): NCCL on GPUs, gloo on CPU. Rank 0 alone writes
files and logs; metrics are reduced across ranks; alphas stay identical on every rank.

Two kinds of collective, on two kinds of group. Tensor collectives (gradients, metric sums,
buffers) run on the default group with tensors on the model's device. Host-side coordination
(the stop flag, rank 0's objects, barriers, RNG states gathered for a checkpoint) runs on a gloo
group of its own: NCCL has no CPU backend, so a CPU tensor or a barrier on an NCCL default
group fails ("No backend type associated with device type cpu"), and a flag all-reduced on the
CPU costs no GPU synchronisation per step."""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


# How long a collective waits for the other processes before it fails (a process that hangs; one
# that dies is noticed at once, its connections closing): STACNAS_DIST_TIMEOUT seconds, 30
# minutes unless set. Legitimate waits are long: compiling the supernet, cuDNN autotuning on the
# first steps, a checkpoint written to a slow shared filesystem; shorter, NCCL's watchdog would
# abort a healthy run. Waits on rank 0 alone (a dataset download, the final plots) use a group
# that waits longer still.
TIMEOUT_ENV = "STACNAS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
PATIENT_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job. `enabled`: in a process group, which torchrun
    runs join even with one process (then every collective of the multi-GPU path runs too)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    control: object = field(default=None, compare=False, repr=False)  # gloo, normal timeout
    patient: object = field(default=None, compare=False, repr=False)  # gloo, waits longer

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """torchrun (or another env:// launcher) started this process: RANK and WORLD_SIZE set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Under torchrun, join its process group (also with one process) and pick this rank's GPU
    (LOCAL_RANK); otherwise make `device` (e.g. cuda:N from --gpu N) the current CUDA device,
    so that nothing lands on GPU 0 by default."""
    if not under_torchrun():
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Dist(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=collective_timeout())
    control = dist.new_group(backend="gloo", timeout=collective_timeout())
    patient = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return Dist(rank, world, local, True, control, patient), device


def collective_timeout() -> timedelta:
    """STACNAS_DIST_TIMEOUT (seconds), DEFAULT_TIMEOUT_S (30 minutes) when unset."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return timedelta(seconds=seconds)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# What a collective's error says when another process died or hangs.
PEER_FAILURE = re.compile(r"gloo|nccl|c10d|connection (reset|closed) by peer", re.IGNORECASE)


def lost_peer(err: BaseException) -> str | None:
    """When `err` is a collective failing because another process died or hangs (gloo's
    "Connection reset by peer" or timeout, NCCL's errors), one line saying so; else None."""
    text = str(err).strip()
    if not isinstance(err, RuntimeError) or not (isinstance(err, getattr(dist, "DistError", ()))
                                                 or PEER_FAILURE.search(text)):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "")
    return f"another process of this torchrun job died or hangs ({first.split('. ')[0][:160]})"


def describe(info: Dist) -> str:
    """What a stage's first log line says of the job: ", 2 processes (torchrun)"; "" when
    not in a process group."""
    if not info.enabled:
        return ""
    return f", {info.world_size} process{'es' if info.world_size != 1 else ''} (torchrun)"


def wrap(model: nn.Module, info: Dist, device: torch.device) -> nn.Module:
    """DDP around `model` when distributed (gradients all-reduced in backward), else `model`.
    DDP broadcasts rank 0's parameters (alphas included) and buffers here, so every rank starts
    from the same network although each rank seeds its RNGs with seed + rank."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# -- tensor collectives: default group, tensors on the model's device ------------------------
def average_(tensors: list[torch.Tensor], info: Dist) -> None:
    """In place: the mean over ranks of each tensor (e.g. alpha gradients from autograd.grad,
    which DDP's backward hooks do not see), on the tensors' own device."""
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


def sync_buffers(model: nn.Module, info: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart after the
    last training step); evaluation then measures exactly the network rank 0 saves."""
    if not info.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


# -- host-side coordination: the gloo control group, CPU only ---------------------------------
def any_rank(flag: bool, info: Dist) -> bool:
    """True when `flag` is true on any rank (e.g. a stop signal arrived at one of them)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return bool(t.item())


def from_main(value, info: Dist):
    """Rank 0's `value` (any picklable object) on every rank; a barrier as well."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=info.control)
    return box[0]


def gather(value, info: Dist) -> list | None:
    """Every rank's `value` (any picklable object), in rank order, on rank 0; None elsewhere."""
    if not info.enabled:
        return [value]
    values = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, values, dst=0, group=info.control)
    return values


def barrier(info: Dist, patient: bool = False) -> None:
    """Wait for every rank; `patient`: for as long as rank 0's own work may take (a download,
    the final plots), not just STACNAS_DIST_TIMEOUT."""
    if info.enabled:
        dist.barrier(group=info.patient if patient else info.control)


@contextlib.contextmanager
def main_rank_first(info: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads a dataset), the other ranks after it."""
    if not info.is_main:
        barrier(info, patient=True)
    yield
    if info.is_main:
        barrier(info, patient=True)
