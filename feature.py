"""Correlation and clustering of the candidate operations' feature maps in a trained supernet:
the analysis behind StacNAS's operation groups, closed into the groups.json stage 1 reads.

    python search.py --stage darts --name exp --dataset cifar10               # the supernet read
    python feature.py --name exp --stage darts --dataset cifar10              # the 7 DARTS ops
    python search.py --stage search1 --name exp2 --groups runs/exp/darts/feature/groups.json

Reads the stage's supernet of the best held-out epoch (--model best, the default, as the
authors: best.pt, or checkpoint.pt when that epoch is the last; a search without a held-out
split has none, and its checkpoint.pt is read, with one line saying so), its final
checkpoint.pt (--model last) or --checkpoint PATH; runs --num_samples training images (the
first ones in dataset order by default, as the authors, but drawn at random from class-sorted
ImageFolder datasets; --samples picks) with the
train transform by default (as the authors; the model in eval mode) through the supernet, and
accumulates per chosen edge every candidate op's per-position mean
output and the pooled co-moments of the ops' outputs. The correlation is the authors'
statistic by default (--statistic position: each output element centred by its own mean over
the images) or one mean per op (--statistic global). Writes into --feature_dir (default
<save_dir>/<name>/<stage>/feature/): correlation_<edge>.csv, correlation_mean.csv,
heatmap_mean.png (+ heatmap_<edge>.png, kmeans_<edge>.png with --plots all),
kmeans_edges.png (the authors' view: KMeans of each edge's mean feature maps),
clusters_mean.png, dendrogram_mean.png, summary.json, config.json, log.txt, and last
groups.json: it marks a finished analysis (a folder without it is measured again; it is removed
when a folder is measured again).
"""
from __future__ import annotations

from utils.runtime.signals import keep_while_starting

if __name__ == "__main__":  # before the imports below (torch: seconds), so that a stop signal
    keep_while_starting()   # meanwhile is acted on, with one line, once the script runs

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import config
from utils.runtime import flags
import genotypes as gt
from utils.analysis import feature_plots as fp
from utils.analysis import features as ft
from utils.analysis.feature_supernet import (STAGES, Choice, UsageError, pick_model,
                                             read_supernet, rebuild, saved_at)
from utils.runtime.cli import run_guarded, seed_everything
from utils.data.datasets import get_dataset
from utils.data.loaders import loader_options, make_loader
from utils.data.splits import subset_size
from utils.io.files import read_json, write_text
from utils.runtime.lock import hold_folder
from utils.runtime.logging import close_logger, get_logger, resolve_device
from utils.io.runconfig import config_dict, config_differences, save_config
from utils.runtime.signals import StopNow

KMEANS_KS = (2, 3, 4)


def at_least_two(text: str) -> int:
    value = flags.positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (one group is no clustering), got {text}")
    return value


def feature_parser() -> argparse.ArgumentParser:
    p = flags.new_parser("feature.py", "Correlation of the candidate ops' feature maps in a "
                          "trained supernet, their clusters, and the groups stage 1 can search.")
    p.add_argument("--stage", required=True, choices=STAGES,
                   help="the run's stage to analyse: darts (the 7 DARTS ops: discovers the groups) "
                        "or search1 (the group representatives)")
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="supernet checkpoint; default: the stage folder's, as --model picks")
    p.add_argument("--model", choices=["best", "last"], default=None,
                   help="which supernet of <save_dir>/<name>/<stage>/ to analyse: best = the "
                        "epoch with the best held-out top-1 (the authors' choice: their search "
                        "keeps it when --train_ratio is below 1; best.pt, or checkpoint.pt when "
                        "that epoch is the last), falling back to the last with one line when "
                        "the search had no held-out split; last = the final checkpoint.pt. "
                        "Default: best (not with --checkpoint, which names the file itself)")
    config.add_common_args(p, "batch size (default 64)", resumable=False,
                           subset_help="take the --num_samples images from the first N "
                                       "training images only",
                           force_help="measure again a --feature_dir already finished with "
                                      "these options")
    f = p.add_argument_group("features")
    f.add_argument("--num_samples", type=flags.positive_int, default=10000,
                   help="training images run through the supernet (the authors use 10000)")
    f.add_argument("--samples", choices=["auto", "first", "random"], default="auto",
                   help="which training images: first = the first --num_samples in dataset order "
                        "(the authors' feature.py); random = as many drawn with --seed; auto "
                        "(default) = first, except for ImageFolder datasets (imagenet, "
                        "imagefolder), whose files are sorted by class, so that the first 10,000 "
                        "would be a few classes only: random there")
    f.add_argument("--transform", choices=["train", "eval"], default="train",
                   help="transform of those images: train (augmentation, the authors' choice) or "
                        "eval (no augmentation)")
    f.add_argument("--statistic", choices=list(ft.STATISTICS), default="position",
                   help="position (the authors'): each output element (channel, y, x) is "
                        "centred by its own mean over the images, covariances pooled over the "
                        "elements; global: one mean per op over all elements of all images "
                        "(shared spatial patterns then count as correlation)")
    f.add_argument("--edges", choices=["first_last", "all"], default="first_last",
                   help="first_last: the first and last edge of every cell (the authors' choice); "
                        "all: every edge")
    f.add_argument("--num_groups", type=at_least_two, default=4,
                   help="groups of non-zero ops in groups.json (the paper has 4, plus zero)")
    f.add_argument("--plots", choices=["mean", "all"], default="mean",
                   help="mean: heatmap of the mean correlation and the KMeans grid of all edges; "
                        "all: also a heatmap and a KMeans scatter per edge")
    f.add_argument("--feature_dir", metavar="DIR", default=None,
                   help="output folder (default <save_dir>/<name>/<stage>/feature)")
    return p


# Datasets read with torchvision's ImageFolder: their files come sorted by class.
CLASS_SORTED = ("imagenet", "imagefolder")


def resolve_feature(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults and paths. --checkpoint stays None unless given: run() picks the stage
    folder's file by --model (pick_model). --samples auto becomes first or random."""
    if args.batch_size is None:
        args.batch_size = 64
    if args.checkpoint is not None and args.model is not None:
        raise argparse.ArgumentTypeError(f"--model {args.model} picks a checkpoint of the stage "
                                         f"folder, --checkpoint names one: pass one of them")
    if args.checkpoint is None and args.model is None:
        args.model = "best"
    if args.samples == "auto":
        args.samples = "random" if args.dataset in CLASS_SORTED else "first"
    config.set_paths(args, args.stage)
    if args.feature_dir is None:
        args.feature_dir = os.path.join(args.stage_dir, "feature")
    config.check_folder(args.feature_dir, "--feature_dir")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = feature_parser()
    args = config.parse(parser, resolve_feature, argv)
    try:
        return run_guarded(lambda: run(args), args.debug)
    except UsageError as err:
        parser.error(str(err))


def already_done(args: argparse.Namespace) -> bool:
    """True when --feature_dir holds a finished analysis (utils.analysis.features.is_finished)
    made with these options and --force was not given. An unreadable config.json: a BadFile
    naming it."""
    out = Path(args.feature_dir)
    if args.force or not ft.is_finished(out):
        return False
    saved = read_json(out / "config.json", dict, what="the options feature.py ran with",
                      fix="pass --force to measure again")
    return not config_differences(saved, config_dict(args))


def check_not_a_stage_folder(args: argparse.Namespace) -> None:
    """Refuse a --feature_dir that is a search stage folder: its groups.json is search1's own
    (search2 reads it), which feature.py would remove and replace."""
    out = Path(args.feature_dir)
    if (out / "checkpoint.pt").is_file():
        raise UsageError(f"argument --feature_dir: {out} is a stage folder (it holds "
                         "checkpoint.pt) whose groups.json feature.py would replace; pass another "
                         "folder (default: <stage folder>/feature)")


def run(args: argparse.Namespace) -> int:
    check_not_a_stage_folder(args)
    choice = pick_model(args)
    ops = read_supernet(args, choice.state)
    if already_done(args):
        print(f"{args.feature_dir} is already finished with these options ({ft.DONE_FILE}); "
              "pass --force to measure again")
        return 0
    out = Path(args.feature_dir)
    with hold_folder(out), StopNow(f"{out} is incomplete; rerun the same command to measure again"):
        measure(args, choice, ops)
    return 0


def measure(args: argparse.Namespace, choice: Choice, ops: list[str]) -> None:
    """Run the images (--samples) through the supernet, then analyse(); logs to
    <feature_dir>/log.txt, starting with the line saying which supernet (--model). The done
    marker (groups.json) is removed first and written last."""
    state = choice.state
    out = Path(args.feature_dir)
    log = get_logger(out, "feature")
    try:
        if ft.unmark_finished(out):
            log.info(f"measuring again: removed the previous {out / ft.DONE_FILE} (written "
                     "anew at the end)")
        if choice.note:
            log.info(choice.note)
        device = resolve_device(args.device)
        seed_everything(args.seed, args.deterministic)
        data, info = get_dataset(args.dataset, args.data_dir, train=True, transform=args.transform,
                                 synthetic=config.synthetic_spec(args), log=log.info,
                                 download=not args.no_download)
        model = rebuild(state, info, args).to(device)
        n = subset_size(len(data), args.subset)
        indices = ft.sample_indices(n, args.num_samples, args.samples, args.seed)
        loader = make_loader(data, indices, args.batch_size, shuffle=False, seed=args.seed,
                             **loader_options(device, args.num_workers))
        edges = ft.select_edges(model, args.edges)
        if not choice.search_finished:
            log.info(f"warning: {args.checkpoint} is from a search that is not finished (saved "
                     f"{saved_at(state)}): these are the features of a part-trained supernet")
        log.info(f"{args.checkpoint} (saved {saved_at(state)}): {len(edges)} edges, ops "
                 f"{', '.join(ops)}; {len(indices)} training images ({args.samples} "
                 f"{'in dataset order' if args.samples == 'first' else 'drawn with --seed'}, "
                 f"{args.transform} transform) on {device}; statistic {args.statistic}")
        stats = ft.collect(model, loader, edges, device, log.info, args.print_freq)
        groups = analyse(args, state, ops, stats, len(indices), log.info)
        save_config(args, out / "config.json")
        write_text(out / ft.DONE_FILE, json.dumps(groups, indent=2) + "\n")  # last: the marker
        log.info(f"written: {out}/ (groups.json: search.py --stage search1 --groups "
                 f"{out / ft.DONE_FILE})")
    finally:
        close_logger(log)


def analyse(args: argparse.Namespace, state: dict, ops: list[str], stats: dict,
            num_images: int, log) -> dict:
    """Mean correlation, groups, KMeans views; CSVs, figures, summary.json; the groups (which
    the caller writes last, as groups.json)."""
    out = Path(args.feature_dir)
    means = {s: np.mean(np.stack([st.correlation(s) for st in stats.values()]), axis=0)
             for s in ft.STATISTICS}
    corrs = {name: st.correlation(args.statistic) for name, st in stats.items()}
    mean = means[args.statistic]
    ks = [k for k in KMEANS_KS if k <= len(ops)]
    # the authors' view: per edge, KMeans of the ops' mean feature maps
    map_labels = {}
    for name, st in stats.items():
        maps = st.mean_maps()
        map_labels[name] = ft.kmeans_mean_maps(maps, ks, args.seed)
        if args.plots == "all":
            stem = fp.file_stem(name)
            fp.plot_heatmap(corrs[name], ops, f"correlation ({args.statistic}), {name}",
                            out / f"heatmap_{stem}.png")
            points, explained = ft.pca_plane(maps, args.seed)
            fp.plot_clusters(points, explained, map_labels[name], ops, out / f"kmeans_{stem}.png",
                             f"{name}: KMeans of the mean feature maps (drawn in their PCA plane)")
    for name, corr in corrs.items():
        fp.write_csv(corr, ops, out / f"correlation_{fp.file_stem(name)}.csv")
    fp.write_csv(mean, ops, out / "correlation_mean.csv")
    title = (f"{args.stage}: correlation ({args.statistic}) of op outputs, mean of {len(corrs)} "
             f"edges, {num_images} images")
    fp.plot_heatmap(mean, ops, title, out / "heatmap_mean.png")
    fp.plot_kmeans_edges(map_labels, ops, out / "kmeans_edges.png", args.stage)
    with_none = any("none" in e for nodes in state["candidates"].values() for node in nodes
                    for e in node)
    groups = ft.find_groups(mean, ops, args.num_groups, with_none)
    points, explained, labels = ft.kmeans_views(mean, ks, args.seed)
    fp.plot_clusters(points, explained, labels, ops, out / "clusters_mean.png",
                     f"ops by their |correlation| ({args.statistic}) rows, PCA plane")
    fp.plot_dendrogram(mean, ops, args.num_groups, out / "dendrogram_mean.png")
    matches = ft.same_partition(groups) if sorted(ops) == sorted(gt.PRIMITIVES[1:]) else None
    summary = {"checkpoint": str(args.checkpoint), "stage": args.stage, "epoch": state.get("epoch"),
               "model": args.model, "samples": args.samples,
               "num_images": num_images, "transform": args.transform,
               "statistic": args.statistic, "edges": list(corrs), "ops": ops,
               "mean_correlation": mean.round(6).tolist(),
               "mean_correlation_by_statistic": {s: m.round(6).tolist() for s, m in means.items()},
               "clustering": "average linkage on 1 - |corr| of the mean correlation",
               "groups": groups, "matches_paper_groups": matches,
               "kmeans_mean_maps": {name: {str(k): lab for k, lab in by_k.items()}
                                    for name, by_k in map_labels.items()},
               "kmeans_correlation_rows": {str(k): dict(zip(ops, lab))
                                           for k, lab in labels.items()}}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"correlation ({args.statistic}) of the candidate ops' outputs, mean over {len(corrs)} "
        "edges:")
    for line in fp.format_table(mean, ops):
        log("  " + line)
    off = ~np.eye(len(ops), dtype=bool)
    log("mean |corr| off the diagonal: " + ", ".join(
        f"{s} {np.abs(m[off]).mean():.3f}" + (" (used)" if s == args.statistic else "")
        for s, m in means.items()))
    log(f"groups (--num_groups {args.num_groups}):")
    for name, g in groups.items():
        log(f"  {name}: representative {g['representative']}, members {', '.join(g['members'])}")
    log("KMeans of the mean feature maps (labels in ops order, first edges):")
    for name in list(map_labels)[:4]:
        log(f"  {name}: " + "; ".join(f"k={k} {lab}" for k, lab in map_labels[name].items()))
    if matches is not None:
        log(f"the paper's groups (pooling, identity, separable, dilated): "
            f"{'matched' if matches else 'not matched'}")
    return groups


if __name__ == "__main__":
    sys.exit(main())
