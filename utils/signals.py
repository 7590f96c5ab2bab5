"""Stopping on SIGTERM / SIGINT (Ctrl-C, Slurm's preemption and time limit, `timeout`): a
training loop saves a checkpoint at the next step boundary (GracefulStop); a script with nothing
to save stops at once with one line (StopNow). DataLoader workers ignore these signals
(utils.data.worker_init_fn), so that one sent to the whole process group acts through the main
process alone."""
from __future__ import annotations

import signal
import threading


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
        """True once a signal arrived (on any rank, when distributed: all ranks stop together;
        asked over the CPU control group, so no GPU synchronisation per step)."""
        flag = self.signum is not None
        if ranks is not None:
            from utils.distributed import any_rank
            flag = any_rank(flag, ranks)
        return flag

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name


class ForwardToChild(GracefulStop):
    """While active, SIGTERM and SIGINT are passed on to the child process in `proc` (a stage
    script: it saves at its next step and stops), and `signum` records them, so the parent can
    stop with the child's exit code instead of starting the next stage."""

    proc = None  # a subprocess.Popen while a child runs

    def _handle(self, signum: int, frame) -> None:
        super()._handle(signum, frame)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)


class Stopped(Exception):
    """Raised by StopNow's handler: the script stops where it is (nothing to save)."""

    def __init__(self, signum: int, message: str):
        self.signum, self.message = signum, message
        super().__init__(f"stopped by {self.name}: {message}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopNow(GracefulStop):
    """While active, SIGTERM and SIGINT raise Stopped at once: for scripts with nothing to save
    mid-way (test.py, feature.py), which then exit 128 + signal number with one line saying
    `message` (run_guarded prints it)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        raise Stopped(signum, self.message)
