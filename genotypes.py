"""The search space StacNAS searches and its rules: the DARTS primitives, the StacNAS groups of
correlated ops (sec. 3), genotypes (DARTS's and the paper's named cells), which ops stage 2
searches after stage 1, and how a stage's alphas give the final genotype.

Pure data and the standard library, so every module and test can use it without torch. A
genotype's plain form (the dicts genotype.json and checkpoints hold) and its validation are in
utils/io/genotype_checks.py; the files (genotype.json / genotype.txt, alphas.json,
groups.json) and their checks on reading in utils/io/genotype_files.py; cell plots in
utils/analysis/plots.py.

Alphas: ``{set: [node][edge] -> {"ops": [names], "alphas": [raw values]}}`` where set is
"normal"/"reduce" (shared alphas) or "cell_0", "cell_1", ... (one set per cell), node i has
i+2 incoming edges and edge j reads input j (0 = c_{k-2}, 1 = c_{k-1}, 2+ = earlier nodes).
An edge's ops are distinct, except that skip_connect may be listed twice, side by side, as
stage 2's identity group of the authors' released code has it (utils/train/groups.py).
The derivation rules take alphas as a model gives them or as
``utils.io.genotype_files.load_alphas`` returns them (checked).
"""
from __future__ import annotations

import re
import sys
from collections import namedtuple
from typing import Any

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
KNOWN_OPS = PRIMITIVES + ["conv_7x1_1x7"]
# StacNAS groups of correlated ops: stage 1 searches the representatives, stage 2 the members.
GROUPS = {
    "pooling": {"representative": "max_pool_3x3",
                "members": ["avg_pool_3x3", "max_pool_3x3", "none"]},
    "identity": {"representative": "skip_connect", "members": ["skip_connect", "none"]},
    "separable": {"representative": "sep_conv_3x3",
                  "members": ["sep_conv_3x3", "sep_conv_5x5", "none"]},
    "dilated": {"representative": "dil_conv_3x3",
                "members": ["dil_conv_3x3", "dil_conv_5x5", "none"]},
    "zero": {"representative": "none", "members": ["none"]},
}
# The one op a candidate list may repeat: twice at most, the two copies side by side, as the
# authors' released code lists stage 2's identity group (utils/train/groups.py); GROUPS, our
# default, lists skip_connect once, as the paper's groups do.
DUPLICABLE_OP = "skip_connect"
NUM_NODES = 4
# Cells of a network: two reduction cells need at least 3; more than 100 is no network this
# code trains (the parsers and the checkpoint checks use the same range).
MIN_CELLS, MAX_CELLS = 3, 100

# normal/reduce: (op, input) pairs, two per intermediate node; input 0 = c_{k-2},
# 1 = c_{k-1}, 2+ = earlier nodes. concat: the nodes (2..) joined into the cell output.
Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
# One cell of a per-cell genotype (alphas not shared); the genotype is a list of these.
CellGenotype = namedtuple("CellGenotype", "ops concat reduction")
AnyGenotype = Genotype | list[CellGenotype]

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5])
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
# StacNAS CIFAR-10 cells from the paper's figures.
STACNAS_C10 = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("sep_conv_3x3", 2),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("avg_pool_3x3", 0),
            ("dil_conv_5x5", 3), ("avg_pool_3x3", 0), ("dil_conv_5x5", 3), ("sep_conv_5x5", 0)],
    reduce_concat=[2, 3, 4, 5])
# StacNAS CIFAR-100 cells from the paper's figures (README "Found architectures"): every node of
# the normal cell takes the two cell inputs. At 36 channels / 20 cells with the auxiliary head
# they have 4.58M parameters = 4.37 x 2^20, the authors' "4.36M" for their CIFAR-100 release.
STACNAS_C100 = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_5x5", 2),
            ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_3x3", 0), ("dil_conv_5x5", 3)],
    reduce_concat=[2, 3, 4, 5])
# StacNAS ImageNet cells from the paper's figures (searched on ImageNet): separable 3x3
# convolutions from the two cell inputs, two skips into the first node of the normal cell.
STACNAS_IMAGENET = Genotype(
    normal=[("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
NAMED_GENOTYPES = ("DARTS_V1", "DARTS_V2", "STACNAS_C10", "STACNAS_C100", "STACNAS_IMAGENET")

_SHARED_KEYS = ("normal", "reduce")
_CELL_KEY = re.compile(r"cell_(0|[1-9][0-9]*)")


class GenotypeError(ValueError):
    """A genotype, alphas or groups file/object is malformed; the message is one line,
    ``<source>: <entry>: <problem>`` (see :meth:`at`)."""

    @classmethod
    def at(cls, source: str, entry: str, problem: str) -> GenotypeError:
        """The error for `problem` in `entry` of `source` (no entry: the whole object)."""
        return cls(f"{source}: {entry}: {problem}" if entry else f"{source}: {problem}")


def short_repr(value: Any) -> str:
    """A value as error messages quote it: its repr on one line, at most 60 characters."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def get_named_genotype(name: str) -> Genotype:
    """Return a published genotype of this module by name (e.g. ``DARTS_V2``)."""
    genotype = getattr(sys.modules[__name__], name, None) if isinstance(name, str) else None
    if not isinstance(genotype, Genotype):
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(NAMED_GENOTYPES)}")
    return genotype


def reduction_cells(num_cells: int) -> set[int]:
    """Indices of the reduction cells in a network of ``num_cells`` cells."""
    return {num_cells // 3, 2 * num_cells // 3}


# ----------------------------------------------------------------------------- alpha sets
def cell_set(cell: int, reduction: bool, alpha_share: bool) -> str:
    """The alpha set cell `cell` reads: its kind's ("normal"/"reduce") or its own ("cell_<i>")."""
    if alpha_share:
        return _SHARED_KEYS[1] if reduction else _SHARED_KEYS[0]
    return f"cell_{cell}"


def set_names(num_cells: int, alpha_share: bool) -> list[str]:
    """Alpha-set keys: shared ("normal", "reduce") or one per cell ("cell_0", ...)."""
    return list(_SHARED_KEYS) if alpha_share else [cell_set(i, False, False)
                                                   for i in range(num_cells)]


def is_shared(alphas: dict) -> bool:
    """True when the alphas are shared by cell kind ("normal"/"reduce"), not per cell."""
    return any(k in _SHARED_KEYS for k in alphas)


def alpha_set_keys(sets: Any, source: str = "alphas") -> list[str]:
    """The set keys of alphas (or of per-set candidate lists) in order: normal, reduce or
    cell_0..cell_{n-1}; GenotypeError for anything else."""
    if not isinstance(sets, dict) or not sets:
        raise GenotypeError.at(source, "", "expected a non-empty object keyed by alpha set "
                                           "('normal'/'reduce' or 'cell_0', ...)")
    for key in sets:
        if key not in _SHARED_KEYS and not (isinstance(key, str) and _CELL_KEY.fullmatch(key)):
            raise GenotypeError.at(source, "", f"unknown alpha set {short_repr(key)} "
                                               "(use 'normal'/'reduce' or 'cell_<i>')")
    if is_shared(sets):
        expected = list(_SHARED_KEYS)
        if any(_CELL_KEY.fullmatch(k) for k in sets):
            raise GenotypeError.at(source, "", "mixes shared ('normal'/'reduce') and per-cell "
                                               "('cell_<i>') alpha sets; keep one kind")
    else:
        if not MIN_CELLS <= len(sets) <= MAX_CELLS:
            raise GenotypeError.at(source, "", f"per-cell alpha sets of {len(sets)} cells; a "
                                               f"network has {MIN_CELLS}..{MAX_CELLS} cells")
        expected = set_names(len(sets), False)
    if sorted(sets) != sorted(expected):
        raise GenotypeError.at(source, "", f"alpha sets {sorted(sets)}, expected {expected}")
    return expected


def cell_kinds(g: AnyGenotype) -> list[tuple[str, list, list, bool]]:
    """(alpha set, ops, concat, reduction) for every cell kind of a genotype: normal and
    reduce, or every cell of a per-cell genotype."""
    if isinstance(g, Genotype):
        return [(_SHARED_KEYS[0], g.normal, g.normal_concat, False),
                (_SHARED_KEYS[1], g.reduce, g.reduce_concat, True)]
    return [(cell_set(i, c.reduction, False), c.ops, c.concat, c.reduction)
            for i, c in enumerate(g)]


def count_ops(g: AnyGenotype, op: str = "skip_connect") -> int:
    """How often ``op`` occurs over all cells (kinds) of a genotype."""
    return sum(name == op for _, ops, _, _ in cell_kinds(g) for name, _ in ops)


# ----------------------------------------------------------------------------- groups
def duplicate_problem(ops: list) -> str | None:
    """Why a candidate list's repeats are not allowed (one line), or None when it repeats
    nothing or only skip_connect as the released code does: twice, the copies side by side
    (skip_connect, skip_connect, none)."""
    counts: dict = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    repeated = [op for op, n in counts.items() if n > 1]
    if not repeated:
        return None
    others = [op for op in repeated if op != DUPLICABLE_OP]
    if others:
        return (f"op {others[0]!r} listed {counts[others[0]]} times in {list(ops)}; only "
                f"{DUPLICABLE_OP!r} may appear twice (the released code's identity group)")
    first = ops.index(DUPLICABLE_OP)
    if counts[DUPLICABLE_OP] > 2 or ops[first + 1] != DUPLICABLE_OP:
        return (f"{DUPLICABLE_OP!r} listed {counts[DUPLICABLE_OP]} times in {list(ops)}; it may "
                "appear at most twice, the two copies side by side (the released code's "
                "identity group: skip_connect, skip_connect, none)")
    return None


def stage1_primitives(groups: dict) -> list[str]:
    """The stage-1 candidate ops: each group's representative, in order."""
    return [g["representative"] for g in groups.values()]


STAGE1_PRIMITIVES = stage1_primitives(GROUPS)


# ----------------------------------------------------------------------------- derivation
def _best_op(edge: dict) -> tuple[float, str] | None:
    """(raw alpha, op) of the strongest op other than ``none``, the first of equals; None if
    there is none. With skip_connect listed twice (released groups) the larger of its two
    alphas is skip_connect's score and the op is named ``skip_connect`` either way."""
    scored = [(a, op) for op, a in zip(edge["ops"], edge["alphas"]) if op != "none"]
    return max(scored, key=lambda s: s[0]) if scored else None


def candidates_from_stage1(alphas: dict, groups: dict = GROUPS, source: str = "alphas") -> dict:
    """Stage-2 candidate ops per edge (StacNAS sec. 3): the members of the group whose
    representative has the largest raw stage-1 alpha on that edge, ``none`` excluded.
    Errors name `source` (the alphas' file)."""
    keys = alpha_set_keys(alphas, source)
    by_rep = {g["representative"]: g["members"] for g in groups.values()}
    result = {}
    for key in keys:
        nodes, result[key] = alphas[key], []
        for i, edges in enumerate(nodes):
            result[key].append([])
            for j, edge in enumerate(edges):
                for op in edge["ops"]:
                    if op not in by_rep:
                        raise GenotypeError.at(
                            source, "", f"these look like stage-2 (or DARTS) alphas: op {op!r} "
                                        f"on {key} node {i} edge {j} is not a stage-1 group "
                                        "representative; pass the alphas.json of search1")
                best = _best_op(edge)
                if best is None:
                    raise GenotypeError.at(source, f"{key} node {i} edge {j}",
                                           "only 'none'; no group to pick")
                result[key][-1].append(list(by_rep[best[1]]))
    return result


def uniform_candidates(op_names: list[str], set_names: list[str],
                       num_nodes: int = NUM_NODES) -> dict:
    """The same candidate list on every edge of every alpha set."""
    return {s: [[list(op_names) for _ in range(i + 2)] for i in range(num_nodes)]
            for s in set_names}


def _derive_cell(nodes: list, key: str, source: str) -> list[tuple[str, int]]:
    ops = []
    for i, edges in enumerate(nodes):
        scored = []  # (alpha, op, input) of each edge's best op other than none
        for j, edge in enumerate(edges):
            best = _best_op(edge)
            if best is not None:
                scored.append((best[0], best[1], j))
        if len(scored) < 2:
            raise GenotypeError.at(source, f"{key} node {i}", f"{len(scored)} edge(s) with an "
                                                               "op other than 'none'; a final "
                                                               "node needs 2")
        scored.sort(key=lambda s: -s[0])  # stable: ties keep the lower input first
        ops += [(op, j) for _, op, j in scored[:2]]
    return ops


def derive_genotype(alphas: dict, num_nodes: int | None = None,
                    source: str = "alphas") -> AnyGenotype:
    """Final genotype (DARTS sec. 2.4): per edge the best op by raw alpha, ``none`` excluded;
    per node the 2 strongest edges, strongest first. Per-cell alphas give list[CellGenotype].
    Errors name `source` (the alphas' file)."""
    keys = alpha_set_keys(alphas, source)
    n = len(alphas[keys[0]])
    if num_nodes is not None and n != num_nodes:
        raise GenotypeError.at(source, "", f"{n} nodes per cell, expected {num_nodes}")
    concat = list(range(2, n + 2))
    cells = {key: _derive_cell(alphas[key], key, source) for key in keys}
    if is_shared(alphas):
        return Genotype(cells["normal"], concat, cells["reduce"], list(concat))
    red = reduction_cells(len(keys))
    return [CellGenotype(cells[k], list(concat), i in red) for i, k in enumerate(keys)]
