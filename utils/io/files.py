"""Writing files so that a failure is one line naming the file: whole files are written to a
temp file beside the target, fsynced, and `os.replace`d, the folder synced after (the temp file
removed on any failure, so the previous version stays); a rotated file (checkpoint.pt ->
checkpoint.prev.pt) exists under its own name at every moment; an append is whole or undone;
`naming(path)` wraps writers we do not control. A full disk (`No space left on device`) or a
file size limit (`File too large`) then reads as `cannot write <file>: <cause>`, and a rerun
after making room resumes. JSON is written strictly (write_json: NaN becomes null)."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

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
    """Write `data` to `path` atomically and durably: a temp file beside it, flushed to the disk
    (fsync), then `os.replace`d over `path`, then the folder synced so that the rename itself
    survives a crash. On any failure the temp file is removed and `path` is as it was.

    With `previous`, the file being replaced is kept there, and `path` exists at every moment:
    `previous` becomes a hard link to (or a copy of) the current `path` first, and only then
    is the new file renamed over `path` (README "Interruptions and bad input": a kill between
    the two renames leaves the old checkpoint in place, never only `.prev` and a temp file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with naming(path):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if previous is not None and path.exists():
            keep_as(path, Path(previous))
        with naming(path):
            os.replace(tmp, path)
        sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def keep_as(path: Path, previous: Path) -> None:
    """Make `previous` a second name of `path` (a hard link; a copy where the filesystem has
    none), atomically: `previous` is always either its old self or a complete `path`, and
    `path` is never touched."""
    staging = previous.with_name(f".{previous.name}.tmp")
    if previous.exists() and os.path.samefile(path, previous):
        return  # already (a kill right after the last rotation's link; rename would do nothing)
    try:
        with naming(previous):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            try:
                os.link(path, staging)
            except OSError as err:
                if err.errno in NO_ROOM:
                    raise
                _copy_synced(path, staging)  # no hard links here (some network filesystems)
            os.replace(staging, previous)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise


def _copy_synced(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def sync_folder(folder: str | Path) -> None:
    """fsync a folder, so that the files created or renamed in it survive a crash (where the
    filesystem can sync a folder at all: elsewhere nothing happens)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def finite_json(value: object, where: str = "") -> tuple[object, list[str]]:
    """(`value` with every NaN or infinite float replaced by None, the dotted names of the
    fields replaced). JSON has no NaN: Python would write the bare word `NaN`, which strict
    readers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "value"]
    if isinstance(value, dict):
        pairs = [(k, finite_json(v, f"{where}.{k}" if where else str(k))) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, [n for _, (_, names) in pairs for n in names]
    if isinstance(value, (list, tuple)):
        items = [finite_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [n for _, names in items for n in names]
    return value, []


def json_text(value: object, indent: int | None = 2) -> tuple[str, list[str]]:
    """(`value` as strict JSON text ending in a newline, the fields written as null because
    they were NaN or infinite: finite_json)."""
    clean, replaced = finite_json(value)
    return json.dumps(clean, indent=indent, allow_nan=False) + "\n", replaced


def write_json(path: str | Path, value: object) -> list[str]:
    """Write `value` to `path` as strict JSON, atomically; a NaN or infinite number is written
    as null. Returns the names of the fields so written, for the caller to report."""
    text, replaced = json_text(value)
    write_text(path, text)
    return replaced


def append_text(path: str | Path, text: str) -> None:
    """Append `text` (UTF-8) to `path`, flushed to the disk. A failed append (a full disk) is
    undone: the file is cut back to its old length, so it never ends in a partial line; only a
    kill in the middle of the write can leave one (readers skip it: read_jsonl)."""
    path = Path(path)
    data = memoryview(text.encode("utf-8"))
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def report_file_size_limit() -> None:
    """Make a file size limit (`ulimit -f`) an error of the write that exceeds it (EFBIG)
    rather than a silent death by SIGXFSZ. Scripts call it at start (main thread only)."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# ----------------------------------------------------------------------------- reading
class BadFile(ValueError):
    """A file a script reads is not what it should be; the message names it, on one line."""


@contextlib.contextmanager
def _ending_with(fix: str | None) -> Iterator[None]:
    """A BadFile raised inside the block gets "; `fix`" at the end of its line (when `fix`)."""
    try:
        yield
    except BadFile as err:
        if fix is None:
            raise
        raise BadFile(f"{err}; {fix}") from None


def read_json(path: str | Path, kind: type | tuple = dict, what: str = "JSON",
              fix: str | None = None) -> object:
    """The JSON value in `path`, checked to be of `kind` (dict by default). Not UTF-8, not
    JSON, a number too large to convert, too deeply nested or of another kind: BadFile naming
    `path` and `what` it should hold, then "; `fix`" when given (the file is left as it is)."""
    with _ending_with(fix):
        return _read_json(Path(path), kind, what)


def _read_json(path: Path, kind: type | tuple, what: str) -> object:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadFile(f"{path}: not UTF-8 text; expected {what}") from None
    value = _loads(text, path, what)
    if not isinstance(value, kind):
        raise BadFile(f"{path}: holds {_kind_name(type(value))}, expected {what} "
                      f"({_kind_name(kind)})")
    return value


def read_jsonl(path: str | Path, what: str = "one JSON object per line",
               fix: str | None = None) -> list[dict]:
    """The JSON objects in `path`, one per line. A last line without its newline is what an
    interrupted append leaves (a full disk, a kill): it is skipped, so that a rerun can go on.
    Any other bad line: BadFile naming `path` and the line number, then "; `fix`" when given."""
    with _ending_with(fix):
        return _read_jsonl(Path(path), what)


def _read_jsonl(path: Path, what: str) -> list[dict]:
    complete = path.read_bytes().split(b"\n")[:-1]  # after the last newline: "" or partial
    records = []
    for number, raw in enumerate(complete, 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise BadFile(f"{path}: line {number} is not UTF-8 text; expected {what}") from None
        if not line.strip():
            continue
        record = _loads(line, path, what, line=number)
        if not isinstance(record, dict):
            raise BadFile(f"{path}: line {number} holds {_kind_name(type(record))}, "
                          f"expected {what}")
        records.append(record)
    return records


def _loads(text: str, path: Path, what: str, line: int | None = None) -> object:
    where = f"{path}" + (f": line {line}" if line is not None else "")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if line is not None else f"line {exc.lineno} column {exc.colno}"
        raise BadFile(f"{where}: not JSON ({exc.msg} at {at}); expected {what}") from None
    except RecursionError:
        raise BadFile(f"{where}: nested too deeply; expected {what}") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise BadFile(f"{where}: not JSON we read ({str(exc).split(':')[0][:100]}); "
                      f"expected {what}") from None


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "an object", list: "a list", str: "a string", int: "a number",
             float: "a number", bool: "true/false", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))
