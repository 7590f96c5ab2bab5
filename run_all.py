"""The whole StacNAS pipeline from one command: search1 -> search2 -> augment -> test
(-> feature), for one or several seeds, then a summary across seeds; with --method darts or
both, the DARTS baseline (darts -> augment -> test) on the same seeds and data, compared in the
summary; with --alpha_efficiency, the stand-alone training of each kept edge's candidates.

    python run_all.py                                            # the paper's pipeline on CIFAR-10
    python run_all.py --preset quick --name demo                 # Fashion-MNIST, offline, ~15 min on 2 cores
    python run_all.py --preset paper --dataset cifar10 --name c10 --seeds 1,2,3
    python run_all.py --preset quick --name cmp --method both --seeds 1,2,3 --alpha_efficiency
    python run_all.py --preset smoke --name smoke --dry_run      # print the commands only

Each stage runs as its own process with the flags a user would type, and is handed the files
of the stage before explicitly. The chain stops at the first stage that fails; rerunning the
command skips finished stages and resumes the unfinished one. Outputs:
<save_dir>/<name>/seed_<k>/<stage>/ per seed (DARTS: <save_dir>/<name>/darts/seed_<k>/),
<save_dir>/<name>/alpha_efficiency/seed_<k>/, and <save_dir>/<name>/summary.md + summary.json.
A SIGTERM or SIGINT stops the running stage at its next step (checkpoint saved) and run_all.py
with the stage's exit code; rerunning the command resumes.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import config
from utils import pipeline
from utils.cli import run_guarded
from utils.files import write_text
from utils.signals import ForwardToChild
from utils.pipeline import OVERRIDES, PRESETS, stage_commands  # noqa: F401 (public names)
from utils.summary import write_summary

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = config.new_parser("run_all.py", "search1 -> search2 -> augment -> test (-> feature) "
                          "for one or several seeds, then summary.md / summary.json.")
    p.add_argument("--name", type=config.run_name, default=None,
                   help="pipeline name: outputs in <save_dir>/<name>/ (default: stacnas_<dataset>)")
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="paper: the paper's settings (the authors' run_all: CIFAR-10, search1 -> "
                        "search2 -> augment -> test); quick: Fashion-MNIST in ~15 min on 2 CPU "
                        "cores; smoke: seconds on synthetic data")
    p.add_argument("--dataset", type=config.dataset_name, choices=config.DATASETS, default=None,
                   help="default: the preset's")
    p.add_argument("--data_dir", default="data",
                   help="dataset root (CIFAR, MNIST and Fashion-MNIST are downloaded there when absent)")
    p.add_argument("--no-download", "--no_download", dest="no_download", action="store_true",
                   help="never download a dataset (passed to every stage)")
    p.add_argument("--save_dir", default="runs", help="folder holding all runs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device")
    p.add_argument("--seeds", type=config.seed_list, default=[2], help="comma-separated seeds, one pipeline each")
    p.add_argument("--method", choices=[*pipeline.METHODS, "both"], default="stacnas",
                   help="stacnas: search1 -> search2 -> augment -> test; darts: the DARTS "
                        "baseline (darts -> augment -> test, in <name>/darts/); both: the two on "
                        "the same seeds and data, compared in the summary (test error, genotype "
                        "agreement across seeds, skips and parameter-free ops per normal cell, "
                        "alpha entropy, search time)")
    p.add_argument("--feature", action="store_true",
                   help="also run feature.py on each seed's search1 supernet")
    p.add_argument("--alpha_efficiency", action="store_true",
                   help="after each seed's pipeline, alpha_efficiency.py on its final search "
                        "(search2 and/or darts, side by side): every candidate of every kept "
                        "normal edge trained stand-alone at the preset's scale, alpha against "
                        "held-out accuracy, in <name>/alpha_efficiency/seed_<k>/")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gpus", type=config.positive_int, default=1,
                   help="processes (GPUs) per stage; > 1 launches search, augment and test with "
                        "torchrun --standalone --nproc_per_node N (DDP)")
    p.add_argument("--num_workers", type=config.non_negative_int, default=None,
                   help="data-loading processes per stage process; None: each stage's default")
    g = p.add_argument_group("speed and memory (passed to every stage that trains or evaluates)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                   help="autocast to bf16 or fp16 in search, augment, test and the alpha-efficiency "
                        "runs (fp16 needs one-level search: not with the DARTS baseline or "
                        "--optimization bilevel); None: the stages' default (float32)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format in every stage; None: each stage's device default")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network in search, augment and the alpha-efficiency "
                        "runs")
    p.add_argument("--subset", type=config.positive_int, default=None,
                   help="search on the first N training images (default: the preset's)")
    p.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="StacNAS's search optimisation (default one-level; the DARTS baseline is "
                        "always bilevel)")
    p.add_argument("--train_ratio", type=config.ratio, default=None, help="StacNAS's search training share (default 1; the DARTS baseline keeps 0.5)")
    p.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="shared alphas (paper) or one set per cell")
    for key in OVERRIDES:
        p.add_argument(f"--{key}", type=config.positive_int if "cells" not in key else config.num_cells,
                       default=None, help=f"override the preset's {key.replace('_', ' ')}")
    return p


def check_speed_flags(args: argparse.Namespace) -> None:
    """--amp fp16 (a gradient scaler) needs one-level search: refused before any stage runs."""
    methods = list(pipeline.METHODS) if args.method == "both" else [args.method]
    if args.amp == "fp16" and ("darts" in methods or args.optimization == "bilevel"):
        raise ValueError("--amp fp16 works with one-level search only; the DARTS baseline and "
                         "--optimization bilevel are bilevel: use --amp bf16")


def effective_batch_note(args: argparse.Namespace) -> str | None:
    """With --gpus N every process keeps the stage's batch size: say that the effective batch
    (and so the optimisation) is N times the single-GPU one."""
    if args.gpus <= 1:
        return None
    preset = PRESETS[args.preset]
    search = args.search_batch_size or preset["search_batch_size"] or config.search_parser().get_default("batch_size")
    augment = args.augment_batch_size or preset["augment_batch_size"] or config.augment_parser().get_default("batch_size")
    return (f"--gpus {args.gpus}: each of the {args.gpus} processes of a stage takes a batch of "
            f"{search} (search) / {augment} (augment), so the effective batch is {args.gpus * search} / "
            f"{args.gpus * augment}, {args.gpus}x the single-GPU run, with the same learning rates; "
            f"for the paper's effective batch pass --search_batch_size {max(search // args.gpus, 1)} "
            f"--augment_batch_size {max(augment // args.gpus, 1)}")


def launcher(gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}"]
    return [sys.executable]


class Forwarder(ForwardToChild):
    """Runs the stages. SIGTERM / SIGINT sent to run_all.py are passed on to the running stage
    (which saves its checkpoint and exits); run_all then stops with the stage's exit code. A
    signal sent to the whole process group reaches the stage directly; the forwarded copy is
    then harmless (the stage is already stopping)."""

    def run(self, cmd: list[str]) -> int:
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            return self.proc.wait()
        finally:
            self.proc = None


def run_stage(args, forwarder: Forwarder, seed_dir: Path, seed: int, stage: str, argv: list[str],
              label: str, timings: dict) -> int:
    """Run one stage unless finished; its exit code (0 when skipped)."""
    cmd = launcher(args.gpus if stage in ("search1", "search2", "darts", "augment", "test") else 1) \
        + [str(ROOT / argv[0]), *argv[1:]]
    print(f"[run_all] {label} {stage}: {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    if pipeline.stage_done(seed_dir, stage):
        print(f"[run_all] {label} {stage}: finished earlier, skipped", flush=True)
        return 0
    began = time.perf_counter()
    code = forwarder.run(cmd)
    if forwarder.signum is not None:
        name = signal.Signals(forwarder.signum).name
        print(f"[run_all] stopped by {name} during {label} {stage} (exit code {code}); rerun the "
              "same command to resume", file=sys.stderr, flush=True)
        return code if code != 0 else 128 + forwarder.signum
    if code != 0:
        log = seed_dir / {"feature": "search1/feature", "alpha_efficiency": "."}.get(stage, stage) \
            / "log.txt"
        print(f"[run_all] stage {stage} ({label}) failed with exit code {code}; "
              f"its log: {log if log.is_file() else 'none written'}", file=sys.stderr)
        return code
    timings[stage] = round(time.perf_counter() - began, 1)
    seed_dir.mkdir(parents=True, exist_ok=True)
    write_text(seed_dir / "timings.json", json.dumps(timings, indent=2) + "\n")
    return 0


def run_seed(args: argparse.Namespace, forwarder: Forwarder, seed: int, method: str) -> int:
    seed_dir = pipeline.method_dir(args, method, seed)
    timings_path = seed_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    label = f"seed {seed}" if args.method == "stacnas" else f"{method} seed {seed}"
    for stage, argv in pipeline.stage_commands(args, seed, method):
        code = run_stage(args, forwarder, seed_dir, seed, stage, argv, label, timings)
        if code != 0:
            return code
    return 0


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        args.name = f"stacnas_{args.dataset or pipeline.PRESETS[args.preset]['dataset']}"
    # the stages run in the project folder: relative paths mean the caller's folder
    args.save_dir, args.data_dir = (str(Path(d).resolve()) for d in (args.save_dir, args.data_dir))
    methods = list(pipeline.METHODS) if args.method == "both" else [args.method]
    check_speed_flags(args)
    note = effective_batch_note(args)
    if note:
        print(f"[run_all] {note}", flush=True)
    print(f"[run_all] preset {args.preset}, {' and '.join(methods)}, seeds "
          f"{','.join(map(str, args.seeds))}: {'would write' if args.dry_run else 'writing'} into "
          f"{Path(args.save_dir) / args.name} (--save_dir, --name)", flush=True)
    with Forwarder() as forwarder:
        for seed in args.seeds:
            for method in methods:
                code = run_seed(args, forwarder, seed, method)
                if code != 0:
                    return code
            if args.alpha_efficiency:
                code = run_stage(args, forwarder, pipeline.alpha_efficiency_dir(args, seed), seed,
                                 "alpha_efficiency",
                                 pipeline.alpha_efficiency_command(args, seed, methods),
                                 f"seed {seed}", {})
                if code != 0:
                    return code
    if args.dry_run:
        return 0
    md, data = write_summary(Path(args.save_dir) / args.name, args.seeds, methods)
    print(f"[run_all] summary: {md}")
    missing = [f"{s['method']} {s['seed']}" for m in data["methods"].values() for s in m["seeds"]
               if s["test_top1"] is None or s["genotype"] is None]
    if missing:
        raise RuntimeError(f"the summary found no genotype or test result for {', '.join(missing)} "
                           f"under {Path(args.save_dir) / args.name}; the stages wrote elsewhere "
                           "or their outputs were removed: rerun run_all.py with the same --save_dir")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config.check_folder(args.save_dir, "--save_dir")
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    return run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
