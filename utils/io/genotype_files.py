"""The files of the search space: genotype.json / genotype.txt, alphas.json and groups.json,
written atomically and checked when read (every error a one-line GenotypeError naming the file
and the entry). A file is read as UTF-8 (a BOM is skipped), at most MAX_FILE_BYTES, nested at
most MAX_DEPTH deep: a directory, an empty, huge, non-UTF-8 or absurdly nested file is refused
in one line too. Genotypes are stored as JSON; a ``Genotype(...)`` repr (genotype.txt) is also
read, with ``ast`` and never ``eval``. Standard library only, like genotypes.py.

alphas.json: the alphas of genotypes.py's docstring, ``{set: [node][edge] -> {"ops": [names],
"alphas": [raw values]}}``: NUM_NODES nodes per set, a finite number per op, and on every
node two edges or more with a real op (not only ``none``), as the derivation needs.
groups.json: ``{name: {"representative": op, "members": [ops]}}``: the representative among
the members, every group with a real op except the zero group (``none`` alone), and at least
one group with a real representative (StacNAS sec. 3: stage 1 searches the representatives,
stage 2 the members of the group that won an edge). Their command line (derive, check, draw)
is ``python -m utils.analysis.derive``.
"""
from __future__ import annotations

import ast
import json
import math
import numbers
import os
import re
import stat
from pathlib import Path
from typing import Any

from genotypes import (GROUPS, KNOWN_OPS, NUM_NODES, AnyGenotype, CellGenotype, Genotype,
                       GenotypeError, alpha_set_keys, duplicate_problem,
                       short_repr, stage1_primitives)
from utils.io.files import write_text
from utils.io.genotype_checks import genotype_from_dict, genotype_to_dict, require_keys, unknown_op

# A genotype file is under 1 KB, per-cell alphas of 100 cells about 300 KB; they nest 5 deep.
MAX_FILE_BYTES = 4 * 2 ** 20
MAX_DEPTH = 16
_TOO_DEEP = object()


# ----------------------------------------------------------------------------- checks
def _finite(value: Any) -> bool:
    """True for a real number (not a bool) that is a finite float; an integer too large for
    a float (10**400 in a hand-edited file) is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_edge(edge: Any, source: str, where: str) -> None:
    require_keys(edge, ("ops", "alphas"), source, where)
    ops, values = edge["ops"], edge["alphas"]
    if not isinstance(ops, list) or not isinstance(values, list) or not ops:
        raise GenotypeError.at(source, where, "'ops' and 'alphas' must be non-empty lists")
    if len(ops) != len(values):
        raise GenotypeError.at(source, where, f"{len(ops)} ops but {len(values)} alphas")
    for op, value in zip(ops, values):
        if not isinstance(op, str) or op not in KNOWN_OPS:
            raise GenotypeError.at(source, where, unknown_op(op))
        if not _finite(value):
            raise GenotypeError.at(source, where, f"alpha of {op!r} is {short_repr(value)}, "
                                                  "expected a finite number (a float)")
    problem = duplicate_problem(ops)
    if problem:
        raise GenotypeError.at(source, where, problem)


def validate_alphas(alphas: Any, source: str = "alphas") -> dict:
    """Check the alphas.json structure (module docstring): the sets, NUM_NODES nodes each,
    node i with i+2 edges (2 with a real op), every edge's ops and values; raise GenotypeError
    naming `source` and the entry, else return the alphas unchanged."""
    keys = alpha_set_keys(alphas, source)
    for key in keys:
        nodes = alphas[key]
        if not isinstance(nodes, list) or len(nodes) != NUM_NODES:
            got = (f"{len(nodes)} intermediate node(s)" if isinstance(nodes, list)
                   else short_repr(nodes))
            raise GenotypeError.at(source, key, f"{got}, expected {NUM_NODES} (the DARTS cell "
                                                "this code searches and trains)")
        for i, edges in enumerate(nodes):
            if not isinstance(edges, list) or len(edges) != i + 2:
                got = len(edges) if isinstance(edges, list) else short_repr(edges)
                raise GenotypeError.at(source, f"{key} node {i}",
                                       f"{got} edges, expected {i + 2} (node i has i+2 incoming "
                                       "edges)")
            for j, edge in enumerate(edges):
                _check_edge(edge, source, f"{key} node {i} edge {j}")
            real = sum(any(op != "none" for op in edge["ops"]) for edge in edges)
            if real < 2:
                raise GenotypeError.at(source, f"{key} node {i}",
                                       f"{real} edge(s) with an op other than 'none'; a final "
                                       "node keeps 2, so no cell can be derived")
    return alphas


def validate_groups(groups: Any, source: str = "groups") -> dict:
    """Check ``{name: {"representative": op, "members": [ops]}}`` (module docstring): known
    ops, distinct members and representatives, and groups stage 1 and stage 2 can search;
    raise GenotypeError naming `source` and the group, else return a clean copy."""
    if not isinstance(groups, dict) or not groups:
        raise GenotypeError.at(source, "", "expected a non-empty object of groups")
    clean, seen = {}, set()
    for name, group in groups.items():
        if not isinstance(name, str) or not name.strip():
            raise GenotypeError.at(source, "", f"group name {short_repr(name)}: expected a "
                                               "non-empty string")
        require_keys(group, ("representative", "members"), source, name)
        rep, members = group["representative"], group["members"]
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise GenotypeError.at(source, name, f"members must be a list of op names, got "
                                                 f"{short_repr(members)}")
        if not members:
            raise GenotypeError.at(source, name, f"members must be non-empty and distinct, got "
                                                 f"{members}")
        for op in [rep] + members:
            if not isinstance(op, str) or op not in KNOWN_OPS:
                raise GenotypeError.at(source, name, unknown_op(op))
        problem = duplicate_problem(members)
        if problem:
            raise GenotypeError.at(source, name, f"members must be distinct: {problem}")
        _check_searchable(name, rep, members, source)
        if rep in seen:
            raise GenotypeError.at(source, name, f"representative {rep!r} already represents "
                                                 "another group")
        seen.add(rep)
        clean[name] = {"representative": rep, "members": list(members)}
    if all(g["representative"] == "none" for g in clean.values()):
        raise GenotypeError.at(source, "", "only the zero group ('none'): stage 1 would search "
                                           "'none' alone and no cell can be derived; add groups "
                                           "of real ops (see the paper's groups in genotypes.py)")
    return clean


def _check_searchable(name: str, rep: str, members: list, source: str) -> None:
    """A group stage 2 can search: a real representative is among its members (the group's
    winners are searched there); the representative 'none' (never chosen: the derivation
    skips it) goes with the members ['none'] alone, the zero group."""
    if rep == "none":
        if members != ["none"]:
            raise GenotypeError.at(source, name, f"representative 'none' with members {members}: "
                                                 "stage 1 never chooses 'none', so these members "
                                                 "would never be searched; give them a real "
                                                 "representative (the zero group is ['none'] "
                                                 "alone)")
        return
    if all(m == "none" for m in members):
        raise GenotypeError.at(source, name, f"members {members} hold no real op: an edge this "
                                             f"group wins would search only 'none' and no cell "
                                             f"can be derived; list {rep!r} and the ops it stands "
                                             "for")
    if rep not in members:
        raise GenotypeError.at(source, name, f"representative {rep!r} is not among the members")


def check_stage1_alphas(alphas: dict, alphas_path: str | Path,
                        groups_path: str | Path | None = None) -> None:
    """Stage 2 reads stage-1 alphas with the groups stage 1 searched (groups.json beside
    them, else the paper's GROUPS): every edge must search exactly the groups'
    representatives. A mismatch is one GenotypeError that blames the file at fault: the
    groups file when the alphas search one op list on every edge (search1's) but the groups
    file names other representatives (edited after search1 ran), else the alphas."""
    has_groups = groups_path is not None and Path(groups_path).is_file()
    groups = load_groups(groups_path) if has_groups else GROUPS
    reps = stage1_primitives(groups)
    edges = [(key, i, j, edge["ops"]) for key, nodes in alphas.items()
             for i, node in enumerate(nodes) for j, edge in enumerate(node)]
    if all(sorted(ops) == sorted(reps) for *_, ops in edges):
        return
    lists = {tuple(ops) for *_, ops in edges}
    where = f"{groups_path}" if has_groups else "the paper's groups"
    if has_groups and len(lists) == 1:
        searched = list(next(iter(lists)))
        raise GenotypeError(f"{groups_path}: representatives {reps} are not the ops search1 "
                            f"searched ({searched} on every edge of {alphas_path}): the groups "
                            "file was changed after search1 ran; restore it, or rerun search1 "
                            "with these groups (search.py --stage search1 --force --groups FILE)")
    key, i, j, ops = next(e for e in edges if sorted(e[3]) != sorted(reps))
    odd = next((op for op in ops if op not in reps), None)
    problem = (f"op {odd!r} on {key} node {i} edge {j} is not a stage-1 group representative"
               if odd is not None else f"{key} node {i} edge {j} searches {ops}, not every "
                                       "representative")
    raise GenotypeError(f"{alphas_path}: these look like stage-2 (or DARTS) alphas: {problem} "
                        f"(representatives {reps}, from {where}); pass the alphas.json of "
                        "search1")


# ----------------------------------------------------------------------------- text
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


def _read_text(path: str | Path) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES, UTF-8 (a BOM is skipped)."""
    try:
        kind = os.stat(path).st_mode
        if stat.S_ISDIR(kind):
            raise GenotypeError(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(kind):
            raise GenotypeError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise GenotypeError(f"{path}: not found") from None
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise GenotypeError(f"{path}: larger than {MAX_FILE_BYTES // 2 ** 20} MB; not a genotype, "
                            "alphas or groups file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GenotypeError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                            f"{exc.start})") from None
    if not text.strip():
        raise GenotypeError(f"{path}: empty file")
    return text


def _depth(value: Any) -> int:
    """How deeply lists, tuples and objects nest in a parsed value (iterative)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, tuple, dict)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                  else value))
    return deepest


def _parse_json(text: str, path: str | Path, hint: str = "") -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"{path}: not JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}){hint}") from None
    except RecursionError:  # deeper than the parser's recursion limit
        data = _TOO_DEEP
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise GenotypeError(f"{path}: not JSON we read ({str(exc).split(':')[0][:100]})") from None
    if data is _TOO_DEEP or _depth(data) > MAX_DEPTH:
        raise GenotypeError(f"{path}: nested more than {MAX_DEPTH} levels deep; not a genotype, "
                            "alphas or groups file")
    return data


# ----------------------------------------------------------------------------- genotypes
def save_genotype(g: AnyGenotype, path: str | Path) -> None:
    """Write a genotype as readable JSON, atomically."""
    write_text(path, _dumps(genotype_to_dict(g)) + "\n")


def load_genotype(path: str | Path, num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Read a genotype from JSON or from a ``Genotype(...)`` repr (genotype.txt), validated."""
    text = _read_text(path)
    if re.match(r"\s*(Genotype\(|\[\s*CellGenotype\()", text):
        return parse_genotype_repr(text, str(path), num_nodes)
    data = _parse_json(text, path, " and not a Genotype(...) repr; write it with save_genotype")
    return genotype_from_dict(data, str(path), num_nodes)


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
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise GenotypeError.at(source, name, "not a literal value (only lists, tuples, numbers, "
                                             "strings and range(a, b) are read)") from None
    except (RecursionError, MemoryError):
        value = _TOO_DEEP
    if value is _TOO_DEEP or _depth(value) > MAX_DEPTH:
        raise GenotypeError.at(source, name, f"nested more than {MAX_DEPTH} levels deep")
    return value


def _call_args(node: ast.AST, cls: type, source: str, entry: str) -> dict:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == cls.__name__):
        raise GenotypeError.at(source, entry, f"expected {cls.__name__}(...)")
    if len(node.args) > len(cls._fields) or any(k.arg is None for k in node.keywords):
        raise GenotypeError.at(source, entry, f"too many arguments for {cls.__name__}")
    values = {f: _literal(a, source, f) for f, a in zip(cls._fields, node.args)}
    for kw in node.keywords:
        if kw.arg in values or kw.arg not in cls._fields:
            raise GenotypeError.at(source, entry, f"unexpected or repeated argument {kw.arg!r}")
        values[kw.arg] = _literal(kw.value, source, kw.arg)
    return values


def parse_genotype_repr(text: str, source: str = "genotype",
                        num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Parse ``Genotype(...)`` or ``[CellGenotype(...), ...]`` with ``ast``, never ``eval``."""
    try:
        body = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise GenotypeError.at(source, "", f"not a Genotype(...) repr (syntax error at line "
                                           f"{exc.lineno})") from None
    except (RecursionError, MemoryError):
        raise GenotypeError.at(source, "", "nested too deeply to parse") from None
    if isinstance(body, ast.List):
        cells = [_call_args(c, CellGenotype, source, f"cell[{i}]") for i, c in enumerate(body.elts)]
        cells = [{"cell": i, **c} for i, c in enumerate(cells)]
        return genotype_from_dict(cells, source, num_nodes)
    return genotype_from_dict(_call_args(body, Genotype, source, ""), source, num_nodes)


# ----------------------------------------------------------------------------- alphas, groups
def save_alphas(alphas: dict, path: str | Path) -> None:
    """Validate and write alphas as readable JSON, atomically (values as plain floats)."""
    validate_alphas(alphas, str(path))
    plain = {k: [[{"ops": list(e["ops"]), "alphas": [float(a) for a in e["alphas"]]} for e in node]
                 for node in nodes] for k, nodes in alphas.items()}
    write_text(path, _dumps(plain) + "\n")


def load_alphas(path: str | Path) -> dict:
    """Read and validate an alphas.json (every field, see validate_alphas); errors name the
    file and the entry."""
    return validate_alphas(_parse_json(_read_text(path), path), str(path))


def save_groups(groups: dict, path: str | Path) -> None:
    """Validate and write groups as JSON (2-space indent), atomically."""
    write_text(path, json.dumps(validate_groups(groups, str(path)), indent=2) + "\n")


def load_groups(path: str | Path) -> dict:
    """Read and validate a groups JSON file."""
    return validate_groups(_parse_json(_read_text(path), path), str(path))
