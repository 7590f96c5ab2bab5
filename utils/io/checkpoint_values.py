"""Reading values out of a loaded checkpoint without trusting them: each missing key, wrong
type or out-of-range number is one CheckpointError line ``<file>: <field>: <problem>``; and the
data as a whole must be bounded (no list shared over and over, no absurd nesting) and its
tensors dense and within the file, before anything walks, prints or builds from it."""
from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, NamedTuple

import torch

from utils.io.checkpoint import CheckpointError

# A checkpoint's data walked as a tree (a part shared N times counts N times); a final
# network of 20 cells with its optimiser state has about 10,000 entries, 6 levels deep.
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 32
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


class Kind(NamedTuple):
    """Accepted types and how an error message names them."""
    types: tuple
    name: str

    def admits(self, value: Any) -> bool:
        return isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types)


INT = Kind((int,), "an integer")
NUMBER = Kind((int, float), "a number")
BOOL = Kind((bool,), "true or false")
STR = Kind((str,), "a string")
DICT = Kind((dict,), "a dict")
LIST = Kind((list, tuple), "a list")
_MISSING = object()


def show(value: Any) -> str:
    """A value as messages quote it: short, and bounded work whatever it holds."""
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {value.dtype} tensor"
    return _REPR.repr(value)


def fail(path: str | Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {field}: {problem}")


def need(container: dict, key: str, kind: Kind, path, where: str = "",
         default: Any = _MISSING) -> Any:
    """container[key], which must be of `kind` (or absent, when a default is given)."""
    field = f"{where}.{key}" if where else key
    if key not in container:
        if default is _MISSING:
            raise fail(path, field, "missing")
        return default
    value = container[key]
    if not kind.admits(value):
        raise fail(path, field, f"is {show(value)}, expected {kind.name}")
    return value


def need_int(container: dict, key: str, lo: int, hi: int, path, where: str = "",
             default: Any = _MISSING) -> int:
    value = need(container, key, INT, path, where, default)
    if not lo <= value <= hi:
        raise fail(path, f"{where}.{key}" if where else key,
                   f"is {value}, expected {lo}..{hi}")
    return value


def check_bounded(state: Any, path: str | Path) -> None:
    """Refuse data that expands past MAX_ENTRIES or nests past MAX_DEPTH (a pickle of lists
    shared over and over), tensors that are not dense (a stride-0 view posing as a large
    weight), and tensors that take more bytes than the file holds. Iterative: no recursion."""
    stack, count, storages = [(state, 0, None)], 1, {}
    while stack:
        value, depth, where = stack.pop()  # where: (parent's where, dict key) or None
        if isinstance(value, torch.Tensor):
            _check_dense(value, path, where, storages)
            continue
        if isinstance(value, dict):
            children = [(v, (where, k)) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            children = [(v, where) for v in value]
        else:
            continue
        count += len(children)
        if count > MAX_ENTRIES:
            raise fail(path, _field(where), f"the data expand to more than {MAX_ENTRIES:,} "
                                            "entries (a structure shared over and over); "
                                            "refusing to read it")
        if children and depth >= MAX_DEPTH:
            raise fail(path, _field(where), f"nested more than {MAX_DEPTH} levels deep")
        stack.extend((v, depth + 1, w) for v, w in children)
    size, total = Path(path).stat().st_size, sum(storages.values())
    if total > size:
        raise fail(path, "checkpoint", f"its tensors take {total:,} bytes, more than the "
                                       f"{size:,}-byte file holds")


def _field(where) -> str:
    """'model.stem.0.weight' from the chain of dict keys that led to a value."""
    keys = []
    while where is not None:
        where, key = where
        keys.append(show(key) if not isinstance(key, (str, int)) else str(key)[:60])
    return ".".join(reversed(keys)) or "checkpoint"


def _check_dense(t: torch.Tensor, path, where, storages: dict) -> None:
    storage = t.untyped_storage()
    if t.numel() * t.element_size() > storage.nbytes():
        raise fail(path, _field(where), f"{show(t)} stored in {storage.nbytes()} bytes (an "
                                        "expanded view), not a saved tensor")
    storages[(t.device.type, storage.data_ptr())] = storage.nbytes()
