"""Logs for people (log.txt + console) and records for programs (metrics.jsonl, tensorboard)."""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils.io.files import (BadFile, WriteError, append_text, json_text, naming, read_jsonl,
                            write_text)
from utils.runtime.signals import Stopped


# Every log.txt this process opened (get_logger), in order: the error a script ends with is
# appended to those its run opened (utils.runtime.cli.run_guarded -> note_in_logs).
_OPENED: list[Path] = []


def opened_logs() -> list[Path]:
    """The log files get_logger opened in this process so far, oldest first (a copy)."""
    return list(_OPENED)


def note_in_logs(line: str, logs: list[Path]) -> None:
    """Append `line` (with the log's time stamp) to each of `logs` that exists: the error or
    stop line a script ends with then stands in the log that run_all.py and the README point
    to, not only on stderr. Best effort: a log that cannot be written (a full disk) is left as
    it is, since the line is on stderr already."""
    stamp = time.strftime("%m/%d %H:%M:%S")
    for path in dict.fromkeys(logs):
        if not path.is_file():
            continue
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8",
                                                errors="backslashreplace") as out:
            out.write(f"{stamp} {line}\n")


def params_text(count: int, unit: float = 1e6) -> str:
    """A parameter count in millions (`unit` 2**20: the authors' unit), three significant
    digits without an exponent (`0.00661`, `3.35`, `1234`): the one way every message prints
    one, so that a count reads the same at the start and the end of a run."""
    value = count / unit
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def get_logger(stage_dir: str | Path, name: str) -> logging.Logger:
    """Logger writing to the console and to <stage_dir>/log.txt (appending on resume). Text the
    output cannot encode (a name with an undecodable byte, under any locale) is written with
    backslash escapes; a failing write (a full disk) is one warning line, not a traceback. The
    file is recorded (opened_logs) for the line the script may end with."""
    logger = logging.getLogger(f"stacnas.{name}.{os.path.abspath(stage_dir)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    close_logger(logger)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%m/%d %H:%M:%S")
    log_file = Path(stage_dir) / "log.txt"
    with naming(log_file):
        file_handler = SafeFileHandler(log_file)
    for handler in (SafeStreamHandler(sys.stdout), file_handler):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    _OPENED.append(log_file.absolute())
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Close every handler. A log line that could not be written (a full disk) stays in the
    file's buffer, and closing retries it: that failure was already reported once (WarnOnce),
    so it must not replace the error the run is stopping with."""
    for handler in list(logger.handlers):
        with contextlib.suppress(OSError):
            handler.close()
        logger.removeHandler(handler)


class WarnOnce:
    """Handler mixin: a record that cannot be written is one warning line on stderr (the first
    time), instead of logging's "--- Logging error ---" traceback for every record."""

    target = "the log"
    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, Stopped):  # a stop signal that arrived mid-write: not a write error
            raise err
        if self._warned:
            return
        self._warned = True
        cause = getattr(err, "strerror", None) or str(err) or type(err).__name__
        with contextlib.suppress(Exception):
            sys.stderr.write(f"warning: cannot write {self.target}: {cause}; its lines are lost "
                             "until that is fixed\n")


class SafeStreamHandler(WarnOnce, logging.StreamHandler):
    """The console: characters the stream's encoding lacks become backslash escapes."""

    target = "the console"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        try:
            return text.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:  # a stream with an encoding Python does not know
            return text.encode("ascii", "backslashreplace").decode("ascii")


class SafeFileHandler(WarnOnce, logging.FileHandler):
    """log.txt, in UTF-8 whatever the locale; what UTF-8 cannot hold (a name's undecodable
    byte) becomes a backslash escape."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", errors="backslashreplace")
        self.target = str(path)


class EventsFile:
    """A TensorBoard event file written synchronously by tensorboardX's RecordWriter (its
    framing and checksums): every record is flushed to the disk at once, and a failed write is
    a WriteError naming the file, after which the file is closed (a partial last record is
    what TensorBoard's reader skips). Not tensorboardX's SummaryWriter, which writes from a
    thread where a full disk prints tracebacks and then blocks its queue; not its EventsWriter,
    which names the file by the second and opens it with "wb", so a second writer started in
    the same folder within that second (a quick rerun) would truncate the first one's records.
    Here the file is always a new one (`_new_file`)."""

    def __init__(self, folder: Path):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.record_writer import RecordWriter
        folder.mkdir(exist_ok=True)
        self.path = _new_file(folder,
                              f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        with naming(self.path):  # an absolute path, which tensorboardX never takes for s3:/gs:
            self._writer = RecordWriter(os.path.abspath(self.path))
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))  # header first

    def _add(self, event) -> None:
        try:
            with naming(self.path):
                self._writer.write(event.SerializeToString())
                self._writer.flush()
        except OSError:
            self.close()  # closed now, so that garbage collection does not retry the write
            raise

    def _summary(self, step: int, summary) -> None:
        from tensorboardX.proto.event_pb2 import Event
        self._add(Event(wall_time=time.time(), step=step, summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar
        self._summary(step, scalar(tag, float(value)))

    def add_histogram(self, tag: str, values, step: int) -> None:
        from tensorboardX.summary import histogram
        self._summary(step, histogram(tag, values, "auto"))

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboardX.summary import text as text_summary
        self._summary(step, text_summary(tag, text))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.close()


def _new_file(folder: Path, name: str) -> Path:
    """`folder/name`, or `name.1`, `name.2`... the first that does not exist, created empty
    (O_EXCL: never one that another writer has just taken)."""
    for n in range(1000):
        path = folder / (name if n == 0 else f"{name}.{n}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise WriteError(path, err) from None
    raise WriteError(folder / name,
                     FileExistsError(errno.EEXIST, "1000 event files of that name exist"))


class MetricsWriter:
    """One JSON object per line in <stage_dir>/metrics.jsonl; tensorboard scalars beside it.
    A record is strict JSON (a NaN or infinite value is written as null) appended whole or
    not at all (utils.io.files.append_text); a partial last line that a kill mid-append left is
    dropped on resume (truncate_after), so it never stops a rerun."""

    def __init__(self, stage_dir: str | Path, tensorboard: bool = True):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.tb = EventsFile(Path(stage_dir) / "tb") if tensorboard else None

    def write(self, record: dict, step: int) -> None:
        append_text(self.path, json_text(record, indent=None)[0])
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (a resumed run rewrites them) and a partial last
        line (an append that a kill or a full disk cut short); the file is rewritten atomically.
        Any other damage: one BadFile line naming the file (utils.io.files.read_jsonl)."""
        if not self.path.exists():
            return
        records = read_jsonl(self.path, what="one metrics record (a JSON object) per line")
        for record in records:
            if not isinstance(record.get("epoch", 0), int) or isinstance(record.get("epoch"), bool):
                raise BadFile(f"{self.path}: a record's \"epoch\" is "
                              f"{str(record['epoch'])[:40]!r}, expected an integer; repair or "
                              "remove that line")
        kept = [json_text(r, indent=None)[0] for r in records if r.get("epoch", 0) <= epoch]
        write_text(self.path, "".join(kept))

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


_warned_unusable_gpu = False


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu (with one warning line when an NVIDIA GPU is
    present but PyTorch cannot use it: utils.runtime.cuda_guard); "cuda:N" (from --gpu N) -> that
    device. Asking for CUDA without one, or for a device index the machine lacks, is an error
    that names the cause."""
    from utils.runtime.cuda_guard import unusable_gpu_cause
    global _warned_unusable_gpu
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        cause = unusable_gpu_cause()
        if cause and not _warned_unusable_gpu and os.environ.get("RANK", "0") == "0":
            _warned_unusable_gpu = True
            print(f"warning: an NVIDIA GPU is present but PyTorch cannot use it: {cause}; "
                  "training on the CPU", file=sys.stderr, flush=True)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    flag = "--device cuda" if device.index is None else f"--gpu {device.index}"
    if not torch.cuda.is_available():
        cause = unusable_gpu_cause()
        if cause:
            raise RuntimeError(f"{flag}: an NVIDIA GPU is present but PyTorch cannot use it: "
                               f"{cause}")
        raise RuntimeError(f"{flag}: no CUDA device is available; use --device cpu or auto"
                           + (" (and drop --gpu)" if device.index is not None else ""))
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(f"{flag}: this machine has {count} CUDA device(s), numbered 0 to "
                           f"{count - 1}; pass one of those")
    return device
