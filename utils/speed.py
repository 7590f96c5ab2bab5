"""Speed and memory options shared by the training scripts: channels_last, automatic mixed
precision (bf16 / fp16), torch.compile and activation checkpointing. Each computes the same
function with less time or memory; none is needed for correctness."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import sys
from typing import Callable

import torch
import torch.nn as nn

from models import fastpath

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_speed_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    g = p.add_argument_group("speed and memory")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format (measured 1.3-1.9x faster on CPU; standard on GPUs); "
                        "--no-channels_last for NCHW")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast matmuls/convs to bf16 or fp16 (softmax of the alphas and the losses "
                        "stay float32; fp16 uses a gradient scaler); bf16 about halves memory, and "
                        "on a bf16-capable CPU trains a final network ~1.3x faster")
    if training:
        g.add_argument("--compile", action="store_true",
                       help="torch.compile the network (slow first steps; opt-in)")
        g.add_argument("--grad_checkpoint", action="store_true",
                       help="recompute each cell in backward instead of keeping its activations "
                            "(16-35%% of the memory, 25-30%% less speed)")


def channels_last_for(args: argparse.Namespace, device: torch.device) -> bool:
    return bool(getattr(args, "channels_last", False))


def memory_format(args: argparse.Namespace, device: torch.device) -> torch.memory_format:
    return torch.channels_last if channels_last_for(args, device) else torch.contiguous_format


def autocast(args: argparse.Namespace, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts (a no-op without --amp)."""
    if args.amp == "none":
        return contextlib.nullcontext
    dtype = AMP_DTYPES[args.amp]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(args: argparse.Namespace, device: torch.device):
    """A GradScaler for fp16 (bf16 and float32 need none)."""
    if args.amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """On Linux (glibc), serve tensors of up to 32 MiB from the heap and keep freed memory
    there for reuse, instead of a fresh mmap, and its page faults, for every activation of
    every step: measured 1.15x faster CPU training at the same peak memory. A no-op
    returning False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def prepare(model: nn.Module, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """Apply memory format and checkpointing to `model` (in place); returns it. On CPU the
    network takes the fast path (models.fastpath: same function, less work) and the process
    keeps freed memory for reuse (`keep_freed_memory`)."""
    if device.type == "cpu":
        keep_freed_memory()
        if getattr(args, "fast_path", True):
            fastpath.enable(model)
    if channels_last_for(args, device):
        model.to(memory_format=torch.channels_last)
    if getattr(args, "grad_checkpoint", False):
        model.grad_checkpoint = True
    return model


def maybe_compile(module: nn.Module, args: argparse.Namespace) -> nn.Module:
    return torch.compile(module) if getattr(args, "compile", False) else module
