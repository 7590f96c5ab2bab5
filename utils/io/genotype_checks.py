"""A genotype's plain form and its checks: the dicts genotype.json and checkpoints hold
(:func:`genotype_to_dict`, :func:`genotype_from_dict`) and :func:`validate_genotype`, which
holds a genotype to the cell rules of genotypes.py (two [op, input] pairs per node, inputs
from earlier nodes only, no ``none`` in a final cell, reduction cells where the network
reduces). Every problem is one GenotypeError line that names the file and the entry."""
from __future__ import annotations

from typing import Any

from genotypes import (KNOWN_OPS, MAX_CELLS, MIN_CELLS, NUM_NODES, AnyGenotype, CellGenotype,
                       Genotype, GenotypeError, cell_kinds, reduction_cells, short_repr)


def unknown_op(op: Any) -> str:
    """The problem of an op name that is not in KNOWN_OPS."""
    return f"unknown op {short_repr(op)} (known: {', '.join(KNOWN_OPS)})"


def require_keys(d: Any, keys: tuple, source: str, entry: str) -> None:
    """GenotypeError unless `d` is an object with exactly `keys`."""
    if not isinstance(d, dict):
        raise GenotypeError.at(source, entry, f"expected an object with keys {', '.join(keys)}, "
                                              f"got {type(d).__name__}")
    for key in keys:
        if key not in d:
            raise GenotypeError.at(source, entry, f"missing key {key!r} (expected keys "
                                                  f"{', '.join(keys)})")
    for key in d:
        if key not in keys:
            raise GenotypeError.at(source, entry, f"unexpected key {key!r} (expected keys "
                                                  f"{', '.join(keys)})")



def _check_ops(ops: Any, num_nodes: int, source: str, name: str) -> None:
    expected = 2 * num_nodes
    if not isinstance(ops, (list, tuple)) or len(ops) != expected:
        count = f"{len(ops)} entries" if isinstance(ops, (list, tuple)) else short_repr(ops)
        raise GenotypeError.at(source, name, f"{count}, expected {expected} (2 per node x "
                                             f"{num_nodes} nodes)")
    for k, entry in enumerate(ops):
        where, node = f"{name}[{k}]", k // 2
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], int) or isinstance(entry[1], bool)):
            raise GenotypeError.at(source, where, f"expected [op, input] (a string and an "
                                                  f"integer), got {short_repr(entry)}")
        op, inp = entry
        if op not in KNOWN_OPS:
            raise GenotypeError.at(source, where, unknown_op(op))
        if op == "none":
            raise GenotypeError.at(source, where, "op 'none' is not allowed in a final genotype "
                                                  "(a final cell never uses it; pick a real op)")
        if not 0 <= inp <= node + 1:
            raise GenotypeError.at(source, where, f"input {inp} out of range for node {node} "
                                                  f"(allowed 0..{node + 1})")


def _check_concat(concat: Any, num_nodes: int, source: str, name: str) -> None:
    top = num_nodes + 1
    ok = (isinstance(concat, (list, tuple)) and len(concat) > 0
          and all(isinstance(c, int) and not isinstance(c, bool) and 2 <= c <= top for c in concat))
    if not ok or len(set(concat)) != len(concat):
        raise GenotypeError.at(source, name, f"expected a list of distinct node indices in "
                                             f"2..{top}, got {short_repr(concat)}")


def validate_genotype(g: Any, num_nodes: int = NUM_NODES, source: str = "genotype") -> AnyGenotype:
    """Check a Genotype or a list of CellGenotype; raise GenotypeError, else return it."""
    if isinstance(g, Genotype):
        names = [("normal", "normal_concat"), ("reduce", "reduce_concat")]
    elif isinstance(g, list) and g and all(isinstance(c, CellGenotype) for c in g):
        names = [(f"cell[{i}].ops", f"cell[{i}].concat") for i in range(len(g))]
        _check_reductions(g, source)
    else:
        raise GenotypeError.at(source, "", f"expected a Genotype or a non-empty list of "
                                           f"CellGenotype, got {type(g).__name__}")
    for (ops_name, concat_name), (_, ops, concat, _) in zip(names, cell_kinds(g)):
        _check_ops(ops, num_nodes, source, ops_name)
        _check_concat(concat, num_nodes, source, concat_name)
    return g


def _check_reductions(cells: list, source: str) -> None:
    """A per-cell genotype has MIN_CELLS..MAX_CELLS cells and its reduction flags are
    true/false exactly at :func:`reduction_cells` of its length (the network it builds)."""
    for i, cell in enumerate(cells):
        if not isinstance(cell.reduction, bool):
            raise GenotypeError.at(source, f"cell[{i}].reduction",
                                   f"expected true/false, got {short_repr(cell.reduction)}")
    if not MIN_CELLS <= len(cells) <= MAX_CELLS:
        raise GenotypeError.at(source, "", f"a per-cell genotype of {len(cells)} cells; a "
                                           f"network has {MIN_CELLS}..{MAX_CELLS} cells")
    expected = reduction_cells(len(cells))
    for i, cell in enumerate(cells):
        if cell.reduction != (i in expected):
            raise GenotypeError.at(source, f"cell[{i}].reduction",
                                   f"is {str(cell.reduction).lower()}, but a {len(cells)}-cell "
                                   f"network reduces at cells {sorted(expected)} only")


def genotype_to_dict(g: AnyGenotype) -> dict | list:
    """Plain data (as genotype.json and checkpoints hold it): a dict for a Genotype, a list of
    cell dicts for a per-cell genotype."""
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


def genotype_from_dict(d: Any, source: str = "genotype", num_nodes: int = NUM_NODES) -> AnyGenotype:
    """Inverse of :func:`genotype_to_dict`, validated; errors name ``source`` and the entry."""
    if isinstance(d, list) and d:
        cells = []
        for i, cell in enumerate(d):
            require_keys(cell, ("cell", "reduction", "ops", "concat"), source, f"cell[{i}]")
            if isinstance(cell["cell"], bool) or cell["cell"] != i:
                raise GenotypeError.at(source, f"cell[{i}].cell", f"is {short_repr(cell['cell'])}, "
                                                                 f"expected {i} (list the cells "
                                                                 "in order from 0)")
            cells.append(CellGenotype(_tuples(cell["ops"]), cell["concat"], cell["reduction"]))
        return validate_genotype(cells, num_nodes, source)
    require_keys(d, Genotype._fields, source, "")
    g = Genotype(_tuples(d["normal"]), d["normal_concat"], _tuples(d["reduce"]), d["reduce_concat"])
    return validate_genotype(g, num_nodes, source)
