"""Evaluate a trained network on a dataset's test split.

    python augment.py --name exp --dataset cifar10  # writes runs/exp/augment/
    python test.py --name exp --dataset cifar10     # runs/exp/augment/: best.pt, else checkpoint.pt
    python test.py --name exp --checkpoint runs/exp/augment/checkpoint.pt --dataset cifar10
    python test.py --name released --load_model_dir cifar10.pth.tar --dataset cifar10 \\
        --export stacnas_c10.pt

cifar10.pth.tar is one of the authors' released models (downloaded by hand: the README's
section on the authors' code links them).

Our checkpoints (augment.py's checkpoint.pt / best.pt, or an --export) rebuild their network
from their own contents. The authors' released .pth.tar files (whole pickled modules) are read
by utils.io.authors without their code and without running anything from the file.
Prints top-1, top-5, loss, parameters (millions, and the authors' unit: parameters / 2^20)
and images/s; writes <save_dir>/<name>/test/results.json.

Only a finished training is a result: looked up by --name (or in a folder), a network whose
augment.py run is not finished is refused with one line saying how to finish it, and a best.pt
left by an earlier run of the folder (before an augment.py --force) is passed over; a file
named with --checkpoint is evaluated anyway, with a warning line, and results.json says
"finished": false. A NaN or infinite figure is written as null, with a warning line.
"""
from __future__ import annotations

from utils.runtime.signals import keep_while_starting

if __name__ == "__main__":  # before the imports below (torch: seconds), so that a stop signal
    keep_while_starting()   # meanwhile is acted on, with one line, once the script runs

import argparse
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

import config
from utils.io.network_spec import build_from_spec
from utils.pickles.scan import scan_torch_zip
from models.summary import count_params, count_params_without_aux
from utils.io.checkpoint import FINAL_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from utils.io.checkpoint_fields import check_final_checkpoint
from utils.runtime.cli import run_guarded, seed_everything
from utils.data.datasets import get_dataset
from utils.data.loaders import loader_options, make_loader
from utils.data.splits import subset_size
from utils.train.engine import evaluate
from utils.io.files import write_json
from utils.runtime import distributed, speed
from utils.runtime.context import Runtime
from utils.runtime.lock import hold_folder
from utils.runtime.logging import params_text, resolve_device, run_info
from utils.runtime.signals import StopNow
from utils.train.stage import progress_text


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
    return read_network(path)[:3]


def read_network(path: str | Path) -> tuple[nn.Module, dict, str, dict | None]:
    """load_network's, and the checkpoint's data (None for the authors' files)."""
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
            return model.eval(), spec, "ours", state
    from utils.io import authors  # only needed for the authors' files
    model, spec = authors.load_authors_network(path)
    return model.eval(), spec, "authors", None


def _same_run(a: dict, b: dict) -> bool:
    """Two checkpoints of one training run: the same run id (older files: the same options)."""
    if a.get("run") is not None or b.get("run") is not None:
        return a.get("run") == b.get("run")
    return a.get("config") == b.get("config")


def _latest_beside(path: Path) -> dict | None:
    """The run's latest checkpoint (checkpoint.pt beside `path`), checked; None if absent."""
    latest = path.with_name("checkpoint.pt")
    if not latest.is_file():
        return None
    return check_final_checkpoint(load_checkpoint(latest), latest)


def training_status(path: Path, state: dict | None) -> tuple[dict, str | None]:
    """(results.json's account of the training that made the network: finished, trained_epochs,
    epochs, run; why it is not a final result, or None). A checkpoint.pt or an export says
    itself whether it is finished; a best.pt (saved mid-training) is final when the
    checkpoint.pt beside it is finished and of the same run. The authors' files are final."""
    if state is None:
        return {"finished": True}, None
    info = {"finished": state.get("finished") is True, "run": state.get("run")}
    if state.get("epoch") is None:  # an export: as final as the network it was made from
        return info, (None if info["finished"]
                      else f"{path} was exported from an unfinished training")
    latest = state
    if not info["finished"] and path.name != "checkpoint.pt":
        latest = _latest_beside(path)
        if latest is None:
            return info, (f"{path} was saved during a training, and no checkpoint.pt beside it "
                          "says whether that training finished")
        if not _same_run(state, latest):
            return info, (f"{path} was left by an earlier run of {path.parent}, not by the run "
                          "whose checkpoint.pt is there")
        info["finished"] = latest.get("finished") is True
    config = latest.get("config")
    epochs = config.get("epochs") if isinstance(config, dict) else None
    info.update(trained_epochs=latest.get("epoch"), epochs=epochs)
    if info["finished"]:
        return info, None
    where = progress_text(latest.get("epoch"), latest.get("step", 0), epochs)
    return info, (f"{path}: its training is not finished (saved {where}; stopped, or still "
                  "running)")


# Where a run folder keeps its trained network, in order of preference: the authors' layout
# (their test.py reads <dir>/augment/models/best.pth.tar), then ours (best.pt exists only with a
# held-out split; checkpoint.pt is the final epoch, the paper's protocol).
RUN_FOLDER_MODELS = ("augment/models/best.pth.tar", "models/best.pth.tar", "best.pth.tar",
                     "augment/best.pt", "augment/checkpoint.pt", "best.pt", "checkpoint.pt")


def find_model(args: argparse.Namespace) -> tuple[Path, bool]:
    """(the network to test, whether it was looked up in a folder). --checkpoint /
    --load_model_dir: a file, or a run folder; none: this run's augment/. A best.pt that an
    earlier run of its folder left (checkpoint.pt beside it is another run's) is passed over,
    with a warning line."""
    if args.checkpoint is None:
        folder, names = Path(args.run_dir), ("augment/best.pt", "augment/checkpoint.pt")
    else:
        folder, names = Path(args.checkpoint), RUN_FOLDER_MODELS
        if not folder.is_dir():
            return folder, False  # a file (load_network names it when it is missing)
    for name in names:
        candidate = folder / name
        if not candidate.is_file():
            continue
        if candidate.name == "best.pt" and _stale_best(candidate):
            print(f"warning: {candidate} was left by an earlier run of {candidate.parent} (before "
                  f"an augment.py --force); testing {candidate.with_name('checkpoint.pt')}",
                  file=sys.stderr)
            continue
        return candidate, True
    hint = ("train it with augment.py (same --name and --save_dir) or pass --load_model_dir FILE"
            if args.checkpoint is None else "pass the checkpoint file itself")
    raise CheckpointError(f"no trained network in {folder}: looked for {', '.join(names)}; {hint}")


def _stale_best(best: Path) -> bool:
    """True when checkpoint.pt beside `best` belongs to another training run than it."""
    latest = _latest_beside(best)
    return latest is not None and not _same_run(load_checkpoint(best), latest)


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


def export(model: nn.Module, spec: dict, source: Path, path: Path, force: bool,
           finished: bool = True) -> None:
    """Write the network as one of our checkpoints; `finished` as the training it came from."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another --export path or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"format": FINAL_FORMAT, "network": spec, "model": model.state_dict(),
                     "epoch": None, "finished": finished, "source": str(source), "config": {}},
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


def evaluate_checkpoint(args: argparse.Namespace, ranks: distributed.Dist,
                        device: torch.device) -> int:
    seed_everything(args.seed, args.deterministic)
    checkpoint, looked_up = find_model(args)
    model, spec, source, state = read_network(checkpoint)
    status, problem = training_status(checkpoint, state)
    if problem and looked_up:
        raise CheckpointError(f"{problem}; finish it (rerun the same augment.py command: it "
                              f"resumes), or pass --checkpoint {checkpoint} to evaluate it "
                              "anyway as an unfinished result")
    if problem and ranks.is_main:
        print(f"warning: {problem}; this is not a final result: results.json says "
              '"finished": false', file=sys.stderr)
    with distributed.main_rank_first(ranks):  # rank 0 downloads a missing dataset
        test_set, info = get_dataset(args.dataset, args.data_dir, train=False, transform="eval",
                                     synthetic=config.synthetic_spec(args),
                                     download=not args.no_download)
    check_fits(spec, info, args.dataset, checkpoint)
    with hold_folder(args.stage_dir, ranks):  # one test run at a time writes its results
        return measure(args, ranks, device, checkpoint, model, spec, source, test_set, status)


class Progress:
    """`loader`, saying `test: batch k/n` on stdout every `every` batches (--print_freq) and
    after the last; everything else (len, close: utils.train.engine.closing_on_error) is the
    loader's own."""

    def __init__(self, loader, every: int):
        self.loader, self.every = loader, every

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        total = len(self.loader)
        for done, batch in enumerate(self.loader, 1):
            yield batch
            if done % self.every == 0 or done == total:
                print(f"test: batch {done}/{total}", flush=True)


def nonfinite_weights(model: nn.Module) -> list[str]:
    """The names of the network's float tensors that hold a NaN or an infinity."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def measure(args: argparse.Namespace, ranks: distributed.Dist, device: torch.device,
            checkpoint: Path, model: nn.Module, spec: dict, source: str, test_set,
            status: dict) -> int:
    """Export (--export), evaluate, and write results.json (rank 0), `status` included
    (training_status); NaN or infinite figures are written as null, with one warning line."""
    if args.export and ranks.is_main:
        export(model, spec, checkpoint, Path(args.export), args.force, status["finished"])
        print(f"exported {checkpoint} ({source}) to {args.export}")
    count = subset_size(len(test_set), args.subset)
    loader = make_loader(test_set, distributed.shard(list(range(count)), ranks), args.batch_size,
                         shuffle=False, **loader_options(device, args.num_workers))
    if ranks.is_main:
        loader = Progress(loader, args.print_freq)
    runtime = Runtime.for_stage(args, device, "final", ranks,
                                lambda m: print(m, file=sys.stderr))
    model = speed.prepare(model.to(device), runtime.speed, device)
    stats = evaluate(model, loader, nn.CrossEntropyLoss(), runtime)
    if not ranks.is_main:
        return 0
    total, params = count_params(model), count_params_without_aux(model)
    results = {"checkpoint": str(checkpoint), "source": source, "dataset": args.dataset,
               "images": count,
               "test_top1": stats["top1"], "test_top5": stats["top5"], "test_loss": stats["loss"],
               "params_millions": round(params / 1e6, 6),  # exact: every parameter
               "params_authors_unit": round(authors_megabytes(params), 6),
               "params_with_aux_authors_unit": round(authors_megabytes(total), 6),
               "images_per_s": round(stats["images_per_s"], 1), **status, **run_info(device)}
    out = Path(args.stage_dir)
    nulls = write_json(out / "results.json", results)
    if nulls:
        broken = nonfinite_weights(model)
        cause = (f"{len(broken)} of its weight tensors hold NaN or infinite values (e.g. "
                 f"{broken[0]}: a diverged training?)" if broken else "the network overflows")
        print(f"warning: {checkpoint}: {cause}; {', '.join(nulls)} not a number, written as null "
              f"in {out / 'results.json'}", file=sys.stderr)
    print(f"{checkpoint} ({source}): test top1 {stats['top1']:.2f}% top5 {stats['top5']:.2f}% "
          f"loss {stats['loss']:.4f}; {params_text(params)}M parameters without the auxiliary "
          f"head = {params_text(params, 2 ** 20)}M in the authors' unit (parameters / 2^20; "
          f"{params_text(total, 2 ** 20)}M with the head); "
          f"{stats['images_per_s']:.1f} images/s; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
