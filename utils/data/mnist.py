"""MNIST and Fashion-MNIST: their idx files found (data_dir, a cache, Debian's Fashion-MNIST
package), unpacked, downloaded when absent and allowed, and read with every header and label
checked, so that a damaged file is a one-line DataError naming it and what to do."""
from __future__ import annotations

import functools
import gzip
import os
import shutil
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.download import Log, download_idx, download_off, fetch_dataset
from utils.data.info import DATASET_INFO, DataError, reason

# torchvision is imported inside the functions that build datasets, not here: importing it
# takes about 2 s, which every script would pay at startup (even for --help).
if TYPE_CHECKING:
    from torchvision import datasets

# Where Debian's dataset-fashion-mnist package puts the gzipped idx files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# Where idx files are unpacked when data_dir is not writable (expanded at call time).
CACHE_DIR = "~/.cache/stacnas"

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _is_writable(path: Path) -> bool:
    """Whether ``path`` (or its first existing ancestor, where it would be created) is writable."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def _has_idx(folder: Path, plain_only: bool = False) -> bool:
    names = [(f,) if plain_only else (f, f + ".gz") for f in _IDX_FILES]
    return all(any((folder / n).is_file() for n in options) for options in names)


def _unpack_one(source: Path, tmp: Path) -> None:
    """Copy or gunzip `source` to `tmp`; a damaged gzip file is a ValueError saying how."""
    opener = gzip.open if source.name.endswith(".gz") else open
    try:
        with opener(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        why = "truncated (it ends inside the compressed data)" if isinstance(err, EOFError) else \
            f"not a gzip file or damaged ({reason(err)})"
        raise ValueError(why) from None


def _unpack_idx(source: Path, target: Path, name: str) -> None:
    """Copy or gunzip the four idx files of `name` from ``source`` into ``target``, each
    through a temporary file that is checked to be a complete idx file before it is renamed
    into place. Any failure (a damaged or truncated source, a full disk, a signal) removes the
    temporary file and is a one-line DataError naming the file at fault."""
    target.mkdir(parents=True, exist_ok=True)
    for base in _IDX_FILES:
        if (target / base).is_file():
            continue
        source_file = source / base if (source / base).is_file() else source / f"{base}.gz"
        tmp = target / f".{base}.{os.getpid()}.tmp"
        fix = ("reinstall dataset-fashion-mnist" if source == Path(FASHION_MNIST_SYSTEM_DIR)
               else f"replace it with the original ({_IDX[name][1]})")
        try:
            _unpack_one(source_file, tmp)
            with open(tmp, "rb") as f:
                _idx_layout(f.read(16), tmp.stat().st_size, _idx_dims(base))
            os.replace(tmp, target / base)
        except ValueError as err:
            raise DataError(f"{source_file}: {err}; {fix}") from None
        except OSError as err:
            raise DataError(f"cannot unpack {source_file} into {target}: {reason(err)}") from err
        finally:
            tmp.unlink(missing_ok=True)


# The torchvision reader (by class name, which is also its folder under data_dir) and web page.
_IDX = {"mnist": ("MNIST", "http://yann.lecun.com/exdb/mnist/"),
        "fashionmnist": ("FashionMNIST", "https://github.com/zalandoresearch/fashion-mnist")}
_APT = "run `apt-get install dataset-fashion-mnist`"


def _idx_class(name: str) -> type[datasets.MNIST]:
    """torchvision's reader of ``name`` (mnist or fashionmnist)."""
    from torchvision import datasets
    return getattr(datasets, _IDX[name][0])


def _idx_missing(name: str, raw: Path) -> DataError:
    """The error when nothing was found and downloading is off."""
    cls, page = _idx_class(name), _IDX[name][1]
    how = f"put the idx files ({page}) in {raw}"
    if name == "mnist":
        return DataError(f"mnist not found: looked for {raw}/{{train,t10k}}-*-ubyte[.gz]; "
                         f"{download_off(cls.mirrors[0])} — or {how}")
    return DataError(f"fashionmnist not found: looked for {raw}/{{train,t10k}}-*-ubyte[.gz] and "
                     f"{FASHION_MNIST_SYSTEM_DIR}/*-ubyte.gz; {download_off(cls.mirrors[0])} — or {_APT} or {how}")


def _idx_by_hand(name: str, raw: Path) -> str:
    """How to get ``name`` when its download failed."""
    how = f"put the idx files ({_IDX[name][1]}) in {raw} by hand"
    if name == "mnist":
        return how
    return f"no Debian copy in {FASHION_MNIST_SYSTEM_DIR} either; {_APT} or {how}"


def _download_idx(name: str, root: Path, raw: Path, log: Log) -> bool:
    """Download ``name`` into ``root``; False when that failed and Debian's Fashion-MNIST copy
    can stand in (logged), a DataError saying how to get the files into ``raw`` otherwise."""
    debian = name == "fashionmnist" and _has_idx(Path(FASHION_MNIST_SYSTEM_DIR))
    try:
        fetch_dataset(name, lambda: download_idx(_idx_class(name), root, log), _idx_by_hand(name, raw))
    except DataError as err:
        if not debian:
            raise
        log(f"{name}: download failed ({err.__cause__}); using Debian's copy in {FASHION_MNIST_SYSTEM_DIR}")
        return False
    return True


def _idx_root(name: str, data_dir: str, download: bool, log: Log) -> Path:
    """The root torchvision should read ``<root>/<MNIST|FashionMNIST>/raw`` from: plain idx files
    in data_dir or CACHE_DIR; else gzipped ones in data_dir unpacked; else a download (when
    allowed); else Fashion-MNIST's system copy unpacked. Unpacking goes into data_dir, or into
    CACHE_DIR when data_dir is read-only."""
    folder = _IDX[name][0]
    local, cache = Path(data_dir), Path(CACHE_DIR).expanduser()
    for root in (local, cache):
        if _has_idx(root / folder / "raw", plain_only=True):
            return root
    writable = local if _is_writable(local / folder / "raw") else cache
    if _has_idx(local / folder / "raw"):
        _unpack_idx(local / folder / "raw", writable / folder / "raw", name)
        return writable
    if download and _download_idx(name, writable, local / folder / "raw", log):
        return writable
    if name == "fashionmnist" and _has_idx(Path(FASHION_MNIST_SYSTEM_DIR)):
        _unpack_idx(Path(FASHION_MNIST_SYSTEM_DIR), writable / folder / "raw", name)
        return writable
    raise _idx_missing(name, local / folder / "raw")


# An idx file (http://yann.lecun.com/exdb/mnist/): a big-endian magic number 0x0000080N (ubyte
# data, N dimensions), N big-endian sizes, then the bytes. Every idx file is read or unpacked
# through `_idx_layout`, so a wrong magic number, a truncated or empty file, or a mismatch
# between images and labels is a one-line DataError naming the file, never a traceback.
def _idx_dims(name: str) -> int:
    """Dimensions of idx file `name`: 3 for images (N x 28 x 28), 1 for labels."""
    return 3 if "images" in name else 1


def _idx_layout(head: bytes, size: int, dims: int) -> tuple[int, ...]:
    """The sizes declared by an idx header `head` of a `size`-byte file holding `dims`-d ubyte
    data, checked against that size; otherwise a ValueError saying what is wrong."""
    need = 4 + 4 * dims
    if size < need:
        raise ValueError(f"{'empty' if size == 0 else 'truncated'} ({size} bytes; the idx header "
                         f"alone is {need})")
    magic = int.from_bytes(head[:4], "big")
    if magic != 0x800 + dims:
        raise ValueError(f"not an idx file of {dims}-d ubyte data (magic number 0x{magic:08x}, "
                         f"expected 0x{0x800 + dims:08x})")
    sizes = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    want = need + int(np.prod(sizes, dtype=object))
    if size != want:
        raise ValueError(f"{'truncated' if size < want else 'longer than its header says'}: "
                         f"{size} bytes, its header ({' x '.join(map(str, sizes))}) needs {want}")
    return sizes


def _idx_fix(name: str) -> str:
    return (f"replace it with the original ({_IDX[name][1]}), or delete it to have it unpacked "
            "or downloaded again")


def _read_idx(path: Path, name: str) -> np.ndarray:
    """The uint8 array in idx file `path` (of dataset `name`), its layout checked; otherwise a
    one-line DataError naming `path`."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({reason(err)})") from err
    dims = _idx_dims(path.name)
    try:
        sizes = _idx_layout(blob[:4 + 4 * dims], len(blob), dims)
    except ValueError as err:
        raise DataError(f"{path}: {err}; {_idx_fix(name)}") from None
    return np.frombuffer(blob, np.uint8, offset=4 + 4 * dims).reshape(sizes)


def _idx_data(raw: Path, name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 28 x 28, labels N) of one split of `name` in folder `raw`, checked to agree:
    as many labels as images, each a class; otherwise a one-line DataError naming the file."""
    prefix = "train" if train else "t10k"
    images_file, labels_file = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    images, labels = _read_idx(images_file, name), _read_idx(labels_file, name)
    info = DATASET_INFO[name]
    if images.shape[1:] != (info.size, info.size):
        raise DataError(f"{images_file}: holds {images.shape[1]}x{images.shape[2]} images, {name}'s "
                        f"are {info.size}x{info.size}; {_idx_fix(name)}")
    if len(images) != len(labels):
        raise DataError(f"{labels_file}: {len(labels)} labels for the {len(images)} images of "
                        f"{images_file.name}; {_idx_fix(name)}")
    if len(labels) and int(labels.max()) >= info.classes:
        bad = int(np.argmax(labels >= info.classes))
        raise DataError(f"{labels_file}: label {labels[bad]} of image {bad} is not a class of {name} "
                        f"(0..{info.classes - 1}); {_idx_fix(name)}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


@functools.cache
def _local_idx(name: str) -> type[datasets.MNIST]:
    """``LocalMNIST`` or ``LocalFashionMNIST``: torchvision's MNIST / FashionMNIST dataset over
    the idx files of ``<root>/<MNIST|FashionMNIST>/raw``, read by `_idx_data` (every file
    checked; torchvision's legacy ``processed/*.pt`` files are never read). Built on first use,
    reachable as ``utils.data.mnist.<name>`` like the CIFAR classes."""
    from torchvision import datasets

    base = getattr(datasets, name.removeprefix("Local"))
    dataset = {"MNIST": "mnist", "FashionMNIST": "fashionmnist"}[base.__name__]
    members = {
        "__doc__": f"torchvision's {base.__name__} dataset, its idx files read and checked here.",
        "__module__": __name__, "__qualname__": name,
        "raw_folder": property(lambda self: os.path.join(self.root, base.__name__, "raw")),
        "_check_legacy_exist": lambda self: False,
        "_check_exists": lambda self: True,  # _idx_root found the files; reading names any gap
        "_load_data": lambda self: _idx_data(Path(self.raw_folder), dataset, self.train),
    }
    return type(name, (base,), members)


def load_mnist(name: str, data_dir: str, train: bool, transform: Callable, download: bool, log: Log) -> Dataset:
    cls = _local_idx("Local" + _IDX[name][0])
    return cls(str(_idx_root(name, data_dir, download, log)), train=train, transform=transform, download=False)


def __getattr__(name: str) -> Any:
    if name in ("LocalMNIST", "LocalFashionMNIST"):
        return _local_idx(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
