"""Command-line configuration of every stage: shared option groups, one parser per script,
derived paths computed in one place, the resolved config written as config.json."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from utils.data import DATASETS

# Per-stage defaults of the search (StacNAS facts sheet; `darts` = DARTS's own settings).
SEARCH_DEFAULTS = {
    "search1": dict(num_cells=14, init_channels=16, batch_size=64, epochs=80, grad_clip=3.0,
                    optimization="one-level", train_ratio=1.0),
    "search2": dict(num_cells=20, init_channels=16, batch_size=64, epochs=80, grad_clip=3.0,
                    optimization="one-level", train_ratio=1.0),
    "darts": dict(num_cells=8, init_channels=16, batch_size=64, epochs=50, grad_clip=5.0,
                  optimization="bilevel", train_ratio=0.5),
}
# Options that may differ when a run is resumed (they do not change its result).
RESUME_NEUTRAL = {"device", "num_workers", "print_freq", "force", "debug", "data_dir"}


# -- argparse value types: each bad value gets a message naming the problem ---------------
def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def ratio(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def num_cells(text: str) -> int:
    value = _number(text, int)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be >= 3 (a network has two reduction cells), got {text}")
    return value


def shape(text: str) -> tuple[int, int]:
    """C,H,W with H == W (square images)."""
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if h != w or c <= 0 or h < 8:
        raise argparse.ArgumentTypeError(f"expected C,H,H with H >= 8 (square images), got {text!r}")
    return c, h


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


# -- option groups -------------------------------------------------------------------------
def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_args(p: argparse.ArgumentParser, batch_size_help: str = "batch size") -> None:
    """Flags every script takes: run naming, data, device, seed."""
    g = p.add_argument_group("run")
    g.add_argument("--name", required=True, help="run name; outputs go to <save_dir>/<name>/<stage>/")
    g.add_argument("--save_dir", default="runs", help="folder holding all runs")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available, else cpu")
    g.add_argument("--seed", type=non_negative_int, default=2, help="random seed")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bitwise-reproducible CPU runs; slower on GPU)")
    g.add_argument("--print_freq", type=positive_int, default=50, help="log a line every N steps")
    g.add_argument("--force", action="store_true",
                   help="rerun a finished stage / resume despite a changed configuration")
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar10", choices=DATASETS, help="dataset")
    d.add_argument("--data_dir", default="data",
                   help="dataset root (torchvision layouts; ImageFolder with train/ and val/ or test/)")
    d.add_argument("--batch_size", type=positive_int, default=None, help=batch_size_help)
    d.add_argument("--subset", type=positive_int, default=None,
                   help="use only the first N training images (quick experiments)")
    d.add_argument("--num_workers", type=non_negative_int, default=2, help="data-loading processes")
    d.add_argument("--synthetic_shape", type=shape, default=(3, 32),
                   help="synthetic dataset: C,H,W of the images")
    d.add_argument("--synthetic_classes", type=positive_int, default=10, help="synthetic dataset: classes")
    d.add_argument("--synthetic_samples", type=positive_int, default=512,
                   help="synthetic dataset: training images (test set: half as many)")


def search_parser() -> argparse.ArgumentParser:
    p = new_parser("search.py", "StacNAS search: stage 1 (operation groups), stage 2 (operations "
                   "inside the chosen groups), or the one-stage DARTS baseline.")
    p.add_argument("--stage", required=True, choices=list(SEARCH_DEFAULTS),
                   help="search1: group representatives, 14 cells; search2: members of the groups "
                        "search1 chose, 20 cells; darts: the 8 DARTS ops, 8 cells, bilevel")
    add_common_args(p, "batch size (default 64)")
    n = p.add_argument_group("network")
    n.add_argument("--num_cells", type=num_cells, default=None,
                   help="cells (default: search1 14, search2 20, darts 8)")
    n.add_argument("--init_channels", type=positive_int, default=None, help="initial channels (default 16)")
    n.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="one set of alphas for all normal cells and one for all reduction cells "
                        "(the paper's setting); --no-alpha_share: one set per cell")
    n.add_argument("--groups", metavar="FILE", default=None,
                   help="search1: custom operation groups (JSON {name: {representative, members}}), "
                        "e.g. feature.py's groups.json; default: the paper's groups")
    n.add_argument("--search1_dir", metavar="DIR", default=None,
                   help="search2: folder with search1's alphas.json (default <save_dir>/<name>/search1)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: 80; darts 50)")
    o.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="one-level: weights and alphas on the same batch (StacNAS); bilevel: DARTS's "
                        "alternating scheme on a train/valid split (default: one-level; darts bilevel)")
    o.add_argument("--unrolled", action="store_true",
                   help="bilevel: second-order (unrolled) alpha gradient")
    o.add_argument("--train_ratio", type=ratio, default=None,
                   help="share of the training set used for training; the rest is the held-out split "
                        "(default: 1.0; darts 0.5). Bilevel needs < 1")
    o.add_argument("--w_lr", type=positive_float, default=0.025, help="weight learning rate (SGD)")
    o.add_argument("--w_lr_min", type=non_negative_float, default=0.001, help="cosine schedule's final lr")
    o.add_argument("--w_momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    o.add_argument("--w_weight_decay", type=non_negative_float, default=3e-4, help="weight decay")
    o.add_argument("--grad_clip", type=positive_float, default=None,
                   help="clip the weights' gradient norm (default: 3; darts 5)")
    o.add_argument("--alpha_lr", type=positive_float, default=3e-4, help="alpha learning rate (Adam)")
    o.add_argument("--alpha_weight_decay", type=non_negative_float, default=1e-3, help="alpha weight decay")
    o.add_argument("--aux_weight", type=non_negative_float, default=0.0,
                   help="weight of an auxiliary head's loss (0 = no auxiliary head)")
    return p


def resolve_search(args: argparse.Namespace) -> argparse.Namespace:
    """Fill per-stage defaults and derived paths; bad combinations are argparse errors."""
    for key, value in SEARCH_DEFAULTS[args.stage].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.optimization == "bilevel" and args.train_ratio >= 1:
        raise argparse.ArgumentTypeError(
            "--optimization bilevel needs a held-out split: pass --train_ratio below 1 (e.g. 0.5)")
    if args.unrolled and args.optimization != "bilevel":
        raise argparse.ArgumentTypeError("--unrolled needs --optimization bilevel")
    if args.groups and args.stage != "search1":
        raise argparse.ArgumentTypeError("--groups applies to --stage search1 only")
    if args.search1_dir and args.stage != "search2":
        raise argparse.ArgumentTypeError("--search1_dir applies to --stage search2 only")
    set_paths(args, args.stage)
    if args.stage == "search2" and args.search1_dir is None:
        args.search1_dir = os.path.join(args.run_dir, "search1")
    return args


def set_paths(args: argparse.Namespace, stage: str) -> None:
    args.run_dir = os.path.join(args.save_dir, args.name)
    args.stage_dir = os.path.join(args.run_dir, stage)


def parse(parser: argparse.ArgumentParser, resolve, argv: list[str] | None) -> argparse.Namespace:
    """parse_args (strict: misspelt flags fail) then `resolve`; its errors exit 2 like argparse's."""
    args = parser.parse_args(argv)
    try:
        return resolve(args)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))


def config_dict(args: argparse.Namespace) -> dict:
    """JSON-ready copy of the resolved configuration."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items())}


def save_config(args: argparse.Namespace, path: str | Path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config_dict(args), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Options whose values differ between a run folder's config and this command."""
    keys = (set(saved) | set(current)) - RESUME_NEUTRAL
    return [f"--{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(keys)
            if saved.get(k) != current.get(k)]
