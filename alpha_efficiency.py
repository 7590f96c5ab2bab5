"""Alpha efficiency: do a finished search's alphas predict stand-alone accuracy? For every
chosen kept edge and every op that edge had in the search (none excluded), the derived
genotype with that op on that edge is trained from scratch (augment.py), and softmax(alpha) is
set against the held-out top-1 (StacNAS README, "alpha efficiency").

    python run_all.py --preset quick --name cmp --method both --seeds 1   # makes the folders below
    python alpha_efficiency.py --search_dir runs/cmp/seed_1/search2                  # normal cell
    python alpha_efficiency.py --search_dir runs/cmp/seed_1/search2 runs/cmp/darts/seed_1/darts \\
        --edges 0,3 --epochs 20 --seeds 1,2
    python alpha_efficiency.py --search_dir runs/cmp/seed_1/search2 --edges normal:0,reduce:2 \\
        --subset 5000 --out runs/cmp/seed_1/ae_subset

Each --search_dir is a finished search stage folder (search2, darts or search1) with
alphas.json, genotype.json and config.json; data flags default to its config.json. Every run is
an ordinary resumable augment.py run; the derived genotype (each edge's own op) is trained once.
Finished runs are skipped, so rerunning the same command resumes an interrupted analysis.
Nothing is replaced without a word: the default --out is one folder per set of searches
(`alpha_efficiency_stacnas+darts/` beside `alpha_efficiency_stacnas/`), and an --out holding
a finished analysis of other searches, edges, seeds or training options is refused (pass
another --out). Writes into --out (default <run folder of the first DIR>/alpha_efficiency_<the
labels joined by +>/):
<label>/<run>/genotype.json, <label>/<run>/seed_<s>/augment/ (+ augment.log, its output),
alpha_efficiency.csv, alpha_efficiency.png and, last, alpha_efficiency.json (the analysis is
complete when it exists). Correlations use the held-out top-1 only (--valid_ratio of the
training set); the test top-1 is reported, never used.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import config
from genotypes import Genotype, GenotypeError, genotype_to_dict, is_shared
from utils.analysis import alpha_efficiency as ae
from utils.runtime.cli import run_guarded
from utils.io.files import BadFile, read_json, write_text
from utils.runtime.signals import ForwardToChild
from utils.io.genotype_files import load_alphas, load_genotype, save_genotype
from utils.runtime.lock import FolderLock
from utils.analysis.plots import plot_alpha_efficiency
from utils.train.stage import is_finished
from utils.analysis.summary import RESULT_FIELDS, check_numbers

ROOT = Path(__file__).resolve().parent
STAGE_LABELS = {"search2": "stacnas", "search1": "search1", "darts": "darts"}
FIX = ("finish that search first (rerun its search.py command: it resumes) or pass another "
       "--search_dir")
CONFIG_FIX = "restore it, or rerun that search (search.py --force)"
RUN_FIX = "delete that run's folder to train it again"


# ----------------------------------------------------------------------------- command line
def labels(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    safe = all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n) for n in names)
    if not safe or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct folder-safe names such as "
                                         f"stacnas,darts, got {text!r}")
    return names


def held_out(text: str) -> float:
    value = config.ratio(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): the rest is trained on, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = config.new_parser("alpha_efficiency.py", "Train every candidate op of the chosen kept edges "
                          "stand-alone and correlate the search's alphas with held-out accuracy.")
    p.add_argument("--search_dir", nargs="+", required=True, metavar="DIR",
                   help="finished search stage folders (e.g. runs/cmp/seed_2/search2 "
                        "runs/cmp/darts/seed_2/darts, as run_all.py --method both --name cmp "
                        "makes them), one scatter panel each")
    p.add_argument("--labels", type=labels, default=None,
                   help="names of the searches, comma-separated, one per DIR; None: stacnas for "
                        "search2, darts for darts, search1 for search1 (the run folder's name "
                        "prefixed to repeats)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder; None: alpha_efficiency_<labels joined by +>/ beside the "
                        "first DIR (in its run folder), one per set of searches; an --out "
                        "holding a finished analysis of other searches or settings is refused")
    p.add_argument("--edges", type=ae.parse_edges, default="normal",
                   help=f"kept edges to analyse: indices into genotype.normal "
                        f"(0..{ae.NUM_KEPT - 1}), "
                        "CELL:K, or a cell name for its 8 edges, comma-separated "
                        "(e.g. 0,3 or normal:0,reduce:2 or normal,reduce)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    t = p.add_argument_group("training of each candidate (augment.py)")
    t.add_argument("--epochs", type=config.epochs, default=20, help="epochs per run")
    t.add_argument("--num_cells", type=config.num_cells, default=8, help="cells of each network")
    t.add_argument("--init_channels", type=config.init_channels, default=16,
                   help="initial channels")
    t.add_argument("--batch_size", type=config.batch_size, default=None,
                   help="batch size; None: augment.py's")
    t.add_argument("--subset", type=config.positive_int, default=None,
                   help="train on the first N training images; None: all")
    t.add_argument("--seeds", type=config.seed_list, default="2",
                   help="comma-separated seeds, each " + config.SEED_HELP + ": every candidate "
                        "is trained once per seed and the held-out top-1 averaged")
    t.add_argument("--valid_ratio", type=held_out, default=0.2,
                   help="share of the training set held out; its top-1 (best epoch) is what the "
                        "correlations use")
    for flag, kind, what in (
            ("--aux_weight", config.non_negative_float, "auxiliary head loss weight"),
            ("--cutout", config.cutout, "cutout length, 0 = off"),
            ("--drop_path", config.non_negative_float, "drop-path probability")):
        t.add_argument(flag, type=kind, default=None, help=f"{what}; None: augment.py's")
    d = p.add_argument_group("data and device (None: the value in each search's config.json)")
    d.add_argument("--dataset", type=config.dataset_name, choices=config.DATASETS, default=None,
                   help="dataset (the test split is only reported)")
    d.add_argument("--data_dir", default=None, help="dataset root")
    d.add_argument("--no-download", "--no_download", dest="no_download", action="store_true",
                   help="never download a dataset")
    d.add_argument("--synthetic_shape", type=config.shape, default=None, help="synthetic: C,H,W")
    d.add_argument("--synthetic_classes", type=config.synthetic_classes, default=None,
                   help="synthetic: classes")
    d.add_argument("--synthetic_samples", type=config.synthetic_samples, default=None,
                   help="synthetic: training images")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    d.add_argument("--gpu", type=config.gpu, default=None, metavar="N|N,M,...|all",
                   help="every training run on CUDA device N (passed on as --gpu N); a list "
                        "such as 0,1 or all means the first listed (all: GPU 0), as the "
                        "authors' code does, with one line saying so; an error without CUDA")
    d.add_argument("--print_freq", "--report_freq", dest="print_freq", type=config.steps,
                   default=None, help="each training run logs a line every N steps (the "
                                      "authors' 50.0 is 50); None: augment.py's (50)")
    d.add_argument("--num_workers", type=config.num_workers, default=None,
                   help="data-loading processes; None: augment.py's default for the device")
    s = p.add_argument_group("speed and memory of each training run (augment.py's flags)")
    s.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                   help="autocast to bf16 or fp16; None: augment.py's default (float32)")
    s.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format; None: augment.py's device default")
    s.add_argument("--compile", action="store_true", help="torch.compile each network")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    dirs = [Path(d) for d in args.search_dir]
    if args.labels is None:
        base = [STAGE_LABELS.get(d.resolve().name, d.resolve().name) for d in dirs]
        args.labels = [b if base.count(b) == 1 else f"{d.resolve().parent.name}_{b}"
                       for b, d in zip(base, dirs)]
        if len(set(args.labels)) != len(args.labels):
            raise argparse.ArgumentTypeError(f"cannot tell the searches apart "
                                             f"({', '.join(args.labels)}); pass --labels")
    elif len(args.labels) != len(dirs):
        raise argparse.ArgumentTypeError(f"--labels names {len(args.labels)} searches but "
                                         f"--search_dir gives {len(dirs)}")
    args.out = Path(args.out) if args.out else default_out(dirs[0], args.labels)
    return args


def default_out(first: Path, labels: list[str]) -> Path:
    """--out by default: alpha_efficiency_<labels joined by +> in the run folder of the first
    search, so that analyses of different sets of searches (the README's two examples) never
    share a folder."""
    return first.resolve().parent / f"alpha_efficiency_{'+'.join(labels)}"


def main(argv: list[str] | None = None) -> int:
    args = config.parse(build_parser(), resolve, argv, pass_gpu_on=True)
    return run_guarded(lambda: run(args), args.debug)


# ----------------------------------------------------------------------------- inputs
def read_search(path: Path, label: str) -> dict:
    """A finished search stage folder: its alphas, genotype and config; errors say the fix."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass a search stage folder such as "
                                "runs/cmp/seed_2/search2")
    files = {name: path / f"{name}.json" for name in ("alphas", "genotype", "config")}
    try:
        alphas = load_alphas(files["alphas"])
        if not is_shared(alphas):
            raise GenotypeError(f"{files['alphas']}: per-cell alphas (a --no-alpha_share search); "
                                "alpha efficiency compares shared normal/reduce alphas: search "
                                "with --alpha_share (the default)")
        genotype = load_genotype(files["genotype"])
    except GenotypeError as err:
        fix = FIX if "not found" in str(err) else "restore it, or rerun that search (search.py --force)"
        raise GenotypeError(f"{err}; {fix}") from None
    if not files["config"].is_file():
        raise FileNotFoundError(f"{files['config']}: not found; {FIX}")
    cfg = read_search_config(files["config"])
    if not is_finished(path, "genotype.json"):
        raise RuntimeError(f"{path / 'checkpoint.pt'}: the search is not finished (no checkpoint "
                           f"marked finished); {FIX}")
    return {"label": label, "dir": path, "alphas": alphas, "genotype": genotype, "config": cfg,
            "stage": cfg.get("stage", path.name)}


def _config_problem(key: str, value) -> str | None:
    """Why `value` cannot be option `key` of a search's config.json (None: it can), judged by
    the search parser's own types."""
    if key in ("data_dir", "stage"):
        return None if isinstance(value, str) else "expected a string"
    if key == "dataset":
        ok = isinstance(value, str) and value.lower() in config.DATASETS
        return None if ok else f"expected one of {', '.join(config.DATASETS)}"
    if key == "synthetic_shape":
        if not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return "expected [channels, size]"
        text, parse = f"{value[0]},{value[1]},{value[1]}", config.shape
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        text, parse = str(value), CONFIG_INTS[key]
    try:
        parse(text)
    except argparse.ArgumentTypeError as err:
        return str(err)
    return None


# The integer options of a search's config.json the analysis reads, with the parser's types.
CONFIG_INTS = {"synthetic_classes": config.synthetic_classes,
               "synthetic_samples": config.synthetic_samples}
CONFIG_READ = ("dataset", "data_dir", "synthetic_shape", *CONFIG_INTS, "stage")


def read_search_config(path: Path) -> dict:
    """A search's config.json: an object whose options the analysis reads (CONFIG_READ) are
    absent, null or what the search's parser accepts; BadFile naming the file and the option
    otherwise."""
    cfg = read_object(path, "the search's options (config.json)", CONFIG_FIX)
    for key in CONFIG_READ:
        problem = None if cfg.get(key) is None else _config_problem(key, cfg[key])
        if problem:
            raise BadFile(f"{path}: {key} is {json.dumps(cfg[key])[:40]}: {problem}; "
                          + CONFIG_FIX + (f", or pass --{key} here" if key != "stage" else ""))
    return cfg


def read_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object in `path` (utils.io.files.read_json); its BadFile line ends with `fix`."""
    try:
        return read_json(path, dict, what)
    except BadFile as err:
        raise BadFile(f"{err}; {fix}") from None


def read_results(path: Path) -> dict:
    """A finished run's results.json: an object whose numbers (RESULT_FIELDS) are numbers or
    null; BadFile naming the file and the field otherwise."""
    return check_numbers(read_object(path, "augment.py's results (results.json)", RUN_FIX),
                         (*RESULT_FIELDS, "wall_seconds"), str(path), fix=RUN_FIX)


def training_options(args: argparse.Namespace, cfg: dict, seed: int) -> dict:
    """augment.py's options of one run, as its config.json holds them (None: its default)."""
    opts = {"dataset": args.dataset or cfg.get("dataset"), "seed": seed, "epochs": args.epochs,
            "num_cells": args.num_cells, "init_channels": args.init_channels,
            "batch_size": args.batch_size, "subset": args.subset, "valid_ratio": args.valid_ratio,
            "aux_weight": args.aux_weight, "cutout": args.cutout, "drop_path": args.drop_path}
    if opts["dataset"] == "synthetic":
        shape = args.synthetic_shape or cfg.get("synthetic_shape")
        opts.update(synthetic_shape=list(shape) if shape else None,
                    synthetic_classes=args.synthetic_classes or cfg.get("synthetic_classes"),
                    synthetic_samples=args.synthetic_samples or cfg.get("synthetic_samples"))
    return {k: v for k, v in opts.items() if v is not None}


def augment_command(args: argparse.Namespace, cfg: dict, opts: dict, genotype_file: Path,
                    folder: Path) -> list[str]:
    data_dir = Path(args.data_dir or cfg.get("data_dir") or "data").resolve()
    cmd = [sys.executable, str(ROOT / "augment.py"), "--name", f"seed_{opts['seed']}",
           "--save_dir", str(folder.resolve()), "--genotype", str(genotype_file.resolve()),
           "--data_dir", str(data_dir), "--device", args.device]
    for flag, value in (("--gpu", config.first_gpu(args.gpu)), ("--print_freq", args.print_freq),
                        ("--num_workers", args.num_workers)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.amp is not None:
        cmd += ["--amp", args.amp]
    if args.channels_last is not None:
        cmd.append("--channels_last" if args.channels_last else "--no-channels_last")
    if args.compile:
        cmd.append("--compile")
    for key, value in opts.items():
        if key == "synthetic_shape":
            value = f"{value[0]},{value[1]},{value[1]}"
        cmd += [f"--{key}", str(value)]
    return cmd + (["--no-download"] if args.no_download else [])


# ----------------------------------------------------------------------------- runs
@contextmanager
def out_lock(out: Path):
    """The stages' lock (utils.runtime.lock.FolderLock) on <out>, also held by the training run in
    progress (its inherited descriptor, None where nothing is locked): a rerun after a killed
    analysis waits until the run it left behind has saved and stopped."""
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out).acquire(wait="waiting for another alpha_efficiency.py (or a training "
                                      f"run it left) to release {out}") as lock:
        yield lock.inheritable_fd()


def _stop_with_parent():
    """A preexec_fn (Linux): the child gets SIGTERM (it saves a checkpoint) when we die."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


class Child(ForwardToChild):
    """Runs augment.py; SIGTERM / SIGINT sent to us are passed on (it saves and stops)."""

    def __init__(self, lock_fd: int | None) -> None:
        super().__init__()
        self.lock_fd = lock_fd

    def run(self, cmd: list[str], log: Path) -> int:
        with open(log, "a", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a live log
                                         pass_fds=() if self.lock_fd is None else (self.lock_fd,),
                                         preexec_fn=_stop_with_parent())
            try:
                code = self.proc.wait()
            finally:
                self.proc = None
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def checked_results(stage_dir: Path, genotype: Genotype, opts: dict) -> dict:
    """results.json of a finished run, refused when it trained another genotype or options."""
    results = read_results(stage_dir / "results.json")
    saved = read_object(stage_dir / "config.json", "augment.py's options (config.json)", RUN_FIX)
    diffs = [f"--{k}: {saved.get(k)!r} -> {v!r}" for k, v in opts.items() if saved.get(k) != v]
    if results.get("genotype") != genotype_to_dict(genotype):
        diffs.insert(0, "another genotype")
    if diffs:
        raise ValueError(f"{stage_dir} was trained with other settings ({'; '.join(diffs)}); pass "
                         "another --out, or delete that folder to retrain it")
    return results


def write_genotype(path: Path, genotype: Genotype) -> None:
    if path.is_file() and load_genotype(path) != genotype:
        raise ValueError(f"{path} holds another genotype than the search now gives for this "
                         f"candidate (search rerun?); pass another --out or delete {path.parent}")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_genotype(genotype, path)


def describe(candidates: list[ae.Candidate], run: str) -> str:
    if run == ae.DERIVED:
        return "derived genotype (each edge its searched op)"
    c = next(c for c in candidates if c.run == run)
    return f"{ae.edge_name(c.cell, c.edge, c.input)} {c.op}"


def result_text(results: dict) -> str:
    """One line of a run's results (read_results: numbers or null)."""
    pct = lambda v: "-" if v is None else f"{v:.2f}%"  # noqa: E731
    seconds = results.get("wall_seconds")
    return (f"held-out top-1 {pct(results.get('best_valid_top1'))}, "
            f"test {pct(results.get('test_top1'))} "
            f"({'-' if seconds is None else f'{seconds:.0f}'} s)")


def train_one(args: argparse.Namespace, search: dict, run: str, genotype: Genotype, seed: int,
              head: str, child: Child) -> tuple[dict | None, int]:
    """One run: its results.json when finished before, else trained now; (results, 0), or
    (None, exit code) when it failed or was stopped."""
    folder = args.out / search["label"] / run
    stage_dir = folder / f"seed_{seed}" / "augment"
    opts = training_options(args, search["config"], seed)
    if is_finished(stage_dir, "results.json"):
        results = checked_results(stage_dir, genotype, opts)
        print(f"{head} finished before, {result_text(results)}", flush=True)
        return results, 0
    write_genotype(folder / "genotype.json", genotype)
    (args.out / "alpha_efficiency.json").unlink(missing_ok=True)  # incomplete until written again
    log = folder / f"seed_{seed}" / "augment.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{head} training ...", end=" ", flush=True)
    cmd = augment_command(args, search["config"], opts, folder / "genotype.json", folder)
    code = child.run(cmd, log)
    if child.signum is not None:
        print(f"\nstopped by {signal.Signals(child.signum).name}; rerun the same command to resume "
              "(finished runs are kept)", file=sys.stderr, flush=True)
        return None, code or 128 + child.signum
    if code != 0:
        print(f"\nerror: augment run {stage_dir} failed with exit code {code}; its log: {log}",
              file=sys.stderr, flush=True)
        return None, code
    results = read_results(stage_dir / "results.json")
    print(result_text(results), flush=True)
    return results, 0


def train_all(args: argparse.Namespace, plans: list[tuple[dict, list, dict]],
              child: Child) -> tuple[dict | None, int]:
    """Every run of every search, seed by seed; ({(label, run, seed): results}, 0) or the
    first failing run's (None, exit code)."""
    total = sum(len(runs) for _, _, runs in plans) * len(args.seeds)
    index, results = 0, {}
    for search, candidates, runs in plans:
        for run, genotype in runs.items():
            for seed in args.seeds:
                index += 1
                head = (f"[{index}/{total}] {search['label']} {describe(candidates, run)}, "
                        f"seed {seed}:")
                res, code = train_one(args, search, run, genotype, seed, head, child)
                if code:
                    return None, code
                results[(search["label"], run, seed)] = res
    return results, 0


# ----------------------------------------------------------------------------- outputs
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
    saved = read_object(path, "a finished alpha-efficiency analysis",
                        "pass another --out, or delete that folder to analyse again")
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


def run(args: argparse.Namespace) -> int:
    config.check_gpu_usable(args)  # one line here rather than a failed training run
    searches = [read_search(Path(d), label) for d, label in zip(args.search_dir, args.labels)]
    plans = [(s, *ae.plan(s["alphas"], s["genotype"], args.edges, str(s["dir"] / "alphas.json")))
             for s in searches]
    with out_lock(args.out) as fd, Child(fd) as child:
        check_out(args, plans)
        results, code = train_all(args, plans, child)
        if code:
            return code
        write_outputs(args, plans, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
