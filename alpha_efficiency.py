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
import re
import sys
from pathlib import Path

import config
from utils.data.info import DATASETS
from utils.runtime import flags, gpus
from utils.analysis import alpha_efficiency as ae
from utils.analysis import alpha_inputs
from utils.analysis.alpha_report import check_out, write_outputs
from utils.analysis.alpha_runs import Child, out_lock, train_all
from utils.runtime.cli import run_guarded

STAGE_LABELS = {"search2": "stacnas", "search1": "search1", "darts": "darts"}


# ----------------------------------------------------------------------------- command line
def labels(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    safe = all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n) for n in names)
    if not safe or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct folder-safe names such as "
                                         f"stacnas,darts, got {text!r}")
    return names


def held_out(text: str) -> float:
    value = flags.ratio(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): the rest is trained on, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = flags.new_parser("alpha_efficiency.py", "Train every candidate op of the chosen kept edges "
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
    t.add_argument("--epochs", type=flags.epochs, default=20, help="epochs per run")
    t.add_argument("--num_cells", type=flags.num_cells, default=8, help="cells of each network")
    t.add_argument("--init_channels", type=flags.init_channels, default=16,
                   help="initial channels")
    t.add_argument("--batch_size", type=flags.batch_size, default=None,
                   help="batch size; None: augment.py's")
    t.add_argument("--subset", type=flags.positive_int, default=None,
                   help="train on the first N training images; None: all")
    t.add_argument("--seeds", type=flags.seed_list, default="2",
                   help="comma-separated seeds, each " + flags.SEED_HELP + ": every candidate "
                        "is trained once per seed and the held-out top-1 averaged")
    t.add_argument("--valid_ratio", type=held_out, default=0.2,
                   help="share of the training set held out; its top-1 (best epoch) is what the "
                        "correlations use")
    for flag, kind, what in (
            ("--aux_weight", flags.non_negative_float, "auxiliary head loss weight"),
            ("--cutout", flags.cutout, "cutout length, 0 = off"),
            ("--drop_path", flags.non_negative_float, "drop-path probability")):
        t.add_argument(flag, type=kind, default=None, help=f"{what}; None: augment.py's")
    d = p.add_argument_group("data and device (None: the value in each search's config.json)")
    d.add_argument("--dataset", type=flags.dataset_name, choices=DATASETS, default=None,
                   help="dataset (the test split is only reported)")
    d.add_argument("--data_dir", default=None, help="dataset root")
    d.add_argument("--no-download", "--no_download", dest="no_download", action="store_true",
                   help="never download a dataset")
    d.add_argument("--synthetic_shape", type=flags.shape, default=None, help="synthetic: C,H,W")
    d.add_argument("--synthetic_classes", type=flags.synthetic_classes, default=None,
                   help="synthetic: classes")
    d.add_argument("--synthetic_samples", type=flags.synthetic_samples, default=None,
                   help="synthetic: training images")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    d.add_argument("--gpu", type=gpus.gpu, default=None, metavar="N|N,M,...|all",
                   help="every training run on CUDA device N (passed on as --gpu N); a list "
                        "such as 0,1 or all means the first listed (all: GPU 0), as the "
                        "authors' code does, with one line saying so; an error without CUDA")
    d.add_argument("--print_freq", "--report_freq", dest="print_freq", type=flags.steps,
                   default=None, help="each training run logs a line every N steps (the "
                                      "authors' 50.0 is 50); None: augment.py's (50)")
    d.add_argument("--num_workers", type=flags.num_workers, default=None,
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


# ----------------------------------------------------------------------------- the analysis
def run(args: argparse.Namespace) -> int:
    gpus.check_gpu_usable(args)  # one line here rather than a failed training run
    searches = [alpha_inputs.read_search(Path(d), label)
                for d, label in zip(args.search_dir, args.labels)]
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
