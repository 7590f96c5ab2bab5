"""The whole StacNAS pipeline from one command: search1 -> search2 -> augment -> test
(-> feature), for one or several seeds, then a summary across seeds; with --method darts or
both, the DARTS baseline (darts -> augment -> test) on the same seeds and data, compared in the
summary; with --alpha_efficiency, the stand-alone training of each kept edge's candidates.

    python run_all.py                                            # the paper's pipeline on CIFAR-10
    python run_all.py --preset quick --name demo     # Fashion-MNIST, offline, ~11 min on 2 cores
    python run_all.py --preset quick --name tiny --epochs 2 --num_cells 5   # every stage smaller
    python run_all.py --preset paper --dataset cifar10 --name c10 --seeds 1,2,3
    python run_all.py --preset quick --name cmp --method both --seeds 1,2,3 --alpha_efficiency
    python run_all.py --preset smoke --name smoke --dry_run      # print the commands only

Each stage runs as its own process with the flags a user would type, and is handed the files
of the stage before explicitly. The chain stops at the first stage that fails; rerunning the
command skips finished stages and resumes the unfinished one. Outputs:
<save_dir>/<name>/seed_<k>/<stage>/ per seed (DARTS: <save_dir>/<name>/darts/seed_<k>/),
<save_dir>/<name>/alpha_efficiency/seed_<k>/, and the summary, one per --method so that none
replaces another: <save_dir>/<name>/summary.md + .json (stacnas), summary_darts.md + .json
(darts), summary_both.md + .json (both, the comparison). A failed stage's error line is also
the last line of its log.txt.
A SIGTERM, SIGINT or SIGHUP at any moment stops run_all.py: the running stage is passed the
signal and stops at its next step (checkpoint saved), no further stage is started, and run_all
prints one `[run_all] stopped by ...` line and exits 128 + the signal's number; rerunning the
command resumes.
"""
from __future__ import annotations

from utils.runtime.signals import keep_while_starting

if __name__ == "__main__":  # before the imports below (torch: seconds), so that a stop signal
    keep_while_starting()   # meanwhile is acted on, with one line, once the script runs

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import config
import genotypes as gt
from utils.data.info import DATASETS
from utils.runtime import flags, gpus
from utils.pipeline import plan
from utils.runtime.cli import run_guarded
from utils.io.files import write_text
from utils.runtime.signals import ForwardToChild, exit_status
from utils.pipeline.report import Interrupted, failure_text, how_it_ended, read_timings
from utils.pipeline.plan import OVERRIDES, PRESETS, stage_commands  # noqa: F401 (public names)
from utils.analysis.summary import summarised_seeds, summary_stem, write_summary

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = flags.new_parser("run_all.py", "search1 -> search2 -> augment -> test (-> feature) "
                          "for one or several seeds, then a summary: summary.md (--method "
                          "stacnas), summary_darts.md (darts) or summary_both.md (both), each "
                          "with its .json.")
    p.add_argument("--name", type=flags.run_name, default=None,
                   help="pipeline name: outputs in <save_dir>/<name>/ (default: stacnas_<dataset>)")
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="paper: the paper's settings (the authors' run_all: CIFAR-10, search1 -> "
                        "search2 -> augment -> test); quick: Fashion-MNIST in ~11 min on 2 CPU "
                        "cores; smoke: seconds on synthetic data")
    p.add_argument("--dataset", type=flags.dataset_name, choices=DATASETS, default=None,
                   help="default: the preset's")
    p.add_argument("--data_dir", default="data",
                   help="dataset root (CIFAR, MNIST and Fashion-MNIST are downloaded there when "
                        "absent)")
    p.add_argument("--no-download", "--no_download", dest="no_download", action="store_true",
                   help="never download a dataset (passed to every stage)")
    p.add_argument("--save_dir", default="runs", help="folder holding all runs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device")
    p.add_argument("--gpu", type=gpus.gpu, default=None, metavar="N|N,M,...|all",
                   help="every stage runs on CUDA device N (passed on as --gpu N); a list such as "
                        "0,1 or all means the first listed (all: GPU 0), as the authors' code "
                        "does, with one line saying so. For several GPUs use --gpus instead: "
                        "--gpu with --gpus above 1 is an error (torchrun gives each process its "
                        "own GPU, 0..N-1 of CUDA_VISIBLE_DEVICES); an error without CUDA")
    p.add_argument("--print_freq", "--report_freq", dest="print_freq", type=flags.steps,
                   default=None, help="every stage logs a line every N steps (the authors' 50.0 "
                                      "is 50); default: the stages' own (50)")
    p.add_argument("--seeds", type=flags.seed_list, default=[2],
                   help=f"comma-separated seeds, one pipeline each; each {flags.SEED_HELP}")
    p.add_argument("--method", choices=[*plan.METHODS, "both"], default="stacnas",
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
    p.add_argument("--gpus", type=flags.positive_int, default=1,
                   help="processes (GPUs) per stage; > 1 launches search, augment and test with "
                        "torchrun --standalone --nproc_per_node N (DDP)")
    p.add_argument("--num_workers", type=flags.non_negative_int, default=None,
                   help="data-loading processes per stage process; None: each stage's default")
    g = p.add_argument_group("speed and memory (passed to every stage that trains or evaluates)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                   help="autocast to bf16 or fp16 in search, augment, test and the "
                        "alpha-efficiency runs (fp16 needs one-level search: not with the DARTS "
                        "baseline or --optimization bilevel); None: the stages' default "
                        "(float32)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format in every stage; None: each stage's device default")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network in search, augment and the alpha-efficiency "
                        "runs")
    p.add_argument("--subset", type=flags.positive_int, default=None,
                   help="use only the first N training images in every stage: search, augment, "
                        "feature and the alpha-efficiency trainings (default: the preset's; "
                        "quick: 2000 for the searches, feature and alpha efficiency, 5000 for "
                        "augment; paper: all)")
    p.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="StacNAS's search optimisation (default one-level; the DARTS baseline is "
                        "always bilevel)")
    p.add_argument("--train_ratio", type=flags.ratio, default=None,
                   help="StacNAS's search training share (default 1; the DARTS baseline keeps "
                        "0.5)")
    p.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="shared alphas (paper) or one set per cell")
    s = p.add_argument_group("size of every stage (default: the preset's; a flag of one stage "
                             "below wins over these)")
    s.add_argument("--epochs", type=flags.epochs, default=None,
                   help="epochs of every training: search1, search2, darts, augment and the "
                        "alpha-efficiency runs")
    s.add_argument("--num_cells", type=flags.num_cells, default=None,
                   help=f"cells of every network, {gt.MIN_CELLS}..{gt.MAX_CELLS}")
    s.add_argument("--init_channels", type=flags.init_channels, default=None,
                   help=f"initial channels of every network, 1..{flags.MAX_CHANNELS}")
    s.add_argument("--batch_size", type=flags.batch_size, default=None,
                   help="batch size of every training")
    o = p.add_argument_group("size of one stage")
    for key in OVERRIDES:
        o.add_argument(f"--{key}", type=flags.size_type(key), default=None,
                       help=f"{key.replace('_', ' ')}; default: --{plan.common_key(key)} "
                            "when given, else the preset's")
    a = p.add_argument_group("scale of the alpha-efficiency trainings (--alpha_efficiency)")
    for key, setting in plan.AE_OVERRIDES.items():
        kind = {"subset": flags.positive_int, "edges": edges_text}.get(setting) \
            or flags.size_type(key)
        fallback = plan.common_key(key)
        a.add_argument(f"--{key}", type=kind, default=None,
                       help=f"alpha_efficiency.py's --{setting} of each candidate's training"
                            + (f"; default: --{fallback} when given, else the preset's"
                               if fallback else " (e.g. 0,3 or normal); default: the preset's"))
    return p


def edges_text(text: str) -> str:
    """--alpha_efficiency_edges: checked as alpha_efficiency.py checks --edges, passed on as
    written."""
    from utils.analysis.alpha_efficiency import parse_edges
    parse_edges(text)
    return text


def chosen_methods(args: argparse.Namespace) -> list[str]:
    """The methods --method runs: stacnas, darts, or both (plan.METHODS)."""
    return list(plan.METHODS) if args.method == "both" else [args.method]


def check_speed_flags(args: argparse.Namespace) -> None:
    """--amp fp16 (a gradient scaler) needs one-level search: refused before any stage runs."""
    methods = chosen_methods(args)
    if args.amp == "fp16" and ("darts" in methods or args.optimization == "bilevel"):
        raise ValueError("--amp fp16 works with one-level search only; the DARTS baseline and "
                         "--optimization bilevel are bilevel: use --amp bf16")


def check_gpu_flags(args: argparse.Namespace) -> None:
    """--gpu (one GPU per stage, passed on as --gpu N: gpus.select_gpu) and --gpus N (N
    processes per stage through torchrun, each on its own GPU) are two answers to one question:
    together, a usage error."""
    if args.gpu is not None and args.gpus > 1:
        text = args.gpu.text() if isinstance(args.gpu, gpus.GpuRequest) else args.gpu
        raise argparse.ArgumentTypeError(
            f"--gpu {text} runs each stage on one GPU, --gpus {args.gpus} on {args.gpus} GPUs "
            "through torchrun (GPUs 0..N-1, or those CUDA_VISIBLE_DEVICES lists): pass one of "
            "them")
    gpus.select_gpu(args, "run_all.py", pass_on=True)


def effective_batch_note(args: argparse.Namespace) -> str | None:
    """With --gpus N every process keeps the stage's batch size: say that the effective batch
    (and so the optimisation) is N times the single-GPU one."""
    if args.gpus <= 1:
        return None
    preset = PRESETS[args.preset]
    search = (plan.stage_value(args, "search_batch_size", preset["search_batch_size"])
              or config.SEARCH_DEFAULTS["search1"]["batch_size"])
    augment = (plan.stage_value(args, "augment_batch_size", preset["augment_batch_size"])
               or config.AUGMENT_DEFAULTS["cifar"]["batch_size"])
    return (f"--gpus {args.gpus}: each of the {args.gpus} processes of a stage takes a batch of "
            f"{search} (search) / {augment} (augment), so the effective batch is "
            f"{args.gpus * search} / {args.gpus * augment}, {args.gpus}x the single-GPU run, with "
            "the same learning rates; for the paper's effective batch pass --search_batch_size "
            f"{max(search // args.gpus, 1)} --augment_batch_size {max(augment // args.gpus, 1)}")


def launcher(gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}"]
    return [sys.executable]


# Test-only hook (tests/test_faults_pipeline.py): with STACNAS_RUN_ALL_PAUSE=<point>, run_all
# announces `[run_all] test pause at <point>` on stderr when it reaches that moment of its life
# and waits there (at most 60 s, or until a stop signal arrives), so that a test can send a
# signal at exactly that moment. Points: stage (before a stage is considered), spawn (before a
# stage's process is created), spawned (created, not yet registered for forwarding), record
# (recording a finished stage in timings.json), summary (before the summary is written).
PAUSE_ENV = "STACNAS_RUN_ALL_PAUSE"


def pause_for_test(point: str, forwarder: Forwarder) -> None:
    """Wait at `point` when the test-only STACNAS_RUN_ALL_PAUSE names it; otherwise nothing."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    print(f"[run_all] test pause at {point}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while forwarder.signum is None and time.monotonic() < deadline:
        time.sleep(0.02)


class Forwarder(ForwardToChild):
    """Runs the stages; installed for run_all's whole life (main). SIGTERM / SIGINT / SIGHUP
    sent to run_all.py at any moment are recorded and passed on to the running stage (which
    saves its checkpoint and exits), also when one arrives while the stage's process is being
    created (ForwardToChild). No stage is started after one arrived (check). A signal sent to
    the whole process group reaches the stage directly; the forwarded copy is then harmless
    (the stage is already stopping)."""

    def check(self, where: str) -> None:
        """Raise Interrupted(`where`) once a stop signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)

    def run(self, cmd: list[str]) -> int:
        """Run `cmd` to its end; its exit code (negative: killed by that signal)."""
        pause_for_test("spawn", self)
        proc = subprocess.Popen(cmd, cwd=ROOT)
        pause_for_test("spawned", self)
        self.proc = proc  # a signal that arrived since the last check is passed on now
        try:
            return proc.wait()
        finally:
            self.proc = None


def run_stage(args, forwarder: Forwarder, seed_dir: Path, stage: str, argv: list[str],
              label: str, timings: dict) -> int:
    """Run one stage unless finished; its exit code (0 when skipped). Once a stop signal has
    arrived no stage is started, and a stage that a signal stopped raises Interrupted."""
    processes = args.gpus if stage in ("search1", "search2", "darts", "augment", "test") else 1
    cmd = launcher(processes) + [str(ROOT / argv[0]), *argv[1:]]
    pause_for_test("stage", forwarder)
    before = f"before {label} {stage} started; rerun the same command to go on"
    forwarder.check(before)
    print(f"[run_all] {label} {stage}: {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    if plan.stage_done(seed_dir, stage):
        print(f"[run_all] {label} {stage}: finished earlier, skipped", flush=True)
        return 0
    forwarder.check(before)  # finding out took a while (checkpoints read)
    began = time.perf_counter()
    code = forwarder.run(cmd)
    if forwarder.signum is not None and code != 0:
        ended = "was " + how_it_ended(code) if code < 0 else f"exited with code {code}"
        raise Interrupted(forwarder.signum, f"during {label} {stage} (the stage {ended}); "
                          "rerun the same command to resume")
    if code != 0:
        print(f"[run_all] stage {stage} ({label}) {failure_text(seed_dir, stage, code)}",
              file=sys.stderr)
        return exit_status(code)
    record_time(forwarder, seed_dir, timings, stage, time.perf_counter() - began)
    forwarder.check(f"after {label} {stage} finished; rerun the same command to go on")
    return 0


def record_time(forwarder: Forwarder, seed_dir: Path, timings: dict, stage: str,
                seconds: float) -> None:
    """Add a finished stage's wall time to <seed_dir>/timings.json (written atomically)."""
    timings[stage] = round(seconds, 1)
    seed_dir.mkdir(parents=True, exist_ok=True)
    pause_for_test("record", forwarder)
    write_text(seed_dir / "timings.json", json.dumps(timings, indent=2) + "\n")


def run_seed(args: argparse.Namespace, forwarder: Forwarder, seed: int, method: str) -> int:
    seed_dir = plan.method_dir(args, method, seed)
    timings = read_timings(seed_dir / "timings.json")
    label = f"seed {seed}" if args.method == "stacnas" else f"{method} seed {seed}"
    for stage, argv in plan.stage_commands(args, seed, method):
        code = run_stage(args, forwarder, seed_dir, stage, argv, label, timings)
        if code != 0:
            return code
    return 0


def run(args: argparse.Namespace, forwarder: Forwarder) -> int:
    """Every stage of every seed and method, then the summary; the exit code. A stop signal
    at any moment: one `[run_all] stopped by ...` line, exit 128 + its number."""
    try:
        return run_pipeline(args, forwarder)
    except Interrupted as stop:
        print(stop.line, file=sys.stderr, flush=True)
        return 128 + stop.signum


def run_pipeline(args: argparse.Namespace, forwarder: Forwarder) -> int:
    if args.name is None:
        args.name = f"stacnas_{args.dataset or plan.PRESETS[args.preset]['dataset']}"
    # the stages run in the project folder: relative paths mean the caller's folder
    args.save_dir, args.data_dir = (str(Path(d).resolve()) for d in (args.save_dir, args.data_dir))
    methods = chosen_methods(args)
    check_speed_flags(args)
    if not args.dry_run:
        gpus.check_gpu_usable(args)  # one line here rather than a failed stage
    note = effective_batch_note(args)
    if note:
        print(f"[run_all] {note}", flush=True)
    print(f"[run_all] preset {args.preset}, {' and '.join(methods)}, seeds "
          f"{','.join(map(str, args.seeds))}: {'would write' if args.dry_run else 'writing'} into "
          f"{Path(args.save_dir) / args.name} (--save_dir, --name)", flush=True)
    for seed in args.seeds:
        for method in methods:
            code = run_seed(args, forwarder, seed, method)
            if code != 0:
                return code
        if args.alpha_efficiency:
            code = run_stage(args, forwarder, plan.alpha_efficiency_dir(args, seed),
                             "alpha_efficiency",
                             plan.alpha_efficiency_command(args, seed, methods),
                             f"seed {seed}", {})
            if code != 0:
                return code
    if args.dry_run:
        return 0
    pause_for_test("summary", forwarder)
    run_dir = Path(args.save_dir) / args.name
    before = summarised_seeds(run_dir / f"{summary_stem(methods)}.json")
    md, data = write_summary(run_dir, args.seeds, methods)
    print(f"[run_all] summary: {md}")
    now = [s["seed"] for s in data["seeds"]]
    if before is not None and sorted(before) != sorted(now):
        print(f"[run_all] note: {md.name} covered {', '.join(before) or 'no seed'}, now "
              f"{', '.join(now)}; the other seeds' folders are kept: rerun with --seeds listing "
              "them all for a summary across all", flush=True)
    # a signal while the summary was written: it was completed first (it takes seconds)
    forwarder.check(f"while the summary was written (completed first: {md}); every stage is "
                    "finished")
    missing = [f"{s['method']} {s['seed']}" for m in data["methods"].values() for s in m["seeds"]
               if s["test_top1"] is None or s["genotype"] is None]
    if missing:
        raise RuntimeError("the summary found no genotype or test result for "
                           f"{', '.join(missing)} under {Path(args.save_dir) / args.name}; the "
                           "stages wrote elsewhere or their outputs were removed: rerun "
                           "run_all.py with the same --save_dir")
    return 0


def main(argv: list[str] | None = None) -> int:
    # installed first, for run_all's whole life: a stop signal at any moment is seen and passed on
    with Forwarder() as forwarder:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            config.check_folder(args.save_dir, "--save_dir")
            check_gpu_flags(args)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
        return run_guarded(lambda: run(args, forwarder))


if __name__ == "__main__":
    sys.exit(main())
