"""Alpha efficiency (StacNAS README, "alpha efficiency"): do a search's alphas predict how well
each candidate op does stand-alone? The pure part of alpha_efficiency.py: which edges and ops
to try, the genotype each try trains, the table of alphas against held-out accuracy, and the
correlations between them.

A kept edge is an entry k of genotype.normal / genotype.reduce: intermediate node k // 2 (0-based,
as alphas.json indexes nodes) reading input ``src`` (0 = c_{k-2}, 1 = c_{k-1}, 2+ = node src-2).
Its candidates are the ops that edge had in the search (``none`` excluded); each candidate's
genotype is the derived one with that op on that edge. An edge that lists skip_connect twice
(the released identity group) has one skip_connect candidate: its raw alpha is the larger of
the two (as the derivation scores it), its softmax weight the sum of both (its share of the
mixed op's output).
"""
from __future__ import annotations

import argparse
import csv
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from genotypes import NUM_NODES, Genotype, GenotypeError, is_shared
from utils.analysis.plots import softmax
from utils.analysis.summary import fmt

CELLS = ("normal", "reduce")
NUM_KEPT = 2 * NUM_NODES  # kept edges per cell: two per intermediate node
MIN_CORRELATION_POINTS = 3
DERIVED = "derived"  # run folder of the derived genotype (every edge's own op), trained once


# ----------------------------------------------------------------------------- edges
def parse_edges(text: str) -> list[tuple[str, int]]:
    """The --edges value: comma-separated ``K`` (normal cell), ``CELL:K`` or ``CELL`` (its 8
    kept edges); K indexes genotype.<cell>. (cell, K) pairs in order, repeats dropped."""
    edges: list[tuple[str, int]] = []
    for token in (t.strip() for t in text.split(",")):
        cell, _, index = token.rpartition(":") if ":" in token else ("normal", "", token)
        if token in CELLS:
            cell, index = token, None
        if cell not in CELLS:
            raise argparse.ArgumentTypeError(f"cell {cell!r} in {text!r}: use normal or reduce "
                                             "(e.g. 0,3 or normal:0,reduce:2)")
        if index is None:
            chosen = list(range(NUM_KEPT))
        else:
            try:
                k = int(index)
            except ValueError:
                raise argparse.ArgumentTypeError(f"edge {token!r} in {text!r}: expected an index "
                                                 f"0..{NUM_KEPT - 1}, CELL:K or CELL "
                                                 "(e.g. 0,3 or normal:0,reduce:2)") from None
            if not 0 <= k < NUM_KEPT:
                raise argparse.ArgumentTypeError(f"edge {k} out of range: a cell keeps "
                                                 f"{NUM_KEPT} edges, indices 0..{NUM_KEPT - 1} "
                                                 "into genotype.normal / genotype.reduce")
            chosen = [k]
        edges += [(cell, k) for k in chosen if (cell, k) not in edges]
    if not edges:
        raise argparse.ArgumentTypeError("no edges given")
    return edges


def edge_name(cell: str, k: int, src: int) -> str:
    """Readable edge key: ``normal[0] 2<-1`` (state numbering: 0, 1 = cell inputs, 2.. nodes)."""
    return f"{cell}[{k}] {k // 2 + 2}<-{src}"


# ----------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One op tried on one kept edge, with its alphas from the search."""
    cell: str
    edge: int
    node: int
    input: int
    op: str
    alpha: float
    softmax_alpha: float
    derived: bool

    @property
    def run(self) -> str:
        """The run folder's name; every derived op shares the derived genotype's run."""
        return DERIVED if self.derived else f"{self.cell}_{self.edge}_{self.op}"


def edge_candidates(alphas: dict, genotype: Genotype, cell: str, k: int,
                    source: str = "alphas") -> list[Candidate]:
    """The candidates of kept edge k of `cell` (module docstring), in the search's op order."""
    if not is_shared(alphas):
        raise GenotypeError.at(source, "", "per-cell alphas (a --no-alpha_share search); the "
                                           "analysis needs shared normal/reduce alphas")
    kept_op, src = getattr(genotype, cell)[k]
    node = k // 2
    try:
        entry = alphas[cell][node][src]
    except (KeyError, IndexError):
        raise GenotypeError.at(source, f"{cell} node {node} edge {src}",
                               "missing; the genotype does not fit these alphas") from None
    weights = softmax(list(entry["alphas"]))
    raw: dict[str, float] = {}
    share: dict[str, float] = {}
    for op, a, w in zip(entry["ops"], entry["alphas"], weights):
        if op != "none":
            raw[op] = max(raw.get(op, -math.inf), float(a))
            share[op] = share.get(op, 0.0) + w
    if kept_op not in raw:
        raise GenotypeError.at(source, f"{cell} node {node} edge {src}",
                               f"the genotype keeps {kept_op!r} there, not among the searched "
                               f"ops {entry['ops']}; the genotype does not fit these alphas")
    return [Candidate(cell, k, node, src, op, raw[op], share[op], op == kept_op) for op in raw]


def substitute(genotype: Genotype, cell: str, k: int, op: str) -> Genotype:
    """The genotype with `op` on kept edge k of `cell`, everything else unchanged."""
    ops = list(getattr(genotype, cell))
    ops[k] = (op, ops[k][1])
    return genotype._replace(**{cell: ops})


def plan(alphas: dict, genotype: Genotype, edges: list[tuple[str, int]],
         source: str = "alphas") -> tuple[list[Candidate], dict[str, Genotype]]:
    """Candidates of the chosen edges, and the genotype of each run folder (unique)."""
    candidates = [c for cell, k in edges
                  for c in edge_candidates(alphas, genotype, cell, k, source)]
    runs = {DERIVED: genotype} if any(c.derived for c in candidates) else {}
    for c in candidates:
        runs.setdefault(c.run, substitute(genotype, c.cell, c.edge, c.op))
    return candidates, runs


# ----------------------------------------------------------------------------- statistics
def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def correlations(x: list[float], y: list[float]) -> dict:
    """Pearson r, Spearman rho and Kendall's tau (tau-b) of x against y with p-values and n;
    None for each below MIN_CORRELATION_POINTS points or where undefined (constant x or y)."""
    from scipy import stats
    n = len(x)
    result: dict = {"n": n}
    tests = (("pearson", "r", stats.pearsonr), ("spearman", "rho", stats.spearmanr),
             ("kendall", "tau", stats.kendalltau))
    for name, key, test in tests:
        if n < MIN_CORRELATION_POINTS:
            result[name] = None
            continue
        with warnings.catch_warnings():  # constant input: nan, reported as null
            warnings.simplefilter("ignore")
            stat, p = test(x, y)
        value = _clean(stat)
        result[name] = None if value is None else {key: value, "p": _clean(p)}
    return result


# ----------------------------------------------------------------------------- table
def _round(value: float | None) -> float | None:
    """A result rounded to 4 places; None for none, NaN or infinite (a diverged run)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def make_rows(label: str, candidates: list[Candidate], results: dict[tuple[str, int], dict],
              seeds: list[int]) -> list[dict]:
    """One row per candidate; `results[(run, seed)]` is that run's results.json."""
    rows = []
    for c in candidates:
        valid = [_round(results[(c.run, s)].get("best_valid_top1")) for s in seeds]
        test = [_round(results[(c.run, s)].get("test_top1")) for s in seeds]
        rows.append({"label": label, **asdict(c), "edge_name": edge_name(c.cell, c.edge, c.input),
                     "alpha": round(c.alpha, 8), "softmax_alpha": round(c.softmax_alpha, 6),
                     "valid_top1": dict(zip(map(str, seeds), valid)),
                     "valid_top1_mean": mean(valid),
                     "test_top1": dict(zip(map(str, seeds), test)), "test_top1_mean": mean(test),
                     "run": c.run})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Correlations of one search's rows: per edge and pooled, for softmax(alpha) and raw
    alpha against the mean held-out top-1 (rows without one are left out)."""
    def both(group: list[dict]) -> dict:
        group = [r for r in group if r["valid_top1_mean"] is not None]
        y = [r["valid_top1_mean"] for r in group]
        soft = correlations([r["softmax_alpha"] for r in group], y)
        raw = correlations([r["alpha"] for r in group], y)
        return {"n": len(group), "softmax_alpha": {k: v for k, v in soft.items() if k != "n"},
                "alpha": {k: v for k, v in raw.items() if k != "n"}}

    edges: dict[str, dict] = {}
    for r in rows:
        edges.setdefault(r["edge_name"], []).append(r)
    per_edge = {}
    for name, group in edges.items():
        per_edge[name] = (both(group) if len(group) >= MIN_CORRELATION_POINTS else
                          {"n": len(group), "softmax_alpha": None, "alpha": None})
    return {"pooled": both(rows), "edges": per_edge}


def panel(title: str, rows: list[dict], summary: dict) -> dict:
    """One search's panel of utils.analysis.plots.plot_alpha_efficiency, the pooled rank
    correlations in its title."""
    pooled = summary["pooled"]["softmax_alpha"]
    coef = {test: "-" if pooled[test] is None else f"{pooled[test][key]:+.2f}"
            for test, key in (("spearman", "rho"), ("kendall", "tau"))}
    return {"title": f"{title}: Spearman {coef['spearman']}, Kendall {coef['kendall']}, "
                     f"n={summary['pooled']['n']}",
            "points": [{"x": r["softmax_alpha"], "y": r["valid_top1_mean"], "edge": r["edge_name"],
                        "op": r["op"], "derived": r["derived"]}
                       for r in rows if r["valid_top1_mean"] is not None]}


CSV_FIXED = ("label", "cell", "edge", "node", "input", "op", "alpha", "softmax_alpha", "derived")


def write_csv(rows: list[dict], seeds: list[int], path: str | Path) -> None:
    header = [*CSV_FIXED, *(f"valid_top1_seed{s}" for s in seeds), "valid_top1_mean",
              "test_top1_mean", "run"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([*(r[k] for k in CSV_FIXED), *(r["valid_top1"][str(s)] for s in seeds),
                             r["valid_top1_mean"], r["test_top1_mean"], f"{r['label']}/{r['run']}"])


def format_table(rows: list[dict]) -> list[str]:
    """Text lines: one per row (edge, op, alphas, held-out and test top-1)."""
    lines = [f"{'search':10} {'edge':16} {'op':14} {'alpha':>9} {'softmax':>8} "
             f"{'held-out':>8} {'test':>7}"]
    for r in rows:
        op = r["op"] + ("*" if r["derived"] else "")
        lines.append(f"{r['label']:10} {r['edge_name']:16} {op:14} {r['alpha']:9.4f} "
                     f"{r['softmax_alpha']:8.4f} {fmt(r['valid_top1_mean']):>8} "
                     f"{fmt(r['test_top1_mean']):>7}")
    return lines


def format_correlation(name: str, stats: dict) -> str:
    """One line: n and the three coefficients (p-values) of softmax(alpha) vs held-out top-1."""
    if stats["n"] < MIN_CORRELATION_POINTS:
        return f"{name}: n={stats['n']}, too few candidates (< {MIN_CORRELATION_POINTS})"
    parts = []
    for test, key in (("pearson", "r"), ("spearman", "rho"), ("kendall", "tau")):
        v = stats["softmax_alpha"][test]
        parts.append(f"{test} -" if v is None
                     else f"{test} {v[key]:+.3f} (p {fmt(v['p'], '.3g')})")
    return f"{name}: n={stats['n']}, " + ", ".join(parts)
