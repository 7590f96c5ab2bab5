"""Bounds on what a pickle may make us build, for the readers of files we do not trust
(utils/pickles/unpickler.py, utils/pickles/scan.py).

A pickle is small but may describe something huge: a list holding the same sub-list twice at
each of 64 levels is 2^64 entries to whatever walks it, and a dict key that is such a tuple
tower is never done hashing. `BoundedUnpickler` refuses dict keys and set items that are not
scalars before hashing them; `check_expansion` measures what was built (each container once,
memoised) and refuses it past MAX_EXPANDED entries as a tree, MAX_DEPTH levels, or a cycle.
Both raise `Refused`, whose message the reader prefixes with the file's name. A zip archive's
members may inflate to `inflation_limit` bytes at most.
"""
from __future__ import annotations

import pickle
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

# An authors' CIFAR release (20 cells) expands to about 112,000 entries, 33 levels deep.
MAX_EXPANDED = 1_000_000
MAX_DEPTH = 100
# dict keys and set items: types whose hash costs nothing (a tuple's hashes all it holds)
_KEY_TYPES = (str, int, bool, float, bytes, type(None))
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 40, 40, 40


class Refused(pickle.UnpicklingError):
    """What a file holds would cost unbounded time or memory; the message is one line."""


def short_repr(value: Any) -> str:
    """A value as error messages quote it: bounded in length and work whatever it holds."""
    return _REPR.repr(value)[:80]


def check_keys(keys: Iterable, what: str) -> None:
    for key in keys:
        if type(key) not in _KEY_TYPES:
            raise Refused(f"the file holds a {what} that is a {type(key).__name__}, not a "
                          "scalar (hashing one can take forever)")


class BoundedUnpickler(pickle._Unpickler):
    """Python's own (pure Python) unpickler, so that the opcodes that hash (dict keys, set
    items) can refuse keys whose hash is expensive before hashing them. Subclasses decide what
    globals and persistent ids become (find_class, persistent_load)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_setitem(self):
        check_keys(self.stack[-2:-1], "dict key")
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self):  # after a MARK, self.stack holds the items since it
        check_keys(self.stack[0::2], "dict key")
        pickle._Unpickler.load_setitems(self)

    def _load_dict(self):
        check_keys(self.stack[0::2], "dict key")
        pickle._Unpickler.load_dict(self)

    def _load_additems(self):
        check_keys(self.stack, "set item")
        pickle._Unpickler.load_additems(self)

    def _load_frozenset(self):
        check_keys(self.stack, "set item")
        pickle._Unpickler.load_frozenset(self)

    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset


def inflation_limit(file_bytes: int) -> int:
    """The most bytes a zip member (or a torch.save zip's members together) may inflate to,
    from a `file_bytes`-byte archive: torch.save stores its members uncompressed, so more is
    a zip bomb."""
    return 4 * file_bytes + 2 ** 20


def plain_members(value: Any) -> list | None:
    """What a dict, list, tuple or set holds (None for anything else)."""
    if isinstance(value, dict):
        return [v for item in value.items() for v in item]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return None


def check_expansion(obj: Any, members: Callable[[Any], list | None]) -> None:
    """Refuse an object graph whose tree expansion (a part shared N times counts N times) has
    more than MAX_EXPANDED entries or MAX_DEPTH levels, or that contains itself: whatever reads
    it afterwards, however naively, then costs bounded time and memory. `members(x)` lists
    what container `x` holds (None for a leaf). Each container is visited once (sizes memoised
    by identity), without recursion."""
    done: dict = {}  # id -> (entries, depth) of a finished container
    open_ids: set = set()  # containers on the current path
    stack = [(obj, False)]
    while stack:
        value, finished = stack.pop()
        held = members(value)
        if held is None or (not finished and id(value) in done):
            continue
        if finished:
            open_ids.discard(id(value))
            entries, depth = 1, 1
            for m in held:  # every container among them is done (or was open: a cycle)
                e, d = done.get(id(m), (1, 0))
                entries, depth = entries + e, max(depth, d + 1)
            done[id(value)] = (entries, depth)
            if entries > MAX_EXPANDED:
                raise Refused(f"its objects expand to more than {MAX_EXPANDED:,} entries "
                              "(structures shared over and over: a pickle bomb)")
            if depth > MAX_DEPTH:
                raise Refused(f"its objects nest more than {MAX_DEPTH} levels deep")
            continue
        if id(value) in open_ids:
            raise Refused("an object of it contains itself")
        open_ids.add(id(value))
        if len(open_ids) > MAX_DEPTH:
            raise Refused(f"its objects nest more than {MAX_DEPTH} levels deep")
        stack.append((value, True))
        stack.extend((m, False) for m in held if id(m) not in done)
