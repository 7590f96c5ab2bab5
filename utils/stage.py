"""What every stage script does around its loop: detect a finished stage, check that a resumed
run has the configuration it was started with."""
from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

import config
from utils.checkpoint import CheckpointError, load_checkpoint


def is_finished(stage_dir: str | Path, output: str) -> bool:
    """True when `<stage_dir>/checkpoint.pt` is marked finished and `output` exists."""
    stage_dir = Path(stage_dir)
    path = stage_dir / "checkpoint.pt"
    if not path.is_file() or not (stage_dir / output).is_file():
        return False
    return bool(load_checkpoint(path).get("finished"))


def check_same_config(state: dict, args: argparse.Namespace, path: str | Path) -> None:
    """Refuse to resume with other options than the run was started with (unless --force)."""
    diffs = config.config_differences(state["config"], config.config_dict(args))
    if diffs and not args.force:
        raise ValueError(f"{path} was written with other options ({'; '.join(diffs)}); rerun "
                         "with the same options, --force to resume anyway, or a new --name")


class NullMetrics:
    """What ranks other than 0 get instead of a MetricsWriter: nothing is written."""

    tb = None

    def write(self, record: dict, step: int) -> None:
        pass

    def truncate_after(self, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass


def silent(message: str) -> None:
    """The log of ranks other than 0."""


class GracefulStop:
    """While active, SIGTERM and SIGINT only set `signum`; the training loop then saves a
    checkpoint at the next step boundary and exits (exit code 128 + signal number)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum

    def requested(self, ranks=None) -> bool:
        """True once a signal arrived (on any rank, when distributed: all ranks stop together)."""
        flag = self.signum is not None
        if ranks is not None and ranks.enabled:
            import torch
            import torch.distributed as dist
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name


def resume_path(args: argparse.Namespace, checkpoint: Path, log) -> Path | None:
    """The checkpoint to resume from: --resume FILE, else <stage>/checkpoint.pt if present.
    With --resume, an unreadable checkpoint.pt is moved aside (checkpoint.corrupt.pt) so that
    rotating checkpoints never replaces the good previous one with it."""
    if getattr(args, "resume", None):
        chosen = Path(args.resume)
        load_checkpoint(chosen)  # a clear error if this one is bad too
        if checkpoint.is_file() and checkpoint.resolve() != chosen.resolve():
            try:
                load_checkpoint(checkpoint)
            except CheckpointError:
                aside = checkpoint.with_name("checkpoint.corrupt.pt")
                os.replace(checkpoint, aside)
                log(f"{checkpoint} is unreadable; moved to {aside}")
        return chosen
    return checkpoint if checkpoint.is_file() else None
