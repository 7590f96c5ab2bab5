"""--gpu, the authors' flag: what it takes (`N`, `0,1`, `all`: gpu, GpuRequest) and which GPU a
process then uses: `--gpu N` means `--device cuda:N`; a list or `all` means the first listed,
as the authors' code does, with a note on how several GPUs are used (torchrun, one process each;
README, "GPU clusters")."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from utils.runtime.flags import MAX_INT
from utils.runtime.logging import resolve_device


class GpuRequest(tuple):
    """What --gpu asked for: `first` (the GPU used) and `listed` (every GPU named, `all`: none
    known). A tuple so that argparse keeps it as one value; select_gpu turns it into the plain
    int `first`."""

    first = property(lambda self: self[0])
    listed = property(lambda self: self[1])

    def several(self) -> bool:
        """True when more than one GPU was asked for (`0,1` or `all`)."""
        return self.listed == "all" or len(self.listed) > 1

    def text(self) -> str:
        return "all" if self.listed == "all" else ",".join(map(str, self.listed))


def gpu(text: str) -> GpuRequest:
    """--gpu as the authors' parser reads it: `N`, a comma-separated list `0,1` or `all`. One
    process uses one GPU: the first listed (`all`: GPU 0), as the authors' code does; several
    GPUs take torchrun (one process each). Each N is an integer in 0..MAX_INT, the list has no
    repeats."""
    if text.strip().lower() == "all":
        return GpuRequest((0, "all"))
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and len(part) <= 30 for part in parts):
        raise argparse.ArgumentTypeError(f"expected a GPU number N, a list such as 0,1, or all, "
                                         f"got {text!r}")
    listed = [int(part) for part in parts]
    if len(set(listed)) != len(listed):
        raise argparse.ArgumentTypeError(f"names a GPU twice, got {text!r}")
    if max(listed) > MAX_INT:
        raise argparse.ArgumentTypeError(f"GPU numbers must be at most {MAX_INT:,}, got {text!r}")
    return GpuRequest((listed[0], listed))


def first_gpu(request) -> int | None:
    """The one GPU a --gpu value gives a process: N itself, or a GpuRequest's first."""
    return request.first if isinstance(request, GpuRequest) else request


GPU_HELP = ("the authors' flag: run on CUDA device N; a list such as 0,1 or `all` runs on the "
            "first listed (all: GPU 0), as the authors' code does, and says so: several GPUs "
            "take torchrun (README, 'GPU clusters'); an error without CUDA")


def select_gpu(args: argparse.Namespace, script: str = "", pass_on: bool = False) -> None:
    """`--gpu N` (the authors' flag) means `--device cuda:N`; with `--device cpu` it is a
    contradiction. A list (`0,1`) or `all` means the first listed GPU (all: GPU 0), as in the
    authors' code, with one `note:` line on stderr saying that only that GPU is used and how
    torchrun uses several (not when CUDA is unusable: the device check then stops the run with
    its one error line; not under torchrun, which gives each process its own GPU). After this,
    args.gpu is a plain int (or None). `pass_on`: a script that starts others (run_all.py,
    alpha_efficiency.py) keeps its --device and passes `--gpu N` on."""
    request = getattr(args, "gpu", None)
    if request is None:
        return
    if not isinstance(request, GpuRequest):  # set by code rather than parsed
        request = GpuRequest((int(request), [int(request)]))
    args.gpu = request.first
    if args.device == "cpu":
        raise argparse.ArgumentTypeError(f"--gpu {request.text()} asks for CUDA device "
                                         f"{request.first} but --device cpu was given; drop one "
                                         "of them")
    if request.several():
        note = several_gpus_note(request, script)
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
    if not pass_on:
        args.device = f"cuda:{request.first}"


def check_gpu_usable(args: argparse.Namespace) -> None:
    """--gpu N of a script that starts others (run_all.py, alpha_efficiency.py): the device
    check each started script would make (utils.runtime.logging.resolve_device), made once
    before any starts, so that a machine without CUDA gets its one error line (a RuntimeError)
    rather than a failed stage."""
    if getattr(args, "gpu", None) is None:
        return
    resolve_device(f"cuda:{args.gpu}")


def several_gpus_note(request: GpuRequest, script: str) -> str | None:
    """The line --gpu 0,1 / --gpu all prints: only the first GPU is used, and how to use
    several; None when CUDA is unusable or under torchrun (see select_gpu)."""
    if os.environ.get("WORLD_SIZE") is not None or not torch.cuda.is_available():
        return None
    count = len(request.listed) if request.listed != "all" else torch.cuda.device_count()
    head = (f"--gpu {request.text()}: {script or 'this script'} runs on one GPU, GPU "
            f"{request.first} (the first listed, as the authors' code does)")
    if script == "run_all.py":
        return f"{head}; run_all.py --gpus {count} runs every stage on {count} GPUs (torchrun)"
    if script == "alpha_efficiency.py":
        return (f"{head}, for every training run; to use {count} GPUs, run analyses side by side "
                "with different --gpu and --out")
    return (f"{head}; torchrun uses several: torchrun --standalone --nproc_per_node {count} "
            f"{script or '<script>'} ... (one process per GPU), or run_all.py --gpus {count}")
