"""Stopping on SIGTERM / SIGINT / SIGHUP (Slurm's preemption and time limit, `timeout`, Ctrl-C,
a closed terminal or ssh session): a training loop saves a checkpoint at the next step boundary
(GracefulStop); a script with nothing to save stops at once with one line (StopNow). DataLoader
workers ignore these signals (utils.data.loaders.worker_init_fn), so that one sent to the whole
process group acts through the main process alone."""
from __future__ import annotations

import signal
import threading


# What stops a run: a scheduler's preemption or time limit (SIGTERM), Ctrl-C (SIGINT), the
# terminal or ssh session closing (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_status(code: int) -> int:
    """A child's exit code as a shell reports it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


class GracefulStop:
    """While active, SIGTERM, SIGINT and SIGHUP only set `signum`; the training loop then saves a
    checkpoint at the next step boundary and exits (exit code 128 + signal number)."""

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            early = _take_starting()
            if early is not None:  # on exit, what was there before keep_while_starting()
                self._previous.update(early._previous)
                if early.signum is not None and self.signum is None:
                    self._early(early.signum)
        return self

    def _early(self, signum: int) -> None:
        """Act on a signal that arrived while the script was starting (keep_while_starting)."""
        self.signum = signum

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
            from utils.runtime.distributed import any_rank
            flag = any_rank(flag, ranks)
        return flag

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name


_starting: GracefulStop | None = None  # keep_while_starting()'s recorder, until taken


def keep_while_starting() -> None:
    """Called by a script first thing (before importing torch, which takes seconds): until it
    enters its GracefulStop / StopNow / ForwardToChild, a stop signal is recorded instead of
    ending the script silently (SIGTERM, SIGHUP) or with a KeyboardInterrupt traceback (SIGINT);
    the first of those handlers then acts on it at once. Main thread only."""
    global _starting
    if _starting is None and threading.current_thread() is threading.main_thread():
        _starting = GracefulStop().__enter__()


def _take_starting() -> GracefulStop | None:
    global _starting
    early, _starting = _starting, None
    return early


class ForwardToChild(GracefulStop):
    """While active, SIGTERM, SIGINT and SIGHUP are recorded in `signum` and passed on to the
    child process in `proc` (a stage script: it saves at its next step and stops), so that the
    parent can stop instead of starting the next stage.

    Guaranteed: no signal is lost. One that arrives while no child is registered (the child is
    being started, or none runs) is kept and sent as soon as a child is assigned to `proc`; one
    that arrives while a child runs is sent at once. Each signal is sent once. The parent should
    check `signum` before it starts a child (it is set from the first signal on)."""

    def __init__(self) -> None:
        super().__init__()
        self._proc = None
        self._unsent: list[int] = []  # signals not passed on yet, oldest first

    @property
    def proc(self):
        """The running child (a subprocess.Popen), or None."""
        return self._proc

    @proc.setter
    def proc(self, proc) -> None:
        self._proc = proc
        self._forward()  # a signal that came while the child was being started

    def _handle(self, signum: int, frame) -> None:
        super()._handle(signum, frame)
        self._unsent.append(signum)
        self._forward()

    def _early(self, signum: int) -> None:
        self._handle(signum, None)

    def _forward(self) -> None:
        """Send the kept signals to the child, if there is one. list.pop is one step for
        Python's signal handling, so a handler running in between never sends one twice."""
        proc = self._proc
        if proc is None:
            return
        while True:
            try:
                signum = self._unsent.pop(0)
            except IndexError:
                return
            proc.send_signal(signum)  # nothing when the child has already ended


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
    """While active, SIGTERM, SIGINT and SIGHUP raise Stopped at once: for scripts with nothing to
    save mid-way (test.py, feature.py), which then exit 128 + signal number with one line saying
    `message` (run_guarded prints it)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        raise Stopped(signum, self.message)

    def _early(self, signum: int) -> None:
        self.signum = signum

    def __enter__(self) -> StopNow:
        super().__enter__()
        if self.signum is not None:  # arrived while the script was starting: stop now
            self.__exit__()
            raise Stopped(self.signum, self.message)
        return self
