"""run_all.py's summary: per seed the genotype, curves, accuracies, sizes and stage times;
across seeds the mean +- std test error and how often the seeds' genotypes agree."""
from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import genotypes as gt
from utils.genotype_files import format_genotype, load_genotype
from utils.plots import plot_curves

STAGES = ("search1", "search2", "augment", "test", "feature")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _choices(genotype) -> set[tuple]:
    """(cell, node, input, op) of every kept edge; cell = normal/reduce or cell_<i>."""
    return {(cell, k // 2, int(src), op) for cell, ops, _, _ in gt.cell_kinds(genotype)
            for k, (op, src) in enumerate(ops)}


def genotype_agreement(genotypes: list) -> dict:
    """Share of kept edges (cell, node, input) and of ops on them that two seeds' genotypes
    have in common, averaged over all pairs of seeds: StacNAS's stability, measured."""
    pairs = list(itertools.combinations(genotypes, 2))
    if not pairs:
        return {"pairs": 0, "edges": None, "ops": None}
    edges, ops = [], []
    for a, b in pairs:
        ca, cb = _choices(a), _choices(b)
        ea, eb = {c[:3] for c in ca}, {c[:3] for c in cb}
        total = max(len(ca), len(cb))
        edges.append(len(ea & eb) / total)
        ops.append(len(ca & cb) / total)
    return {"pairs": len(pairs), "edges": statistics.fmean(edges), "ops": statistics.fmean(ops)}


def seed_summary(seed_dir: Path) -> dict:
    genotype_file = seed_dir / "search2" / "genotype.json"
    genotype = load_genotype(genotype_file) if genotype_file.is_file() else None
    augment = read_json(seed_dir / "augment" / "results.json") or {}
    test = read_json(seed_dir / "test" / "results.json") or {}
    curves = plot_curves({s: read_jsonl(seed_dir / s / "metrics.jsonl")
                          for s in ("search1", "search2", "augment")}, seed_dir / "curves.png")
    plots = sorted(str(p.relative_to(seed_dir.parent)) for p in (seed_dir / "search2" / "plots").glob("*.png")
                   if not p.name.startswith("alphas_")) if (seed_dir / "search2" / "plots").is_dir() else []
    return {"seed": seed_dir.name, "genotype": gt.genotype_to_dict(genotype) if genotype else None,
            "genotype_repr": format_genotype(genotype) if genotype else None,
            "cell_plots": plots, "curves": str(Path(curves).relative_to(seed_dir.parent)) if curves else None,
            "held_out_top1": augment.get("best_valid_top1"),
            "test_top1": test.get("test_top1", augment.get("test_top1")),
            "test_top5": test.get("test_top5", augment.get("test_top5")),
            "params_millions": augment.get("params_millions"), "macs": augment.get("macs"),
            "seconds": read_json(seed_dir / "timings.json") or {}}


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_summary(run_dir: str | Path, seed_names: list[str]) -> tuple[Path, dict]:
    """Write summary.json and summary.md into `run_dir`; return the markdown path and data."""
    run_dir = Path(run_dir)
    seeds = [seed_summary(run_dir / name) for name in seed_names]
    errors = [100 - s["test_top1"] for s in seeds if s["test_top1"] is not None]
    genotypes = [gt.genotype_from_dict(s["genotype"]) for s in seeds if s["genotype"]]
    data = {"seeds": seeds,
            "test_error_mean": statistics.fmean(errors) if errors else None,
            "test_error_std": statistics.stdev(errors) if len(errors) > 1 else (0.0 if errors else None),
            "agreement": genotype_agreement(genotypes)}
    (run_dir / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    path = run_dir / "summary.md"
    path.write_text(_markdown(data), encoding="utf-8")
    return path, data


def _markdown(data: dict) -> str:
    lines = ["# StacNAS pipeline summary", "",
             "| seed | held-out top-1 | test top-1 | test error | params (M) | "
             + " | ".join(f"{s} (s)" for s in STAGES) + " |",
             "|---" * (5 + len(STAGES)) + "|"]
    for s in data["seeds"]:
        err = None if s["test_top1"] is None else 100 - s["test_top1"]
        lines.append(f"| {s['seed']} | {_fmt(s['held_out_top1'])} | {_fmt(s['test_top1'])} | "
                     f"{_fmt(err)} | {_fmt(s['params_millions'], '.3f')} | "
                     + " | ".join(_fmt(s["seconds"].get(st), ".0f") for st in STAGES) + " |")
    agree = data["agreement"]
    lines += ["", f"Test error over {len([s for s in data['seeds'] if s['test_top1'] is not None])} "
              f"seed(s): {_fmt(data['test_error_mean'])} +- {_fmt(data['test_error_std'])} %.", ""]
    if agree["pairs"]:
        pairs = f"{agree['pairs']} pair{'s' if agree['pairs'] != 1 else ''}"
        lines.append(f"Stability across seeds ({pairs} of seeds): {agree['edges']:.0%} of kept "
                     f"edges and {agree['ops']:.0%} of their ops agree.")
    else:
        lines.append("Stability across seeds: needs two or more seeds.")
    for s in data["seeds"]:
        lines += ["", f"## {s['seed']}", "", "```", s["genotype_repr"] or "(no genotype yet)", "```"]
        lines += [f"![{Path(p).stem}]({p})" for p in s["cell_plots"]]
        if s["curves"]:
            lines.append(f"![curves]({s['curves']})")
    return "\n".join(lines) + "\n"
