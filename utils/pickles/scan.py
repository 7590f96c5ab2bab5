"""What torch.load itself would choke on, found before it runs: `weights_only=True` keeps code
out, not unbounded work. A pickle whose dict key is a tuple holding the same tuple twice at
each of 64 levels makes torch.load hash it forever; lists shared over and over make anything
that walks the result expand them. `scan_torch_zip` reads the pickle of a torch.save zip into
inert stand-ins (nothing is looked up or run) with the checks of utils.pickles.bounds on keys
and on the size and depth of what was built."""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

from utils.pickles.unpickler import DAMAGE_ERRORS, LegacyCheckpointError, Pickled, members
from utils.pickles.bounds import (BoundedUnpickler, Refused, check_expansion, check_keys,
                                  inflation_limit)


class _Anything(Pickled):
    """Stands in for any global of a scanned pickle; takes any state."""

    def __setstate__(self, state):
        self.state = state


class _Container:
    """OrderedDict or set, as the pickle calls them: a plain dict / set of scalar keys (the
    stand-in itself cannot be given state)."""
    __slots__ = ("kind",)

    def __init__(self, kind: type):
        object.__setattr__(self, "kind", kind)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("the file tries to set state on a constructor")

    def __call__(self, items=()):
        items = list(items)
        if self.kind is dict:
            if not all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
                raise pickle.UnpicklingError("malformed OrderedDict record")
            check_keys((k for k, _ in items), "dict key")
        else:
            check_keys(items, "set item")
        return self.kind(items)


class _ScanUnpickler(BoundedUnpickler):
    """Builds inert stand-ins for every global and persistent id: nothing is looked up or
    run."""

    def __init__(self, file):
        super().__init__(file)
        self.classes: dict = {}

    def find_class(self, module, name):
        dotted = f"{module}.{name}"
        if dotted in ("collections.OrderedDict", "builtins.set"):
            return _Container(dict if dotted.endswith("OrderedDict") else set)
        if dotted not in self.classes:
            self.classes[dotted] = type(str(name)[:64], (_Anything,), {"qualified": dotted})
        return self.classes[dotted]

    def persistent_load(self, pid):
        return None


def scan_torch_zip(path: str | Path) -> None:
    """Refuse a torch.save zip whose pickle would cost torch.load itself unbounded time or
    memory (weights_only does not help): dict keys or set items that are not scalars (a tuple
    holding the same tuple twice at each of 64 levels hashes forever), structures too large or
    deep (utils.pickles.bounds), a data.pkl that inflates far past the file. The pickle is read
    into inert stand-ins only; LegacyCheckpointError names the file."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith("data.pkl")]
            if len(infos) != 1:
                return  # not torch.save's layout: torch.load says what is wrong
            if infos[0].file_size > inflation_limit(Path(path).stat().st_size):
                raise LegacyCheckpointError(f"{source}: refusing to load: its data.pkl "
                                            f"inflates to {infos[0].file_size:,} bytes")
            data = archive.read(infos[0])
        check_expansion(_ScanUnpickler(io.BytesIO(data)).load(), members)
    except LegacyCheckpointError:
        raise
    except Refused as exc:
        raise LegacyCheckpointError(f"{source}: refusing to load: {exc}") from None
    except (OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, *DAMAGE_ERRORS):
        return  # damage: torch.load reports it
