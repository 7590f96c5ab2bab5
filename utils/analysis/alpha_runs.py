"""The training runs of alpha_efficiency.py (StacNAS README, "alpha efficiency"): each is an
ordinary resumable augment.py run in its own process, one per analysed search, candidate
genotype and seed, under <out>/<label>/<run>/seed_<s>/augment/ with its log beside it. A run
finished before is read back (and refused when it trained another genotype or options); a stop
signal is passed on to the run in progress, which saves and stops.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from genotypes import Genotype
from utils.analysis import alpha_efficiency as ae
from utils.analysis.alpha_inputs import RUN_FIX, read_results
from utils.io.genotype_checks import genotype_to_dict
from utils.io.files import read_json
from utils.io.genotype_files import load_genotype, save_genotype
from utils.runtime.lock import FolderLock
from utils.runtime.signals import ForwardToChild, exit_status
from utils.runtime.gpus import first_gpu
from utils.train.stage import is_finished

# The project folder, which holds augment.py (this file is utils/analysis/alpha_runs.py).
PROJECT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- commands
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
    """augment.py's command line of one run: `opts` (training_options) and the data, device
    and speed flags of alpha_efficiency.py, whose --gpu N is passed on (a list not yet resolved
    to one GPU passes its first, as the authors' code uses it)."""
    data_dir = Path(args.data_dir or cfg.get("data_dir") or "data").resolve()
    cmd = [sys.executable, str(PROJECT / "augment.py"), "--name", f"seed_{opts['seed']}",
           "--save_dir", str(folder.resolve()), "--genotype", str(genotype_file.resolve()),
           "--data_dir", str(data_dir), "--device", args.device]
    for flag, value in (("--gpu", first_gpu(args.gpu)),
                        ("--print_freq", args.print_freq), ("--num_workers", args.num_workers)):
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


# ----------------------------------------------------------------------------- processes
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
            self.proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a live log
                                         pass_fds=() if self.lock_fd is None else (self.lock_fd,),
                                         preexec_fn=_stop_with_parent())
            try:
                code = self.proc.wait()
            finally:
                self.proc = None
        return exit_status(code)


# ----------------------------------------------------------------------------- runs
def checked_results(stage_dir: Path, genotype: Genotype, opts: dict) -> dict:
    """results.json of a finished run, refused when it trained another genotype or options."""
    results = read_results(stage_dir / "results.json")
    saved = read_json(stage_dir / "config.json", what="augment.py's options (config.json)",
                      fix=RUN_FIX)
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
