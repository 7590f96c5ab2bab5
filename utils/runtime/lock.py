"""One run per folder: an exclusive lock on `<folder>/.lock`, so that a second run started on
the same stage folder (a requeued job while the old one still runs) stops at once instead of
writing the same checkpoint, metrics and alphas.

The lock is `filelock`'s (`FileLock`, an `fcntl.flock` on Unix; 3.30 or later for its
`on_acquired` hook and its fork handling). What this module adds: the holder ("pid N on host")
written into the lock file and named when a second run is refused, a warning instead of an
error where the filesystem has no locks, and a descriptor a child process can inherit
(alpha_efficiency.py's training runs hold their caller's lock)."""
from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import filelock

from utils.io.files import WriteError, naming

# flock's answers where the filesystem has no locks (NFS without a lock daemon, some FUSE):
# a run goes on unlocked, with a warning, as it would where fcntl does not exist (Windows).
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and the holder."""


class FolderLock:
    """One run per folder: `filelock.FileLock` on `<folder>/.lock`, which holds the holder's
    PID and host. Guaranteed (filelock's flock): the kernel releases it when the holding process
    ends, however it ends (kill -9 included), so a lock is never stale; processes forked while
    it is held (DataLoader workers) close their copy, so they never keep it after the holder
    dies. Added here: the holder line, FolderBusy naming it, and no lock (one warning line)
    where the filesystem has none or fcntl does not exist."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._lock = None
        self._fd: int | None = None  # the lock's descriptor while held (filelock lends it)
        self._inherited: list[int] = []

    def acquire(self, wait: str | None = None) -> FolderLock:
        """Take the lock, or raise FolderBusy naming the holder; with `wait`, print `wait`
        once instead and block until the holder ends. An OSError creating or writing the lock
        file is a WriteError naming it."""
        if not filelock.has_fcntl:
            return self
        if not hasattr(filelock.FileLock, "on_acquired"):
            raise RuntimeError(f"filelock {filelock.__version__} is too old to lock {self.folder}: "
                               "run `pip install 'filelock>=3.30'` (requirements.txt)")
        lock = filelock.FileLock(self.path, blocking=False, thread_local=False,
                                 fallback_to_soft=False, on_acquired=self._write_holder)
        try:
            try:
                lock.acquire()
            except filelock.Timeout:
                if not self.path.exists():  # filelock's answer when the file cannot be created
                    raise WriteError(self.path,
                                     FileNotFoundError(errno.ENOENT, "cannot create it")) from None
                if wait is None:
                    raise FolderBusy(f"{self.folder} is in use by another run ({self.holder()}); "
                                     "wait for it to end or stop it, or pass another "
                                     "--name") from None
                print(wait, flush=True)
                lock.acquire(blocking=True)
        except WriteError:
            raise
        except OSError as err:
            if err.errno not in NO_LOCKS:
                raise WriteError(self.path, err) from None
            print(f"warning: cannot lock {self.path} ({err.strerror}); a second run on this "
                  "folder would not be noticed", file=sys.stderr)
            return self
        self._lock = lock
        return self

    def _write_holder(self, fd: int) -> None:
        """filelock's on_acquired hook: the lock file says who holds it."""
        with naming(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> str:
        """Who holds the lock, as its lock file says ("pid unknown" if it does not say)."""
        try:
            text = self.path.read_bytes()[:200].decode("utf-8", "backslashreplace").strip()
        except OSError:
            text = ""
        return text or "pid unknown"

    def inheritable_fd(self) -> int | None:
        """A copy of the lock's descriptor for a child process (subprocess pass_fds): the child
        holds the lock too, and keeps it if this process dies first (kill -9), so a rerun waits
        for the child. Closed by release(), which must come after the child has ended: releasing
        unlocks every copy. None when nothing is locked."""
        if self._fd is None:
            return None
        self._inherited.append(os.dup(self._fd))
        return self._inherited[-1]

    def release(self) -> None:
        for fd in self._inherited:
            os.close(fd)
        self._inherited.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock, self._fd = None, None

    def __enter__(self) -> FolderLock:  # taken by acquire() / hold_folder()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_folder(folder: str | Path, ranks=None) -> FolderLock:
    """Create `folder` and lock it for this run (rank 0 alone under torchrun). A failure there
    (FolderBusy: another run holds it) is raised on every rank, with rank 0's message."""
    from utils.runtime import distributed
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
