"""What our checkpoints must hold, checked field by field before anything reads or builds from
them: every missing key, wrong type or contradiction is one CheckpointError line naming the
file and the field (``<file>: <field>: <problem>``), never a KeyError or a TypeError, and never
a network built at whatever size the file claims.

    state = check_final_checkpoint(load_checkpoint(path), path)   # test.py
    state = check_final_checkpoint(load_checkpoint(path, device), path, resume=True)  # augment.py
    state = check_search_checkpoint(load_checkpoint(path, device), path)  # search.py, feature.py

A checkpoint of another format is only checked to be bounded data with a string "format"; the
caller says what it is (e.g. "a stacnas-search-1 checkpoint, not a trained final network"), or
calls require_kind first, which names what the file is and what was expected, on one line,
and then the field checks:

    state = check_search_checkpoint(require_kind(state, path, SEARCH_FORMAT, "search2"), path)
"""
from __future__ import annotations

from pathlib import Path


from utils.io.checkpoint import FINAL_FORMAT, SEARCH_FORMAT, CheckpointError
from utils.io.checkpoint_shapes import GENOTYPE, check_network_spec, check_supernet, state_dict
from utils.io.checkpoint_values import (BOOL, DICT, INT, LIST, NUMBER, STR, Kind,
                                        check_bounded, fail, need, need_int, show)

_EPOCH_OR_NONE = Kind((int, type(None)), "an epoch or null")
_NUMBER_OR_NONE = Kind((int, float, type(None)), "a number or null")
_DICT_OR_NONE = Kind((dict, type(None)), "a dict or null")


def check_final_checkpoint(state: dict, path: str | Path, resume: bool = False) -> dict:
    """`state`, a final network's checkpoint (augment.py's, test.py --export's), when it holds
    what test.py reads (with `resume`: what augment.py's resume reads); else CheckpointError."""
    check_bounded(state, path)
    if need(state, "format", STR, path) != FINAL_FORMAT:
        return state
    network = need(state, "network", DICT, path)
    check_network_spec(network, state_dict(state, "model", path), path)
    if resume:
        check_training_state(state, path, ("optimizer",))
        need(state, "elapsed", NUMBER, path)
        check_best(need(state, "best", DICT, path), path)
    return state


def check_search_checkpoint(state: dict, path: str | Path) -> dict:
    """`state`, search.py's checkpoint, when it holds what search.py's resume and feature.py
    read, its supernet agreeing with its weights; else CheckpointError."""
    check_bounded(state, path)
    if need(state, "format", STR, path) != SEARCH_FORMAT:
        return state
    config = need(state, "config", DICT, path)
    need(config, "stage", STR, path, "config")
    check_supernet(config, need(state, "candidates", DICT, path),
                   state_dict(state, "model", path), path)
    need(state, "genotype", GENOTYPE, path)
    check_training_state(state, path, ("w_optimizer", "a_optimizer"))
    if "best" in state:
        check_best(need(state, "best", DICT, path), path)
    return state


def describe_kind(state: dict) -> str:
    """What wrote a (bounded, checked) checkpoint, in words: "a search1 checkpoint (search.py
    --stage search1)", "a trained final network's checkpoint (augment.py)"..."""
    fmt = state.get("format")
    if fmt == SEARCH_FORMAT:
        config = state.get("config")
        stage = config.get("stage") if isinstance(config, dict) else None
        if stage in ("search1", "search2", "darts"):
            return f"a {stage} checkpoint (search.py --stage {stage})"
        return f"a search checkpoint of the stage {show(stage)}"
    if fmt == FINAL_FORMAT:
        if state.get("epoch") is None:
            return "an exported network (test.py --export), which holds no training state"
        return "a trained final network's checkpoint (augment.py)"
    return f"a {show(fmt)} checkpoint, not one of ours"


def require_kind(state: dict, path: str | Path, fmt: str, stage: str | None = None) -> dict:
    """`state` when it is a checkpoint of format `fmt` (a search checkpoint: of `stage`; a final
    network: with its training state, as augment.py's are); else one CheckpointError line
    naming the file, what it is and what --resume takes instead. Call it before the field
    checks (check_search_checkpoint...), whose messages assume the right kind."""
    check_bounded(state, path)
    ok = state.get("format") == fmt
    if ok and fmt == SEARCH_FORMAT and stage is not None:
        config = state.get("config")
        ok = isinstance(config, dict) and config.get("stage") == stage
    if ok and fmt == FINAL_FORMAT:
        ok = state.get("epoch") is not None
    if ok:
        return state
    wanted = (f"a {stage} checkpoint (one that search.py --stage {stage} wrote)"
              if fmt == SEARCH_FORMAT else "a checkpoint that augment.py wrote")
    raise CheckpointError(f"{path}: {describe_kind(state)}; this command resumes from {wanted}")


# ----------------------------------------------------------------------------- training state
def check_training_state(state: dict, path, optimizers: tuple[str, ...]) -> None:
    """What a resume reads besides the weights: epoch, step, finished, config, the optimisers',
    scheduler's and fp16 gradient scaler's state dicts (what their load_state_dict accepts but
    would fail on only at a later step), the number of processes and where the RNG states are
    (rank 0's; newer checkpoints also every rank's). The RNG states themselves are checked by
    Python, NumPy and PyTorch as utils.train.stage.resume_rng restores them, before training."""
    need_int(state, "epoch", 0, 10 ** 6, path)
    need_int(state, "step", 0, 10 ** 9, path, default=0)
    need(state, "finished", BOOL, path)
    need(state, "run", STR, path, default=None)
    config = need(state, "config", DICT, path)
    if not all(isinstance(k, str) for k in config):
        raise fail(path, "config", "expected option names (strings) as keys")
    for name in optimizers:
        _check_optimizer(need(state, name, DICT, path), path, name)
    scheduler = need(state, "scheduler", DICT, path)
    need(scheduler, "last_epoch", INT, path, "scheduler")
    for key in ("base_lrs", "_last_lr"):
        values = need(scheduler, key, LIST, path, "scheduler", default=[])
        if not all(NUMBER.admits(v) for v in values):
            raise fail(path, f"scheduler.{key}", "expected a list of numbers")
    _check_scaler(state, path)
    need(state, "rng", DICT, path)  # its states are checked as they are restored (resume_rng)
    _check_rng_ranks(state, path)


def check_best(best: dict, path) -> None:
    need(best, "epoch", _EPOCH_OR_NONE, path, "best")
    need(best, "valid_top1", _NUMBER_OR_NONE, path, "best")


def _check_optimizer(opt: dict, path, name: str) -> None:
    """torch.optim's state_dict: {"state": {index: {...}}, "param_groups": [{"params": [...]}]}."""
    for index, entry in need(opt, "state", DICT, path, name).items():
        if not INT.admits(index) or not isinstance(entry, dict):
            raise fail(path, f"{name}.state", "expected parameter indices mapped to dicts")
    for i, group in enumerate(need(opt, "param_groups", LIST, path, name)):
        where = f"{name}.param_groups[{i}]"
        if not isinstance(group, dict):
            raise fail(path, where, "expected a dict")
        if not all(INT.admits(p) for p in need(group, "params", LIST, path, where)):
            raise fail(path, f"{where}.params", "expected a list of parameter indices")
        need(group, "lr", NUMBER, path, where)


def _check_scaler(state: dict, path) -> None:
    """torch.amp.GradScaler's state_dict (fp16), or null (none used)."""
    scaler = need(state, "scaler", _DICT_OR_NONE, path, default=None)
    if scaler is None:
        return
    if not need(scaler, "scale", NUMBER, path, "scaler") > 0:
        raise fail(path, "scaler.scale", f"is {scaler['scale']}, expected a number > 0")
    for key in ("growth_factor", "backoff_factor"):
        need(scaler, key, NUMBER, path, "scaler")
    for key in ("growth_interval", "_growth_tracker"):
        need(scaler, key, INT, path, "scaler")


def _check_rng_ranks(state: dict, path) -> None:
    """world_size (the number of processes that wrote it) and rng_ranks, one rank's RNG states
    per process; both absent in older checkpoints."""
    world = need_int(state, "world_size", 1, 10 ** 5, path) if "world_size" in state else None
    ranks = need(state, "rng_ranks", LIST, path, default=None)
    if ranks is None:
        return
    if world is None:
        raise fail(path, "world_size", "missing (rng_ranks holds one state per process)")
    if len(ranks) != world:
        raise fail(path, "rng_ranks", f"holds {len(ranks)} states, expected one per process "
                                      f"(world_size {world})")
    for i, rng in enumerate(ranks):
        if not isinstance(rng, dict):
            raise fail(path, f"rng_ranks[{i}]", f"is {show(rng)}, expected a dict")
