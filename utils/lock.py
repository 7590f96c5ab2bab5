"""One run per folder: an exclusive lock on `<folder>/.lock`, so that a second run started on
the same stage folder (a requeued job while the old one still runs) stops at once instead of
writing the same checkpoint, metrics and alphas."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from utils.files import naming


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and the holder."""


class FolderLock:
    """One run per folder: an exclusive `fcntl.flock` on `<folder>/.lock`, which holds the
    holder's PID and host. The kernel releases it when the holding process ends, however it
    ends (kill -9 included), so a lock is never stale. Processes forked while it is held
    (DataLoader workers) close their copy, so they do not keep it after the holder dies.
    Where fcntl does not exist (Windows), or the filesystem has no locks, nothing is locked."""

    _held: set[int] = set()
    _fork_hook = False

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:
            return self
        with naming(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "backslashreplace").strip()
            os.close(fd)
            raise FolderBusy(f"{self.folder} is in use by another run ({holder or 'pid unknown'}); "
                             "wait for it to end or stop it, or pass another --name") from None
        except OSError as err:  # a filesystem without locks
            os.close(fd)
            print(f"warning: cannot lock {self.path} ({err.strerror}); a second run on this "
                  "folder would not be noticed", file=sys.stderr)
            return self
        with naming(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        self._held.add(fd)
        if not FolderLock._fork_hook and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=FolderLock._close_in_child)
            FolderLock._fork_hook = True
        return self

    def release(self) -> None:
        if self._fd is not None:
            self._held.discard(self._fd)
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "FolderLock":  # taken by acquire() / hold_folder()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @classmethod
    def _close_in_child(cls) -> None:
        for fd in cls._held:
            try:
                os.close(fd)  # the parent's descriptor keeps the lock
            except OSError:
                pass
        cls._held.clear()


def hold_folder(folder: str | Path, ranks=None) -> FolderLock:
    """Create `folder` and lock it for this run (rank 0 alone under torchrun). A failure there
    (FolderBusy: another run holds it) is raised on every rank, with rank 0's message."""
    from utils import distributed
    lock, error = FolderLock(folder), None
    if ranks is None or ranks.is_main:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (OSError, FolderBusy) as err:
            error = err
    if ranks is not None:
        problem = distributed.from_main(None if error is None else str(error), ranks)
        if problem is not None and error is None:
            error = RuntimeError(problem)
    if error is not None:
        raise error
    return lock
