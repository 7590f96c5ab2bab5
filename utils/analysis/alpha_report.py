"""The outputs of alpha_efficiency.py (StacNAS README, "alpha efficiency"): alpha_efficiency.csv,
alpha_efficiency.png and, last, alpha_efficiency.json, which marks the analysis complete and
records what was analysed (searches, edges, seeds, training options), so that an --out holding
a finished analysis of something else is refused rather than replaced.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.analysis import alpha_efficiency as ae
from utils.analysis.alpha_runs import training_options
from utils.analysis.plots import plot_alpha_efficiency
from utils.io.files import read_json, write_text


def search_record(args: argparse.Namespace, search: dict, candidates: list, runs: dict) -> dict:
    """What alpha_efficiency.json says about one analysed search: its label, folder (absolute),
    stage, edges, runs and training options (those of every seed)."""
    options = training_options(args, search["config"], args.seeds[0])
    del options["seed"]
    edges = [ae.edge_name(c.cell, c.edge, c.input) for c in candidates]
    return {"label": search["label"], "search_dir": str(Path(search["dir"]).resolve()),
            "stage": search["stage"], "edges": list(dict.fromkeys(edges)), "runs": sorted(runs),
            "training": options}


def check_out(args: argparse.Namespace, plans) -> None:
    """Refuse to replace a finished analysis (alpha_efficiency.json in --out) of other searches,
    edges, seeds or training options: one ValueError line naming the file and what differs.
    The same analysis again (a rerun) goes on: its runs are finished and its files are written
    anew with the same content."""
    path = args.out / "alpha_efficiency.json"
    if not path.is_file():
        return
    saved = read_json(path, what="a finished alpha-efficiency analysis",
                      fix="pass another --out, or delete that folder to analyse again")
    searches = [search_record(args, s, c, r) for s, c, r in plans]
    differs = []
    if _comparable(saved.get("searches")) != _comparable(searches):
        differs.append("searches, edges or training options")
    if saved.get("seeds") != args.seeds:
        differs.append(f"seeds ({saved.get('seeds')!r}, now {args.seeds!r})")
    if differs:
        raise ValueError(f"{path}: a finished analysis of other {' and '.join(differs)} is "
                         f"there; pass another --out to keep it, or delete {args.out} to "
                         "replace it")


def _comparable(searches) -> object:
    """alpha_efficiency.json's "searches" with each search_dir made absolute (an older version
    wrote it as given), so that the same analysis compares equal."""
    def absolute(search):
        try:
            return {**search, "search_dir": str(Path(search["search_dir"]).resolve())}
        except (TypeError, KeyError, ValueError, OSError):  # not a folder name: compared as is
            return search

    return [absolute(s) if isinstance(s, dict) else s for s in searches] \
        if isinstance(searches, list) else searches


def write_outputs(args: argparse.Namespace, plans, results: dict) -> None:
    """CSV, figure, then the JSON that marks the analysis complete; the table on the console."""
    out, all_rows, summaries, panels, searches = args.out, [], {}, [], []
    for search, candidates, runs in plans:
        label = search["label"]
        mine = {(run, seed): r for (lab, run, seed), r in results.items() if lab == label}
        rows = ae.make_rows(label, candidates, mine, args.seeds)
        summaries[label] = ae.summarise(rows)
        panels.append(ae.panel(f"{label} ({search['stage']})", rows, summaries[label]))
        searches.append(search_record(args, search, candidates, runs))
        all_rows += rows
    ae.write_csv(all_rows, args.seeds, out / "alpha_efficiency.csv")
    plot_alpha_efficiency(panels, out / "alpha_efficiency.png")
    data = {"searches": searches, "seeds": args.seeds,
            "measure": "held-out top-1 of the best epoch, mean over seeds (--valid_ratio "
                       f"{args.valid_ratio} of the training set); test top-1 reported only",
            "correlations": summaries, "rows": all_rows,
            "files": {"csv": "alpha_efficiency.csv", "png": "alpha_efficiency.png"}}
    write_text(out / "alpha_efficiency.json", json.dumps(data, indent=2) + "\n")
    for line in ae.format_table(all_rows):
        print(line)
    print("* = the search's own choice; correlations of softmax(alpha) with held-out top-1:")
    for label, summary in summaries.items():
        print(ae.format_correlation(f"{label} pooled", summary["pooled"]))
        for name, stats in summary["edges"].items():
            print("  " + ae.format_correlation(name, stats))
    print(f"written: {out}/alpha_efficiency.json, .csv, .png")
