"""Downloading CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST, as the StacNAS README promises
("CIFAR-10 and CIFAR-100 can be automatically downloaded").

The URLs, mirrors and md5 sums are torchvision's own (the dataset classes' ``url``/``tgz_md5`` and
``mirrors``/``resources``), and so are the download, checksum and extraction functions
(``torchvision.datasets.utils``). What this module adds is that nothing half-written ever lands
where a rerun would trust it: files are fetched and extracted in a temporary folder inside the
target (``.download-<name>-<host>-<pid>``), checked against their md5, and only then moved into
place with ``os.replace``; the temporary folder is removed whatever happens, and one that a
killed process left is removed by the next download. Sockets time out after
``DOWNLOAD_TIMEOUT`` seconds, so a stalled server is an error, not a hang.

Why not the datasets' own ``download=True`` (with ``socket.setdefaulttimeout``)? It lacks:
- placement: it downloads and unpacks straight into the final names. MNIST's check of what is
  there is presence only (its md5 sums are the archives'), so a file cut short by a kill or a
  full disk while it was unpacked stays, and once all four are present no rerun replaces it.
  CIFAR's check is every file's md5 at every load, which also replaces a copy the user put
  there that differs from torchvision's; here files that are there are never touched.
- mirror fallback: MNIST tries the next mirror only on a URLError or a RuntimeError (a refused
  connection, an HTTP error, a bad md5); a mirror that stalls mid-file raises a timeout, which
  stops the whole download. Here any failure of a mirror moves on to the next.
- one line: its errors span lines (MNIST lists every mirror on its own line) and name neither
  the folder nor, for a bad md5 ("File not found or corrupted."), the URL; a full disk reads
  as a download failure. Here a failure names each URL tried, and a full disk names the folder.
"""
from __future__ import annotations

import errno
import http.client
import os
import shutil
import socket
import sys
import tarfile
import urllib.error
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from utils.data.info import DataError
from utils.io.files import NO_ROOM, naming

# torchvision is imported inside the functions that use it, not here: importing it takes about
# 2 s, which every script would pay at startup (the dataset readers import this module).
if TYPE_CHECKING:
    from torchvision import datasets

# Seconds a connection or a read may stall before the download is an error.
DOWNLOAD_TIMEOUT = 30.0

# Write errors a user fixes by making room: reported as such (WriteError naming the folder),
# never as a failed download.
STORAGE_ERRNOS = NO_ROOM | {errno.EROFS}

# What fetching or unpacking can raise: network and file errors (URLError, HTTPError and socket
# timeouts are OSErrors), HTTP protocol errors (IncompleteRead), torchvision's RuntimeErrors (too
# many redirects, unknown archive type), invalid URLs, broken gzip or tar data.
_FETCH_ERRORS = (OSError, http.client.HTTPException, RuntimeError, ValueError, EOFError,
                 zlib.error, tarfile.TarError)

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    """The default progress log: one line on stderr (where torchvision's progress bar goes too)."""
    print(message, file=sys.stderr, flush=True)


class DownloadError(RuntimeError):
    """A download failed. ``failures`` holds one (url, reason) pair per URL tried; the message
    is one line naming each of them."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        super().__init__("; ".join(f"{url} failed ({reason})" for url, reason in self.failures))


def _reason(err: BaseException) -> str:
    """``err`` in one short line: its type and message (a URLError's underlying reason)."""
    detail = err.reason if type(err) is urllib.error.URLError else err
    text = " ".join(str(detail).split())
    name = type(detail).__name__ if isinstance(detail, BaseException) else type(err).__name__
    return f"{name}: {text}" if text else name


@contextmanager
def staging(parent: Path, name: str) -> Iterator[Path]:
    """A fresh temporary folder ``<parent>/.download-<name>-<host>-<pid>``, removed on exit
    whatever happens (what should survive must be moved out of it first). Those that killed
    processes of this host left (their pid no longer runs) are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".download-{name}-{socket.gethostname()}-"
    for old in parent.iterdir():
        pid = old.name[len(prefix):]
        if old.name.startswith(prefix) and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process that had the same pid
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (this process counts as not running)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _stored(err: BaseException) -> bool:
    """Whether ``err`` is a write error a user fixes by making room (not a failed download)."""
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Make ``seconds`` the default socket timeout (urllib's) for the duration of the block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch(url: str, md5: str, folder: Path, filename: str | None = None) -> Path:
    """Download ``url`` into ``folder/filename`` (default: the URL's basename) with torchvision's
    ``download_url`` and check the file's md5. Any failure, a mismatch included (a corrupt or
    truncated download), is a DownloadError naming ``url``. Returns the file's path."""
    from torchvision.datasets.utils import calculate_md5, download_url
    path = folder / (filename or os.path.basename(url))
    try:
        path.unlink(missing_ok=True)  # download_url would keep a file that is already there
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            download_url(url, str(folder), path.name)
        got = calculate_md5(path)
    except _FETCH_ERRORS as err:
        if _stored(err):
            raise
        raise DownloadError([(url, _reason(err))]) from err
    if got != md5:
        raise DownloadError([(url, f"md5 {got} of {path.stat().st_size} bytes, expected {md5}: "
                                   f"corrupt or truncated download")])
    return path


def _extract(archive: Path, folder: Path, url: str) -> None:
    """torchvision's ``extract_archive`` (untar, or gunzip one file) into ``folder``; a broken
    archive is a DownloadError naming ``url``, where it came from."""
    from torchvision.datasets.utils import extract_archive
    folder.mkdir(parents=True, exist_ok=True)
    try:
        extract_archive(str(archive), str(folder))
    except _FETCH_ERRORS as err:
        if _stored(err):
            raise
        raise DownloadError([(url, f"cannot extract {archive.name}: {_reason(err)}")]) from err


def move_into(source: Path, target: Path) -> None:
    """Move the folder ``source`` to ``target`` in one rename; when ``target`` already exists (a
    partial copy, or a concurrent download that finished first) move its files one by one,
    each replace atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError:
        if not target.is_dir():
            raise
    for item in sorted(source.iterdir()):
        os.replace(item, target / item.name)


def cifar_files(cls: type[datasets.CIFAR10]) -> list[str]:
    """The file names a CIFAR ``cls`` needs in its ``base_folder``: its batches and meta."""
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def download_cifar(cls: type[datasets.CIFAR10], data_dir: str | Path, log: Log = log_to_stderr) -> Path:
    """Download ``cls.url`` (torchvision's CIFAR10 or CIFAR100, or a subclass), check it against
    ``cls.tgz_md5``, extract it and move ``cls.base_folder`` to ``<data_dir>/<cls.base_folder>``,
    which is returned. A failed download is a DownloadError naming the URL; a WriteError naming
    the target means data_dir cannot be written (a full disk: make room)."""
    data_dir = Path(data_dir)
    target = data_dir / cls.base_folder
    log(f"downloading {cls.url} to {target}")
    with naming(target), staging(data_dir, cls.base_folder) as tmp:
        archive = fetch(cls.url, cls.tgz_md5, tmp, cls.filename)
        _extract(archive, tmp / "extracted", cls.url)
        folder = tmp / "extracted" / cls.base_folder
        missing = [name for name in cifar_files(cls) if not (folder / name).is_file()]
        if missing:
            raise DownloadError([(cls.url, f"the archive lacks {cls.base_folder}/{', '.join(missing)}")])
        move_into(folder, target)
    return target


def _fetch_mirrored(mirrors: Sequence[str], filename: str, md5: str, folder: Path, log: Log) -> tuple[Path, str]:
    """``filename`` from the first of ``mirrors`` that serves it intact: (path, url). When all
    fail, a DownloadError naming every URL tried."""
    failures: list[tuple[str, str]] = []
    for i, mirror in enumerate(mirrors):
        url = f"{mirror}{filename}"
        try:
            return fetch(url, md5, folder, filename), url
        except DownloadError as err:
            failures += err.failures
            if i + 1 < len(mirrors):
                log(f"{err}; trying {mirrors[i + 1]}")
    raise DownloadError(failures or [(filename, "no mirrors to download from")])


def download_idx(cls: type[datasets.MNIST], root: str | Path, log: Log = log_to_stderr) -> Path:
    """Download the gzipped idx files of ``cls`` (torchvision's MNIST or FashionMNIST: its
    ``resources``, each from the first of its ``mirrors`` that serves it with the right md5),
    gunzip them and move them into ``<root>/<cls.__name__>/raw``, which is returned. A failed
    download is a DownloadError naming the URLs tried; a WriteError naming ``raw`` means root
    cannot be written (a full disk: make room)."""
    root = Path(root)
    raw = root / cls.__name__ / "raw"
    log(f"downloading {cls.__name__} ({len(cls.resources)} files) from {cls.mirrors[0]} to {raw}")
    with naming(raw), staging(root, cls.__name__) as tmp:
        unpacked = tmp / "raw"
        for filename, md5 in cls.resources:
            archive, url = _fetch_mirrored(cls.mirrors, filename, md5, tmp, log)
            _extract(archive, unpacked, url)
        move_into(unpacked, raw)
    return raw


def download_off(source: str) -> str:
    """How to turn downloading back on, for messages (the scripts' flag; download=True here)."""
    return f"downloading is off (drop --no-download to fetch it from {source})"


def fetch_dataset(name: str, get: Callable[[], Path], by_hand: str) -> Path:
    """``get()`` (`download_cifar` or `download_idx` of dataset `name`), its failures turned into
    one-line DataErrors ending in ``by_hand``."""
    try:
        return get()
    except DownloadError as err:
        raise DataError(f"{name}: download failed: {err} — {by_hand}") from err
    except OSError as err:  # utils.io.files.WriteError: "cannot write <folder>: <cause>[; make room...]"
        raise DataError(f"{name}: download not stored: {err}") from err
