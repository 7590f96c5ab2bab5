"""Print one JSON line describing a network's size before training it.

    python summary.py --arch DARTS_V2 --dataset cifar10 --init_channels 36 --num_cells 20 \\
        --auxiliary
    python summary.py --stage search1 --dataset cifar10 --num_cells 14 --init_channels 16
    python summary.py --stage search2 --alphas runs/exp/search1/alphas.json
    python summary.py --stage search2 --alphas runs/exp/search1/alphas.json \\
        --identity_group released

Multiply-adds are counted with torch.utils.flop_counter (convolutions and matrix products of
one eval-mode forward pass for one image at the dataset's input size; FLOPs / 2). Unset
--init_channels / --num_cells take search.py's and augment.py's defaults; their bounds are the
training scripts'. The network is built on PyTorch's meta device (shapes, no memory), so a
large one is counted without allocating it.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn as nn

import genotypes as gt
from config import AUGMENT_DEFAULTS, SEARCH_DEFAULTS, defaults_text
from models.factory import SEARCH_STAGES, build_final_network, build_supernet, stage_candidates
from models.summary import count_macs, count_params, count_params_without_aux
from utils.runtime import flags
from utils.runtime.cli import OneLineParser
from utils.data.info import DATASET_INFO, dataset_info
from utils.io.genotype_files import check_stage1_alphas, load_alphas, load_genotype
from utils.train.groups import IDENTITY_GROUP_CHOICES, identity_group


def describe(model: nn.Module, in_channels: int, input_size: int) -> dict:
    """params (all), params_without_aux, macs, and for supernets weights / alphas counts."""
    out = {"params": count_params(model), "params_without_aux": count_params_without_aux(model),
           "macs": count_macs(model, in_channels, input_size)}
    if hasattr(model, "alphas"):
        out["weights"] = sum(p.numel() for p in model.weights())
        out["alphas"] = sum(p.numel() for p in model.alphas())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(  # usage errors in one line, as every script's
        prog="summary.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", choices=gt.NAMED_GENOTYPES, help="named final genotype")
    what.add_argument("--genotype", metavar="FILE", help="genotype.json or Genotype(...) repr file")
    what.add_argument("--stage", choices=SEARCH_STAGES,
                      help="a search supernet instead of a final network")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASET_INFO),
                   help="sets input channels, input size and classes")
    for flag, what, kind in (
            ("init_channels", f"initial channels, 1..{flags.MAX_CHANNELS}", flags.init_channels),
            ("num_cells", f"cells, {gt.MIN_CELLS}..{gt.MAX_CELLS}", flags.num_cells)):
        p.add_argument(f"--{flag}", type=kind, default=None,
                       help=f"{what} (default: supernets as search.py, "
                            f"{defaults_text(SEARCH_DEFAULTS, flag)}; final networks as "
                            f"augment.py, {defaults_text(AUGMENT_DEFAULTS, flag)})")
    p.add_argument("--auxiliary", action="store_true", help="include the auxiliary head")
    p.add_argument("--keep_zero", action="store_true", help="final network with keep-zero gates")
    p.add_argument("--alpha_share", action=argparse.BooleanOptionalAction, default=True,
                   help="supernet: alphas shared by all normal / all reduction cells")
    p.add_argument("--alphas", metavar="FILE", help="search2: the alphas.json written by search1")
    p.add_argument("--identity_group", choices=IDENTITY_GROUP_CHOICES, default="single",
                   help="search2: the identity group's candidates: skip_connect once (ours) or "
                        "twice as in the authors' released code (one more FactorizedReduce per "
                        "reduction-cell input edge that activates it)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    info = dataset_info(args.dataset)
    if args.identity_group != "single" and args.stage != "search2":
        parser.error("--identity_group applies to --stage search2 only")
    if args.stage == "search2" and not args.alphas:
        parser.error("--stage search2 needs --alphas FILE (the alphas.json of search1)")
    defaults = (SEARCH_DEFAULTS[args.stage] if args.stage
                else AUGMENT_DEFAULTS["imagenet" if args.dataset == "imagenet" else "cifar"])
    channels = defaults["init_channels"] if args.init_channels is None else args.init_channels
    cells = defaults["num_cells"] if args.num_cells is None else args.num_cells
    try:
        if args.stage:
            alphas = load_alphas(args.alphas) if args.alphas else None
            if alphas is not None:
                check_stage1_alphas(alphas, args.alphas)
            groups = identity_group(gt.GROUPS, args.identity_group)
            cands = stage_candidates(args.stage, cells, args.alpha_share, alphas, groups)
            with torch.device("meta"):  # shapes only: no memory, whatever the size
                model = build_supernet(cands, **info.network_shape(), init_channels=channels,
                                       num_cells=cells, auxiliary=args.auxiliary)
            head = {"network": "supernet", "stage": args.stage}
        else:
            genotype = (gt.get_named_genotype(args.arch) if args.arch
                        else load_genotype(args.genotype))
            with torch.device("meta"):
                model = build_final_network(genotype, **info.network_shape(),
                                            init_channels=channels, num_cells=cells,
                                            auxiliary=args.auxiliary, keep_zero=args.keep_zero)
            head = {"network": "final", "arch": args.arch or args.genotype}
        head.update(dataset=args.dataset, init_channels=_first_cell_channels(model),
                    num_cells=len(model.cells))
        head.update(describe(model, info.channels, info.size))
    except (ValueError, OSError, RuntimeError, MemoryError) as err:
        text = str(err).strip()
        print(f"error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
        return 1
    print(json.dumps(head))
    return 0


def _first_cell_channels(model: nn.Module) -> int:
    """C of the first cell (the network's initial channel count)."""
    return model.cells[0].preproc1.net[1].out_channels


if __name__ == "__main__":
    sys.exit(main())
