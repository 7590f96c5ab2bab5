"""A checkpoint's network, checked against its own stored weights before anything is built.

A final network's spec (utils/io/network_spec.py) or a supernet's config and candidates
must have sane ranges and agree with the shapes of the state dict: the stem's shape gives the
channels and input channels, the `cells.<i>.` keys the cell count, the classifier the classes.
Then the network described is built on the meta device (which allocates nothing) and every
shape compared. With the tensors checked to be dense and within the file
(utils.io.checkpoint_values.check_bounded), the network built for real costs about what the file
holds, whatever numbers the file claims. Errors are one line naming the file and the field.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import genotypes as gt
from models.factory import build_supernet
from utils.io.checkpoint import CheckpointError
from utils.io.genotype_checks import genotype_from_dict
from utils.io.network_spec import build_from_spec
from utils.io.checkpoint_values import BOOL, DICT, STR, Kind, fail, need, need_int, show

# Sane ranges of a network (the paper's largest: 48 channels, 20 cells, 1000 classes).
RANGES = {"num_classes": (1, 100_000), "in_channels": (1, 64), "input_size": (8, 4096),
          "init_channels": (1, 2048), "num_cells": (3, 100)}
GENOTYPE = Kind((dict, list), "a genotype")


def state_dict(state: dict, key: str, path) -> dict:
    """state[key], which must map parameter names to tensors."""
    weights = need(state, key, DICT, path)
    for name, t in weights.items():
        if not isinstance(name, str):
            raise fail(path, key, f"has the key {show(name)}; expected parameter names")
        if not isinstance(t, torch.Tensor):
            raise fail(path, f"{key}.{name}", f"is {show(t)}, expected a tensor")
    return weights


def _cells_in(weights: dict) -> tuple[int, str]:
    """(n, 'n cells') for the keys `cells.0.` .. `cells.<n-1>.`; (-1, ...) for gaps."""
    found = {int(k.split(".")[1]) for k in weights
             if k.startswith("cells.") and k.split(".")[1].isdigit()}
    if found != set(range(len(found))):
        return -1, "cells numbered other than 0, 1, 2, ..."
    return len(found), f"{len(found)} cells"


def _shape(weights: dict, key: str, dims: int, path, what: str) -> tuple:
    if key not in weights:
        raise fail(path, "model", f"no {key!r} ({what})")
    if weights[key].dim() != dims:
        raise fail(path, f"model.{key}", f"shape {tuple(weights[key].shape)}, expected "
                                         f"{dims} dimensions ({what})")
    return tuple(weights[key].shape)


def _agree(field: str, claimed: Any, found: Any, path, evidence: str) -> None:
    """`claimed` (a field's value) must equal `found` (read off the weights: `evidence`)."""
    if claimed != found:
        raise fail(path, field, f"is {claimed}, but {evidence}; the file disagrees with "
                                "itself")


def _same_shapes(build: Callable[[], torch.nn.Module], weights: dict, path, field: str,
                 network: str) -> None:
    """Build `network` (described by `field`) on the meta device; compare every shape."""
    try:
        with torch.device("meta"):
            ours = build().state_dict()
    except (ValueError, gt.GenotypeError) as exc:
        raise fail(path, field, f"describes no network we can build ({exc})") from None
    for key, t in ours.items():
        if key not in weights:
            raise fail(path, "model", f"no {key!r}, which {network} has")
        if tuple(weights[key].shape) != tuple(t.shape):
            raise fail(path, f"model.{key}", f"shape {tuple(weights[key].shape)}, but "
                                             f"{network} has {tuple(t.shape)}")
    extra = [k for k in weights if k not in ours]
    if extra:
        raise fail(path, f"model.{extra[0]}", f"has no place in {network}")


def check_network_spec(net: dict, weights: dict, path) -> None:
    """A final network's spec: types, ranges, genotype, agreement with `weights`."""
    kind = need(net, "kind", STR, path, "network")
    if kind not in ("cifar", "imagenet"):
        raise fail(path, "network.kind", f"is {show(kind)}, expected cifar or imagenet")
    spec = {k: need_int(net, k, lo, hi, path, "network") for k, (lo, hi) in RANGES.items()}
    aux, keep_zero = (need(net, k, BOOL, path, "network") for k in ("auxiliary", "keep_zero"))
    mult = need_int(net, "stem_multiplier", 1, 16, path, "network", default=3)
    try:
        genotype_from_dict(need(net, "genotype", GENOTYPE, path, "network"),
                              f"{path}: network.genotype")
    except gt.GenotypeError as exc:
        raise CheckpointError(str(exc)) from None
    if kind == "cifar":
        stem = _shape(weights, "stem.0.weight", 4, path, "the stem convolution")
        channels, evidence = stem[0] // mult, f"model.stem.0.weight {stem}"
    else:
        stem = _shape(weights, "stem0.0.weight", 4, path, "the first stem convolution")
        last = _shape(weights, "stem0.3.weight", 4, path, "the second stem convolution")
        channels, evidence = last[0], f"model.stem0.3.weight {last}"
    _agree("network.init_channels", spec["init_channels"], channels, path,
           f"{evidence} is the stem of a {channels}-channel network")
    _agree("network.in_channels", spec["in_channels"], stem[1], path,
           f"the stem convolution {evidence.split()[0]} reads {stem[1]} channels")
    cells, found = _cells_in(weights)
    _agree("network.num_cells", spec["num_cells"], cells, path,
           f"model holds the weights of {found}")
    head = _shape(weights, "classifier.weight", 2, path, "the classifier")
    _agree("network.num_classes", spec["num_classes"], head[0], path,
           f"model.classifier.weight {head} has {head[0]} outputs")
    has_aux = any(k.startswith("aux_head.") for k in weights)
    _agree("network.auxiliary", aux, has_aux, path,
           f"model holds {'' if has_aux else 'no '}auxiliary-head weights")
    has_gates = any(k.endswith(".gates") for k in weights)
    _agree("network.keep_zero", keep_zero, has_gates, path,
           f"model holds {'' if has_gates else 'no '}cell gates")
    _same_shapes(lambda: build_from_spec(net, str(path)), weights, path, "network",
                 "the network its 'network' entry describes")


def check_candidates(candidates: Any, num_cells: int, path) -> dict:
    """A supernet's {set: [node][edge] -> [op names]}: known sets and ops, node i with i+2
    edges, one set per cell when not shared."""
    try:
        keys = gt.alpha_set_keys(candidates, f"{path}: candidates")
    except gt.GenotypeError as exc:
        raise CheckpointError(str(exc)) from None
    if not gt.is_shared(candidates) and len(keys) != num_cells:
        raise fail(path, "candidates", f"{len(keys)} per-cell sets, config.num_cells "
                                       f"{num_cells}")
    for key in keys:
        nodes = candidates[key]
        if not isinstance(nodes, list) or len(nodes) != gt.NUM_NODES:
            raise fail(path, f"candidates.{key}", f"expected a list of {gt.NUM_NODES} nodes")
        for i, edges in enumerate(nodes):
            if not isinstance(edges, list) or len(edges) != i + 2:
                raise fail(path, f"candidates.{key}[{i}]", f"expected a list of {i + 2} edges")
            for j, ops in enumerate(edges):
                where = f"candidates.{key}[{i}][{j}]"
                if not (isinstance(ops, list) and ops and all(
                        isinstance(op, str) and op in gt.KNOWN_OPS for op in ops)):
                    raise fail(path, where, f"is {show(ops)}, expected a non-empty list of "
                                            "known op names")
                if gt.duplicate_problem(ops):
                    raise fail(path, where, gt.duplicate_problem(ops))
    return candidates


def check_supernet(config: dict, candidates: dict, weights: dict, path) -> None:
    """A search checkpoint's supernet (config.init_channels / num_cells / aux_weight and its
    candidates) against its weights."""
    channels = need_int(config, "init_channels", *RANGES["init_channels"], path, "config")
    cells = need_int(config, "num_cells", *RANGES["num_cells"], path, "config")
    aux = need(config, "aux_weight", Kind((int, float), "a number"), path, "config", 0) > 0
    check_candidates(candidates, cells, path)
    stem = _shape(weights, "stem.0.weight", 4, path, "the stem convolution")
    _agree("config.init_channels", channels, stem[0] // 3, path,
           f"model.stem.0.weight {stem} is the stem of a {stem[0] // 3}-channel supernet")
    count, found = _cells_in(weights)
    _agree("config.num_cells", cells, count, path, f"model holds the weights of {found}")
    head = _shape(weights, "classifier.weight", 2, path, "the classifier")
    _same_shapes(lambda: build_supernet(candidates, num_classes=head[0], in_channels=stem[1],
                                        input_size=32, init_channels=channels, num_cells=cells,
                                        auxiliary=aux), weights, path, "config",
                 "the supernet its config and candidates describe")
