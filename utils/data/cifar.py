"""CIFAR-10 and CIFAR-100 (the python version): their files read by a restricted unpickler, every
field checked, so that a damaged or hostile file is a one-line DataError naming it and what to do
(nothing in a file is run); downloaded when absent and allowed."""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch.utils.data import Dataset

from utils.data.download import Log, cifar_files, download_cifar, download_off, fetch_dataset
from utils.data.info import DataError, reason

# torchvision is imported inside the functions that build datasets, not here: importing it
# takes about 2 s, which every script would pay at startup (even for --help).
if TYPE_CHECKING:
    from torchvision import datasets


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


def _unpickle_cifar(path: Path, title: str) -> Any:
    """The object pickled in the CIFAR file `path`, read by `_CifarUnpickler` (nothing in it is
    called but numpy's array and dtype constructors). Unreadable, truncated, damaged or
    carrying code: a one-line DataError naming `path`."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({reason(err)})") from err
    except Exception as err:  # any damage: UnpicklingError, EOFError, ValueError, MemoryError...
        what = ("truncated" if isinstance(err, EOFError) or "truncated" in str(err)
                else "not a CIFAR python batch")
        raise DataError(f"{path}: {what} ({reason(err)}); {_cifar_fix(title, path.parent)}") from None


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
    first use (see the imports), once; it stays reachable as ``utils.data.cifar.<name>`` (module
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


CIFAR_FILES = {"cifar10": ("LocalCIFAR10", "CIFAR-10", "data_batch_1..5, test_batch and batches.meta"),
          "cifar100": ("LocalCIFAR100", "CIFAR-100", "train, test and meta")}
_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def load_cifar(name: str, data_dir: str, train: bool, transform: Callable, download: bool, log: Log) -> Dataset:
    class_name, title, listed = CIFAR_FILES[name]
    cls = _local_cifar(class_name)
    folder = Path(data_dir) / cls.base_folder
    if not all((folder / f).is_file() for f in cifar_files(cls)):
        if not download:
            raise DataError(f"{name} not found: looked for {folder}/{listed}; {download_off(cls.url)}"
                            f" — or put the python version of {title} ({_CIFAR_PAGE}) there")
        fetch_dataset(name, lambda: download_cifar(cls, data_dir, log),
                  f"put the python version of {title} ({listed}, from {_CIFAR_PAGE}) in {folder} by hand")
    return cls(data_dir, train=train, transform=transform, download=False)


def __getattr__(name: str) -> Any:
    if name in ("LocalCIFAR10", "LocalCIFAR100"):
        return _local_cifar(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
