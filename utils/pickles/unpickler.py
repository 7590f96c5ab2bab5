"""A restricted reader for PyTorch pickles (legacy and zip formats) that never runs anything
from the file: every global it meets must be in ALLOWED_GLOBALS and becomes an inert
placeholder, a safe function or a dtype marker; tensors are rebuilt from the raw storage bytes.
utils/io/authors.py turns what it reads into our network.

Legacy layout: pickle(magic number), pickle(protocol version), pickle(sys info), the main
pickle (persistent ids `('storage', type, key, location, numel[, view])` and `('module', cls,
source file, source)`; the source text is ignored), pickle(sorted storage keys), then per key
an int64 little-endian element count and the raw bytes.

A hostile file costs bounded memory and time: dict keys and set items must be scalars, what the
pickle built is measured before anything reads it (utils.pickles.bounds: a list holding the
same sub-list twice at each of 64 levels is 2^64 entries), archives may not inflate past a
multiple of their size, the file's size is capped, and utils/io/authors.py copies no
tensor with more elements than its storage (nor more elements in all than the storages hold).
"""
from __future__ import annotations

import _compat_pickle  # pickle's own Python 2 -> 3 name table
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.pickles.bounds import (BoundedUnpickler, Refused, check_expansion, check_keys,
                                  inflation_limit, plain_members, short_repr)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# The classes the authors' released checkpoints pickle (their augment_cnn, cells and operators
# modules, and torch.nn's); each becomes a placeholder.
_MODULE_CLASSES = frozenset({
    "augment_cnn.AugmentCNN", "augment_cnn.AuxiliaryHead", "cells.AugmentCell",
    "operators.DilConv", "operators.DropPath", "operators.FactorizedReduce",
    "operators.Identity", "operators.PoolBN", "operators.SepConv", "operators.StdConv",
    "torch.nn.modules.activation.ReLU", "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d", "torch.nn.modules.linear.Linear",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d", "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.pooling.MaxPool2d"})
# Typed storages name a tensor's dtype; they become dtype markers. A model saved from the GPU
# names torch.cuda.*Storage: only the bytes are read, CUDA is never touched.
_STORAGE_NAMES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16,
                  "BFloat16": torch.bfloat16, "Long": torch.int64, "Int": torch.int32,
                  "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
                  "Bool": torch.bool}
_STORAGES = {f"{mod}.{kind}Storage": dtype for kind, dtype in _STORAGE_NAMES.items()
             for mod in ("torch", "torch.cuda")}
# What pickled tensors and modules call: _rebuild_tensor_v2 (every tensor), _rebuild_parameter
# (_with_state) (nn.Parameter), OrderedDict (a tensor's hooks, a module's _parameters/_modules),
# set (a module's _non_persistent_buffers_set), torch.Size (a size kept as an attribute).
_FUNCTIONS = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
              "torch._utils._rebuild_parameter_with_state", "collections.OrderedDict",
              "builtins.set", "torch.Size")
ALLOWED_GLOBALS = frozenset(_MODULE_CLASSES | set(_STORAGES) | set(_FUNCTIONS))

# The authors' files are 18 MB (CIFAR) to 20-odd MB (ImageNet); a tensor has at most 4 dims.
MAX_FILE_BYTES = 2 * 2 ** 30
MAX_TENSOR_DIMS = 16


class LegacyCheckpointError(RuntimeError):
    """An authors' checkpoint is refused, damaged or does not fit; the message is one line."""


# ----------------------------------------------------------------------------- inert objects
class _Inert:
    """Our own objects handed to the unpickler: pickle may not modify them (BUILD)."""
    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the file tries to set state on {type(self).__name__}")


class _Function(_Inert):
    __slots__ = ("name", "func")

    def __init__(self, name, func):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "func", func)

    def __call__(self, *args):
        return self.func(*args)


class _StorageType(_Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)


class _StorageRef(_Inert):
    """Elements [offset, offset + numel) of the storage `key`, filled in after the pickle."""
    __slots__ = ("key", "dtype", "offset", "numel")

    def __init__(self, key, dtype, offset, numel):
        for name, value in zip(self.__slots__, (key, dtype, offset, numel)):
            object.__setattr__(self, name, value)


class TensorRef(_Inert):
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        for name, value in zip(self.__slots__, (storage, offset, size, stride)):
            object.__setattr__(self, name, value)


class Pickled:
    """Stands in for an instance of an allowed module class: records the pickled state
    (`__dict__`) and constructor arguments; nothing of the real class runs."""
    qualified = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualified} has a {type(state).__name__} state")
        self.state = state


def _is_ints(value, n=None) -> bool:
    return (isinstance(value, (tuple, list)) and (n is None or len(value) == n)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and offset >= 0
            and _is_ints(size) and len(size) <= MAX_TENSOR_DIMS and _is_ints(stride, len(size))
            and all(s >= 0 for s in tuple(size) + tuple(stride))):
        raise pickle.UnpicklingError("malformed tensor record")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


def _ordered_dict(items=()) -> dict:
    items = list(items)
    if not all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
        raise pickle.UnpicklingError("malformed OrderedDict record")
    check_keys((k for k, _ in items), "dict key")
    return dict(items)


def _set(items=()) -> set:
    items = list(items)
    check_keys(items, "set item")
    return set(items)


_SAFE = {"torch._utils._rebuild_tensor_v2": _rebuild_tensor,
         "torch._utils._rebuild_parameter": _rebuild_parameter,
         "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
         "collections.OrderedDict": _ordered_dict,
         "builtins.set": _set,
         "torch.Size": lambda items=(): tuple(int(i) for i in items)}


# ----------------------------------------------------------------------------- unpickling
class _RestrictedUnpickler(BoundedUnpickler):
    """find_class hands out placeholders, safe functions and dtype markers, never the real
    objects; anything outside ALLOWED_GLOBALS (or an unknown persistent id) is refused. Dict
    keys and set items must be scalars (utils.pickles.bounds)."""

    def __init__(self, file, source: str, storages: dict | None = None):
        super().__init__(file)
        self.source, self.storages, self.classes = source, storages, {}

    def _refuse(self, what: str) -> LegacyCheckpointError:
        return LegacyCheckpointError(f"{self.source}: refusing to load: the file asks for {what}, "
                                     "which is not one of the classes an authors' checkpoint may "
                                     "contain (see utils/pickles/unpickler.py ALLOWED_GLOBALS); "
                                     "nothing from it was run")

    def find_class(self, module, name):
        written = f"{module}.{name}"
        # protocol-2 pickles written by Python 3 name things as Python 2 did (fix_imports)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted not in ALLOWED_GLOBALS:
            alias = f" (os.{name})" if module in ("posix", "nt") else ""
            alias += f" (written as {written!r})" if written != dotted else ""
            raise self._refuse(f"{dotted!r}{alias}")
        if dotted in _SAFE:
            return _Function(dotted, _SAFE[dotted])
        if dotted in _STORAGES:
            return _StorageType(dotted, _STORAGES[dotted])
        if dotted not in self.classes:
            self.classes[dotted] = type(name, (Pickled,), {"qualified": dotted})
        return self.classes[dotted]

    def persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else kind
        if self.storages is not None and kind == "module" and len(pid) == 4:
            if isinstance(pid[1], type) and issubclass(pid[1], Pickled):
                return pid[1]  # the class; its recorded source text is ignored
        if self.storages is not None and kind == "storage" and len(pid) in (5, 6):
            return self._storage(*pid[1:])
        raise self._refuse(f"the persistent id {short_repr(pid)}")

    def _storage(self, stype, key, location, numel, view=None):
        if not (isinstance(stype, _StorageType) and isinstance(key, str)
                and isinstance(location, str) and _is_ints([numel]) and numel >= 0):
            raise pickle.UnpicklingError("malformed storage record")
        if self.storages.setdefault(key, (stype.dtype, numel)) != (stype.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} recorded with two types or sizes")
        if view is None:
            return _StorageRef(key, stype.dtype, 0, numel)
        if not (_is_ints(view[1:], 2) and 0 <= view[1] and view[1] + view[2] <= numel):
            raise pickle.UnpicklingError(f"malformed view of storage {key}")
        return _StorageRef(key, stype.dtype, view[1], view[2])


# what a restricted unpickler or our reader raises on damaged or hostile bytes
DAMAGE_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
                 UnicodeDecodeError, MemoryError, RecursionError, struct.error)


def members(value: Any) -> list | None:
    """What a placeholder or a plain container holds (None for anything else)."""
    if isinstance(value, Pickled):
        return [value.state, value.args]
    return plain_members(value)


def _element_bytes(data: bytes, start: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor of `numel` elements from data[start:], in memory of its own."""
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data[start:start + numel * dtype.itemsize]), dtype=dtype)


def _read_legacy(data: bytes, source: str) -> tuple[Any, dict]:
    f = io.BytesIO(data)
    try:
        magic = _RestrictedUnpickler(f, source).load()
    except (pickle.UnpicklingError, EOFError, *DAMAGE_ERRORS):
        magic = None
    if magic != MAGIC_NUMBER:
        raise LegacyCheckpointError(f"{source}: not a PyTorch checkpoint (bad magic number; "
                                    "neither the legacy torch.save format nor a zip archive)")
    version = _RestrictedUnpickler(f, source).load()
    info = _RestrictedUnpickler(f, source).load()
    if version != PROTOCOL_VERSION or not isinstance(info, dict):
        raise LegacyCheckpointError(f"{source}: unsupported legacy protocol version "
                                    f"{short_repr(version)}")
    if info.get("little_endian") is not True:
        raise LegacyCheckpointError(f"{source}: written on a big-endian machine; not supported")
    storages: dict = {}
    obj = _RestrictedUnpickler(f, source, storages).load()
    keys = _RestrictedUnpickler(f, source).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise LegacyCheckpointError(f"{source}: corrupt file: the storage key list is malformed")
    if set(keys) != set(storages):
        raise LegacyCheckpointError(f"{source}: corrupt file: the storage keys after the pickle "
                                    "do not match its tensors")
    pos, tensors = f.tell(), {}
    for key in keys:
        dtype, numel = storages[key]
        if pos + 8 > len(data):
            raise LegacyCheckpointError(f"{source}: truncated file: storage {key} is missing")
        (count,) = struct.unpack_from("<q", data, pos)
        end = pos + 8 + count * dtype.itemsize
        if count != numel:
            raise LegacyCheckpointError(f"{source}: corrupt file: storage {key} holds {count} "
                                        f"elements, the pickle says {numel}")
        if end > len(data):
            raise LegacyCheckpointError(f"{source}: truncated file: storage {key} needs bytes "
                                        f"up to {end}, the file has {len(data)}")
        tensors[key] = _element_bytes(data, pos + 8, count, dtype)
        pos = end
    return obj, tensors


def _read_zip(data: bytes, source: str) -> tuple[Any, dict]:
    # torch.save stores its members uncompressed: refuse members that would inflate far past
    # the archive's own size (a zip bomb) before inflating them
    limit = inflation_limit(len(data))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        pkl = [n for n in sizes if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise LegacyCheckpointError(f"{source}: a zip archive without one data.pkl; not a "
                                        "torch.save file")
        prefix = pkl[0][:-len("data.pkl")]
        order = prefix + "byteorder"
        if order in sizes and (sizes[order] > 16 or archive.read(order) != b"little"):
            raise LegacyCheckpointError(f"{source}: written on a big-endian machine; not supported")
        if sizes[pkl[0]] > limit:
            raise LegacyCheckpointError(f"{source}: refusing to load: its data.pkl inflates to "
                                        f"{sizes[pkl[0]]:,} bytes from a {len(data):,}-byte file")
        storages: dict = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), source, storages).load()
        total = 0
        for key, (dtype, numel) in storages.items():
            size = sizes.get(prefix + "data/" + key)
            if size != numel * dtype.itemsize:
                raise LegacyCheckpointError(f"{source}: corrupt archive: storage {key} has "
                                            f"{size} bytes, expected {numel * dtype.itemsize}")
            total += size
        if total + sizes[pkl[0]] > limit:
            raise LegacyCheckpointError(f"{source}: refusing to load: its tensors inflate to "
                                        f"{total:,} bytes from a {len(data):,}-byte file")
        tensors = {key: _element_bytes(archive.read(prefix + "data/" + key), 0, numel, dtype)
                   for key, (dtype, numel) in storages.items()}
    return obj, tensors


def read_objects(path: str | Path) -> tuple[Any, dict, str]:
    """(unpickled object of placeholders, {storage key: 1-D tensor}, source name)."""
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise LegacyCheckpointError(f"{source}: refusing to load a {size:,}-byte file; the "
                                        "authors' checkpoints are well under 1 GB")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LegacyCheckpointError(f"{source}: cannot read the file ({exc.strerror or exc})"
                                    ) from None
    try:
        reader = _read_zip if data[:4] == b"PK\x03\x04" else _read_legacy
        obj, tensors = reader(data, source)
        check_expansion(obj, members)
    except LegacyCheckpointError:
        raise
    except Refused as exc:
        raise LegacyCheckpointError(f"{source}: refusing to load: {exc}") from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise LegacyCheckpointError(f"{source}: truncated or corrupt file ({str(exc)[:120]})"
                                    ) from None
    except DAMAGE_ERRORS as exc:
        raise LegacyCheckpointError(f"{source}: corrupt file ({type(exc).__name__}: "
                                    f"{str(exc)[:120]})") from None
    return obj, tensors, source
