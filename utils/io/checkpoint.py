"""Checkpoints hold data, not objects: state_dicts, epoch, RNG states, config as a dict,
genotype as plain lists. Written to a temp file, fsynced, then `os.replace`d; the previous one
is kept as `<name>.prev.pt` (a hard link made before the rename, so that `<name>.pt` exists at
every moment: utils.io.files.write_bytes); loaded with `weights_only=True`."""
from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils.pickles.unpickler import LegacyCheckpointError
from utils.pickles.scan import scan_torch_zip

from utils.io.files import write_bytes

# The "format" entry of each kind of checkpoint: a search stage's (search.py: supernet, alphas,
# optimisers) and a final network's (augment.py's checkpoints, test.py --export).
SEARCH_FORMAT = "stacnas-search-1"
FINAL_FORMAT = "stacnas-final-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not fit; the message is one line."""


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write `state` atomically and durably; the checkpoint it replaces becomes
    `<name>.prev.pt` (`path` is never missing meanwhile). It is serialised in memory first and
    written with plain file IO, so that a full disk is a WriteError naming the file (torch.save
    to a path says only `iostream error`) and the checkpoint on disk stays the previous good
    one."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer(), previous_path(path) if keep_previous else None)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load one of our checkpoints safely (weights_only); any damage is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:  # torch.load itself can be made to hash or expand forever: scan the pickle first
        scan_torch_zip(path)
    except LegacyCheckpointError as err:
        raise CheckpointError(str(err)) from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        prev = previous_path(path)
        hint = (f"; to resume from the previous one pass --resume {prev}" if prev.is_file()
                else "")
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, corrupt or not ours: "
                              f"{first[:120]}){hint}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a StacNAS checkpoint (no 'format' entry)")
    return state


# -- random number generators --------------------------------------------------------------
def rng_state(device: torch.device | None = None) -> dict:
    """Python, NumPy and torch RNG states as checkpoint-safe data (tensors, lists, ints); on a
    CUDA `device` also its generator's ("cuda_device": this rank's GPU alone, so the state fits
    a resume that sees fewer GPUs)."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what rng_state wrote; on a CUDA `device` also its generator: "cuda_device", or
    from an older checkpoint's "cuda" (every GPU's state) the entry of this device's index, when
    the saving machine had that many GPUs. A CPU run makes no CUDA call."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"].cpu(), device)
        return
    every_gpu = state.get("cuda", [])
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index < len(every_gpu):
        torch.cuda.set_rng_state(every_gpu[index].cpu(), device)


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
