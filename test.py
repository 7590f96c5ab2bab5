"""Evaluate a trained network on a dataset's test split.

    python test.py --name exp --dataset cifar10          # runs/exp/augment/: best.pt, else checkpoint.pt
    python test.py --name exp --checkpoint runs/exp/augment/checkpoint.pt --dataset cifar10
    python test.py --name released --load_model_dir cifar10.pth.tar --dataset cifar10 --export stacnas_c10.pt

Our checkpoints (augment.py's checkpoint.pt / best.pt, or an --export) rebuild their network
from their own contents. The authors' released .pth.tar files (whole pickled modules) are read
by models.legacy without their code and without running anything from the file.
Prints top-1, top-5, loss, parameters (millions, and the authors' unit: parameters / 2^20)
and images/s; writes <save_dir>/<name>/test/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

import config
from models.factory import build_from_spec
from models.pickle_scan import scan_torch_zip
from models.summary import count_params, count_params_without_aux
from utils.checkpoint import FINAL_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from utils.checkpoint_fields import check_final_checkpoint
from utils.cli import run_guarded, seed_everything
from utils.data import get_dataset, loader_options, make_loader, subset_size
from utils.engine import evaluate
from utils.files import write_text
from utils import distributed, speed
from utils.lock import hold_folder
from utils.logging import resolve_device, run_info
from utils.signals import StopNow


def main(argv: list[str] | None = None) -> int:
    args = config.parse(config.test_parser(), config.resolve_test, argv)
    return run_guarded(lambda: run(args), args.debug)


def load_ours(path: Path, state: dict) -> tuple[nn.Module, dict]:
    state = check_final_checkpoint(state, path)  # every field, before anything is built
    if state["format"] != FINAL_FORMAT:
        raise CheckpointError(f"{path}: a {state['format']} checkpoint, not a trained final "
                              "network; train its genotype with augment.py and test that")
    model = build_from_spec(state["network"], str(path))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network it describes "
                              f"({str(err).splitlines()[0][:160]})") from None
    return model, state["network"]


def load_network(path: str | Path) -> tuple[nn.Module, dict, str]:
    """(network in eval mode, its spec, "ours" | "authors") from any supported checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if zipfile.is_zipfile(path):
        scan_torch_zip(path)  # refuse what would cost torch.load itself unbounded work
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            state = None  # not ours: perhaps an authors' file re-saved in the zip format
        if state is not None:
            model, spec = load_ours(path, state)
            return model.eval(), spec, "ours"
    from models import legacy  # only needed for the authors' files
    model, spec = legacy.load_authors_network(path)
    return model.eval(), spec, "authors"


# Where a run folder keeps its trained network, in order of preference: the authors' layout
# (their test.py reads <dir>/augment/models/best.pth.tar), then ours (best.pt exists only with a
# held-out split; checkpoint.pt is the final epoch, the paper's protocol).
RUN_FOLDER_MODELS = ("augment/models/best.pth.tar", "models/best.pth.tar", "best.pth.tar",
                     "augment/best.pt", "augment/checkpoint.pt", "best.pt", "checkpoint.pt")


def find_model(args: argparse.Namespace) -> Path:
    """--checkpoint / --load_model_dir: a file, or a run folder; none: this run's augment/."""
    if args.checkpoint is None:
        folder, names = Path(args.run_dir), ("augment/best.pt", "augment/checkpoint.pt")
    else:
        folder, names = Path(args.checkpoint), RUN_FOLDER_MODELS
        if not folder.is_dir():
            return folder  # a file (load_network names it when it is missing)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    hint = ("train it with augment.py (same --name and --save_dir) or pass --load_model_dir FILE"
            if args.checkpoint is None else "pass the checkpoint file itself")
    raise CheckpointError(f"no trained network in {folder}: looked for {', '.join(names)}; {hint}")


def authors_megabytes(params: int) -> float:
    """The authors' size unit (their README's "4.48M"): parameters / 2^20."""
    return params / 2 ** 20


def check_fits(spec: dict, info, dataset: str, path: Path) -> None:
    want = (spec["in_channels"], spec["input_size"], spec["num_classes"])
    have = (info.channels, info.size, info.classes)
    if want != have:
        raise ValueError(f"{path} expects {want[0]}x{want[1]}x{want[1]} inputs and {want[2]} "
                         f"classes, but --dataset {dataset} gives {have[0]}x{have[1]}x{have[1]} "
                         f"and {have[2]}; pass the dataset it was trained on")


def export(model: nn.Module, spec: dict, source: Path, path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another --export path or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"format": FINAL_FORMAT, "network": spec, "model": model.state_dict(),
                     "epoch": None, "finished": True, "source": str(source), "config": {}},
                    path, keep_previous=False)


def run(args: argparse.Namespace) -> int:
    ranks, device = distributed.setup(resolve_device(args.device))
    try:
        with StopNow("results.json not written; rerun the same command"):
            return evaluate_checkpoint(args, ranks, device)
    except RuntimeError as err:
        lost = distributed.lost_peer(err) if ranks.enabled else None
        if lost is None:
            raise
        raise RuntimeError(f"{lost}; rerun the same command") from err
    finally:
        distributed.cleanup()


def evaluate_checkpoint(args: argparse.Namespace, ranks: distributed.Dist, device: torch.device) -> int:
    seed_everything(args.seed, args.deterministic)
    checkpoint = find_model(args)
    model, spec, source = load_network(checkpoint)
    with distributed.main_rank_first(ranks):  # rank 0 downloads a missing dataset
        test_set, info = get_dataset(args.dataset, args.data_dir, train=False, transform="eval",
                                     synthetic=config.synthetic_spec(args),
                                     download=not args.no_download)
    check_fits(spec, info, args.dataset, checkpoint)
    with hold_folder(args.stage_dir, ranks):  # one test run at a time writes its results
        return measure(args, ranks, device, checkpoint, model, spec, source, test_set)


def measure(args: argparse.Namespace, ranks: distributed.Dist, device: torch.device,
            checkpoint: Path, model: nn.Module, spec: dict, source: str, test_set) -> int:
    """Export (--export), evaluate, and write results.json (rank 0)."""
    if args.export and ranks.is_main:
        export(model, spec, checkpoint, Path(args.export), args.force)
        print(f"exported {checkpoint} ({source}) to {args.export}")
    count = subset_size(len(test_set), args.subset)
    loader = make_loader(test_set, distributed.shard(list(range(count)), ranks), args.batch_size,
                         shuffle=False, **loader_options(device, args.num_workers))
    speed.resolve(args, device, "final", lambda m: print(m, file=sys.stderr))
    model = speed.prepare(model.to(device), args, device)
    stats = evaluate(model, loader, nn.CrossEntropyLoss(), device=device,
                     dist_info=ranks if ranks.enabled else None,
                     memory_format=speed.memory_format(args, device),
                     autocast=speed.autocast(args, device))
    if not ranks.is_main:
        return 0
    total, params = count_params(model), count_params_without_aux(model)
    results = {"checkpoint": str(checkpoint), "source": source, "dataset": args.dataset,
               "images": count,
               "test_top1": stats["top1"], "test_top5": stats["top5"], "test_loss": stats["loss"],
               "params_millions": round(params / 1e6, 4),
               "params_authors_unit": round(authors_megabytes(params), 4),
               "params_with_aux_authors_unit": round(authors_megabytes(total), 4),
               "images_per_s": round(stats["images_per_s"], 1), **run_info(device)}
    out = Path(args.stage_dir)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    print(f"{checkpoint} ({source}): test top1 {stats['top1']:.2f}% top5 {stats['top5']:.2f}% "
          f"loss {stats['loss']:.4f}; {params / 1e6:.3f}M parameters without the auxiliary head "
          f"= {authors_megabytes(params):.2f}M in the authors' unit (parameters / 2^20; "
          f"{authors_megabytes(total):.2f}M with the head); "
          f"{stats['images_per_s']:.1f} images/s; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
