"""Genotypes of the DARTS cell space as searched by StacNAS: ops, groups, I/O, derivation, plots.

Pure data and the standard library (graphviz is imported only when plotting), so every
script and test can use it without torch. Genotypes and alphas are stored as JSON; a
``Genotype(...)`` repr is also read, with ``ast`` and never ``eval``.

alphas.json: ``{set: [node][edge] -> {"ops": [names], "alphas": [raw values]}}`` where set is
"normal"/"reduce" (shared alphas) or "cell_0", "cell_1", ... (one set per cell), node i has
i+2 incoming edges and edge j reads input j (0 = c_{k-2}, 1 = c_{k-1}, 2+ = earlier nodes).
An edge's ops are distinct, except that skip_connect may be listed twice, side by side, as
stage 2's identity group of the authors' released code has it (:func:`released_groups`).
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import numbers
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional, Union

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
STAGE1_PRIMITIVES = [g["representative"] for g in GROUPS.values()]
# The authors' released code lists skip_connect twice in stage 2's identity group: two
# identities, each with its own alpha (skip starts with 2/3 of the edge's softmax), and at
# stride 2 two FactorizedReduce modules with their own weights. `released_groups` reproduces
# it (an option); GROUPS, our default, lists skip_connect once, as the paper's groups do.
RELEASED_IDENTITY_MEMBERS = ["skip_connect", "skip_connect", "none"]
# The one op a candidate list may repeat: twice at most, the two copies side by side.
DUPLICABLE_OP = "skip_connect"
IDENTITY_GROUP_CHOICES = ("single", "released")
NUM_NODES = 4

# normal/reduce: (op, input) pairs, two per intermediate node; input 0 = c_{k-2},
# 1 = c_{k-1}, 2+ = earlier nodes. concat: the nodes (2..) joined into the cell output.
Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
# One cell of a per-cell genotype (alphas not shared); the genotype is a list of these.
CellGenotype = namedtuple("CellGenotype", "ops concat reduction")
AnyGenotype = Union[Genotype, list[CellGenotype]]

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
NAMED_GENOTYPES = ("DARTS_V1", "DARTS_V2", "STACNAS_C10")

_SHARED_KEYS = ("normal", "reduce")
_CELL_KEY = re.compile(r"cell_(0|[1-9][0-9]*)")


class GenotypeError(ValueError):
    """A genotype, alphas or groups file/object is malformed; the message is one line."""


def _fail(source: str, entry: str, problem: str) -> GenotypeError:
    return GenotypeError(f"{source}: {entry}: {problem}" if entry else f"{source}: {problem}")


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_op(op: Any) -> str:
    return f"unknown op {_short(op)} (known: {', '.join(KNOWN_OPS)})"


def get_named_genotype(name: str) -> Genotype:
    """Return a published genotype of this module by name (e.g. ``DARTS_V2``)."""
    genotype = getattr(sys.modules[__name__], name, None) if isinstance(name, str) else None
    if not isinstance(genotype, Genotype):
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(NAMED_GENOTYPES)}")
    return genotype


def reduction_cells(num_cells: int) -> set[int]:
    """Indices of the reduction cells in a network of ``num_cells`` cells."""
    return {num_cells // 3, 2 * num_cells // 3}


def set_names(num_cells: int, alpha_share: bool) -> list[str]:
    """Alpha-set keys: shared ("normal", "reduce") or one per cell ("cell_0", ...)."""
    return list(_SHARED_KEYS) if alpha_share else [f"cell_{i}" for i in range(num_cells)]


def _cells(g: AnyGenotype) -> list[tuple[str, list, list, bool]]:
    """(name, ops, concat, reduction) for every cell kind of a genotype."""
    if isinstance(g, Genotype):
        return [("normal", g.normal, g.normal_concat, False),
                ("reduce", g.reduce, g.reduce_concat, True)]
    return [(f"cell_{i}", c.ops, c.concat, c.reduction) for i, c in enumerate(g)]


# ----------------------------------------------------------------------------- validation
def _check_ops(ops: Any, num_nodes: int, source: str, name: str) -> None:
    expected = 2 * num_nodes
    if not isinstance(ops, (list, tuple)) or len(ops) != expected:
        count = f"{len(ops)} entries" if isinstance(ops, (list, tuple)) else _short(ops)
        raise _fail(source, name, f"{count}, expected {expected} (2 per node x {num_nodes} nodes)")
    for k, entry in enumerate(ops):
        where, node = f"{name}[{k}]", k // 2
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], int) or isinstance(entry[1], bool)):
            raise _fail(source, where, f"expected [op, input] (a string and an integer), "
                                       f"got {_short(entry)}")
        op, inp = entry
        if op not in KNOWN_OPS:
            raise _fail(source, where, _unknown_op(op))
        if op == "none":
            raise _fail(source, where, "op 'none' is not allowed in a final genotype "
                                       "(a final cell never uses it; pick a real op)")
        if not 0 <= inp <= node + 1:
            raise _fail(source, where, f"input {inp} out of range for node {node} "
                                       f"(allowed 0..{node + 1})")


def _check_concat(concat: Any, num_nodes: int, source: str, name: str) -> None:
    top = num_nodes + 1
    ok = (isinstance(concat, (list, tuple)) and len(concat) > 0
          and all(isinstance(c, int) and not isinstance(c, bool) and 2 <= c <= top for c in concat))
    if not ok or len(set(concat)) != len(concat):
        raise _fail(source, name, f"expected a list of distinct node indices in 2..{top}, "
                                  f"got {_short(concat)}")


def validate_genotype(g: Any, num_nodes: int = NUM_NODES, source: str = "genotype") -> AnyGenotype:
    """Check a Genotype or a list of CellGenotype; raise GenotypeError, else return it."""
    if isinstance(g, Genotype):
        names = [("normal", "normal_concat"), ("reduce", "reduce_concat")]
    elif isinstance(g, list) and g and all(isinstance(c, CellGenotype) for c in g):
        names = [(f"cell[{i}].ops", f"cell[{i}].concat") for i in range(len(g))]
        for i, cell in enumerate(g):
            if not isinstance(cell.reduction, bool):
                raise _fail(source, f"cell[{i}].reduction", f"expected true/false, "
                                                             f"got {_short(cell.reduction)}")
    else:
        raise _fail(source, "", f"expected a Genotype or a non-empty list of CellGenotype, "
                                f"got {type(g).__name__}")
    for (ops_name, concat_name), (_, ops, concat, _) in zip(names, _cells(g)):
        _check_ops(ops, num_nodes, source, ops_name)
        _check_concat(concat, num_nodes, source, concat_name)
    return g


# ----------------------------------------------------------------------------- dict / JSON
def genotype_to_dict(g: AnyGenotype) -> Union[dict, list]:
    """Plain JSON data: a dict for a Genotype, a list of cell dicts for a per-cell genotype."""
    pairs = lambda ops: [[op, int(inp)] for op, inp in ops]  # noqa: E731
    ints = lambda concat: [int(n) for n in concat]  # noqa: E731
    if isinstance(g, Genotype):
        return {"normal": pairs(g.normal), "normal_concat": ints(g.normal_concat),
                "reduce": pairs(g.reduce), "reduce_concat": ints(g.reduce_concat)}
    return [{"cell": i, "reduction": cell.reduction, "ops": pairs(cell.ops),
             "concat": ints(cell.concat)} for i, cell in enumerate(g)]


def _tuples(value: Any) -> Any:
    """Turn [op, input] lists into tuples where the shape allows; validation judges the rest."""
    if not isinstance(value, list):
        return value
    return [tuple(e) if isinstance(e, list) else e for e in value]


def _require_keys(d: Any, keys: tuple, source: str, entry: str) -> None:
    if not isinstance(d, dict):
        raise _fail(source, entry, f"expected an object with keys {', '.join(keys)}, "
                                   f"got {type(d).__name__}")
    for key in keys:
        if key not in d:
            raise _fail(source, entry, f"missing key {key!r} (expected keys {', '.join(keys)})")
    for key in d:
        if key not in keys:
            raise _fail(source, entry, f"unexpected key {key!r} (expected keys {', '.join(keys)})")


def genotype_from_dict(d: Any, source: str = "genotype", num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Inverse of :func:`genotype_to_dict`, validated; errors name ``source`` and the entry."""
    if isinstance(d, list) and d:
        cells = []
        for i, cell in enumerate(d):
            _require_keys(cell, ("cell", "reduction", "ops", "concat"), source, f"cell[{i}]")
            if cell["cell"] != i:
                raise _fail(source, f"cell[{i}].cell", f"is {_short(cell['cell'])}, expected {i} "
                                                        "(list the cells in order from 0)")
            cells.append(CellGenotype(_tuples(cell["ops"]), cell["concat"], cell["reduction"]))
        return validate_genotype(cells, num_nodes, source)
    _require_keys(d, Genotype._fields, source, "")
    g = Genotype(_tuples(d["normal"]), d["normal_concat"], _tuples(d["reduce"]), d["reduce_concat"])
    return validate_genotype(g, num_nodes, source)


def _dumps(obj: Any, indent: str = "") -> str:
    """Indented JSON that keeps innermost lists/dicts (e.g. [op, input]) on one line."""
    scalar = lambda v: not isinstance(v, (list, dict))  # noqa: E731
    if scalar(obj) or all(scalar(v) for v in (obj.values() if isinstance(obj, dict) else obj)):
        return json.dumps(obj)
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in obj) + "\n" + indent + "]"


def _atomic_write(text: str, path: Union[str, Path]) -> None:
    """Write via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_genotype(g: AnyGenotype, path: Union[str, Path]) -> None:
    """Write a genotype as readable JSON, atomically."""
    _atomic_write(_dumps(genotype_to_dict(g)), path)


def _read_text(path: Union[str, Path]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenotypeError(f"{path}: not found") from None


def _parse_json(text: str, path: Union[str, Path], hint: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"{path}: not JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}){hint}") from None


def load_genotype(path: Union[str, Path], num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Read a genotype from JSON or from a ``Genotype(...)`` repr (genotype.txt), validated."""
    text = _read_text(path)
    if re.match(r"\s*(Genotype\(|\[\s*CellGenotype\()", text):
        return parse_genotype_repr(text, str(path), num_nodes)
    data = _parse_json(text, path, " and not a Genotype(...) repr; write it with save_genotype")
    return genotype_from_dict(data, str(path), num_nodes)


# ----------------------------------------------------------------------------- repr
def format_genotype(g: AnyGenotype) -> str:
    """The Python repr (as in genotype.txt); :func:`parse_genotype_repr` reads it back."""
    return repr(g)


def _literal(node: ast.AST, source: str, name: str) -> Any:
    """A literal value, or ``range(a, b)`` turned into a list."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords):
        args = [_literal(a, source, name) for a in node.args]
        if 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args) and args[-1] != 0:
            values = range(*args)
            if len(values) <= 1024:  # a concat list; refuse absurd sizes
                return list(values)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise _fail(source, name, "not a literal value (only lists, tuples, numbers, strings "
                                  "and range(a, b) are read)") from None


def _call_args(node: ast.AST, cls: type, source: str, entry: str) -> dict:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == cls.__name__):
        raise _fail(source, entry, f"expected {cls.__name__}(...)")
    if len(node.args) > len(cls._fields) or any(k.arg is None for k in node.keywords):
        raise _fail(source, entry, f"too many arguments for {cls.__name__}")
    values = {f: _literal(a, source, f) for f, a in zip(cls._fields, node.args)}
    for kw in node.keywords:
        if kw.arg in values or kw.arg not in cls._fields:
            raise _fail(source, entry, f"unexpected or repeated argument {kw.arg!r}")
        values[kw.arg] = _literal(kw.value, source, kw.arg)
    return values


def parse_genotype_repr(text: str, source: str = "genotype",
                        num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Parse ``Genotype(...)`` or ``[CellGenotype(...), ...]`` with ``ast``, never ``eval``."""
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise _fail(source, "", f"not a Genotype(...) repr (syntax error at line {exc.lineno})"
                    ) from None
    if isinstance(body, ast.List):
        cells = [_call_args(c, CellGenotype, source, f"cell[{i}]") for i, c in enumerate(body.elts)]
        cells = [{"cell": i, **c} for i, c in enumerate(cells)]
        return genotype_from_dict(cells, source, num_nodes)
    return genotype_from_dict(_call_args(body, Genotype, source, ""), source, num_nodes)


def count_ops(g: AnyGenotype, op: str = "skip_connect") -> int:
    """How often ``op`` occurs over all cells (kinds) of a genotype."""
    return sum(name == op for _, ops, _, _ in _cells(g) for name, _ in ops)


# ----------------------------------------------------------------------------- alphas
def is_shared(alphas: dict) -> bool:
    """True when the alphas are shared by cell kind ("normal"/"reduce"), not per cell."""
    return any(k in _SHARED_KEYS for k in alphas)


def _check_alpha_keys(alphas: Any, source: str) -> list[str]:
    """The set keys in order: normal, reduce or cell_0..cell_{n-1}."""
    if not isinstance(alphas, dict) or not alphas:
        raise _fail(source, "", "expected a non-empty object keyed by alpha set "
                                "('normal'/'reduce' or 'cell_0', ...)")
    for key in alphas:
        if key not in _SHARED_KEYS and not (isinstance(key, str) and _CELL_KEY.fullmatch(key)):
            raise _fail(source, "", f"unknown alpha set {_short(key)} "
                                    "(use 'normal'/'reduce' or 'cell_<i>')")
    if is_shared(alphas):
        expected = list(_SHARED_KEYS)
        if any(_CELL_KEY.fullmatch(k) for k in alphas):
            raise _fail(source, "", "mixes shared ('normal'/'reduce') and per-cell "
                                    "('cell_<i>') alpha sets; keep one kind")
    else:
        expected = set_names(len(alphas), False)
    if sorted(alphas) != sorted(expected):
        raise _fail(source, "", f"alpha sets {sorted(alphas)}, expected {expected}")
    return expected


def duplicate_problem(ops: list) -> Optional[str]:
    """Why a candidate list's repeats are not allowed (one line), or None when it repeats
    nothing or only skip_connect as the released code does: twice, the copies side by side
    (see RELEASED_IDENTITY_MEMBERS)."""
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
                f"identity group {RELEASED_IDENTITY_MEMBERS})")
    return None


def _check_edge(edge: Any, source: str, where: str) -> None:
    _require_keys(edge, ("ops", "alphas"), source, where)
    ops, values = edge["ops"], edge["alphas"]
    if not isinstance(ops, list) or not isinstance(values, list) or not ops:
        raise _fail(source, where, "'ops' and 'alphas' must be non-empty lists")
    if len(ops) != len(values):
        raise _fail(source, where, f"{len(ops)} ops but {len(values)} alphas")
    for op, value in zip(ops, values):
        if op not in KNOWN_OPS:
            raise _fail(source, where, _unknown_op(op))
        if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise _fail(source, where, f"alpha of {op!r} is {_short(value)}, "
                                       "expected a finite number")
    problem = duplicate_problem(ops)
    if problem:
        raise _fail(source, where, problem)


def validate_alphas(alphas: Any, source: str = "alphas") -> dict:
    """Check the alphas.json structure (module docstring); raise GenotypeError, else return it."""
    keys = _check_alpha_keys(alphas, source)
    sizes = set()
    for key in keys:
        nodes = alphas[key]
        if not isinstance(nodes, list) or not nodes:
            raise _fail(source, key, "expected a non-empty list over intermediate nodes")
        sizes.add(len(nodes))
        for i, edges in enumerate(nodes):
            if not isinstance(edges, list) or len(edges) != i + 2:
                got = len(edges) if isinstance(edges, list) else _short(edges)
                raise _fail(source, f"{key} node {i}",
                            f"{got} edges, expected {i + 2} (node i has i+2 incoming edges)")
            for j, edge in enumerate(edges):
                _check_edge(edge, source, f"{key} node {i} edge {j}")
    if len(sizes) > 1:
        raise _fail(source, "", f"alpha sets have different node counts {sorted(sizes)}")
    return alphas


def save_alphas(alphas: dict, path: Union[str, Path]) -> None:
    """Validate and write alphas as readable JSON, atomically (values as plain floats)."""
    validate_alphas(alphas, str(path))
    plain = {k: [[{"ops": list(e["ops"]), "alphas": [float(a) for a in e["alphas"]]} for e in node]
                 for node in nodes] for k, nodes in alphas.items()}
    _atomic_write(_dumps(plain), path)


def load_alphas(path: Union[str, Path]) -> dict:
    """Read and validate an alphas.json; errors name the file and the entry."""
    return validate_alphas(_parse_json(_read_text(path), path), str(path))


# ----------------------------------------------------------------------------- derivation
def _best_op(edge: dict) -> Optional[tuple[float, str]]:
    """(raw alpha, op) of the strongest op other than ``none``, the first of equals; None if
    there is none. With skip_connect listed twice (released groups) the larger of its two
    alphas is skip_connect's score and the op is named ``skip_connect`` either way."""
    scored = [(a, op) for op, a in zip(edge["ops"], edge["alphas"]) if op != "none"]
    return max(scored, key=lambda s: s[0]) if scored else None


def candidates_from_stage1(alphas: dict, groups: dict = GROUPS) -> dict:
    """Stage-2 candidate ops per edge (StacNAS sec. 3): the members of the group whose
    representative has the largest raw stage-1 alpha on that edge, ``none`` excluded."""
    keys = _check_alpha_keys(validate_alphas(alphas), "alphas")
    by_rep = {g["representative"]: g["members"] for g in groups.values()}
    result = {}
    for key in keys:
        nodes, result[key] = alphas[key], []
        for i, edges in enumerate(nodes):
            result[key].append([])
            for j, edge in enumerate(edges):
                for op in edge["ops"]:
                    if op not in by_rep:
                        raise GenotypeError(
                            f"these look like stage-2 (or DARTS) alphas: op {op!r} on {key} "
                            f"node {i} edge {j} is not a stage-1 group representative; "
                            "pass the alphas.json of search1")
                best = _best_op(edge)
                if best is None:
                    raise _fail("alphas", f"{key} node {i} edge {j}",
                                "only 'none'; no group to pick")
                result[key][-1].append(list(by_rep[best[1]]))
    return result


def uniform_candidates(op_names: list[str], set_names: list[str],
                       num_nodes: int = NUM_NODES) -> dict:
    """The same candidate list on every edge of every alpha set."""
    return {s: [[list(op_names) for _ in range(i + 2)] for i in range(num_nodes)]
            for s in set_names}


def _derive_cell(nodes: list, key: str) -> list[tuple[str, int]]:
    ops = []
    for i, edges in enumerate(nodes):
        scored = []  # (alpha, op, input) of each edge's best op other than none
        for j, edge in enumerate(edges):
            best = _best_op(edge)
            if best is not None:
                scored.append((best[0], best[1], j))
        if len(scored) < 2:
            raise _fail("alphas", f"{key} node {i}", f"{len(scored)} edge(s) with an op other "
                                                      "than 'none'; a final node needs 2")
        scored.sort(key=lambda s: -s[0])  # stable: ties keep the lower input first
        ops += [(op, j) for _, op, j in scored[:2]]
    return ops


def derive_genotype(alphas: dict, num_nodes: Optional[int] = None) -> AnyGenotype:
    """Final genotype (DARTS sec. 2.4): per edge the best op by raw alpha, ``none`` excluded;
    per node the 2 strongest edges, strongest first. Per-cell alphas give list[CellGenotype]."""
    keys = _check_alpha_keys(validate_alphas(alphas), "alphas")
    n = len(alphas[keys[0]])
    if num_nodes is not None and n != num_nodes:
        raise _fail("alphas", "", f"{n} nodes per cell, expected {num_nodes}")
    concat = list(range(2, n + 2))
    cells = {key: _derive_cell(alphas[key], key) for key in keys}
    if is_shared(alphas):
        return Genotype(cells["normal"], concat, cells["reduce"], list(concat))
    red = reduction_cells(len(keys))
    return [CellGenotype(cells[k], list(concat), i in red) for i, k in enumerate(keys)]


# ----------------------------------------------------------------------------- groups
def validate_groups(groups: Any, source: str = "groups") -> dict:
    """Check ``{name: {"representative": op, "members": [ops]}}``; return a clean copy."""
    if not isinstance(groups, dict) or not groups:
        raise _fail(source, "", "expected a non-empty object of groups")
    clean, seen = {}, set()
    for name, group in groups.items():
        _require_keys(group, ("representative", "members"), source, name)
        rep, members = group["representative"], group["members"]
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _fail(source, name, f"members must be a list of op names, got {_short(members)}")
        if not members:
            raise _fail(source, name, f"members must be non-empty and distinct, got {members}")
        for op in [rep] + members:
            if op not in KNOWN_OPS:
                raise _fail(source, name, _unknown_op(op))
        problem = duplicate_problem(members)
        if problem:
            raise _fail(source, name, f"members must be distinct: {problem}")
        if rep not in members and members != ["none"]:
            raise _fail(source, name, f"representative {rep!r} is not among the members")
        if rep in seen:
            raise _fail(source, name, f"representative {rep!r} already represents another group")
        seen.add(rep)
        clean[name] = {"representative": rep, "members": list(members)}
    return clean


def load_groups(path: Union[str, Path]) -> dict:
    """Read and validate a groups JSON file."""
    return validate_groups(_parse_json(_read_text(path), path), str(path))


def released_groups(groups: dict = GROUPS) -> dict:
    """The groups with skip_connect listed twice, as the authors' released code lists stage
    2's identity group: ``identity`` becomes RELEASED_IDENTITY_MEMBERS
    (skip_connect, skip_connect, none). Stage 2 then gives each identity edge two skip terms
    with their own alphas (2/3 of the initial softmax on skip) and, at stride 2, two
    FactorizedReduce modules with their own weights. The representatives, hence stage 1, are
    unchanged. In custom groups the second copy follows the first in whichever group holds
    skip_connect; groups that already list it twice are returned as they are. A new dict."""
    clean = validate_groups(groups)
    holders = [name for name, g in clean.items() if DUPLICABLE_OP in g["members"]]
    if not holders:
        raise _fail("groups", "", f"no group has {DUPLICABLE_OP!r} among its members; "
                                  "the released identity group needs one")
    members = clean[holders[0]]["members"]
    if members.count(DUPLICABLE_OP) == 1:
        k = members.index(DUPLICABLE_OP)
        members.insert(k + 1, DUPLICABLE_OP)
    return validate_groups(clean, "released groups")


def identity_group(groups: dict, choice: str) -> dict:
    """``groups`` for an identity-group choice (IDENTITY_GROUP_CHOICES): "single" (ours, the
    paper's: skip_connect once; a second copy, if any, is dropped), "released"
    :func:`released_groups`. A new, validated dict."""
    if choice == "single":
        clean = validate_groups(groups)
        for g in clean.values():
            if g["members"].count(DUPLICABLE_OP) > 1:
                g["members"].remove(DUPLICABLE_OP)
        return clean
    if choice == "released":
        return released_groups(groups)
    raise ValueError(f"unknown identity group {choice!r}; choose one of "
                     f"{', '.join(IDENTITY_GROUP_CHOICES)}")


def stage1_primitives(groups: dict) -> list[str]:
    """The stage-1 candidate ops: each group's representative, in order."""
    return [g["representative"] for g in groups.values()]


# ----------------------------------------------------------------------------- plots
def _skip_plot(path: str, why: str = "not found") -> None:
    warnings.warn(f"graphviz 'dot' {why}; skipping cell plot {path} "
                  "(install the Debian/Ubuntu package 'graphviz' to get plots)", stacklevel=3)


def plot_cell(ops: list, concat: list, path_without_ext: Union[str, Path],
              caption: Optional[str] = None) -> Optional[str]:
    """Draw one cell to ``<path>.png``; warn and return None (never raise) without ``dot``."""
    path = str(path_without_ext)
    try:
        import graphviz
    except ImportError:
        _skip_plot(path, "unavailable (no graphviz Python package)")
        return None
    if shutil.which("dot") is None:
        _skip_plot(path)
        return None
    dot = graphviz.Digraph(format="png", graph_attr={"rankdir": "LR", "label": caption or ""},
                           node_attr={"style": "filled", "shape": "rect"})
    inputs = ["c_{k-2}", "c_{k-1}"]
    for name in inputs:
        dot.node(name, fillcolor="darkseagreen2")
    for i in range(len(ops) // 2):
        dot.node(str(i), fillcolor="lightblue")
    for k, (op, inp) in enumerate(ops):
        dot.edge(inputs[inp] if inp < 2 else str(inp - 2), str(k // 2), label=op)
    dot.node("c_{k}", fillcolor="palegoldenrod")
    for c in concat:
        dot.edge(str(c - 2), "c_{k}")
    try:
        return dot.render(filename=path, cleanup=True)
    except graphviz.ExecutableNotFound:
        _skip_plot(path)
    except subprocess.CalledProcessError as exc:
        _skip_plot(path, f"failed (exit {exc.returncode})")
    return None


def plot_genotype(g: AnyGenotype, directory: Union[str, Path], prefix: str = "") -> list[str]:
    """Plot every cell kind (normal/reduce, or every cell) into ``directory``; written paths."""
    if shutil.which("dot") is None:
        _skip_plot(os.path.join(str(directory), f"{prefix}*"))
        return []
    os.makedirs(directory, exist_ok=True)
    paths = [plot_cell(ops, concat, os.path.join(str(directory), prefix + name), caption=name)
             for name, ops, concat, _ in _cells(g)]
    return [p for p in paths if p]


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Derive a genotype from alphas.json, or check a genotype file; prints it as "
                    "one JSON line.", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--alphas", help="alphas.json of a search stage to derive from")
    source.add_argument("--genotype", help="genotype file (JSON or Genotype(...) repr) to check")
    parser.add_argument("--plot", metavar="DIR", help="also draw the cells into DIR")
    args = parser.parse_args(argv)
    try:
        if args.alphas:
            g = derive_genotype(load_alphas(args.alphas))
        else:
            g = load_genotype(args.genotype)
        print(json.dumps(genotype_to_dict(g)))
        if args.plot:
            plot_genotype(g, args.plot)
    except (GenotypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
