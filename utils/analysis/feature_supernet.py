"""The supernet feature.py analyses (StacNAS sec. 3.1; docs/feature.md): the checkpoint that
--model or --checkpoint picks (by default, as the authors, the supernet of the best held-out
epoch: best.pt beside search.py's checkpoint.pt), checked to be a search of --stage, its
measured ops, and the network rebuilt from it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import torch

from models.factory import build_supernet
from utils.analysis import features as ft
from utils.io.checkpoint import SEARCH_FORMAT, CheckpointError, load_checkpoint
from utils.io.checkpoint_fields import check_search_checkpoint
from utils.train.stage import progress_text

STAGES = ("darts", "search1")  # the search stages whose supernets feature.py analyses


class UsageError(Exception):
    """A flag that only the checkpoint shows to be wrong: reported like argparse's errors
    (exit 2)."""


def load_supernet(path: Path, args: argparse.Namespace) -> dict:
    """A search checkpoint of --stage, checked; a missing or wrong one is a CheckpointError
    naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `search.py --stage {args.stage} "
                              f"--name {args.name}` first, or pass --checkpoint PATH")
    state = check_search_checkpoint(load_checkpoint(path), path)
    if state.get("format") != SEARCH_FORMAT:
        raise CheckpointError(f"{path}: a {state.get('format')} checkpoint, not a search supernet")
    stage = state["config"].get("stage")
    if stage != args.stage:
        raise CheckpointError(f"{path}: a {stage} supernet, but --stage is {args.stage} "
                              f"(feature.py analyses {' or '.join(STAGES)} supernets)")
    return state


def saved_at(state: dict) -> str:
    """Where a checked search checkpoint stands, counted as every message counts epochs
    (utils.train.stage.progress_text: from 1, `after epoch 2 of 5`)."""
    return progress_text(state.get("epoch"), state.get("step", 0), state["config"].get("epochs"))


class Choice(NamedTuple):
    """The supernet feature.py analyses: its file and checked state, whether its search is
    finished, and the line saying which model it is and why (None: the file was named)."""
    path: Path
    state: dict
    search_finished: bool
    note: str | None


def pick_model(args: argparse.Namespace) -> Choice:
    """--checkpoint FILE itself, else the stage folder's supernet by --model: last =
    checkpoint.pt; best = the weights of the best held-out epoch that checkpoint.pt records,
    which checkpoint.pt itself holds when that epoch is its own, else best.pt (search.py);
    a search without a held-out split (or before its first held-out epoch) has none: its last
    checkpoint, with a note saying so. Sets args.checkpoint to the file picked."""
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        state = load_supernet(path, args)
        return Choice(path, state, state.get("finished") is True, None)
    last = Path(args.stage_dir) / "checkpoint.pt"
    args.checkpoint = str(last)
    state = load_supernet(last, args)
    finished = state.get("finished") is True
    if args.model == "last":
        return Choice(last, state, finished, f"--model last: {last} (saved "
                      f"{saved_at(state)})")
    ratio = state["config"].get("train_ratio", 1.0)
    best = state.get("best") or {}
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio < 1:
        return Choice(last, state, finished, (
            f"--model best: this search had no held-out split (--train_ratio {ratio}), so no "
            f"best held-out epoch: analysing its last checkpoint {last} (saved "
            f"{saved_at(state)}), as the authors' feature.py does"))
    epoch = best.get("epoch")
    if epoch is None:
        return Choice(last, state, finished, (
            f"--model best: no held-out epoch of this search is finished yet: analysing its "
            f"last checkpoint {last} (saved {saved_at(state)})"))
    held_out = (f"the best held-out epoch, {epoch} of {state['config'].get('epochs')} "
                f"(held-out top-1 {best.get('valid_top1')}%)")
    if ft.holds_epoch(state, state.get("run"), epoch):
        return Choice(last, state, finished, f"--model best: {last}, {held_out}")
    path = last.with_name(ft.BEST_FILE)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found, but {last} names epoch {epoch} as the best "
                              "held-out one (a search by an older version, which kept no "
                              "best.pt); pass --model last for the final supernet, or rerun the "
                              "search with --force")
    chosen = load_supernet(path, args)
    if not ft.holds_epoch(chosen, state.get("run"), epoch):
        raise CheckpointError(f"{path}: holds epoch {chosen.get('epoch')} of run "
                              f"{chosen.get('run')}, but {last} names epoch {epoch} of run "
                              f"{state.get('run')} as the best held-out one (not the search's "
                              "own file); pass --model last, or --checkpoint FILE")
    args.checkpoint = str(path)
    return Choice(path, chosen, finished, f"--model best: {path}, {held_out}")


def read_supernet(args: argparse.Namespace, state: dict) -> list[str]:
    """The measured ops of the checked supernet `state` (the same on every edge); wrong ones
    are errors."""
    path = Path(args.checkpoint)
    lists = {tuple(op for op in e if op != "none") for nodes in state["candidates"].values()
             for node in nodes for e in node}
    if len(lists) != 1:
        raise CheckpointError(f"{path}: its edges have different candidate ops; the mean over "
                              "edges needs the same ops everywhere")
    ops = list(lists.pop())
    if len(ops) < 2:
        raise CheckpointError(f"{path}: only {ops} besides none; nothing to correlate")
    if args.num_groups > len(ops):
        raise UsageError(f"argument --num_groups: {args.num_groups} groups of {len(ops)} ops "
                         f"({', '.join(ops)}): use at most {len(ops)}")
    return ops


def rebuild(state: dict, info, args: argparse.Namespace) -> torch.nn.Module:
    cfg = state["config"]
    model = build_supernet(state["candidates"], **info.network_shape(),
                           init_channels=cfg["init_channels"], num_cells=cfg["num_cells"],
                           auxiliary=cfg.get("aux_weight", 0) > 0)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{args.checkpoint}: weights do not fit a supernet for --dataset "
                              f"{args.dataset} ({info.channels}x{info.size}x{info.size}, "
                              f"{info.classes} classes); it was searched on {cfg.get('dataset')} "
                              f"({str(err).splitlines()[0][:100]})") from None
    return model
