"""Command-line configuration of every stage: shared option groups, one parser per script,
the per-stage defaults, derived paths computed in one place (config.json: utils.io.runconfig)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial

from genotypes import IDENTITY_GROUP_CHOICES, MAX_CELLS, MIN_CELLS, NAMED_GENOTYPES, NUM_NODES
from models.factory import SEARCH_STAGES
from utils.runtime.cli import OneLineParser
from utils.data.datasets import SyntheticSpec
from utils.data.info import DATASETS
from utils.runtime.speed import add_speed_args, check_compile_with_checkpoint

# Per-stage defaults of the search, one entry per SEARCH_STAGES (the paper's settings, README
# "Searching"; `darts` = DARTS's own settings).
SEARCH_DEFAULTS = {
    "search1": dict(num_cells=14, init_channels=16, batch_size=64, epochs=80, grad_clip=3.0,
                    optimization="one-level", train_ratio=1.0),
    "search2": dict(num_cells=20, init_channels=16, batch_size=64, epochs=80, grad_clip=3.0,
                    optimization="one-level", train_ratio=1.0),
    "darts": dict(num_cells=8, init_channels=16, batch_size=64, epochs=50, grad_clip=5.0,
                  optimization="bilevel", train_ratio=0.5),
}


def defaults_text(table: dict[str, dict], key: str) -> str:
    """A per-stage default as help strings state it: the first entry's value, then every entry
    with another value (`80; darts 50`)."""
    (_, first), *others = table.items()
    text = lambda value: f"{value:g}" if isinstance(value, float) else str(value)  # noqa: E731
    return "; ".join([text(first[key])] + [f"{name} {text(entry[key])}" for name, entry in others
                                           if entry[key] != first[key]])


# -- sizes: the largest value each size flag takes ------------------------------------------
# A flag's value beyond these is refused by the parser (exit 2, nothing created), not by a
# failed allocation later. Network sizes are those the checkpoint checks accept
# (utils/io/checkpoint_shapes.py RANGES): 1..2048 initial channels, 3..100 cells, 1..64 input
# channels, 8..4096 pixels, 1..100,000 classes; epochs those of a checkpoint's epoch field.
MAX_INT = 2 ** 31 - 1  # any count or index a flag takes (a C int)
MAX_CHANNELS = 2048
MAX_EPOCHS = 10 ** 6
MAX_BATCH = 2 ** 16
MAX_WORKERS = 256
MAX_IN_CHANNELS, MIN_SIZE, MAX_SIZE = 64, 8, 4096
MAX_CLASSES = 100_000
MAX_SAMPLES = 10 ** 7
# A synthetic dataset is built in memory, float32: class patterns + training + test images.
MAX_SYNTHETIC_VALUES = 2 ** 30  # 4 GiB
# numpy seeds must be below 2**32, and a process seeds with --seed + its rank (torchrun) or
# + 1 (a second loader): seeds stop at 2**31 - 1, leaving 2**31 for the offsets.
MAX_SEED = 2 ** 31 - 1


# -- argparse value types: each bad value gets a message naming the problem ---------------
def _checked(kind: type, ok, problem: str, name: str, hi: float | None = None,
             why: str = ""):
    """An argparse type: parse `kind` (a float must be finite), reject values failing `ok`
    with `problem` and values above `hi` with "must be at most hi (why)"."""
    def parse(text: str):
        value = _number(text, kind)
        if not ok(value):  # `not ok` also rejects NaN
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}{f' ({why})' if why else ''}"
                                             f", got {text}")
        return value
    parse.__name__ = name
    return parse


positive_int = _checked(int, lambda v: v > 0, "must be a positive integer", "positive_int",
                        MAX_INT)
non_negative_int = _checked(int, lambda v: v >= 0, "must be >= 0", "non_negative_int", MAX_INT)
non_negative_float = _checked(float, lambda v: v >= 0, "must be >= 0", "non_negative_float")
positive_float = _checked(float, lambda v: v > 0, "must be > 0", "positive_float")
ratio = _checked(float, lambda v: 0 < v <= 1, "must be in (0, 1]", "ratio")
num_cells = _checked(int, lambda v: v >= MIN_CELLS,
                     f"must be >= {MIN_CELLS} (a network has two reduction cells)", "num_cells",
                     MAX_CELLS, "the largest network this code builds")
init_channels = _checked(int, lambda v: v > 0, "must be a positive integer", "init_channels",
                         MAX_CHANNELS, "the widest network a checkpoint may hold")
epochs = _checked(int, lambda v: v > 0, "must be a positive integer", "epochs", MAX_EPOCHS)
batch_size = _checked(int, lambda v: v > 0, "must be a positive integer", "batch_size",
                      MAX_BATCH)
num_workers = _checked(int, lambda v: v >= 0, "must be >= 0", "num_workers", MAX_WORKERS,
                       "data-loading processes per training process")
seed = _checked(int, lambda v: v >= 0, "must be >= 0", "seed", MAX_SEED,
                "seed + process rank must stay below 2**32")
cutout = _checked(int, lambda v: v >= 0, "must be >= 0", "cutout", MAX_SIZE,
                  "the largest image size")
synthetic_classes = _checked(int, lambda v: v > 0, "must be a positive integer",
                             "synthetic_classes", MAX_CLASSES)
synthetic_samples = _checked(int, lambda v: v > 0, "must be a positive integer",
                             "synthetic_samples", MAX_SAMPLES)
num_nodes = _checked(int, lambda v: v == NUM_NODES,
                     f"only {NUM_NODES} intermediate nodes per cell are supported (the DARTS space "
                     "the paper searches)", "num_nodes")


def steps(text: str) -> int:
    """--print_freq / --report_freq: a positive whole number of steps, also written as a float
    (`50.0`, the authors' parser reads a float); a fractional `50.5` is refused."""
    value = _number(text, float)
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, got {text}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INT:,}, got {text}")
    return int(value)


class GpuRequest(tuple):
    """What --gpu asked for: `first` (the GPU used) and `listed` (every GPU named, `all`: none
    known). A tuple so that argparse keeps it as one value; config.select_gpu turns it into the
    plain int `first`."""

    first = property(lambda self: self[0])
    listed = property(lambda self: self[1])

    def several(self) -> bool:
        """True when more than one GPU was asked for (`0,1` or `all`)."""
        return self.listed == "all" or len(self.listed) > 1

    def text(self) -> str:
        return "all" if self.listed == "all" else ",".join(map(str, self.listed))


def gpu(text: str) -> GpuRequest:
    """--gpu as the authors' parser reads it: `N`, a comma-separated list `0,1` or `all`. One
    process uses one GPU: the first listed (`all`: GPU 0), as the authors' code does; several
    GPUs take torchrun (one process each). Each N is an integer in 0..MAX_INT, the list has no
    repeats."""
    if text.strip().lower() == "all":
        return GpuRequest((0, "all"))
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and len(part) <= 30 for part in parts):
        raise argparse.ArgumentTypeError(f"expected a GPU number N, a list such as 0,1, or all, "
                                         f"got {text!r}")
    listed = [int(part) for part in parts]
    if len(set(listed)) != len(listed):
        raise argparse.ArgumentTypeError(f"names a GPU twice, got {text!r}")
    if max(listed) > MAX_INT:
        raise argparse.ArgumentTypeError(f"GPU numbers must be at most {MAX_INT:,}, got {text!r}")
    return GpuRequest((listed[0], listed))


def first_gpu(request) -> int | None:
    """The one GPU a --gpu value gives a process: N itself, or a GpuRequest's first."""
    return request.first if isinstance(request, GpuRequest) else request


GPU_HELP = ("the authors' flag: run on CUDA device N; a list such as 0,1 or `all` runs on the "
            "first listed (all: GPU 0), as the authors' code does, and says so: several GPUs "
            "take torchrun (README, 'GPU clusters'); an error without CUDA")


def run_name(text: str) -> str:
    """--name is one folder name inside --save_dir: not empty, `.` or `..`; no path separator
    (`/`, `\\`), NUL or other control character; at most 255 bytes (what filesystems take).
    Other characters, undecodable bytes included, are kept."""
    if text in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"must be a folder name, got {text!r}")
    bad = sorted({c for c in text if c in "/\\" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise argparse.ArgumentTypeError(f"must be one folder name inside --save_dir, without "
                                         f"{' '.join(repr(c) for c in bad)}, got {text!r}")
    try:
        size = len(os.fsencode(text))
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"cannot be a file name here, got {text!r}") from None
    if size > 255:
        raise argparse.ArgumentTypeError(f"must be at most 255 bytes, got {size}")
    return text


def seed_list(text: str) -> list[int]:
    """Comma-separated distinct seeds (`1,2,3`), each in 0..MAX_SEED: one run per seed."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3, "
                                         f"got {text!r}") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds such as 1,2,3, "
                                         f"got {text!r}")
    if max(values) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"seeds must be at most {MAX_SEED:,} (seed + process "
                                         f"rank must stay below 2**32), got {max(values)}")
    return values


SEED_HELP = f"0..{MAX_SEED} (2**31 - 1: each process adds its rank)"


def size_type(flag: str):
    """The argparse type of a size flag by its name (`search1_epochs`, `augment_batch_size`,
    `darts_cells`, `search_channels`, ...): bounded as the stage flags it sets are."""
    for ending, kind in (("epochs", epochs), ("batch_size", batch_size), ("cells", num_cells),
                         ("channels", init_channels)):
        if flag.endswith(ending):
            return kind
    return positive_int


def dataset_name(text: str) -> str:
    """Dataset names are case-insensitive (`CIFAR10` works, as with the authors' scripts)."""
    return text.lower()


def only_stage(stage: str, script: str, elsewhere: str):
    """`--stage` of a script with one stage: that name is accepted (the authors' commands pass
    it), any other is an error pointing to the script that runs it."""
    def parse(text: str) -> str:
        if text.lower() != stage:
            raise argparse.ArgumentTypeError(f"{script} runs --stage {stage} only, got {text!r}; "
                                             f"{elsewhere}")
        return stage
    parse.__name__ = "stage"
    return parse


# What --synthetic_shape takes, said the same way by its --help and by its error.
SHAPE_RULE = (f"C,H,W of square images (H = W, at least {MIN_SIZE} pixels), at most "
              f"{MAX_IN_CHANNELS} channels and {MAX_SIZE} pixels, e.g. 3,32,32")


def shape(text: str) -> tuple[int, int]:
    """C,H,W with H == W (square images: the networks take one input size), C in
    1..MAX_IN_CHANNELS, H in MIN_SIZE..MAX_SIZE; any other value is refused with SHAPE_RULE,
    the text --help shows."""
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        c = h = w = None
    if (c is None or h != w or not 1 <= c <= MAX_IN_CHANNELS
            or not MIN_SIZE <= h <= MAX_SIZE):
        raise argparse.ArgumentTypeError(f"expected {SHAPE_RULE}; got {text!r}")
    return c, h


def check_synthetic_size(args: argparse.Namespace) -> None:
    """A synthetic dataset is built in memory (float32): refuse one past
    MAX_SYNTHETIC_VALUES values before anything runs."""
    if getattr(args, "dataset", None) != "synthetic" or None in (
            getattr(args, "synthetic_shape", None), getattr(args, "synthetic_samples", None),
            getattr(args, "synthetic_classes", None)):
        return
    channels, size = args.synthetic_shape
    images = args.synthetic_classes + args.synthetic_samples + max(args.synthetic_samples // 2, 1)
    values = images * channels * size * size
    if values > MAX_SYNTHETIC_VALUES:
        raise argparse.ArgumentTypeError(
            f"the synthetic dataset (--synthetic_shape, --synthetic_samples, "
            f"--synthetic_classes) would take {values * 4 / 2 ** 30:.1f} GiB of memory, more "
            f"than the {MAX_SYNTHETIC_VALUES * 4 // 2 ** 30} GiB allowed; use fewer or smaller "
            "images")


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


# -- option groups -------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in --help, except where the help already states its default (per
    stage defaults) or there is none to state (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Every script's parser: misspelt or abbreviated flags fail, and a usage error is one line
    naming the flag (utils.runtime.cli.OneLineParser), exit 2."""
    return OneLineParser(prog=prog, description=description, allow_abbrev=False,
                         formatter_class=HelpFormatter)


def add_common_args(p: argparse.ArgumentParser, batch_size_help: str = "batch size",
                    resumable: bool = True,
                    subset_help: str = "use only the first N training images (quick experiments)",
                    force_help: str = "rerun a finished stage / resume despite a changed "
                                      "configuration") -> None:
    """Flags every script takes: run naming, data, device, seed. `resumable`: the script
    resumes a checkpoint (--resume); the help texts say what --subset and --force do in that
    script, so that no flag is offered that it ignores."""
    g = p.add_argument_group("run")
    g.add_argument("--name", type=run_name, required=True,
                   help="run name (a folder name); outputs go to <save_dir>/<name>/<stage>/")
    g.add_argument("--save_dir", default="runs", help="folder holding all runs")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available, else cpu")
    g.add_argument("--gpu", type=gpu, default=None, metavar="N|N,M,...|all",
                   help=f"{GPU_HELP}; default: --device decides")
    g.add_argument("--seed", type=seed, default=2, help=f"random seed, {SEED_HELP}")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bitwise-reproducible CPU runs; slower on GPU)")
    g.add_argument("--print_freq", "--report_freq", dest="print_freq", type=steps, default=50,
                   help="log a line every N steps (a whole number; the authors' 50.0 is 50)")
    g.add_argument("--force", action="store_true", help=force_help)
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    if resumable:
        g.add_argument("--resume", metavar="FILE", default=None,
                       help="resume from this checkpoint (e.g. checkpoint.prev.pt when checkpoint.pt "
                            "is damaged); default: the stage folder's checkpoint.pt if present")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", type=dataset_name, default="cifar10", choices=DATASETS,
                   help="dataset (case-insensitive); cifar10/cifar100/mnist/fashionmnist are "
                        "downloaded into --data_dir when absent")
    d.add_argument("--data_dir", default="data",
                   help="dataset root (torchvision layouts; ImageFolder with train/ and val/ or test/)")
    d.add_argument("--no-download", "--no_download", dest="no_download", action="store_true",
                   help="never download a dataset; use what is in --data_dir (Fashion-MNIST also "
                        "from Debian's dataset-fashion-mnist package)")
    d.add_argument("--batch_size", type=batch_size, default=None, help=batch_size_help)
    d.add_argument("--subset", type=positive_int, default=None, help=subset_help)
    d.add_argument("--num_workers", type=num_workers, default=None,
                   help="data-loading processes per training process (default: 2 on CPU; on CUDA "
                        "the CPUs per training process on this machine, at most 8)")
    d.add_argument("--synthetic_shape", type=shape, default=(3, 32), metavar="C,H,W",
                   help=f"synthetic dataset: {SHAPE_RULE} (default: 3,32,32)")
    d.add_argument("--synthetic_classes", type=synthetic_classes, default=10,
                   help="synthetic dataset: classes")
    d.add_argument("--synthetic_samples", type=synthetic_samples, default=512,
                   help="synthetic dataset: training images (test set: half as many)")


def synthetic_spec(args: argparse.Namespace) -> SyntheticSpec:
    """The synthetic dataset the --synthetic_* flags describe."""
    channels, size = args.synthetic_shape
    return SyntheticSpec(channels=channels, size=size, classes=args.synthetic_classes,
                         train_size=args.synthetic_samples,
                         test_size=max(args.synthetic_samples // 2, 1))


def search_parser() -> argparse.ArgumentParser:
    default = partial(defaults_text, SEARCH_DEFAULTS)
    p = new_parser("search.py", "StacNAS search: stage 1 (operation groups), stage 2 (operations "
                   "inside the chosen groups), or the one-stage DARTS baseline.")
    p.add_argument("--stage", required=True, choices=SEARCH_STAGES,
                   help="search1: group representatives; search2: members of the groups search1 "
                        "chose; darts: the 8 DARTS ops, bilevel")
    add_common_args(p, f"batch size (default: {default('batch_size')})")
    n = p.add_argument_group("network")
    n.add_argument("--num_cells", type=num_cells, default=None,
                   help=f"cells, {MIN_CELLS}..{MAX_CELLS} (default: {default('num_cells')})")
    n.add_argument("--init_channels", type=init_channels, default=None,
                   help=f"initial channels, 1..{MAX_CHANNELS} (default: "
                        f"{default('init_channels')})")
    add_num_nodes(n)
    n.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="one set of alphas for all normal cells and one for all reduction cells "
                        "(the paper's setting); --no-alpha_share: one set per cell")
    n.add_argument("--groups", metavar="FILE", default=None,
                   help="search1: custom operation groups (JSON {name: {representative, members}}), "
                        "e.g. feature.py's groups.json; default: the paper's groups")
    n.add_argument("--search1_dir", metavar="DIR", default=None,
                   help="search2: folder with search1's alphas.json (default <save_dir>/<name>/search1)")
    n.add_argument("--identity_group", choices=IDENTITY_GROUP_CHOICES, default="single",
                   help="search2: the identity group's candidates; single: skip_connect, none (the "
                        "paper); released: skip_connect twice, then none, as the authors' released "
                        "code lists them (two alphas, two FactorizedReduce at stride 2)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=epochs, default=None,
                   help=f"epochs (default: {default('epochs')})")
    o.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="one-level: weights and alphas on the same batch (StacNAS); bilevel: DARTS's "
                        "alternating scheme on a train/valid split "
                        f"(default: {default('optimization')})")
    o.add_argument("--unrolled", action="store_true",
                   help="bilevel: second-order (unrolled) alpha gradient")
    o.add_argument("--train_ratio", type=ratio, default=None,
                   help="share of the training set used for training; the rest is the held-out split "
                        f"(default: {default('train_ratio')}). Bilevel needs < 1")
    o.add_argument("--alphas_from", choices=["auto", "best", "last"], default="auto",
                   help="which epoch's alphas become alphas.json and the genotype: best = the epoch "
                        "with the best held-out top-1 (the authors' alphas_best), last = the final "
                        "epoch; auto = best for search1/search2 with a held-out split, else last")
    o.add_argument("--w_lr", "--learning_rate", dest="w_lr", type=positive_float, default=0.025,
                   help="weight learning rate (SGD)")
    o.add_argument("--w_lr_min", "--learning_rate_min", dest="w_lr_min", type=non_negative_float,
                   default=0.001, help="cosine schedule's final lr")
    o.add_argument("--power_lr", action="store_true",
                   help="cosine power annealing (p=2) instead of plain cosine")
    o.add_argument("--w_momentum", "--momentum", dest="w_momentum", type=non_negative_float,
                   default=0.9, help="SGD momentum")
    o.add_argument("--w_weight_decay", "--weight_decay", dest="w_weight_decay",
                   type=non_negative_float, default=3e-4, help="weight decay")
    o.add_argument("--grad_clip", type=positive_float, default=None,
                   help=f"clip the weights' gradient norm (default: {default('grad_clip')})")
    o.add_argument("--alpha_lr", "--alpha_learning_rate", dest="alpha_lr", type=positive_float,
                   default=3e-4, help="alpha learning rate (Adam)")
    o.add_argument("--alpha_weight_decay", type=non_negative_float, default=1e-3, help="alpha weight decay")
    o.add_argument("--aux_weight", type=non_negative_float, default=0.0,
                   help="weight of an auxiliary head's loss (0 = no auxiliary head)")
    o.add_argument("--label_smooth", type=non_negative_float, default=0.0, help="label smoothing")
    d = p.add_argument_group("augmentation (training images)")
    d.add_argument("--cutout", "--cutout_length", dest="cutout", type=cutout, default=0,
                   help="cutout length in pixels, 0 = off")
    d.add_argument("--auto_aug", action="store_true", help="torchvision's AutoAugment CIFAR-10 policy")
    add_speed_args(p)
    return p


def add_num_nodes(group) -> None:
    group.add_argument("--num_nodes", type=num_nodes, default=NUM_NODES,
                       help=f"intermediate nodes per cell (the authors' flag; only {NUM_NODES}, the "
                            "DARTS space, is supported)")


def check_regularisers(args: argparse.Namespace) -> None:
    """Values argparse's types cannot judge alone."""
    if args.label_smooth >= 1:
        raise argparse.ArgumentTypeError(f"--label_smooth must be below 1, got {args.label_smooth}")
    if args.auto_aug and args.dataset not in ("cifar10", "cifar100"):
        raise argparse.ArgumentTypeError("--auto_aug (AutoAugment's CIFAR-10 policy) is for cifar10/cifar100")


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
    if args.amp == "fp16" and args.optimization == "bilevel":
        raise argparse.ArgumentTypeError("--amp fp16 (gradient scaling) works with one-level search; "
                                         "use --amp bf16 with bilevel")
    if args.groups and args.stage != "search1":
        raise argparse.ArgumentTypeError("--groups applies to --stage search1 only")
    if args.search1_dir and args.stage != "search2":
        raise argparse.ArgumentTypeError("--search1_dir applies to --stage search2 only")
    if args.alphas_from == "best" and args.train_ratio >= 1:
        raise argparse.ArgumentTypeError("--alphas_from best needs a held-out split: pass --train_ratio "
                                         "below 1 (e.g. 0.9)")
    if args.identity_group != "single" and args.stage != "search2":
        raise argparse.ArgumentTypeError("--identity_group applies to --stage search2 only")
    check_regularisers(args)
    set_paths(args, args.stage)
    if args.stage == "search2" and args.search1_dir is None:
        args.search1_dir = os.path.join(args.run_dir, "search1")
    return args


def set_paths(args: argparse.Namespace, stage: str) -> None:
    check_folder(args.save_dir, "--save_dir")
    args.run_dir = os.path.join(args.save_dir, args.name)
    args.stage_dir = os.path.join(args.run_dir, stage)
    check_folder(args.stage_dir, "--name")


def check_folder(path: str, flag: str) -> None:
    """`path` is a folder or can be made one: neither it nor a parent exists as a file."""
    here = os.path.normpath(path)
    while not os.path.lexists(here) and os.path.dirname(here) not in ("", here):
        here = os.path.dirname(here)
    if os.path.lexists(here) and not os.path.isdir(here):
        inside = "" if here == os.path.normpath(path) else f" (making {path})"
        raise argparse.ArgumentTypeError(f"{flag}: {here} is a file, not a folder{inside}")


def select_gpu(args: argparse.Namespace, script: str = "", pass_on: bool = False) -> None:
    """`--gpu N` (the authors' flag) means `--device cuda:N`; with `--device cpu` it is a
    contradiction. A list (`0,1`) or `all` means the first listed GPU (all: GPU 0), as in the
    authors' code, with one `note:` line on stderr saying that only that GPU is used and how
    torchrun uses several (not when CUDA is unusable: the device check then stops the run with
    its one error line; not under torchrun, which gives each process its own GPU). After this,
    args.gpu is a plain int (or None). `pass_on`: a script that starts others (run_all.py,
    alpha_efficiency.py) keeps its --device and passes `--gpu N` on."""
    request = getattr(args, "gpu", None)
    if request is None:
        return
    if not isinstance(request, GpuRequest):  # set by code rather than parsed
        request = GpuRequest((int(request), [int(request)]))
    args.gpu = request.first
    if args.device == "cpu":
        raise argparse.ArgumentTypeError(f"--gpu {request.text()} asks for CUDA device "
                                         f"{request.first} but --device cpu was given; drop one "
                                         "of them")
    if request.several():
        note = several_gpus_note(request, script)
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
    if not pass_on:
        args.device = f"cuda:{request.first}"


def check_gpu_usable(args: argparse.Namespace) -> None:
    """--gpu N of a script that starts others (run_all.py, alpha_efficiency.py): the device
    check each started script would make (utils.runtime.logging.resolve_device), made once before any
    starts, so that a machine without CUDA gets its one error line (a RuntimeError) rather than
    a failed stage."""
    if getattr(args, "gpu", None) is None:
        return
    from utils.runtime.logging import resolve_device
    resolve_device(f"cuda:{args.gpu}")


def several_gpus_note(request: GpuRequest, script: str) -> str | None:
    """The line --gpu 0,1 / --gpu all prints: only the first GPU is used, and how to use
    several; None when CUDA is unusable or under torchrun (see select_gpu)."""
    import torch
    if os.environ.get("WORLD_SIZE") is not None or not torch.cuda.is_available():
        return None
    count = len(request.listed) if request.listed != "all" else torch.cuda.device_count()
    head = (f"--gpu {request.text()}: {script or 'this script'} runs on one GPU, GPU "
            f"{request.first} (the first listed, as the authors' code does)")
    if script == "run_all.py":
        return f"{head}; run_all.py --gpus {count} runs every stage on {count} GPUs (torchrun)"
    if script == "alpha_efficiency.py":
        return (f"{head}, for every training run; to use {count} GPUs, run analyses side by side "
                "with different --gpu and --out")
    return (f"{head}; torchrun uses several: torchrun --standalone --nproc_per_node {count} "
            f"{script or '<script>'} ... (one process per GPU), or run_all.py --gpus {count}")


def parse(parser: argparse.ArgumentParser, resolve, argv: list[str] | None,
          pass_gpu_on: bool = False) -> argparse.Namespace:
    """parse_args (strict: misspelt flags fail), --gpu (select_gpu; `pass_gpu_on`: see there),
    then `resolve`; their errors exit 2 like argparse's."""
    args = parser.parse_args(argv)
    try:
        select_gpu(args, parser.prog, pass_on=pass_gpu_on)
        args = resolve(args)
        check_synthetic_size(args)
        check_compile_with_checkpoint(args)
        return args
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))


# -- augment.py ----------------------------------------------------------------------------
# The paper's CIFAR-style setting (README, "Training the found cells") and the ImageNet mobile
# setting (DARTS).
AUGMENT_DEFAULTS = {
    "cifar": dict(num_cells=20, init_channels=36, batch_size=96, epochs=600, lr=0.025,
                  lr_min=0.0, weight_decay=3e-4, grad_clip=5.0, cutout=16, aux_weight=0.4,
                  drop_path=0.2, label_smooth=0.0),
    "imagenet": dict(num_cells=14, init_channels=48, batch_size=128, epochs=250, lr=0.1,
                     lr_min=0.0, weight_decay=3e-5, grad_clip=5.0, cutout=0, aux_weight=0.4,
                     drop_path=0.0, label_smooth=0.1),
}


def augment_parser() -> argparse.ArgumentParser:
    default = partial(defaults_text, AUGMENT_DEFAULTS)
    p = new_parser("augment.py", "Train a found (or named) genotype from scratch and evaluate it.")
    p.add_argument("--stage", type=only_stage("augment", "augment.py", "searches run with search.py"),
                   default="augment", help="accepted for the authors' commands: augment only")
    add_common_args(p, f"batch size (default: {default('batch_size')})")
    g = p.add_argument_group("architecture")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--genotype", metavar="FILE",
                     help="genotype.json or a file with a Genotype(...) repr "
                          "(default: <save_dir>/<name>/search2/genotype.json)")
    src.add_argument("--arch", choices=NAMED_GENOTYPES, help="a named genotype")
    g.add_argument("--num_cells", type=num_cells, default=None,
                   help=f"cells, {MIN_CELLS}..{MAX_CELLS} (default: {default('num_cells')})")
    g.add_argument("--init_channels", type=init_channels, default=None,
                   help=f"initial channels, 1..{MAX_CHANNELS} (default: "
                        f"{default('init_channels')})")
    add_num_nodes(g)
    g.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=None,
                   help="accepted for the authors' commands; the genotype file decides whether "
                        "all cells share one genotype or each cell has its own")
    g.add_argument("--keep_zero", action="store_true",
                   help="a learned gate on every kept edge (the authors' unpublished 'keep ZERO')")
    o = p.add_argument_group("training")
    o.add_argument("--epochs", type=epochs, default=None,
                   help=f"epochs (default: {default('epochs')})")
    o.add_argument("--lr", "--learning_rate", dest="lr", type=positive_float, default=None,
                   help=f"initial SGD lr (default: {default('lr')})")
    o.add_argument("--lr_min", "--learning_rate_min", dest="lr_min", type=non_negative_float,
                   default=None, help="final lr of the cosine schedules")
    o.add_argument("--lr_gamma", type=positive_float, default=0.97,
                   help="imagenet: lr decay per epoch (exponential schedule)")
    o.add_argument("--power_lr", action="store_true",
                   help="cosine power annealing (p=2) instead of plain cosine")
    o.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    o.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help=f"weight decay (default: {default('weight_decay')})")
    o.add_argument("--grad_clip", type=positive_float, default=None,
                   help=f"gradient-norm clip (default: {default('grad_clip')})")
    o.add_argument("--aux_weight", type=non_negative_float, default=None,
                   help="auxiliary head loss weight, head after cell 2*num_cells//3 "
                        f"(default: {default('aux_weight')}; 0 = no head)")
    o.add_argument("--drop_path", "--drop_path_prob", dest="drop_path", type=non_negative_float, default=None,
                   help="drop-path probability, ramped linearly from 0 "
                        f"(default: {default('drop_path')})")
    o.add_argument("--cutout", "--cutout_length", dest="cutout", type=cutout, default=None,
                   help=f"cutout length in pixels, 0 = off (default: {default('cutout')})")
    o.add_argument("--auto_aug", action="store_true", help="torchvision's AutoAugment CIFAR-10 policy")
    o.add_argument("--label_smooth", type=non_negative_float, default=None,
                   help=f"label smoothing (default: {default('label_smooth')})")
    o.add_argument("--valid_ratio", type=ratio, default=None,
                   help="hold out this share of the training set; best.pt is kept by held-out top-1 "
                        "(default: none, the paper's protocol: train on all, keep the final epoch)")
    o.add_argument("--train_ratio", type=ratio, default=None,
                   help="the authors' flag: train on this share of the training set and hold out "
                        "the rest (= --valid_ratio 1-R); 1.0 = no held-out split")
    o.add_argument("--sync_bn", action="store_true",
                   help="under torchrun on GPUs: SyncBatchNorm (batch statistics over all "
                        "processes); on the CPU it has no effect (PyTorch's SyncBatchNorm is "
                        "CUDA-only), with one note saying so")
    o.add_argument("--test_every", type=positive_int, default=1,
                   help="evaluate on the test split every N epochs (monitoring only) and at the end")
    add_speed_args(p)
    return p


def resolve_augment(args: argparse.Namespace) -> argparse.Namespace:
    setting = "imagenet" if args.dataset == "imagenet" else "cifar"
    for key, value in AUGMENT_DEFAULTS[setting].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.valid_ratio is not None and args.valid_ratio >= 1:
        raise argparse.ArgumentTypeError("--valid_ratio must leave training images: use a value below 1")
    held_out_from_train_ratio(args)
    check_regularisers(args)
    if args.drop_path >= 1:
        raise argparse.ArgumentTypeError(f"--drop_path must be below 1, got {args.drop_path}")
    for accepted_only in ("stage", "alpha_share"):  # no effect here: kept out of config.json
        delattr(args, accepted_only)
    set_paths(args, "augment")
    if args.genotype is None and args.arch is None:
        args.genotype = os.path.join(args.run_dir, "search2", "genotype.json")
    return args


def held_out_from_train_ratio(args: argparse.Namespace) -> None:
    """augment.py: the authors' --train_ratio R is our --valid_ratio 1-R (R = 1: none)."""
    ratio_ = args.train_ratio
    del args.train_ratio
    if ratio_ is None or ratio_ == 1.0:
        return
    if args.valid_ratio is not None and abs(args.valid_ratio - (1 - ratio_)) > 1e-9:
        raise argparse.ArgumentTypeError(f"--train_ratio {ratio_} and --valid_ratio {args.valid_ratio} "
                                         "disagree (valid = 1 - train); pass one of them")
    args.valid_ratio = round(1 - ratio_, 12)


# -- test.py -------------------------------------------------------------------------------
def test_parser() -> argparse.ArgumentParser:
    p = new_parser("test.py", "Evaluate a trained network on the test split: ours (augment.py's "
                   "checkpoint.pt / best.pt) or the authors' released .pth.tar files.")
    p.add_argument("--stage", type=only_stage("test", "test.py", "training runs with search.py "
                                              "or augment.py"),
                   default="test", help="accepted for the authors' commands: test only")
    p.add_argument("--checkpoint", "--load_model_dir", dest="checkpoint", metavar="PATH", default=None,
                   help="a checkpoint file (ours, or the authors' .pth.tar), or a run folder "
                        "(<dir>/augment/models/best.pth.tar as the authors' runs, or our "
                        "<dir>/augment/best.pt, else checkpoint.pt); default: this run's own "
                        "<save_dir>/<name>/augment/ model")
    p.add_argument("--export", metavar="PATH", default=None,
                   help="also write the loaded network as one of our checkpoints (e.g. to convert "
                        "an authors' file); refuses to overwrite unless --force")
    add_common_args(p, "batch size (default 256)", resumable=False,
                    subset_help="evaluate only the first N test images (quick checks)",
                    force_help="let --export replace an existing file")
    add_speed_args(p, training=False)
    return p


def resolve_test(args: argparse.Namespace) -> argparse.Namespace:
    if args.batch_size is None:
        args.batch_size = 256
    set_paths(args, "test")
    return args
