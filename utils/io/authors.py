"""Read the StacNAS authors' released checkpoints (cifar10.pth.tar, ...) without their code and
without running anything from the file, and rebuild them as our `FinalNetwork`.

Those files are whole `nn.Module` objects pickled by `torch.save(model)` of PyTorch 1.x in the
legacy (non-zip) format, the classes named by module (augment_cnn, cells, operators).
This module parses that format itself: a restricted unpickler turns every class it may meet
into an inert placeholder that only records its pickled state, tensors into references filled
from the raw storage bytes, and refuses anything else before it is used. `torch.load` is never
called on these files. The zip format (a re-saved file) is read with the same unpickler.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import genotypes as gt
from models.augment_cnn import FinalNetwork
from utils.io.genotype_checks import validate_genotype
from utils.io.network_spec import network_spec
from utils.pickles.unpickler import (DAMAGE_ERRORS, LegacyCheckpointError, Pickled, TensorRef,
                                     read_objects)
from utils.pickles.bounds import short_repr


# ----------------------------------------------------------------------------- structure
def _fail(source: str, problem: str) -> LegacyCheckpointError:
    return LegacyCheckpointError(f"{source}: unexpected structure: {problem}")


def _expect(obj: Any, qualified: str, source: str, where: str) -> Pickled:
    if not isinstance(obj, Pickled) or obj.qualified != qualified:
        found = obj.qualified if isinstance(obj, Pickled) else type(obj).__name__
        raise _fail(source, f"{where} is a {found}, expected a pickled {qualified} (only the "
                            "authors' CIFAR-style AugmentCNN is supported)")
    return obj


def _attr(obj: Pickled, name: str, kind: type, source: str) -> Any:
    if name not in obj.state:
        raise _fail(source, f"the {obj.qualified} has no attribute {name!r}")
    value = obj.state[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(source, f"{obj.qualified}.{name} is {short_repr(value)}, "
                            f"expected {kind.__name__}")
    return value


def _children(obj: Pickled, source: str) -> dict:
    children = obj.state.get("_modules", {})
    if not isinstance(children, dict) or not all(
            c is None or isinstance(c, Pickled) for c in children.values()):
        raise _fail(source, f"the {obj.qualified} has malformed submodules")
    return {k: c for k, c in children.items() if c is not None}


def _plain(value: Any, source: str, where: str) -> Any:
    """Lists/tuples of plain scalars only (genotypes): no placeholder leaks out."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, source, where) for v in value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise _fail(source, f"{where} holds a {type(value).__name__}")


_DAG_EDGE = re.compile(r"_cells\.\d+\._dag\.\d+\.\d+")
_RENAMES = {"_stem": "stem", "_cells": "cells", "_preproc0": "preproc0", "_preproc1": "preproc1",
            "_dag": "nodes", "_ops": "net", "_aux_head": "aux_head", "_features": "features",
            "_classifier": "classifier"}


def _join(prefix: str | None, key: str) -> str | None:
    return None if prefix is None else (f"{prefix}.{key}" if prefix else key)


def _is_wrapper(name: str, node: Pickled, source: str) -> bool:
    """`_cells.K._dag.I.J` = Sequential(op, DropPath): the op is ours at `cells.K.nodes.I.J`."""
    if not (_DAG_EDGE.fullmatch(name) and node.qualified.endswith(".Sequential")):
        return False
    kids = _children(node, source)
    if sorted(kids) != ["0", "1"] or kids["1"].qualified != "operators.DropPath":
        raise _fail(source, f"{name} is a Sequential but not (op, DropPath)")
    return True


def _walk(node, a_name: str, o_name: str | None, source: str,
          seen: set) -> Iterator[tuple[str, str | None, Pickled]]:
    """(authors' name, our name or None, placeholder) for every module, pre-order."""
    if id(node) in seen:
        raise _fail(source, f"module {a_name} occurs twice")
    seen.add(id(node))
    yield a_name, o_name, node
    for key, child in _children(node, source).items():
        a = _join(a_name, key)
        if o_name is not None and _is_wrapper(a, child, source):
            seen.add(id(child))
            yield a, None, child
            kids = _children(child, source)
            yield from _walk(kids["1"], a + ".1", None, source, seen)
            yield from _walk(kids["0"], a + ".0", _join(o_name, key), source, seen)
        else:
            yield from _walk(child, a, _join(o_name, _RENAMES.get(key, key)), source, seen)


def _tensors(node: Pickled, source: str, name: str) -> Iterator[tuple[str, TensorRef]]:
    skip = node.state.get("_non_persistent_buffers_set", set())
    if not isinstance(skip, (set, list, tuple)):
        raise _fail(source, f"{name or 'the network'} has a malformed buffer set")
    for group in ("_parameters", "_buffers"):
        entries = node.state.get(group, {})
        if not isinstance(entries, dict):
            raise _fail(source, f"{name or 'the network'} has a malformed {group}")
        for key, ref in entries.items():
            if ref is None or (group == "_buffers" and key in skip):
                continue
            if not isinstance(ref, TensorRef):
                raise _fail(source, f"{_join(name, key)} is not a tensor")
            yield key, ref


def _check_ref(ref: TensorRef, source: str, name: str) -> None:
    """The tensor lies inside its storage and has no more elements than it (a stride-0 view
    would be copied at its full size)."""
    s = ref.storage
    if 0 in ref.size:
        return
    if math.prod(ref.size) > s.numel:
        raise LegacyCheckpointError(f"{source}: refusing to load: tensor {name} has "
                                    f"{math.prod(ref.size):,} elements but its storage only "
                                    f"{s.numel:,}")
    if ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride)) >= s.numel:
        raise LegacyCheckpointError(f"{source}: corrupt file: tensor {name} reaches past its "
                                    "storage")


def _materialise(ref: TensorRef, storages: dict, source: str, name: str) -> torch.Tensor:
    _check_ref(ref, source, name)
    base, s = storages[ref.storage.key], ref.storage
    if 0 in ref.size:
        return torch.empty(ref.size, dtype=s.dtype)
    return base.as_strided(ref.size, ref.stride, s.offset + ref.offset).clone()


def _cell_info(cell: Pickled, index: int, source: str) -> dict:
    children = _children(cell, source)
    if "_dag" not in children:
        raise _fail(source, f"_cells.{index} has no _dag")
    dag = [_children(node, source) for node in _children(children["_dag"], source).values()]
    edge_ids = []
    for i, node in enumerate(dag):
        ids = []
        for j, edge in node.items():
            inner = _children(edge, source).get("0")
            eid = edge.state.get("edge_id", inner.state.get("edge_id") if inner else None)
            if not isinstance(eid, int) or isinstance(eid, bool):
                raise _fail(source, f"_cells.{index}._dag.{i}.{j} has no integer edge_id")
            ids.append(eid)
        edge_ids.append(ids)
    return {"genotype": _plain(_attr(cell, "_genotype", list, source), source, "_genotype"),
            "reduction": _attr(cell, "_reduction", bool, source),
            "reduction_prev": _attr(cell, "_reduction_prev", bool, source),
            "channels": _attr(cell, "_channels", int, source), "edge_ids": edge_ids}


_NET_ATTRS = {"input_size": int, "channels_in": int, "channels_init": int, "num_cells": int,
              "num_nodes": int, "num_classes": int, "stem_multiplier": int, "auxiliary": bool,
              "aux_pos": int, "alpha_share": bool}


def _read(path) -> tuple[dict, list]:
    obj, storages, source = read_objects(path)
    try:
        return _structure(obj, storages, source)
    except DAMAGE_ERRORS as exc:  # a hostile object graph (cycles, odd keys) past the checks
        raise _fail(source, f"{type(exc).__name__}: {str(exc)[:120]}") from None


def _structure(obj: Any, storages: dict, source: str) -> tuple[dict, list]:
    net = _expect(obj, "augment_cnn.AugmentCNN", source, "the top-level object")
    info = {key: _attr(net, "_" + key, kind, source) for key, kind in _NET_ATTRS.items()}
    info["genotypes"] = _plain(_attr(net, "_genotypes", list, source), source, "_genotypes")
    cells = _children(net, source).get("_cells")
    if cells is None:
        raise _fail(source, "the AugmentCNN has no _cells")
    info["cells"] = [_cell_info(_expect(c, "cells.AugmentCell", source, f"_cells.{i}"), i, source)
                     for i, c in _children(cells, source).items()]
    entries = list(_walk(net, "", "", source, set()))
    info["class_counts"] = dict(sorted(Counter(n.qualified for _, _, n in entries).items()))
    refs = {_join(a, k): ref for a, _, node in entries for k, ref in _tensors(node, source, a)}
    for name, ref in refs.items():
        _check_ref(ref, source, name)
    # tensors sharing a storage would each be copied: at most what the storages hold in all
    wanted = sum(math.prod(r.size) for r in refs.values())
    held = sum(t.numel() for t in storages.values())
    if wanted > held:
        raise LegacyCheckpointError(f"{source}: refusing to load: its tensors would take "
                                    f"{wanted:,} elements, its storages hold {held:,}")
    info["state_dict"] = {name: _materialise(ref, storages, source, name)
                          for name, ref in refs.items()}
    info["source"] = source
    return info, entries


def read_authors_checkpoint(path: str | Path) -> dict:
    """Plain data of an authors' checkpoint: the AugmentCNN's attributes (`input_size`,
    `channels_in`, `channels_init`, `num_cells`, `num_nodes`, `num_classes`, `stem_multiplier`,
    `auxiliary`, `aux_pos`, `genotypes`, `alpha_share`), `cells` (per cell: genotype,
    reduction, reduction_prev, channels, edge_ids), `class_counts`, `state_dict` (the authors'
    names) and `source`."""
    return _read(path)[0]


# ----------------------------------------------------------------------------- our network
def _flat(nested: Any, source: str, where: str) -> list:
    """The authors' per-node pairs -> our flat [(op, input), ...] (2 ops per node)."""
    if not isinstance(nested, (list, tuple)) or not all(isinstance(n, (list, tuple))
                                                        for n in nested):
        raise _fail(source, f"{where} is not a list of nodes")
    for i, node in enumerate(nested):
        if len(node) != 2:
            raise LegacyCheckpointError(f"{source}: {where} node {i} has {len(node)} ops; our "
                                        "final cells take 2 per node")
    return [tuple(e) if isinstance(e, (list, tuple)) else e for node in nested for e in node]


def _check_edge_ids(ops: list, edge_ids: list, source: str, cell: int) -> None:
    if len(edge_ids) != len(ops) // 2:
        raise _fail(source, f"_cells.{cell}._dag has {len(edge_ids)} nodes, its genotype "
                            f"{len(ops) // 2}")
    for i, ids in enumerate(edge_ids):
        if len(ids) != 2:
            raise _fail(source, f"_cells.{cell}._dag.{i} holds {len(ids)} ops, its genotype 2")
        for j, eid in enumerate(ids):
            if eid != ops[2 * i + j][1]:
                raise LegacyCheckpointError(
                    f"{source}: _cells.{cell}._dag.{i}.{j}.edge_id = {eid} but the cell's "
                    f"genotype has {ops[2 * i + j][1]} there; the file disagrees with itself")


def authors_genotype(info: dict) -> gt.AnyGenotype:
    """Our validated Genotype (shared alphas) or list of CellGenotype (one per cell) from
    `read_authors_checkpoint` data; concat is every node, 2..num_nodes+1."""
    source, cells, num_cells = info.get("source", "authors' checkpoint"), info["cells"], \
        info["num_cells"]
    concat = list(range(2, info["num_nodes"] + 2))
    reductions = gt.reduction_cells(num_cells)
    if len(cells) != num_cells:
        raise _fail(source, f"_num_cells = {num_cells} but _cells holds {len(cells)}")
    flats = []
    for i, cell in enumerate(cells):
        if cell["reduction"] != (i in reductions):
            raise _fail(source, f"_cells.{i}._reduction = {cell['reduction']} but a "
                                f"{num_cells}-cell network reduces at {sorted(reductions)}")
        flats.append(_flat(cell["genotype"], source, f"_cells.{i}._genotype"))
    if info["alpha_share"]:
        shared = info["genotypes"]
        if len(shared) != 2:
            raise _fail(source, f"_alpha_share with {len(shared)} _genotypes (expected normal, "
                                "reduce)")
        normal, reduce = (_flat(g, source, f"_genotypes[{k}]") for k, g in enumerate(shared))
        for i, (ops, cell) in enumerate(zip(flats, cells)):
            if ops != (reduce if cell["reduction"] else normal):
                raise _fail(source, f"_cells.{i}._genotype differs from the shared "
                                    f"{'reduce' if cell['reduction'] else 'normal'} genotype")
        genotype = gt.Genotype(normal, concat, reduce, list(concat))
    else:
        genotype = [gt.CellGenotype(ops, list(concat), cell["reduction"])
                    for ops, cell in zip(flats, cells)]
    try:
        validate_genotype(genotype, info["num_nodes"], source)
    except gt.GenotypeError as exc:
        raise LegacyCheckpointError(str(exc)) from None
    for i, (ops, cell) in enumerate(zip(flats, cells)):  # validated ops from here on
        _check_edge_ids(ops, cell["edge_ids"], source, i)
    return genotype


def authors_network_spec(info: dict) -> dict:
    """Keyword arguments of `FinalNetwork` rebuilding the authors' network."""
    if info["auxiliary"] and info["aux_pos"] != 2 * info["num_cells"] // 3:
        raise LegacyCheckpointError(
            f"{info.get('source')}: auxiliary head after cell {info['aux_pos']}; ours sits "
            f"after cell {2 * info['num_cells'] // 3} of {info['num_cells']}")
    return {"genotype": authors_genotype(info), "num_classes": info["num_classes"],
            "init_channels": info["channels_init"], "num_cells": info["num_cells"],
            "auxiliary": info["auxiliary"], "in_channels": info["channels_in"],
            "input_size": info["input_size"], "stem_multiplier": info["stem_multiplier"]}


_HYPER = {"Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode"),
          "BatchNorm2d": ("num_features", "eps", "affine", "track_running_stats"),
          "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
          "AvgPool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                        "divisor_override"),
          "AdaptiveAvgPool2d": ("output_size",), "Linear": ("in_features", "out_features")}
_SAME_ROLE = {"AugmentCNN": "FinalNetwork", "AugmentCell": "FinalCell"}


def _norm(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return tuple(value) if isinstance(value, list) else value


def _check_modules(model: FinalNetwork, entries: list, source: str) -> None:
    """Every authors' module with a counterpart of ours has its class and hyperparameters
    (stride, padding, dilation, groups, pooling kind, BN eps, ...): same weights are not enough."""
    ours = dict(model.named_modules())
    for a_name, o_name, node in entries:
        mine = ours.get(o_name) if o_name is not None else None
        if mine is None:
            continue
        theirs = node.qualified.rsplit(".", 1)[-1]
        # the fast path's depthwise convolutions (models/fastpath) are Conv2d subclasses
        mine_kind = "Conv2d" if isinstance(mine, nn.Conv2d) else type(mine).__name__
        if _SAME_ROLE.get(theirs, theirs) != mine_kind:
            raise LegacyCheckpointError(f"{source}: the authors' {a_name or 'network'} is a "
                                        f"{theirs}, our {o_name} a {type(mine).__name__}")
        for attr in _HYPER.get(theirs, ()):
            if attr in node.state and _norm(node.state[attr]) != _norm(getattr(mine, attr)):
                raise LegacyCheckpointError(
                    f"{source}: the authors' {a_name}.{attr} is "
                    f"{short_repr(node.state[attr])}, our {o_name}.{attr} {getattr(mine, attr)!r}")


def _weights_for(model: FinalNetwork, info: dict, entries: list, source: str) -> dict:
    """The file's tensors under our names, checked against `model`'s names and shapes."""
    theirs, names = {}, {}
    for a_name, o_name, node in entries:
        for key, _ in _tensors(node, source, a_name):
            if o_name is None:
                raise _fail(source, f"{_join(a_name, key)} sits in a DropPath wrapper")
            theirs[_join(o_name, key)] = info["state_dict"][_join(a_name, key)]
            names[_join(o_name, key)] = _join(a_name, key)
    ours = model.state_dict()
    problems = ([f"ours has {k} but the file nothing for it" for k in ours if k not in theirs][:2]
                + [f"the file's {names[k]} has no place in ours" for k in theirs
                   if k not in ours][:2]
                + [f"the file's {names[k]} is {tuple(v.shape)}, our {k} {tuple(ours[k].shape)}"
                   for k, v in theirs.items() if k in ours and v.shape != ours[k].shape][:2])
    if problems:
        raise LegacyCheckpointError(f"{source}: the authors' weights do not fit the rebuilt "
                                    f"network: {'; '.join(problems)}")
    return theirs


def load_authors_network(path: str | Path) -> tuple[FinalNetwork, dict]:
    """(our FinalNetwork with the authors' weights, in eval mode, and its plain spec in the
    shape of `utils.io.network_spec.network_spec`, plus `stem_multiplier`). The network is first
    built on the meta device (nothing allocated) and checked against the file's modules and
    tensors, so a file claiming a huge network costs nothing before it is refused."""
    info, entries = _read(path)
    source, kwargs = info["source"], authors_network_spec(info)
    try:
        with torch.device("meta"):
            shell = FinalNetwork(**kwargs)
    except ValueError as exc:
        raise LegacyCheckpointError(f"{source}: cannot rebuild the network ({exc})") from None
    _check_modules(shell, entries, source)
    weights = _weights_for(shell, info, entries, source)
    model = FinalNetwork(**kwargs)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise LegacyCheckpointError(f"{source}: the authors' weights do not load "
                                    f"({str(exc).strip().splitlines()[0][:160]})") from None
    spec = {**network_spec(kwargs["genotype"], num_classes=kwargs["num_classes"],
                           in_channels=kwargs["in_channels"], input_size=kwargs["input_size"],
                           init_channels=kwargs["init_channels"], num_cells=kwargs["num_cells"],
                           auxiliary=kwargs["auxiliary"], imagenet=False),
            "stem_multiplier": kwargs["stem_multiplier"]}
    return model.eval(), spec


def load_authors_checkpoint(path: str | Path) -> FinalNetwork:
    """Our FinalNetwork, in eval mode, computing what the authors' pickled model computes."""
    return load_authors_network(path)[0]
