"""Command-line configuration of every stage: shared option groups, one parser per script,
the per-stage defaults, derived paths computed in one place (config.json: utils.io.runconfig;
the flags' value types and bounds: utils.runtime.flags; --gpu: utils.runtime.gpus)."""
from __future__ import annotations

import argparse
import os
from functools import partial

from genotypes import MAX_CELLS, MIN_CELLS, NAMED_GENOTYPES, NUM_NODES
from models.factory import SEARCH_STAGES
from utils.data.datasets import SyntheticSpec
from utils.data.info import DATASETS
from utils.runtime.flags import (MAX_CHANNELS, SEED_HELP, SHAPE_RULE, batch_size,
                                 check_synthetic_size, cutout, dataset_name, epochs, init_channels,
                                 new_parser, non_negative_float, num_cells, num_nodes, num_workers,
                                 only_stage, positive_float, positive_int, ratio, run_name, seed,
                                 shape, steps, synthetic_classes, synthetic_samples)
from utils.runtime.gpus import GPU_HELP, gpu, select_gpu
from utils.runtime.speed import add_speed_args, check_compile_with_checkpoint
from utils.train.groups import IDENTITY_GROUP_CHOICES

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
                       help="resume from this checkpoint (e.g. checkpoint.prev.pt when "
                            "checkpoint.pt is damaged); default: the stage folder's checkpoint.pt "
                            "if present")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", type=dataset_name, default="cifar10", choices=DATASETS,
                   help="dataset (case-insensitive); cifar10/cifar100/mnist/fashionmnist are "
                        "downloaded into --data_dir when absent")
    d.add_argument("--data_dir", default="data",
                   help="dataset root (torchvision layouts; ImageFolder with train/ and val/ or "
                        "test/)")
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
                   help="search1: custom operation groups (JSON {name: {representative, "
                        "members}}), e.g. feature.py's groups.json; default: the paper's groups")
    n.add_argument("--search1_dir", metavar="DIR", default=None,
                   help="search2: folder with search1's alphas.json "
                        "(default <save_dir>/<name>/search1)")
    n.add_argument("--identity_group", choices=IDENTITY_GROUP_CHOICES, default="single",
                   help="search2: the identity group's candidates; single: skip_connect, none (the "
                        "paper); released: skip_connect twice, then none, as the authors' released "
                        "code lists them (two alphas, two FactorizedReduce at stride 2)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=epochs, default=None,
                   help=f"epochs (default: {default('epochs')})")
    o.add_argument("--optimization", choices=["one-level", "bilevel"], default=None,
                   help="one-level: weights and alphas on the same batch (StacNAS); bilevel: "
                        "DARTS's alternating scheme on a train/valid split "
                        f"(default: {default('optimization')})")
    o.add_argument("--unrolled", action="store_true",
                   help="bilevel: second-order (unrolled) alpha gradient")
    o.add_argument("--train_ratio", type=ratio, default=None,
                   help="share of the training set used for training; the rest is the held-out "
                        f"split (default: {default('train_ratio')}). Bilevel needs < 1")
    o.add_argument("--alphas_from", choices=["auto", "best", "last"], default="auto",
                   help="which epoch's alphas become alphas.json and the genotype: best = the "
                        "epoch with the best held-out top-1 (the authors' alphas_best), last = the "
                        "final epoch; auto = best for search1/search2 with a held-out split, else "
                        "last")
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
    o.add_argument("--alpha_weight_decay", type=non_negative_float, default=1e-3,
                   help="alpha weight decay")
    o.add_argument("--aux_weight", type=non_negative_float, default=0.0,
                   help="weight of an auxiliary head's loss (0 = no auxiliary head)")
    o.add_argument("--label_smooth", type=non_negative_float, default=0.0, help="label smoothing")
    d = p.add_argument_group("augmentation (training images)")
    d.add_argument("--cutout", "--cutout_length", dest="cutout", type=cutout, default=0,
                   help="cutout length in pixels, 0 = off")
    d.add_argument("--auto_aug", action="store_true",
                   help="torchvision's AutoAugment CIFAR-10 policy")
    add_speed_args(p)
    return p


def add_num_nodes(group) -> None:
    group.add_argument("--num_nodes", type=num_nodes, default=NUM_NODES,
                       help=f"intermediate nodes per cell (the authors' flag; only {NUM_NODES}, "
                            "the DARTS space, is supported)")


def check_regularisers(args: argparse.Namespace) -> None:
    """Values argparse's types cannot judge alone."""
    if args.label_smooth >= 1:
        raise argparse.ArgumentTypeError(f"--label_smooth must be below 1, got {args.label_smooth}")
    if args.auto_aug and args.dataset not in ("cifar10", "cifar100"):
        raise argparse.ArgumentTypeError("--auto_aug (AutoAugment's CIFAR-10 policy) is for "
                                         "cifar10/cifar100")


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
        raise argparse.ArgumentTypeError("--amp fp16 (gradient scaling) works with one-level "
                                         "search; use --amp bf16 with bilevel")
    if args.groups and args.stage != "search1":
        raise argparse.ArgumentTypeError("--groups applies to --stage search1 only")
    if args.search1_dir and args.stage != "search2":
        raise argparse.ArgumentTypeError("--search1_dir applies to --stage search2 only")
    if args.alphas_from == "best" and args.train_ratio >= 1:
        raise argparse.ArgumentTypeError("--alphas_from best needs a held-out split: pass "
                                         "--train_ratio below 1 (e.g. 0.9)")
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
    p.add_argument("--stage",
                   type=only_stage("augment", "augment.py", "searches run with search.py"),
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
    o.add_argument("--drop_path", "--drop_path_prob", dest="drop_path", type=non_negative_float,
                   default=None,
                   help="drop-path probability, ramped linearly from 0 "
                        f"(default: {default('drop_path')})")
    o.add_argument("--cutout", "--cutout_length", dest="cutout", type=cutout, default=None,
                   help=f"cutout length in pixels, 0 = off (default: {default('cutout')})")
    o.add_argument("--auto_aug", action="store_true",
                   help="torchvision's AutoAugment CIFAR-10 policy")
    o.add_argument("--label_smooth", type=non_negative_float, default=None,
                   help=f"label smoothing (default: {default('label_smooth')})")
    o.add_argument("--valid_ratio", type=ratio, default=None,
                   help="hold out this share of the training set; best.pt is kept by held-out "
                        "top-1 (default: none, the paper's protocol: train on all, keep the final "
                        "epoch)")
    o.add_argument("--train_ratio", type=ratio, default=None,
                   help="the authors' flag: train on this share of the training set and hold out "
                        "the rest (= --valid_ratio 1-R); 1.0 = no held-out split")
    o.add_argument("--sync_bn", action="store_true",
                   help="under torchrun on GPUs: SyncBatchNorm (batch statistics over all "
                        "processes); on the CPU it has no effect (PyTorch's SyncBatchNorm is "
                        "CUDA-only), with one note saying so")
    o.add_argument("--test_every", type=positive_int, default=1,
                   help="evaluate on the test split every N epochs (monitoring only) and at the "
                        "end")
    add_speed_args(p)
    return p


def resolve_augment(args: argparse.Namespace) -> argparse.Namespace:
    setting = "imagenet" if args.dataset == "imagenet" else "cifar"
    for key, value in AUGMENT_DEFAULTS[setting].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.valid_ratio is not None and args.valid_ratio >= 1:
        raise argparse.ArgumentTypeError("--valid_ratio must leave training images: use a value "
                                         "below 1")
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
        raise argparse.ArgumentTypeError(f"--train_ratio {ratio_} and --valid_ratio "
                                         f"{args.valid_ratio} disagree (valid = 1 - train); pass "
                                         "one of them")
    args.valid_ratio = round(1 - ratio_, 12)


# -- test.py -------------------------------------------------------------------------------
def test_parser() -> argparse.ArgumentParser:
    p = new_parser("test.py", "Evaluate a trained network on the test split: ours (augment.py's "
                   "checkpoint.pt / best.pt) or the authors' released .pth.tar files.")
    p.add_argument("--stage", type=only_stage("test", "test.py", "training runs with search.py "
                                              "or augment.py"),
                   default="test", help="accepted for the authors' commands: test only")
    p.add_argument("--checkpoint", "--load_model_dir", dest="checkpoint", metavar="PATH",
                   default=None,
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
