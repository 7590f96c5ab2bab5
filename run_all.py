"""The whole StacNAS pipeline from one command: search1 -> search2 -> augment -> test
(-> feature), for one or several seeds, then a summary across seeds.

    python run_all.py                                            # the paper's pipeline on CIFAR-10
    python run_all.py --preset quick --name demo                 # Fashion-MNIST, offline, ~15 min on 2 cores
    python run_all.py --preset paper --dataset cifar10 --name c10 --seeds 1,2,3
    python run_all.py --preset smoke --name smoke --dry_run      # print the commands only

Each stage runs as its own process with the flags a user would type, and is handed the files
of the stage before explicitly. The chain stops at the first stage that fails; rerunning the
command skips finished stages and resumes the unfinished one. Outputs:
<save_dir>/<name>/seed_<k>/<stage>/ per seed, and <save_dir>/<name>/summary.md + summary.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import config
from utils.cli import run_guarded
from utils.stage import is_finished
from utils.summary import write_summary

ROOT = Path(__file__).resolve().parent

# Settings per preset; None = the stage script's own default (the paper's settings, config.py).
PRESETS = {
    "paper": dict(dataset="cifar10", subset=None, search1_epochs=None, search2_epochs=None,
                  augment_epochs=None, search_batch_size=None, augment_batch_size=None,
                  search1_cells=None, search2_cells=None, augment_cells=None,
                  search_channels=None, augment_channels=None, extra=[]),
    # Fashion-MNIST on 2 CPU cores in about 15 minutes, far above chance.
    "quick": dict(dataset="fashionmnist", subset=2000, search1_epochs=5, search2_epochs=5,
                  augment_epochs=5, search_batch_size=64, augment_batch_size=64,
                  search1_cells=5, search2_cells=5, augment_cells=8, search_channels=8,
                  augment_channels=16, augment_subset=5000, extra=[]),
    # Seconds, on synthetic data: for tests.
    "smoke": dict(dataset="synthetic", subset=None, search1_epochs=1, search2_epochs=1,
                  augment_epochs=1, search_batch_size=16, augment_batch_size=16,
                  search1_cells=3, search2_cells=3, augment_cells=3, search_channels=4,
                  augment_channels=4, extra=["--synthetic_shape", "3,8,8",
                                             "--synthetic_samples", "32",
                                             "--synthetic_classes", "4"]),
}
OVERRIDES = ("search1_epochs", "search2_epochs", "augment_epochs", "search_batch_size",
             "augment_batch_size", "search1_cells", "search2_cells", "augment_cells",
             "search_channels", "augment_channels")


def seeds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, got {text!r}") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds such as 1,2,3, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = config.new_parser("run_all.py", "search1 -> search2 -> augment -> test (-> feature) "
                          "for one or several seeds, then summary.md / summary.json.")
    p.add_argument("--name", default=None,
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
    p.add_argument("--seeds", type=seeds, default=[2], help="comma-separated seeds, one pipeline each")
    p.add_argument("--feature", action="store_true",
                   help="also run feature.py on each seed's search1 supernet")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gpus", type=config.positive_int, default=1,
                   help="processes (GPUs) per stage; > 1 launches search, augment and test with "
                        "torchrun --standalone --nproc_per_node N (DDP)")
    p.add_argument("--num_workers", type=config.non_negative_int, default=2, help="data-loading processes")
    p.add_argument("--subset", type=config.positive_int, default=None,
                   help="search on the first N training images (default: the preset's)")
    p.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="search optimisation (default one-level)")
    p.add_argument("--train_ratio", type=config.ratio, default=None, help="search's training share")
    p.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="shared alphas (paper) or one set per cell")
    for key in OVERRIDES:
        p.add_argument(f"--{key}", type=config.positive_int if "cells" not in key else config.num_cells,
                       default=None, help=f"override the preset's {key.replace('_', ' ')}")
    return p


def stage_commands(args: argparse.Namespace, seed: int) -> list[tuple[str, list[str]]]:
    """(stage, argv) per stage of one seed, every input file passed explicitly."""
    preset = PRESETS[args.preset]
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else preset.get(k)
            for k in OVERRIDES}
    dataset = args.dataset or preset["dataset"]
    run_name = f"seed_{seed}"
    base = Path(args.save_dir) / args.name
    seed_dir = base / run_name
    common = ["--name", run_name, "--save_dir", str(base), "--dataset", dataset,
              "--data_dir", args.data_dir, "--device", args.device, "--seed", str(seed),
              "--num_workers", str(args.num_workers), *preset["extra"]]
    if args.no_download:
        common.append("--no-download")
    subset = args.subset or preset.get("subset")

    def opt(flag: str, value) -> list[str]:
        return [] if value is None else [flag, str(value)]

    search = [*common, *opt("--subset", subset), *opt("--batch_size", pick["search_batch_size"]),
              *opt("--init_channels", pick["search_channels"]),
              *opt("--optimization", args.optimization), *opt("--train_ratio", args.train_ratio)]
    if not args.alpha_share:
        search.append("--no-alpha_share")
    commands = [
        ("search1", ["search.py", "--stage", "search1", *search,
                     *opt("--num_cells", pick["search1_cells"]), *opt("--epochs", pick["search1_epochs"])]),
        ("search2", ["search.py", "--stage", "search2", *search,
                     "--search1_dir", str(seed_dir / "search1"),
                     *opt("--num_cells", pick["search2_cells"]), *opt("--epochs", pick["search2_epochs"])]),
        ("augment", ["augment.py", *common, "--genotype", str(seed_dir / "search2" / "genotype.json"),
                     *opt("--subset", preset.get("augment_subset") if args.subset is None else subset),
                     *opt("--batch_size", pick["augment_batch_size"]),
                     *opt("--num_cells", pick["augment_cells"]),
                     *opt("--init_channels", pick["augment_channels"]),
                     *opt("--epochs", pick["augment_epochs"])]),
        ("test", ["test.py", *common, "--checkpoint", str(seed_dir / "augment" / "checkpoint.pt")]),
    ]
    if args.feature:
        commands.append(("feature", ["feature.py", *common, "--stage", "search1", *opt("--subset", subset)]))
    return commands


def launcher(gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={gpus}"]
    return [sys.executable]


def stage_done(seed_dir: Path, stage: str) -> bool:
    """A finished search/augment stage (checkpoint marked finished), or test/feature results."""
    if stage in ("search1", "search2"):
        return is_finished(seed_dir / stage, "genotype.json")
    if stage == "augment":
        return is_finished(seed_dir / stage, "results.json")
    marker = {"test": seed_dir / "test" / "results.json",
              "feature": seed_dir / "search1" / "feature" / "groups.json"}[stage]
    return marker.is_file()


def run_seed(args: argparse.Namespace, seed: int) -> int:
    seed_dir = Path(args.save_dir) / args.name / f"seed_{seed}"
    timings_path = seed_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for stage, argv in stage_commands(args, seed):
        cmd = launcher(args.gpus if stage != "feature" else 1) + [str(ROOT / argv[0]), *argv[1:]]
        print(f"[run_all] seed {seed} {stage}: {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        if stage_done(seed_dir, stage):
            print(f"[run_all] seed {seed} {stage}: finished earlier, skipped", flush=True)
            continue
        began = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if code != 0:
            log = seed_dir / (stage if stage != "feature" else "search1/feature") / "log.txt"
            print(f"[run_all] stage {stage} (seed {seed}) failed with exit code {code}; "
                  f"its log: {log if log.is_file() else 'none written'}", file=sys.stderr)
            return code
        timings[stage] = round(time.perf_counter() - began, 1)
        seed_dir.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        args.name = f"stacnas_{args.dataset or PRESETS[args.preset]['dataset']}"
    # the stages run in the project folder: relative paths mean the caller's folder
    args.save_dir, args.data_dir = (str(Path(d).resolve()) for d in (args.save_dir, args.data_dir))
    print(f"[run_all] preset {args.preset}, seeds {','.join(map(str, args.seeds))}: "
          f"{'would write' if args.dry_run else 'writing'} into "
          f"{(Path(args.save_dir) / args.name).resolve()} (--save_dir, --name)", flush=True)
    for seed in args.seeds:
        code = run_seed(args, seed)
        if code != 0:
            return code
    if args.dry_run:
        return 0
    out = Path(args.save_dir) / args.name
    md, _ = write_summary(out, [f"seed_{s}" for s in args.seeds])
    print(f"[run_all] summary: {md}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
