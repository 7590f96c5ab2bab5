"""run_all.py's summary: per seed the genotype, curves, accuracies, sizes and stage times;
across seeds the mean +- std test error and how often the seeds' genotypes agree; per method
(StacNAS, the DARTS baseline) the measures the paper's stability claim is about: skip
connections and parameter-free ops per normal cell, the final alphas' entropy, search time."""
from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import genotypes as gt
from utils.io.genotype_checks import genotype_from_dict, genotype_to_dict
from utils.io import files
from utils.io.files import BadFile, write_text
from utils.io.genotype_files import format_genotype, load_alphas, load_genotype
from utils.runtime.logging import params_text
from utils.analysis.plots import plot_curves, softmax

STAGES = {"stacnas": ("search1", "search2", "augment", "test", "feature"),
          "darts": ("darts", "augment", "test")}
# The search stages of each method; the last one writes the genotype augment trains.
SEARCHES = {"stacnas": ("search1", "search2"), "darts": ("darts",)}
PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none")


def seed_folder(run_dir: Path, kind: str, name: str) -> Path:
    """Where seed folder `name` (`seed_2`) of `run_dir` lies: <run_dir>/<name> for StacNAS,
    <run_dir>/<kind>/<name> for the DARTS baseline (kind darts) and the alpha-efficiency
    analysis (kind alpha_efficiency)."""
    return (run_dir if kind == "stacnas" else run_dir / kind) / name


# The numbers the summary takes from a stage's results.json (each a number or null).
RESULT_FIELDS = ("best_valid_top1", "test_top1", "test_top5", "params_millions", "macs")
# The numbers it takes from a metrics.jsonl record (each absent or a number); "epoch" is needed.
METRIC_FIELDS = ("top1", "valid_top1", "test_top1")


def is_number(value) -> bool:
    """A JSON number the summary can compute with: not true/false, and within a float (a
    hand-edited 10**400 is not). NaN and infinities count: they are reported, not computed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_numbers(record: dict, fields: tuple, where: str, nullable: bool = True,
                  fix: str = "") -> dict:
    """`record`, once each of `fields` it holds is a number (or null where `nullable`):
    BadFile naming `where` and the field (then `fix`) otherwise."""
    for key in fields:
        value = record.get(key)
        if key in record and not (is_number(value) or (nullable and value is None)):
            raise BadFile(f"{where}: {key} is {json.dumps(value)[:40]}, expected a number"
                          + (" or null" if nullable else "") + (f"; {fix}" if fix else ""))
    return record


# What to do about a damaged file the summary reads, by file.
RESULTS_FIX = "restore it, or rerun the stage that wrote it (--force)"
TIMINGS_FIX = "restore it, or delete it (it holds the stage times only)"
METRICS_FIX = "restore it, or delete the damaged line (the summary's curves use it)"


def read_json(path: Path, what: str = "a JSON object", fix: str = RESULTS_FIX) -> dict | None:
    """The object in `path` (None when there is no such file); not UTF-8, not JSON or not an
    object: BadFile naming the file, then `fix`."""
    if not path.is_file():
        return None
    return files.read_json(path, dict, what, fix=fix)


def finite_or_none(record: dict, fields: tuple) -> dict:
    """`record` with each of `fields` that is NaN or infinite (a diverged run) made None:
    the summary reports it as missing, and summary.json stays valid JSON."""
    return {k: None if k in fields and isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}


def read_results(path: Path) -> dict:
    """A stage's results.json ({} when absent), its numbers checked (RESULT_FIELDS); NaN or
    infinite ones read as None."""
    results = read_json(path, "a stage's results (results.json)") or {}
    check_numbers(results, RESULT_FIELDS, str(path), fix=RESULTS_FIX)
    return finite_or_none(results, RESULT_FIELDS)


def read_timings(path: Path) -> dict:
    """A seed's timings.json ({} when absent): {stage: seconds}, each a number (NaN or
    infinite ones read as None)."""
    timings = read_json(path, "stage times ({stage: seconds})", TIMINGS_FIX) or {}
    check_numbers(timings, tuple(timings), str(path), nullable=False, fix=TIMINGS_FIX)
    return finite_or_none(timings, tuple(timings))


def read_jsonl(path: Path) -> list[dict]:
    """A stage's metrics.jsonl ([] when absent): one record per epoch, each with an integer
    "epoch" and numbers for METRIC_FIELDS; a partial last line (an interrupted append) is
    skipped; anything else is BadFile naming the file and the record."""
    if not path.is_file():
        return []
    records = files.read_jsonl(path, "one JSON object per epoch", fix=METRICS_FIX)
    for number, record in enumerate(records, 1):
        where = f"{path}: record {number}"
        epoch = record.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise BadFile(f"{where}: epoch is {json.dumps(epoch)[:40]}, expected an integer; "
                          f"{METRICS_FIX}")
        check_numbers(record, METRIC_FIELDS, where, nullable=False, fix=METRICS_FIX)
    return records


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


def normal_cells(genotype) -> list[list]:
    """The op lists of the normal cells (one for a shared genotype, one per normal cell else)."""
    return [ops for _, ops, _, reduction in gt.cell_kinds(genotype) if not reduction]


def op_counts(genotype) -> dict:
    """Skip connections and parameter-free ops per normal cell (mean over normal cells):
    DARTS's collapse shows as many of both (StacNAS paper, Sec. 1)."""
    cells = normal_cells(genotype)
    return {"skips": statistics.fmean(sum(op == "skip_connect" for op, _ in ops) for ops in cells),
            "param_free": statistics.fmean(sum(op in PARAMETER_FREE for op, _ in ops)
                                           for ops in cells)}


def alpha_entropy(alphas: dict) -> dict:
    """Mean entropy of softmax(alpha) over the normal cells' edges, in nats and divided by
    log(#candidates) (1 = uniform, 0 = one-hot), so that StacNAS's 3-way and DARTS's 8-way
    edges compare."""
    keys = gt.alpha_set_keys(alphas)
    reduce = gt.reduction_cells(len(keys)) if not gt.is_shared(alphas) else set()
    normal = [k for i, k in enumerate(keys) if k != "reduce" and i not in reduce]
    nats, scaled = [], []
    for key in normal:
        for edges in alphas[key]:
            for edge in edges:
                probs = softmax(edge["alphas"])
                h = -sum(p * math.log(p) for p in probs if p > 0)
                nats.append(h)
                scaled.append(h / math.log(len(probs)) if len(probs) > 1 else 0.0)
    return {"nats": statistics.fmean(nats), "normalised": statistics.fmean(scaled)}


def seed_summary(seed_dir: Path, method: str = "stacnas") -> dict:
    final = seed_dir / SEARCHES[method][-1]
    genotype = (load_genotype(final / "genotype.json") if (final / "genotype.json").is_file()
                else None)
    alphas = load_alphas(final / "alphas.json") if (final / "alphas.json").is_file() else None
    augment = read_results(seed_dir / "augment" / "results.json")
    test = read_results(seed_dir / "test" / "results.json")
    curves = plot_curves({s: read_jsonl(seed_dir / s / "metrics.jsonl")
                          for s in (*SEARCHES[method], "augment")}, seed_dir / "curves.png")
    plots = sorted(str(p.relative_to(seed_dir.parent)) for p in (final / "plots").glob("*.png")
                   if not p.name.startswith("alphas_")) if (final / "plots").is_dir() else []
    seconds = read_timings(seed_dir / "timings.json")
    searched = [seconds.get(s) for s in SEARCHES[method]]
    return {"seed": seed_dir.name, "method": method,
            "genotype": genotype_to_dict(genotype) if genotype else None,
            "genotype_repr": format_genotype(genotype) if genotype else None,
            **(op_counts(genotype) if genotype else {"skips": None, "param_free": None}),
            "alpha_entropy": alpha_entropy(alphas) if alphas else None,
            "cell_plots": plots,
            "curves": str(Path(curves).relative_to(seed_dir.parent)) if curves else None,
            "held_out_top1": augment.get("best_valid_top1"),
            "test_top1": test.get("test_top1", augment.get("test_top1")),
            "test_top5": test.get("test_top5", augment.get("test_top5")),
            "params_millions": augment.get("params_millions"), "macs": augment.get("macs"),
            "seconds": seconds,
            "search_seconds": sum(searched) if None not in searched else None}


def _mean_std(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def method_summary(seeds: list[dict]) -> dict:
    """Across the seeds of one method: mean +- std of each measure, genotype agreement."""
    errors = [None if s["test_top1"] is None else 100 - s["test_top1"] for s in seeds]
    out = {"seeds": seeds, "num_results": sum(e is not None for e in errors)}
    for key, values in (("test_error", errors), ("skips", [s["skips"] for s in seeds]),
                        ("param_free", [s["param_free"] for s in seeds]),
                        ("alpha_entropy", [s["alpha_entropy"] and s["alpha_entropy"]["normalised"]
                                           for s in seeds]),
                        ("search_seconds", [s["search_seconds"] for s in seeds])):
        out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
    out["agreement"] = genotype_agreement([genotype_from_dict(s["genotype"]) for s in seeds
                                           if s["genotype"]])
    return out


def _alpha_efficiency(run_dir: Path, seed_names: list[str]) -> dict:
    """Per seed and search, the pooled correlations alpha_efficiency.py wrote (run_all.py
    --alpha_efficiency): {seed: {label: {n, pearson, spearman, kendall}}}."""
    found = {}
    for name in seed_names:
        path = seed_folder(run_dir, "alpha_efficiency", name) / "alpha_efficiency.json"
        data = read_json(path, "alpha_efficiency.py's results", AE_FIX)
        if data is not None:
            found[name] = _pooled_correlations(data, path)
    return found


AE_FIX = "delete it and rerun alpha_efficiency.py (its finished training runs are kept)"
# The coefficient each correlation of alpha_efficiency.json reports.
COEFFICIENTS = {"pearson": "r", "spearman": "rho", "kendall": "tau"}


def _pooled_correlations(data: dict, path: Path) -> dict:
    """{label: {n, pearson, spearman, kendall}} from alpha_efficiency.json's
    correlations.<label>.pooled, every field checked (BadFile naming the file and field)."""
    def need(value, kind, field: str):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadFile(f"{path}: {field} is {json.dumps(value)[:40]}, expected "
                          f"{'an object' if kind is dict else 'an integer'}; {AE_FIX}")
        return value

    found = {}
    for label, c in need(data.get("correlations"), dict, "correlations").items():
        pooled = need(need(c, dict, f"correlations.{label}").get("pooled"), dict,
                      f"correlations.{label}.pooled")
        soft = need(pooled.get("softmax_alpha"), dict, f"correlations.{label}.pooled.softmax_alpha")
        entry = {"n": need(pooled.get("n"), int, f"correlations.{label}.pooled.n")}
        for test, key in COEFFICIENTS.items():
            value = soft.get(test)
            field = f"correlations.{label}.pooled.softmax_alpha.{test}"
            if value is not None:
                check_numbers(need(value, dict, field), (key, "p"), f"{path}: {field}",
                              fix=AE_FIX)
            entry[test] = value
        found[label] = entry
    return found


def _alpha_efficiency_table(found: dict) -> list[str]:
    lines = ["## Alpha efficiency: softmax(alpha) against stand-alone held-out top-1", "",
             "| seed | search | candidates | Pearson r | Spearman rho | Kendall tau |",
             "|---|---|---|---|---|---|"]
    for seed, labels in found.items():
        for label, c in labels.items():
            get = lambda k, v, c=c: (c.get(k) or {}).get(v)  # noqa: E731
            lines.append(f"| {seed} | {label} | {c.get('n', '-')} | {fmt(get('pearson', 'r'))} | "
                         f"{fmt(get('spearman', 'rho'))} | {fmt(get('kendall', 'tau'))} |")
    return lines + [""]


# The summary's file name (.md, .json) by the methods it covers (run_all.py --method stacnas,
# darts, both): a run of one method never replaces the summary of another, nor the comparison.
SUMMARY_STEMS = {("stacnas",): "summary", ("darts",): "summary_darts",
                 ("stacnas", "darts"): "summary_both"}
# Its title, by the same key.
TITLES = {("stacnas",): "StacNAS pipeline summary", ("darts",): "DARTS baseline summary",
          ("stacnas", "darts"): "StacNAS and DARTS pipelines"}


def _key(methods) -> tuple:
    """`methods` in the order SUMMARY_STEMS names them (stacnas first)."""
    return tuple(m for m in STAGES if m in methods)


def summary_stem(methods) -> str:
    """The file name, without .md / .json, of the summary of `methods` (SUMMARY_STEMS)."""
    return SUMMARY_STEMS[_key(methods)]


def summarised_seeds(path: Path) -> list[str] | None:
    """The seed folders an existing summary.json covers (None when there is none, or it cannot
    be read: it is about to be written anew, so a damaged one is no reason to stop)."""
    try:
        data = read_json(path, "a summary")
    except (BadFile, OSError):
        return None
    seeds = data.get("seeds") if data else None
    if not isinstance(seeds, list):
        return None
    return [s.get("seed") for s in seeds if isinstance(s, dict) and isinstance(s.get("seed"), str)]


def write_summary(run_dir: str | Path, seed_names: list, methods=("stacnas",)) -> tuple[Path, dict]:
    """Write <stem>.json and <stem>.md into `run_dir` (stem: summary_stem(methods), so that
    each --method keeps its own); return the markdown path and data. `seed_names` are seed
    folders (`seed_2`) or seeds (2); `methods` the pipelines that ran (StacNAS's seeds in
    <run_dir>/seed_<k>, DARTS's in <run_dir>/darts/seed_<k>)."""
    run_dir = Path(run_dir)
    names = [n if isinstance(n, str) else f"seed_{n}" for n in seed_names]
    per_method = {m: method_summary([seed_summary(seed_folder(run_dir, m, n), m) for n in names])
                  for m in methods}
    first = per_method[methods[0]]
    data = {"title": TITLES[_key(methods)], "seeds": first["seeds"],
            "test_error_mean": first["test_error_mean"],
            "test_error_std": first["test_error_std"], "agreement": first["agreement"],
            "methods": per_method, "alpha_efficiency": _alpha_efficiency(run_dir, names)}
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = summary_stem(methods)
    write_text(run_dir / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    path = run_dir / f"{stem}.md"
    write_text(path, _markdown(data))
    return path, data


def fmt(value, spec: str = ".2f") -> str:
    """`value` formatted by `spec`; "-" for None (not measured)."""
    return "-" if value is None else format(value, spec)


def _params(millions) -> str:
    """Millions of parameters as the stages' logs print them (utils.runtime.logging.params_text)."""
    return "-" if millions is None else params_text(round(millions * 1e6))


def _pm(m: dict, key: str, spec: str = ".2f") -> str:
    return f"{fmt(m[key + '_mean'], spec)} +- {fmt(m[key + '_std'], spec)}"


def _agreement_text(agree: dict) -> str:
    if not agree["pairs"]:
        return "needs two or more seeds"
    pairs = f"{agree['pairs']} pair{'s' if agree['pairs'] != 1 else ''}"
    return (f"{agree['edges']:.0%} of kept edges and {agree['ops']:.0%} of their ops agree "
            f"({pairs} of seeds)")


def _comparison(methods: dict) -> list[str]:
    lines = ["## StacNAS against DARTS", "",
             "| method | seeds | test error (%) | edges agree | ops agree | skips / normal cell "
             "| param-free ops / normal cell | alpha entropy (1 = uniform) | search (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        agree = m["agreement"]
        lines.append(f"| {name} | {m['num_results']} | {_pm(m, 'test_error')} | "
                     f"{fmt(agree['edges'], '.0%')} | {fmt(agree['ops'], '.0%')} | "
                     f"{_pm(m, 'skips', '.1f')} | {_pm(m, 'param_free', '.1f')} | "
                     f"{_pm(m, 'alpha_entropy', '.3f')} | {_pm(m, 'search_seconds', '.0f')} |")
    return lines + [""]


def _method_section(name: str, m: dict, title: bool) -> list[str]:
    stages = STAGES[name]
    lines = [f"## {name}", ""] if title else []
    lines += ["| seed | held-out top-1 | test top-1 | test error | params (M) | skips | "
              + " | ".join(f"{s} (s)" for s in stages) + " |", "|---" * (6 + len(stages)) + "|"]
    for s in m["seeds"]:
        err = None if s["test_top1"] is None else 100 - s["test_top1"]
        lines.append(f"| {s['seed']} | {fmt(s['held_out_top1'])} | {fmt(s['test_top1'])} | "
                     f"{fmt(err)} | {_params(s['params_millions'])} | {fmt(s['skips'], '.0f')} | "
                     + " | ".join(fmt(s["seconds"].get(st), ".0f") for st in stages) + " |")
    lines += ["", f"Test error over {m['num_results']} seed(s): {_pm(m, 'test_error')} %.", "",
              f"Stability across seeds: {_agreement_text(m['agreement'])}."]
    prefix = "" if name == "stacnas" else f"{name}/"
    for s in m["seeds"]:
        lines += ["", f"### {name} {s['seed']}" if title else f"## {s['seed']}", "", "```",
                  s["genotype_repr"] or "(no genotype yet)", "```"]
        lines += [f"![{Path(p).stem}]({prefix}{p})" for p in s["cell_plots"]]
        if s["curves"]:
            lines.append(f"![curves]({prefix}{s['curves']})")
    return lines + [""]


def _markdown(data: dict) -> str:
    methods = data["methods"]
    both = len(methods) > 1
    lines = [f"# {data['title']}", ""]
    if both:
        lines += _comparison(methods)
    if data["alpha_efficiency"]:
        lines += _alpha_efficiency_table(data["alpha_efficiency"])
    for name, m in methods.items():
        lines += _method_section(name, m, both)
    return "\n".join(lines).rstrip() + "\n"
