"""Speed and memory options shared by the training scripts: channels_last, automatic mixed
precision (bf16 / fp16), torch.compile and activation checkpointing. Each computes the same
function with less time or memory; none is needed for correctness."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from models import fastpath

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_speed_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    g = p.add_argument_group("speed and memory")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format; default: chosen by the device where it was measured "
                        "faster (CPUs: on; GPUs: off, see the README's GPU table); "
                        "--no-channels_last for NCHW")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast matmuls/convs to bf16 or fp16 (softmax of the alphas and the "
                        "losses stay float32; fp16 uses a gradient scaler); bf16 about halves "
                        "memory. On a CPU without native bf16 (e.g. AVX2 only) bf16 is ~10x "
                        "slower: it is then refused with a warning (float32) unless --force_amp, "
                        "as on GPUs older than Ampere (V100, T4)")
    g.add_argument("--force_amp", action="store_true",
                   help="use --amp even where the device has no native support for it")
    if training:
        g.add_argument("--compile", action="store_true",
                       help="torch.compile the network (slow first steps; opt-in)")
        g.add_argument("--grad_checkpoint", action="store_true",
                       help="recompute each cell in backward instead of keeping its activations "
                            "(16-35%% of the memory, 25-30%% less speed)")


# The oldest PyTorch on which a compiled network with --grad_checkpoint updates batch-norm
# statistics once per step, as eager recomputation does (tests/test_gpu_models.py): 2.4.1 gave
# other running means, 2.8.0 counted every batch twice; 2.10, 2.11 and 2.14 pass (2.9 not
# measured, so refused).
COMPILE_WITH_CHECKPOINT_SINCE = (2, 10)


def torch_release() -> tuple[int, int]:
    """(major, minor) of the PyTorch in use."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_compile_with_checkpoint(args: argparse.Namespace) -> None:
    """--compile with --grad_checkpoint on a PyTorch that gets it wrong: a usage error."""
    if not (getattr(args, "compile", False) and getattr(args, "grad_checkpoint", False)):
        return
    if torch_release() < COMPILE_WITH_CHECKPOINT_SINCE:
        need = ".".join(map(str, COMPILE_WITH_CHECKPOINT_SINCE))
        raise argparse.ArgumentTypeError(
            f"--compile with --grad_checkpoint needs PyTorch >= {need} (this is "
            f"{torch.__version__}, whose compiled recomputation updates batch-norm statistics "
            "again); drop one of the two flags or upgrade PyTorch")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 / AMX class), where
    bf16 autocast pays; on AVX2-only CPUs it is emulated and about 10x slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return not _avx2_class()


def _avx2_class() -> bool:
    """A CPU without AVX-512 (AVX2 or older): where the tricks below were measured not to pay."""
    return torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "NO AVX")


def channels_last_default(device: torch.device, network: str) -> bool:
    """The measured choice (README, "Speed, memory and multiple GPUs"): channels_last on CPUs,
    where it was faster for every network on AVX2 and on AVX-512/AMX; NCHW on GPUs (README,
    "GPU clusters": the table measured there)."""
    return device.type == "cpu"


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) and later run bf16 natively; V100 / T4 emulate it."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def fast_path_default(device: torch.device, network: str, amp: str) -> tuple[str, ...]:
    """The models.fastpath parts a network takes by default, as measured (README): none on
    GPUs; on CPUs the fast cells for supernets (about half the memory), and everything on
    AVX-512/AMX CPUs; the depthwise backward also under bf16, where the library's weight
    gradient of dilated kernels is wrong. On AVX2 CPUs the rest gave under 10%."""
    if device.type != "cpu":
        return ()
    parts = []
    if network == "search" or not _avx2_class():
        parts.append("cells")
    if not _avx2_class() or amp == "bf16":
        parts.append("depthwise")
    return tuple(parts)


@dataclass(frozen=True)
class SpeedPlan:
    """What a stage does for speed and memory, decided once from its flags and the device
    (:func:`plan`): the defaults are plain float32 NCHW, nothing compiled or recomputed."""
    channels_last: bool = False
    amp: str = "none"  # "none", "bf16" or "fp16"
    fast_path: tuple[str, ...] = ()  # models.fastpath parts
    keep_freed_memory: bool = False
    compile: bool = False
    grad_checkpoint: bool = False

    def as_dict(self) -> dict:
        """Plain data (config.json's "speed": what the run did, beside what was asked)."""
        return {**asdict(self), "fast_path": list(self.fast_path)}


def plan(args: argparse.Namespace, device: torch.device, network: str, log=print) -> SpeedPlan:
    """The speed plan of a stage (network: "search" or "final"); `args` is left as given.
    --channels_last when not given: the measured default; --amp bf16 refused (float32, one
    warning line) where the device has no native bf16, unless --force_amp; the fast-path
    parts and keep_freed_memory as measured for the device."""
    compiled = bool(getattr(args, "compile", False))
    channels_last = getattr(args, "channels_last", None)
    if channels_last is None:
        channels_last = channels_last_default(device, network)
    amp = getattr(args, "amp", None) or "none"
    if amp == "bf16" and not getattr(args, "force_amp", False):
        if device.type == "cpu" and not cpu_has_native_bf16():
            log("warning: --amp bf16 ignored: this CPU "
                f"({torch.backends.cpu.get_cpu_capability()}) has no native bf16 and would run "
                "~10x slower; training in float32 (--force_amp insists)")
            amp = "none"
        elif device.type == "cuda" and not cuda_has_native_bf16(device):
            log(f"warning: --amp bf16 ignored: this GPU ({torch.cuda.get_device_name(device)}) has "
                "no native bf16 (compute capability < 8.0) and would emulate it; training in "
                "float32 (--amp fp16 is native there; --force_amp insists on bf16)")
            amp = "none"
    fast_path = getattr(args, "fast_path", None)
    if fast_path is None:
        fast_path = () if compiled else fast_path_default(device, network, amp)
    keep = getattr(args, "keep_freed_memory", None)
    if keep is None:
        keep = device.type == "cpu" and not _avx2_class()
    return SpeedPlan(channels_last=bool(channels_last), amp=amp, fast_path=tuple(fast_path),
                     keep_freed_memory=bool(keep), compile=compiled,
                     grad_checkpoint=bool(getattr(args, "grad_checkpoint", False)))


def memory_format(speed: SpeedPlan) -> torch.memory_format:
    return torch.channels_last if speed.channels_last else torch.contiguous_format


def autocast(speed: SpeedPlan,
             device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts (a no-op without --amp)."""
    if speed.amp == "none":
        return contextlib.nullcontext
    dtype = AMP_DTYPES[speed.amp]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(speed: SpeedPlan, device: torch.device):
    """A GradScaler for fp16 (bf16 and float32 need none)."""
    if speed.amp != "fp16":
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


def prepare(model: nn.Module, speed: SpeedPlan, device: torch.device) -> nn.Module:
    """Apply the plan's memory format, fast-path parts (models.fastpath: same function, less
    work), keep_freed_memory and checkpointing to `model` (in place)."""
    if device.type == "cpu":
        if speed.keep_freed_memory:
            keep_freed_memory()
        # the compiler fuses on its own; the fast path's autograd functions break its graph
        if speed.fast_path and not speed.compile:
            fastpath.enable(model, speed.fast_path)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    if speed.grad_checkpoint:
        model.grad_checkpoint = True
    return model


def maybe_compile(module: nn.Module, speed: SpeedPlan) -> nn.Module:
    return torch.compile(module) if speed.compile else module
