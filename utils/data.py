"""Datasets: what each one looks like (channels, input size, classes), and their loaders.

CIFAR-10/100, MNIST and Fashion-MNIST are downloaded into ``data_dir`` when they are absent and
``get_dataset(..., download=True)`` (``utils.download``: torchvision's URLs and md5 sums, moved into
place only once verified); Fashion-MNIST falls back to Debian's ``dataset-fashion-mnist`` copy.
ImageNet and image folders are never downloaded. A dataset that is not on disk and could not be
downloaded is a one-line ``DataError`` naming where it was looked for (or the URL that failed) and
how to get it. Transforms follow DARTS's code and pt.darts (the code StacNAS builds on).

Every dataset file is read here and checked, so that a damaged one is a one-line DataError naming
it (and what to do), never a traceback: CIFAR batches through a restricted unpickler (a file
carrying code is refused before anything runs), idx files by their header and length, images
item by item (`read_item`, in DataLoader workers too). A Loader's workers are shut down when a
pass fails, and before the interpreter exits, so a failing worker never leaves the run hanging.
"""
from __future__ import annotations

import atexit
import functools
import gzip
import multiprocessing.util  # its exit handler is registered before this module's (see _LOADERS)
import os
import pickle
import random
import shutil
import signal
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from utils.download import DownloadError, Log, download_cifar, download_idx, log_to_stderr
from utils.signals import STOP_SIGNALS, Stopped

# torchvision is imported inside the functions that build datasets and transforms, not here:
# importing it takes about 2 s, which every script would pay at startup (even for --help).
if TYPE_CHECKING:
    from torchvision import datasets
    from torchvision import transforms as T


class DatasetInfo(NamedTuple):
    channels: int
    size: int
    classes: int

    def network_shape(self) -> dict[str, int]:
        """The data's shape as the network builders of models.factory take it."""
        return {"num_classes": self.classes, "in_channels": self.channels, "input_size": self.size}


# Shapes of the built-in datasets, known without touching the data.
DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(3, 32, 10),
    "cifar100": DatasetInfo(3, 32, 100),
    "mnist": DatasetInfo(1, 28, 10),
    "fashionmnist": DatasetInfo(1, 28, 10),
    "imagenet": DatasetInfo(3, 224, 1000),
    "synthetic": DatasetInfo(3, 32, 10),
}

DATASETS = ("cifar10", "cifar100", "mnist", "fashionmnist", "imagenet", "imagefolder", "synthetic")
TRANSFORMS = ("train", "eval")

# Where Debian's dataset-fashion-mnist package puts the gzipped idx files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# Where idx files are unpacked when data_dir is not writable (expanded at call time).
CACHE_DIR = "~/.cache/stacnas"

MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.50707519, 0.48654887, 0.44091785), (0.26733428, 0.25643846, 0.27615049)),
    "mnist": ((0.13066051707548254,), (0.30810780244715075,)),
    "fashionmnist": ((0.28604063,), (0.35302426,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """A dataset is not on disk (nor could be downloaded); the message says what, where it
    looked (or which URL failed) and how to get it."""


def dataset_info(name: str) -> DatasetInfo:
    """Shape of a built-in dataset; an unknown name is a ValueError listing the known ones."""
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_INFO)}") from None


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------- transforms

class Cutout:
    """DARTS's cutout: zero one random ``length`` x ``length`` square (clipped at the borders)
    of a CHW tensor, always (probability 1). The centre comes from torch's RNG."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"cutout length must be >= 1, got {length}")
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y1, x1 = cy - self.length // 2, cx - self.length // 2
        out = img.clone()
        out[..., max(0, y1):max(0, y1 + self.length), max(0, x1):max(0, x1 + self.length)] = 0
        return out

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def _finish(steps: list, mean: Sequence[float], std: Sequence[float], cutout: int) -> T.Compose:
    """``steps`` (on PIL images), then ToTensor, Normalize and Cutout when ``cutout`` > 0."""
    from torchvision import transforms as T
    steps = steps + [T.ToTensor(), T.Normalize(mean, std)]
    if cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


def _augmentation(name: str, auto_aug: bool) -> list:
    """Training-time augmentation on PIL images (DARTS / pt.darts)."""
    from torchvision import transforms as T
    if name in ("cifar10", "cifar100"):
        steps: list = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        if auto_aug:
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
        return steps
    steps = [T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.1)]
    if name == "fashionmnist":
        steps.append(T.RandomVerticalFlip())
    return steps


def build_transform(name: str, transform: str, *, cutout: int = 0, auto_aug: bool = False) -> T.Compose:
    """The transform for cifar10/cifar100/mnist/fashionmnist/imagenet; ``transform`` is
    "train" (augmentation, cutout) or "eval" (ToTensor + Normalize; imagenet: resize + crop)."""
    from torchvision import transforms as T
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if auto_aug and name not in ("cifar10", "cifar100"):
        raise ValueError(f"auto_aug is for cifar10/cifar100 only, not {name}")
    mean, std = MEAN_STD[name]
    if transform == "eval":
        steps = [T.Resize(256), T.CenterCrop(224)] if name == "imagenet" else []
        return _finish(steps, mean, std, 0)
    if name == "imagenet":
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0.2)]
        return _finish(steps, mean, std, cutout)
    return _finish(_augmentation(name, auto_aug), mean, std, cutout)


# ------------------------------------------------------------------------------------- CIFAR

# A CIFAR python batch is a pickle (https://www.cs.toronto.edu/~kriz/cifar.html): a dict of
# strings, lists of ints or names, and uint8 numpy arrays. Plain pickle would run whatever a
# file on disk names (a `__reduce__` payload), so batches are read by `_CifarUnpickler`, which
# admits only the globals those files hold: numpy's array reconstruction and dtypes, and the
# latin-1 encoding Python 3 pickles bytes with.
def _numpy_attr(module: str, name: str) -> Any:
    """numpy's `<module>.<name>` (numpy 2 renamed numpy.core to numpy._core)."""
    import importlib
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _plain_dtype(*args: Any) -> np.dtype:
    """np.dtype(*args), refusing object dtypes (an array of arbitrary Python objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("it holds an array of Python objects")
    return dtype


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes (protocol 2), latin-1 only."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"it encodes text as {encoding!r}")
    return text.encode("latin1")


_CIFAR_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _plain_dtype,
    ("_codecs", "encode"): lambda: _latin1,
    **{(f"{package}.multiarray", name): functools.partial(_numpy_attr, "multiarray", name)
       for package in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")},
    **{(f"{package}.numeric", "_frombuffer"): functools.partial(_numpy_attr, "numeric", "_frombuffer")
       for package in ("numpy.core", "numpy._core")},
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python batch holds and nothing else: any other global (a
    function or class a payload would call) is refused before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        make = _CIFAR_GLOBALS.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never "
                                         "holds: refused, nothing was run")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it refers to a persistent object, which a CIFAR batch never holds")


def _cifar_fix(title: str, folder: Path) -> str:
    return (f"replace it with the file from the python version of {title} ({_CIFAR_PAGE}), or "
            f"delete {folder} and rerun without --no-download to download it again")


def _reason(err: BaseException) -> str:
    """One short line describing `err`."""
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unpickle_cifar(path: Path, title: str) -> Any:
    """The object pickled in the CIFAR file `path`, read by `_CifarUnpickler` (nothing in it is
    called but numpy's array and dtype constructors). Unreadable, truncated, damaged or
    carrying code: a one-line DataError naming `path`."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({_reason(err)})") from err
    except Exception as err:  # any damage: UnpicklingError, EOFError, ValueError, MemoryError...
        what = ("truncated" if isinstance(err, EOFError) or "truncated" in str(err)
                else "not a CIFAR python batch")
        raise DataError(f"{path}: {what} ({_reason(err)}); {_cifar_fix(title, path.parent)}") from None


def _cifar_batch(path: Path, title: str, classes: int) -> tuple[np.ndarray, list[int]]:
    """(pixels as N x 3072 uint8, labels) of one CIFAR batch file, each checked: a dict with
    "data" (uint8, 3072 values a row) and as many "labels" ("fine_labels" for CIFAR-100), each
    in 0..classes-1. Otherwise a one-line DataError naming `path`."""
    entry = _unpickle_cifar(path, title)
    fix = _cifar_fix(title, path.parent)
    if not isinstance(entry, dict) or "data" not in entry:
        raise DataError(f"{path}: not a CIFAR python batch (no 'data' entry); {fix}")
    key = "labels" if "labels" in entry else "fine_labels"
    data, labels = entry["data"], entry.get(key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        shape = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: its 'data' is {shape}, expected uint8 rows of 3072 pixels "
                        f"(32x32x3); {fix}")
    if not isinstance(labels, list) or not all(type(y) is int for y in labels):
        raise DataError(f"{path}: its '{key}' is not a list of class numbers; {fix}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels (truncated or "
                        f"damaged); {fix}")
    bad = next((i for i, y in enumerate(labels) if not 0 <= y < classes), None)
    if bad is not None:
        raise DataError(f"{path}: label {labels[bad]} of image {bad} is not a class of {title} "
                        f"(0..{classes - 1}); {fix}")
    return data, labels


def _cifar_names(path: Path, key: str, title: str, classes: int) -> list[str]:
    """The class names in the CIFAR meta file `path` (`key`: label_names / fine_label_names),
    checked to be `classes` strings; otherwise a one-line DataError naming `path`."""
    meta = _unpickle_cifar(path, title)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
        raise DataError(f"{path}: not {title}'s class list (expected '{key}': {classes} names); "
                        f"{_cifar_fix(title, path.parent)}")
    return names


@functools.cache
def _local_cifar(name: str) -> type[datasets.CIFAR10]:
    """``LocalCIFAR10`` or ``LocalCIFAR100``: torchvision's CIFAR10 / CIFAR100 dataset whose
    files are read by `_cifar_batch` / `_cifar_names` (a restricted unpickler, every field
    checked) instead of plain pickle. A subclass of a torchvision class, so it is built on
    first use (see the imports), once; it stays reachable as ``utils.data.<name>`` (module
    ``__getattr__``), so its datasets pickle like before."""
    from torchvision import datasets
    from torchvision.datasets.vision import VisionDataset

    base = getattr(datasets, name.removeprefix("Local"))
    title = "CIFAR-100" if base is datasets.CIFAR100 else "CIFAR-10"
    classes = 100 if base is datasets.CIFAR100 else 10

    def __init__(self, root: str, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        folder = Path(self.root) / self.base_folder
        batches = [_cifar_batch(folder / f, title, classes)
                   for f, _ in (self.train_list if train else self.test_list)]
        self.data = np.vstack([d for d, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [y for _, labels in batches for y in labels]
        self.classes = _cifar_names(folder / self.meta["filename"], self.meta["key"], title, classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    doc = f"torchvision's {base.__name__} dataset, its files read by a restricted unpickler."
    return type(name, (base,), {"__doc__": doc, "__init__": __init__, "__module__": __name__,
                                "__qualname__": name})


_CIFAR = {"cifar10": ("LocalCIFAR10", "CIFAR-10", "data_batch_1..5, test_batch and batches.meta"),
          "cifar100": ("LocalCIFAR100", "CIFAR-100", "train, test and meta")}
_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _download_off(source: str) -> str:
    """How to turn downloading back on, for messages (the scripts' flag; download=True here)."""
    return f"downloading is off (drop --no-download to fetch it from {source})"


def _download(name: str, fetch: Callable[[], Path], by_hand: str) -> Path:
    """``fetch()``, its failures turned into one-line DataErrors ending in ``by_hand``."""
    try:
        return fetch()
    except DownloadError as err:
        raise DataError(f"{name}: download failed: {err} — {by_hand}") from err
    except OSError as err:  # utils.files.WriteError: "cannot write <folder>: <cause>[; make room...]"
        raise DataError(f"{name}: download not stored: {err}") from err


def _cifar(name: str, data_dir: str, train: bool, transform: Callable, download: bool, log: Log) -> Dataset:
    class_name, title, listed = _CIFAR[name]
    cls = _local_cifar(class_name)
    folder = Path(data_dir) / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not all((folder / f).is_file() for f in files):
        if not download:
            raise DataError(f"{name} not found: looked for {folder}/{listed}; {_download_off(cls.url)}"
                            f" — or put the python version of {title} ({_CIFAR_PAGE}) there")
        _download(name, lambda: download_cifar(cls, data_dir, log),
                  f"put the python version of {title} ({listed}, from {_CIFAR_PAGE}) in {folder} by hand")
    return cls(data_dir, train=train, transform=transform, download=False)


# -------------------------------------------------------------------------- MNIST / Fashion-MNIST

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
        reason = "truncated (it ends inside the compressed data)" if isinstance(err, EOFError) else \
            f"not a gzip file or damaged ({_reason(err)})"
        raise ValueError(reason) from None


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
            raise DataError(f"cannot unpack {source_file} into {target}: {_reason(err)}") from err
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
                         f"{_download_off(cls.mirrors[0])} — or {how}")
    return DataError(f"fashionmnist not found: looked for {raw}/{{train,t10k}}-*-ubyte[.gz] and "
                     f"{FASHION_MNIST_SYSTEM_DIR}/*-ubyte.gz; {_download_off(cls.mirrors[0])} — or {_APT} or {how}")


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
        _download(name, lambda: download_idx(_idx_class(name), root, log), _idx_by_hand(name, raw))
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
        raise DataError(f"{path}: cannot read it ({_reason(err)})") from err
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
    reachable as ``utils.data.<name>`` like the CIFAR classes."""
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


def __getattr__(name: str) -> Any:
    if name in ("LocalCIFAR10", "LocalCIFAR100"):
        return _local_cifar(name)
    if name in ("LocalMNIST", "LocalFashionMNIST"):
        return _local_idx(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mnist(name: str, data_dir: str, train: bool, transform: Callable, download: bool, log: Log) -> Dataset:
    cls = _local_idx("Local" + _IDX[name][0])
    return cls(str(_idx_root(name, data_dir, download, log)), train=train, transform=transform, download=False)


# ------------------------------------------------------------------------- image folders

def _class_dir(root: Path, name: str, how: str) -> tuple[list[str], dict[str, int]]:
    from torchvision.datasets.folder import find_classes
    try:
        return find_classes(str(root))
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{name} not found: looked for {root}/<class>/<images>; it is never "
                        f"downloaded — {how}") from None


def _first_image(root: Path, classes: list[str]) -> Path:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    for cls in classes:
        for dirpath, _, files in sorted(os.walk(root / cls)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    return Path(dirpath) / f
    raise DataError(f"imagefolder has no images: looked in {root}/<class>/ for {', '.join(IMG_EXTENSIONS)}")


class _ModeLoader:
    """Picklable PIL loader converting images to one mode (for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


def _image_folder(split: Path, name: str, how: str, **kwargs: Any) -> datasets.ImageFolder:
    from torchvision import datasets
    try:
        return datasets.ImageFolder(str(split), **kwargs)
    except FileNotFoundError as err:
        raise DataError(f"{name} not found: {err} (looked in {split}); {how}") from None


_IMAGE_FIX = "replace it or remove it from the folder"
_FOLDER_HOW = "put one folder per class of images under {root}/train and {root}/test (or val)"


def _folder_split(data_dir: str, train: bool) -> Path:
    root = Path(data_dir)
    if train:
        return root / "train"
    return root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"


def _imagefolder_info(data_dir: str) -> DatasetInfo:
    """Channels and size from the first training image, classes from the folders; an image
    PIL cannot open is a one-line DataError naming it."""
    train_dir = Path(data_dir) / "train"
    classes, _ = _class_dir(train_dir, "imagefolder", _FOLDER_HOW.format(root=data_dir))
    first = _first_image(train_dir, classes)
    try:
        with Image.open(first) as img:
            return DatasetInfo(1 if img.mode == "L" else 3, img.height, len(classes))
    except Exception as err:  # PIL: UnidentifiedImageError, OSError, DecompressionBombError...
        raise DataError(f"{first}: not a readable image ({_reason(err)}); {_IMAGE_FIX}") from None


def _imagefolder(data_dir: str, train: bool, transform: str, cutout: int) -> tuple[Dataset, DatasetInfo]:
    from torchvision import transforms as T
    from torchvision.datasets.folder import find_classes
    info = _imagefolder_info(data_dir)
    split = _folder_split(data_dir, train)
    classes, _ = _class_dir(split, "imagefolder", _FOLDER_HOW.format(root=data_dir))
    train_classes, _ = find_classes(str(Path(data_dir) / "train"))
    if classes != train_classes:
        raise DataError(f"imagefolder: {split} has classes {classes}, train has {train_classes}")
    steps: list = [T.Resize((info.size, info.size))]
    if transform == "train":
        steps.append(T.RandomHorizontalFlip())
    pipeline = _finish(steps, [0.5] * info.channels, [0.5] * info.channels, cutout if transform == "train" else 0)
    loader = _ModeLoader("L" if info.channels == 1 else "RGB")
    data = _image_folder(split, "imagefolder", _FOLDER_HOW.format(root=data_dir), transform=pipeline, loader=loader)
    return data, info


_IMAGENET_HOW = "put ILSVRC2012 (https://image-net.org) there as one folder per class under train/ and val/"


def _imagenet(data_dir: str, train: bool, transform: Callable) -> tuple[Dataset, DatasetInfo]:
    split = Path(data_dir) / ("train" if train else "val")
    _class_dir(split, "imagenet", _IMAGENET_HOW)
    data = _image_folder(split, "imagenet", _IMAGENET_HOW, transform=transform)
    return data, DatasetInfo(3, 224, len(data.classes))


# ------------------------------------------------------------------------------- synthetic

@dataclass(frozen=True)
class SyntheticSpec:
    channels: int = 3
    size: int = 32
    classes: int = 10
    train_size: int = 512
    test_size: int = 256


class SyntheticDataset(Dataset):
    """Random images with a learnable class: a fixed random pattern per class (shared by train
    and test) plus unit Gaussian noise. Deterministic given (train, spec); built once."""
    MEANS_SEED, TRAIN_SEED, TEST_SEED = 1000, 1001, 1002

    def __init__(self, spec: SyntheticSpec, train: bool) -> None:
        shape = (spec.channels, spec.size, spec.size)
        self.means = torch.randn((spec.classes, *shape), generator=torch.Generator().manual_seed(self.MEANS_SEED))
        g = torch.Generator().manual_seed(self.TRAIN_SEED if train else self.TEST_SEED)
        n = spec.train_size if train else spec.test_size
        self.targets = (torch.arange(n) % spec.classes)[torch.randperm(n, generator=g)]
        self.data = self.means[self.targets] + torch.randn((n, *shape), generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], int(self.targets[index])


# ------------------------------------------------------------------------------ entry points

def get_dataset(name: str, data_dir: str, train: bool, transform: str = "train", *, cutout: int = 0,
                auto_aug: bool = False, synthetic: SyntheticSpec | None = None, download: bool = False,
                log: Log | None = None) -> tuple[Dataset, DatasetInfo]:
    """The train (``train=True``) or test split of ``name`` with its shape. ``transform`` is
    "train" (augmentation, plus Cutout(cutout) when > 0; AutoAugment for CIFAR when auto_aug) or
    "eval". Synthetic data ignores the transform arguments. ``download``: fetch CIFAR-10/100,
    MNIST or Fashion-MNIST into data_dir when absent (off by default: library calls never touch
    the network); ``log`` gets the one-line progress notes (default: stderr)."""
    _check_name(name)
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if name == "synthetic":
        spec = synthetic or SyntheticSpec()
        return SyntheticDataset(spec, train), DatasetInfo(spec.channels, spec.size, spec.classes)
    if name == "imagefolder":
        return _not_empty(*_imagefolder(data_dir, train, transform, cutout), name, train)
    pipeline = build_transform(name, transform, cutout=cutout, auto_aug=auto_aug)
    if name == "imagenet":
        return _not_empty(*_imagenet(data_dir, train, pipeline), name, train)
    if name in _CIFAR:
        data = _cifar(name, data_dir, train, pipeline, download, log or log_to_stderr)
    else:
        data = _mnist(name, data_dir, train, pipeline, download, log or log_to_stderr)
    return _not_empty(data, DATASET_INFO[name], name, train)


def _not_empty(data: Dataset, info: DatasetInfo, name: str, train: bool) -> tuple[Dataset, DatasetInfo]:
    """(data, info), when `data` holds at least one item; otherwise a one-line DataError naming
    where its files are."""
    if len(data) == 0:
        raise DataError(f"{name}: the {'training' if train else 'test'} split holds no images "
                        f"({_files_of(data)}); check or replace its files")
    return data, info


def split_indices(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Split range(n) into round(n * ratio) indices and the rest, shuffled by ``seed``
    (the DARTS search split: weights train on the first part, alphas on the second)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"split ratio must be in (0, 1], got {ratio}")
    if ratio == 1.0:
        return list(range(n)), []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = round(n * ratio)
    return order[:k], order[k:]


def check_split(train: int, held_out: int, *, flag: str, value: float | None, images: int,
                train_share: bool, held_out_for: str | None = None, processes: int = 1) -> None:
    """Refuse, before any training, a split of `images` images by ``flag value`` (the training
    share when `train_share`, else the held-out share; None: no split) into `train` training
    and `held_out` held-out images that leaves a part empty where it is used: no training
    images, no held-out images while `held_out_for` (the option that uses them) is set, or
    fewer training images than `processes` (each trains on its own share, drop_last). A
    one-line ValueError naming the flag, its value, the sizes and what to change."""
    made_by = (f"{flag} {value} of {images} image{'s' if images != 1 else ''}" if value is not None
               else f"the {images} image{'s' if images != 1 else ''} (--subset or the dataset)")
    sizes = f"{train} training / {held_out} held-out"
    more_images = "or use more images (a larger --subset or dataset)"
    more_train = f"{'raise' if train_share else 'lower'} {flag} {more_images}"
    if train == 0:
        raise ValueError(f"{made_by} leaves no training images ({sizes}); {more_train}")
    if held_out_for and held_out == 0:
        raise ValueError(f"{held_out_for} needs held-out images, but {made_by} leaves none ({sizes}); "
                         f"{'lower' if train_share else 'raise'} {flag} {more_images}")
    if train < processes:
        raise ValueError(f"{made_by} leaves {train} training images for {processes} processes, which "
                         f"need at least one each ({sizes}); {more_train}, or run fewer processes")


def subset_size(n_total: int, subset: int | None) -> int:
    """How many of ``n_total`` items ``--subset N`` keeps (the first ones): N, or all of them
    when there are fewer or without ``--subset`` (None)."""
    if subset is None:
        return n_total
    if subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    return min(subset, n_total)


# --------------------------------------------------------------------------------- loaders

def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (1 << 63)


# Signals the main process alone handles (utils.signals.GracefulStop): sent to the whole process
# group (Slurm's preemption and time limit, `timeout`, Ctrl-C), they must not kill the
# DataLoader workers under it, or the run ends with "DataLoader worker ... is killed" instead of
# its step-boundary checkpoint.


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from torch's per-worker seed, and make
    the worker ignore SIGTERM / SIGINT / SIGHUP (the main process stops the run and shuts its workers
    down; if the main process dies, torch's watchdog ends them within seconds)."""
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # also drops one that arrived while held
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# Every Loader alive. multiprocessing's exit handler terminates daemonic processes with SIGTERM
# and then joins them without a timeout; a worker ignores SIGTERM (worker_init_fn), so a
# loader whose workers were not shut down before that (a pass left by an exception, a
# reference cycle keeping the loader alive) would hang the exit forever. `_close_loaders`,
# registered after multiprocessing's and torch's exit handlers (so it runs before them),
# shuts down every live loader's workers first.
_LOADERS: "weakref.WeakSet[Loader]" = weakref.WeakSet()


class Loader(DataLoader):
    """A DataLoader whose workers start with the stop signals held, so that a signal to the
    process group in the moment a worker starts is dropped by it (worker_init_fn) rather than
    killing it; the main process gets such a signal once its workers are started. A failure
    while loading (an unreadable file in a worker, a worker killed) shuts the workers down
    (`close`) and is a one-line DataError (`loading_failure`); `close` also runs for every live
    loader before the interpreter exits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _LOADERS.add(self)

    def __iter__(self):
        return _Pass(self, self._start_pass())

    def _start_pass(self):
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def close(self) -> None:
        """Shut this loader's worker processes down now and wait for them (a worker that does
        not stop within seconds is killed); a later pass starts new ones. Safe to call at any
        time, more than once, and on a loader without workers."""
        passing, self._iterator = getattr(self, "_iterator", None), None
        _stop_workers(passing)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next pass visits epoch `epoch`'s order from batch `skip_batches` on; the
        loader, and its persistent workers, stay."""
        if not isinstance(self.batch_sampler, EpochBatches):
            raise ValueError("this loader's order comes from the sampler it was given")
        self.batch_sampler.set_epoch(epoch, skip_batches)


class _Pass:
    """One pass over a Loader's batches. Any failure while loading closes the loader's workers
    before it propagates, as a one-line DataError when it is a loading failure."""

    def __init__(self, loader: Loader, batches: Iterator) -> None:
        self.loader, self.batches = loader, batches

    def __iter__(self) -> "_Pass":
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __next__(self):
        try:
            return next(self.batches)
        except StopIteration:
            raise
        except BaseException as err:
            self.loader.close()
            failure = loading_failure(err)
            if failure is None:
                raise
            raise failure from err


def _stop_workers(passing: Any) -> None:
    """Shut down the worker processes of a DataLoader iterator (none: nothing to do), the way
    torch does, then kill any that still runs (they ignore SIGTERM) and reap it."""
    workers = list(getattr(passing, "_workers", ()) or ())
    try:
        if workers and hasattr(passing, "_shutdown_workers"):
            passing._shutdown_workers()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)


def _close_loaders() -> None:
    """Close every live Loader (at interpreter exit): no worker outlives the main process,
    and multiprocessing's exit handler never waits on one."""
    for loader in list(_LOADERS):
        try:
            loader.close()
        except Exception:  # at exit, one loader's trouble must not keep the others' workers
            pass


atexit.register(_close_loaders)


# What a loading failure looks like once torch re-raises it in the main process: the worker's
# exception as "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...", its
# last line "<module.Type>: <message>"; a dead worker as "DataLoader worker (pid ...) ...".
_OOM_HINT = ("out of memory? (the kernel's OOM killer sends SIGKILL); rerun the same command "
             "(a training stage resumes from its last checkpoint), with a lower --num_workers or "
             "--batch_size if it recurs")


def loading_failure(err: BaseException) -> DataError | None:
    """The one-line DataError for `err` when it is a failure of data loading: an exception in
    a DataLoader worker (its own message, which names the file for a dataset item: see
    `read_item`) or a worker that died (killed by a signal). None for anything else."""
    if isinstance(err, DataError) and "\n" not in str(err):
        return None  # already one line (loaded in the main process)
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return None
    first = lines[0]
    if first.startswith("Caught ") and "DataLoader worker process" in first:
        worker = first.rstrip(".").rsplit(" ", 1)[-1]
        last = lines[-1].strip()
        if isinstance(err, DataError):
            return DataError(f"{last.partition(': ')[2] or last} (in data-loading worker {worker})")
        return DataError(f"data-loading worker {worker} failed: {last[:300]}")
    if first.startswith("DataLoader worker (pid"):
        return DataError(f"{first.strip().rstrip('.')}: {_OOM_HINT}")
    return None


def _item_source(dataset: Dataset, index: int) -> tuple[str, str]:
    """(where item `index` of `dataset` comes from, what to do when it is unreadable): an image
    folder's file, else the folder of the dataset's files."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and 0 <= index < len(samples):
        return f"{samples[index][0]} (image {index} of {_files_of(dataset)})", _IMAGE_FIX
    return f"item {index} of {_files_of(dataset)}", "check or replace the dataset's files"


def _files_of(dataset: Dataset) -> str:
    """Where `dataset`'s files are (a folder), for messages; its class name when not known."""
    folder = getattr(dataset, "raw_folder", None)
    if folder is None and hasattr(dataset, "base_folder") and hasattr(dataset, "root"):
        folder = os.path.join(dataset.root, dataset.base_folder)
    if folder is None:
        folder = getattr(dataset, "root", None)
    return str(folder) if folder is not None else type(dataset).__name__


def read_item(dataset: Dataset, index: int) -> Any:
    """``dataset[index]``; any failure (an image PIL cannot read, a truncated file, a missing
    label) is a one-line DataError naming the file and the index, in a worker as in the main
    process. A stop (utils.signals.Stopped) passes unchanged."""
    try:
        return dataset[index]
    except (DataError, Stopped):
        raise
    except Exception as err:
        where, fix = _item_source(dataset, index)
        raise DataError(f"{where}: cannot be read ({_reason(err)}); {fix}") from err


class _ReadSubset(Subset):
    """torch's Subset, each item read through `read_item`."""

    def __getitem__(self, idx: int) -> Any:
        return read_item(self.dataset, self.indices[idx])

    def __getitems__(self, indices: list[int]) -> list:
        return [self[i] for i in indices]


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int,
                replicas: tuple[int, int] | None = None) -> list[int]:
    """Positions 0..n-1 in the order one epoch visits them: a permutation drawn from
    (seed, epoch) when shuffling, this rank's DistributedSampler share under `replicas`."""
    if replicas is not None and replicas[1] > 1 and shuffle:
        sampler = DistributedSampler(range(n), num_replicas=replicas[1], rank=replicas[0],
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)
    if shuffle:
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        return torch.randperm(n, generator=g).tolist()
    return list(range(n))


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of one batch's random augmentation: (seed, epoch, rank, batch) hashed."""
    state = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


class EpochBatches(Sampler):
    """The batches of one epoch (`set_epoch`): positions 0..n-1 in `epoch_order`'s order for
    (seed, epoch), cut into batches, from batch `skip_batches` on; each position comes paired
    with its batch's `batch_seed`, for `SeededSubset`."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 replicas: tuple[int, int] | None) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.replicas = seed, replicas
        self.rank = replicas[0] if replicas else 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches
        self.order = epoch_order(self.n, self.shuffle, self.seed, epoch, self.replicas)

    def _batches(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(self._batches() - self.skip, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        size = self.batch_size
        for b in range(self.skip, self._batches()):
            key = batch_seed(self.seed, self.epoch, self.rank, b)
            yield [(key, pos) for pos in self.order[b * size:(b + 1) * size]]


class SeededSubset(Dataset):
    """``dataset`` at ``indices``, read a batch at a time from (batch seed, position) pairs:
    the loading process's RNGs (torch, numpy, random) are seeded with the batch's seed first,
    so its random augmentation is a function of (seed, epoch, rank, batch) alone, whichever
    worker loads it, however many workers there are, persistent or not, and after a resume.
    Loading in the main process (no workers), the training RNGs are put back afterwards."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, items: list[tuple[int, int]]) -> list:
        in_main = torch.utils.data.get_worker_info() is None
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate()) if in_main else None
        seed = items[0][0]
        torch.default_generator.manual_seed(seed)  # the CPU generator only, not CUDA's
        np.random.seed(seed % (1 << 32))
        random.seed(seed)
        try:
            return [read_item(self.dataset, self.indices[pos]) for _, pos in items]
        finally:
            if saved is not None:
                torch.set_rng_state(saved[0])
                np.random.set_state(saved[1])
                random.setstate(saved[2])

    def __getitem__(self, item: tuple[int, int]):
        return self.__getitems__([item])[0]


def _some_batch(drop_last: bool, items: int, batch_size: int) -> None:
    """Refuse a loader that would yield no batch because drop_last drops a short one."""
    if drop_last and 0 < items < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the {items} images to load, and "
                         f"the last short batch is dropped, so there would be no step; lower "
                         f"--batch_size to {items} or less")


def make_loader(dataset: Dataset, indices: Iterable[int] | None, batch_size: int, *, shuffle: bool,
                num_workers: int = 0, drop_last: bool = False, seed: int = 0, epoch: int = 0,
                sampler: Sampler | None = None, replicas: tuple[int, int] | None = None,
                skip_batches: int = 0, pin_memory: bool = False) -> Loader:
    """A loader over ``dataset`` restricted to ``indices`` (None: all). The order is a function of
    (seed, epoch), so an epoch replays exactly after a resume; ``skip_batches`` starts it later
    (resuming mid-epoch); ``loader.set_epoch(epoch, skip_batches)`` moves the same loader to
    another epoch, so one loader serves a whole stage and its workers persist. Random
    augmentation is seeded per batch (SeededSubset). ``replicas=(rank, world_size)`` shards a
    shuffled training set with a DistributedSampler (every rank the same number of batches).
    ``pin_memory``: page-locked batches, for CUDA. A ``sampler`` decides the order itself
    (shuffle must then be False; no set_epoch, no per-batch seeds)."""
    if sampler is not None and shuffle:
        raise ValueError("pass either shuffle=True or a sampler, not both")
    base = list(range(len(dataset))) if indices is None else list(indices)
    if sampler is None:
        batches = EpochBatches(len(base), batch_size, shuffle=shuffle, drop_last=drop_last,
                               seed=seed, replicas=replicas)
        batches.set_epoch(epoch, skip_batches)
        _some_batch(drop_last, len(batches.order), batch_size)
        data, order = SeededSubset(dataset, base), {"batch_sampler": batches}
    else:
        _some_batch(drop_last, len(sampler), batch_size)
        data, order = _ReadSubset(dataset, base), {"batch_size": batch_size, "sampler": sampler,
                                              "drop_last": drop_last}
    return Loader(data, **order, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(  # workers' draws: one stream per rank
                          _epoch_seed(seed, epoch) + (replicas[0] << 32 if replicas else 0)),
                      worker_init_fn=worker_init_fn, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def default_num_workers(device: torch.device) -> int:
    """Data-loading processes when --num_workers is not given: 2 on CPU, where they share the
    cores with training; on CUDA the CPUs this process may use, divided among the training
    processes on this machine (torchrun's LOCAL_WORLD_SIZE), at most 8 and at least 1."""
    if device.type != "cuda":
        return 2
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(8, cpus // local))


def loader_options(device: torch.device, num_workers: int | None) -> dict[str, Any]:
    """make_loader's worker count (``num_workers``, or `default_num_workers` for None) and
    memory pinning (on CUDA only: page-locked batches copy to the GPU asynchronously)."""
    return {"num_workers": default_num_workers(device) if num_workers is None else num_workers,
            "pin_memory": device.type == "cuda"}


def infinite(loader: Iterable) -> Iterator:
    """Cycle over ``loader`` forever (bilevel search's validation batches); an empty loader is
    a ValueError rather than a silent hang."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("infinite(): the loader yields no batches")
