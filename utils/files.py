"""Writing files so that a failure is one line naming the file: whole files are written to a
temp file beside the target and `os.replace`d (the temp file removed on any failure, so the
previous version stays), and `naming(path)` wraps writers we do not control. A full disk
(`No space left on device`) or a file size limit (`File too large`) then reads as
`cannot write <file>: <cause>`, and a rerun after making room resumes."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

# The causes a user fixes by making room (or raising a quota / `ulimit -f`).
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class WriteError(OSError):
    """A file could not be written; the message names it and the cause, on one line."""

    def __init__(self, path: str | Path, err: OSError):
        cause = err.strerror or str(err) or type(err).__name__
        hint = "; make room and rerun the same command" if err.errno in NO_ROOM else ""
        super().__init__(f"cannot write {path}: {cause}{hint}")
        self.path, self.cause_errno = Path(path), err.errno


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised inside the block into a WriteError naming `path` (a write error
    itself names no file: `[Errno 28] No space left on device`)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from None


def write_bytes(path: str | Path, data: bytes, previous: str | Path | None = None) -> None:
    """Write `data` to `path` atomically: a temp file beside it, then `os.replace`. With
    `previous`, the file it replaces is moved there first (only once the new one is written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with naming(path):
            with open(tmp, "wb") as f:
                f.write(data)
            if previous is not None and path.exists():
                os.replace(path, previous)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | Path, text: str) -> None:
    """Append `text` (UTF-8) to `path` (a failed append leaves at most a partial last line)."""
    with naming(path), open(path, "a", encoding="utf-8") as f:
        f.write(text)


def report_file_size_limit() -> None:
    """Make a file size limit (`ulimit -f`) an error of the write that exceeds it (EFBIG)
    rather than a silent death by SIGXFSZ. Scripts call it at start (main thread only)."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
