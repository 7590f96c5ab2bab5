"""The flags' values: the largest value each size flag takes, and argparse types that refuse a
bad value with one message naming the problem (README: "bad input gets one line"); the parser
every script builds on (new_parser). Plain argparse, no state: config.py and the scripts that
take the same flags (run_all.py, feature.py, alpha_efficiency.py) share them. --gpu's type is
utils.runtime.gpus.gpu."""
from __future__ import annotations

import argparse
import math
import os

from genotypes import MAX_CELLS, MIN_CELLS, NUM_NODES
from utils.runtime.cli import OneLineParser

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


# -- the parser every script builds on -----------------------------------------------------
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


# -- argparse value types: each bad value gets a message naming the problem ---------------
def _number(text: str, kind: type):
    """`text` as an int or float; otherwise an error saying which was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


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
