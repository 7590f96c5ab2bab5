"""Logs for people (log.txt + console) and records for programs (metrics.jsonl, tensorboard)."""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def get_logger(stage_dir: str | Path, name: str) -> logging.Logger:
    """Logger writing to the console and to <stage_dir>/log.txt (appending on resume)."""
    logger = logging.getLogger(f"stacnas.{name}.{os.path.abspath(stage_dir)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%m/%d %H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(Path(stage_dir) / "log.txt")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


class MetricsWriter:
    """One JSON object per line in <stage_dir>/metrics.jsonl; tensorboard scalars beside it."""

    def __init__(self, stage_dir: str | Path, tensorboard: bool = True):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported here: no work at import time
            self.tb = SummaryWriter(str(Path(stage_dir) / "tb"))

    def write(self, record: dict, step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def run_info(device: torch.device) -> dict:
    """What produced a result: versions, device and git revision."""
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": describe_device(device), "git": git_revision()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; "cuda:N" (from --gpu N) -> that device. Asking
    for CUDA without one, or for a device index the machine lacks, is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    flag = "--device cuda" if device.index is None else f"--gpu {device.index}"
    if not torch.cuda.is_available():
        raise RuntimeError(f"{flag}: no CUDA device is available; use --device cpu or auto"
                           + (" (and drop --gpu)" if device.index is not None else ""))
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(f"{flag}: this machine has {count} CUDA device(s), numbered 0 to "
                           f"{count - 1}; pass one of those")
    return device
