"""StacNAS search: `--stage search1` (operation groups), `--stage search2` (operations inside
the groups search1 chose), or `--stage darts` (the DARTS baseline).

    python search.py --stage search1 --name exp --dataset cifar10
    python search.py --stage search2 --name exp --dataset cifar10   # reads exp/search1/alphas.json

Writes into <save_dir>/<name>/<stage>/: config.json, log.txt, metrics.jsonl, tb/,
checkpoint.pt (resumable), best.pt (with a held-out split: the supernet of the best held-out
epoch, which feature.py reads), alphas/epoch_NNN.json, alphas.json, genotype.json,
genotype.txt, plots/. Rerunning the same command resumes from the last completed epoch.
"""
from __future__ import annotations

from utils.runtime.signals import keep_while_starting

if __name__ == "__main__":  # before the imports below (torch: seconds), so that a stop signal
    keep_while_starting()   # meanwhile is acted on, with one line, once the script runs

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

import config
import genotypes as gt
from models.factory import build_supernet, stage_candidates
from utils.runtime import distributed, speed
from utils.runtime.context import Runtime
from utils.train.architect import Architect, make_optimizers
from utils.analysis import features as ft
from utils.io.checkpoint import SEARCH_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from utils.io.checkpoint_fields import check_search_checkpoint, require_kind
from utils.runtime.cli import run_guarded, seed_everything
from utils.data.datasets import get_dataset
from utils.data.loaders import infinite, loader_options, make_loader
from utils.data.splits import check_split, split_indices, subset_size
from utils.runtime.distributed import Dist
from utils.train.engine import Interrupted, evaluate, format_seconds, train_epoch
from utils.io.files import naming, write_json, write_text
from utils.io.genotype_files import (check_stage1_alphas, format_genotype, load_alphas, load_groups,
                                     save_alphas, save_genotype, save_groups)
from utils.runtime.logging import MetricsWriter
from utils.analysis.plots import plot_alpha_history, plot_genotype, softmax
from utils.io.runconfig import config_dict
from utils.train.schedules import lr_schedule
from utils.runtime.signals import GracefulStop, StopNow
from utils.train.stage import (NOTHING_TO_SAVE, StageRun, check_same_config, check_stage_finished,
                               new_run_id, resume_rng, rng_entries)
from utils.io.genotype_checks import genotype_to_dict
from utils.train.groups import identity_group


def main(argv: list[str] | None = None) -> int:
    args = config.parse(config.search_parser(), config.resolve_search, argv)
    return run_guarded(lambda: run(args), args.debug)


def stage1_alphas(args: argparse.Namespace) -> dict:
    path = Path(args.search1_dir) / "alphas.json"
    if not path.is_file():
        raise gt.GenotypeError(f"{path}: not found; run `search.py --stage search1` for this run "
                               "first, or point --search1_dir at a finished search1 folder")
    alphas = load_alphas(path)
    check_stage1_alphas(alphas, path, Path(args.search1_dir) / "groups.json")
    if not gt.is_shared(alphas) and len(alphas) != args.num_cells:
        raise gt.GenotypeError(f"{path}: per-cell alphas of {len(alphas)} cells cannot seed a "
                               f"{args.num_cells}-cell search2; pass --num_cells {len(alphas)}")
    return alphas


def stage_groups(args: argparse.Namespace) -> dict:
    """search1: --groups or the paper's; search2: the groups its search1 used (groups.json)."""
    if args.stage == "search1" and args.groups:
        return load_groups(args.groups)
    if args.stage == "search2":
        path = Path(args.search1_dir) / "groups.json"
        groups = load_groups(path) if path.is_file() else gt.GROUPS
        return identity_group(groups, args.identity_group)
    return gt.GROUPS


def alphas_choice(args: argparse.Namespace, has_held_out: bool) -> str:
    """--alphas_from: "best" (the authors' alphas_best: the epoch of best held-out top-1) or
    "last"; auto = best for the StacNAS stages with a held-out split, the last epoch otherwise."""
    if args.alphas_from != "auto":
        return args.alphas_from
    return "best" if has_held_out and args.stage in ("search1", "search2") else "last"


def alpha_entropy(alphas: dict) -> float:
    """Mean entropy (nats) of softmax(alpha) over all edges: falls as the search decides."""
    values = [-sum(p * math.log(p) for p in softmax(edge["alphas"]) if p > 0)
              for nodes in alphas.values() for node in nodes for edge in node]
    return sum(values) / len(values)


class Search:
    """Everything one search stage holds: data, supernet, optimisers, outputs."""

    def __init__(self, args: argparse.Namespace, log, device: torch.device, ranks: Dist):
        self.args, self.log = args, log
        self.dir = Path(args.stage_dir)
        self.device, self.ranks = device, ranks
        # each rank its own draws (drop path, augmentation); DDP gives all rank 0's network
        seed_everything(args.seed + ranks.rank, args.deterministic)
        # its alphas.json and groups.json are search1's result only then
        if args.stage == "search2":
            check_stage_finished(args.search1_dir, "finish it first (rerun its search.py --stage "
                                 "search1 command), or point --search1_dir at a finished one")
        self.run_id = new_run_id()  # kept through resumes (resume)
        with distributed.main_rank_first(ranks):  # rank 0 downloads a missing dataset
            self.train_set, info = get_dataset(args.dataset, args.data_dir, train=True,
                                               transform="train", cutout=args.cutout,
                                               auto_aug=args.auto_aug, log=log,
                                               synthetic=config.synthetic_spec(args),
                                               download=not args.no_download)
        n = subset_size(len(self.train_set), args.subset)
        self.train_idx, self.valid_idx = split_indices(n, args.train_ratio, args.seed)
        check_split(len(self.train_idx), len(self.valid_idx), flag="--train_ratio",
                    value=args.train_ratio, images=n, train_share=True, processes=ranks.world_size,
                    held_out_for={"bilevel": "--optimization bilevel"}.get(args.optimization) or
                    ("--alphas_from best" if args.alphas_from == "best" else None))
        # one loader each for the stage (set_epoch picks the epoch; the workers persist)
        loading = loader_options(device, args.num_workers)
        shuffled = dict(shuffle=True, replicas=(ranks.rank, ranks.world_size), **loading)
        self.train_loader = make_loader(self.train_set, self.train_idx, args.batch_size,
                                        seed=args.seed, **shuffled)
        self.valid_loader = (make_loader(self.train_set, self.valid_idx, args.batch_size,
                                         seed=args.seed + 1, **shuffled)
                             if args.optimization == "bilevel" else None)
        self.held_out_loader = (make_loader(self.train_set,
                                            distributed.shard(self.valid_idx, ranks),
                                            args.batch_size, shuffle=False, **loading)
                                if self.valid_idx else None)
        groups = stage_groups(args)
        candidates = stage_candidates(args.stage, args.num_cells, args.alpha_share,
                                      stage1_alphas(args) if args.stage == "search2" else None,
                                      groups)
        # device, speed plan, fp16's scaler and process group: for the architect and the engine
        self.runtime = Runtime.for_stage(args, device, "search", ranks, log)
        self.model = speed.prepare(build_supernet(candidates, **info.network_shape(),
                                                  init_channels=args.init_channels,
                                                  num_cells=args.num_cells,
                                                  auxiliary=args.aux_weight > 0).to(self.device),
                                   self.runtime.speed, device)
        self.w_opt, self.a_opt = make_optimizers(
            self.model, w_lr=args.w_lr, w_momentum=args.w_momentum,
            w_weight_decay=args.w_weight_decay, a_lr=args.alpha_lr,
            a_weight_decay=args.alpha_weight_decay)
        self.scheduler = lr_schedule(self.w_opt, args.epochs, args.w_lr, args.w_lr_min,
                                     power=args.power_lr)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
        self.best = {"epoch": None, "valid_top1": None}  # best held-out epoch so far
        self.architect = Architect(self.model, self.w_opt, self.a_opt, self.criterion,
                                   mode=args.optimization, unrolled=args.unrolled,
                                   grad_clip=args.grad_clip, aux_weight=args.aux_weight,
                                   forward_model=speed.maybe_compile(
                                       distributed.wrap(self.model, ranks, device),
                                       self.runtime.speed),
                                   runtime=self.runtime)
        if args.stage == "search1" and ranks.is_main:
            save_groups(groups, self.dir / "groups.json")  # atomic; an error names the file
        log(f"{args.stage}: {len(self.train_idx)} training / {len(self.valid_idx)} held-out "
            "images, "
            f"{args.num_cells} cells, {sum(p.numel() for p in self.model.weights())} weights, "
            f"{sum(p.numel() for p in self.model.alphas())} alphas, {args.optimization}"
            f"{' (unrolled)' if args.unrolled else ''}, device {self.device}"
            + distributed.describe(ranks))

    # -- checkpoints --------------------------------------------------------------------
    def state(self, epoch: int, finished: bool = False, step: int = 0) -> dict:
        """`epoch` completed epochs (+ `step` steps of the next one, after an interruption).
        Every rank calls it: rank 0's result holds every rank's RNG states (rng_entries)."""
        return {"format": SEARCH_FORMAT, "epoch": epoch, "step": step, "finished": finished,
                "run": self.run_id, "config": config_dict(self.args),
                "model": self.model.state_dict(),
                "candidates": self.model.candidates, "w_optimizer": self.w_opt.state_dict(),
                "a_optimizer": self.a_opt.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": None if self.runtime.scaler is None else self.runtime.scaler.state_dict(),
                **rng_entries(self.ranks, self.device),
                "genotype": genotype_to_dict(self.model.genotype()), "best": dict(self.best)}

    def save_best(self, state: dict) -> None:
        """With a held-out split, best.pt (features.BEST_FILE) beside checkpoint.pt: `state`
        when its epoch is the best held-out epoch so far, written like the checkpoint (atomic,
        fsynced), after it. feature.py analyses it (the authors' feature.py reads the stage-1
        model of the best held-out epoch). A stop between the two writes leaves checkpoint.pt
        holding that epoch; the resume writes best.pt from it (repair_best)."""
        if (self.ranks.is_main and self.valid_idx
                and ft.holds_epoch(state, self.run_id, self.best["epoch"])):
            save_checkpoint(state, self.dir / ft.BEST_FILE, keep_previous=False)

    def repair_best(self, state: dict) -> None:
        """On resume from a checkpoint saved at the end of the best held-out epoch: write
        best.pt from it unless best.pt already holds that epoch of this run (it is missing,
        unreadable, or older when a stop came between the checkpoint and best.pt)."""
        if not (self.ranks.is_main and self.valid_idx and self.best.get("epoch") is not None
                and ft.holds_epoch(state, state.get("run"), self.best["epoch"])):
            return
        path = self.dir / ft.BEST_FILE
        try:
            held = ft.holds_epoch(load_checkpoint(path), state.get("run"), self.best["epoch"])
        except CheckpointError:
            held = False
        if not held:
            save_checkpoint(state, path, keep_previous=False)
            self.log(f"{path} written from the resumed checkpoint (epoch {self.best['epoch']}, "
                     "the best held-out epoch)")

    def resume(self, path: Path) -> int:
        state = require_kind(load_checkpoint(path, self.device), path, SEARCH_FORMAT,
                             self.args.stage)
        state = check_search_checkpoint(state, path)
        check_same_config(state, self.args, path)
        if state["candidates"] != self.model.candidates:
            raise ValueError(f"{path}: its supernet has other candidate ops than this command "
                             "builds (changed stage-1 alphas or --groups?); use a new --name")
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.a_opt.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.runtime.scaler is not None and state.get("scaler"):
            self.runtime.scaler.load_state_dict(state["scaler"])
        resume_rng(state, path, self.ranks, self.device, self.log)
        self.best = state.get("best", self.best)
        self.run_id = state.get("run") or self.run_id
        self.repair_best(state)
        return state["epoch"], state.get("step", 0)

    # -- one epoch ----------------------------------------------------------------------
    def valid_batches(self, epoch: int, first_step: int = 0):
        """Bilevel's held-out batches for the alpha steps of `epoch`: its order, cycled;
        resuming at `first_step`, the stream goes on where the interrupted one was."""
        loader = self.valid_loader
        loader.set_epoch(epoch)
        loader.set_epoch(epoch, first_step % max(len(loader), 1))
        yield from loader
        loader.set_epoch(epoch)
        yield from infinite(loader)

    def train(self, epoch: int, first_step: int = 0, should_stop=None) -> dict:
        """One epoch (from `first_step` on when resuming mid-epoch)."""
        a = self.args
        self.model.train()
        if a.optimization == "bilevel":
            valid = self.valid_batches(epoch, first_step)

            def step(x, y):
                return self.architect.step(x, y, *self.runtime.batch(*next(valid)))
        else:
            step = self.architect.step
        self.train_loader.set_epoch(epoch, first_step)
        stats = train_epoch(self.train_loader, step, runtime=self.runtime, epoch=epoch,
                            epochs=a.epochs, log=self.log, print_freq=a.print_freq,
                            should_stop=should_stop, first_step=first_step)
        if self.runtime.distributed:
            stats["alpha_rank_divergence"] = distributed.max_divergence(list(self.model.alphas()),
                                                                        self.ranks)
        return stats

    def held_out(self, epoch: int) -> dict:
        if not self.valid_idx:
            return {}
        stats = evaluate(self.model, self.held_out_loader, self.criterion, self.runtime)
        if self.best["valid_top1"] is None or stats["top1"] > self.best["valid_top1"]:
            self.best = {"epoch": epoch + 1, "valid_top1": stats["top1"]}
        return {f"valid_{k}": v for k, v in stats.items() if k != "images_per_s"}

    def write_epoch(self, epoch: int, stats: dict, lr: float, metrics: MetricsWriter) -> None:
        if not self.ranks.is_main:
            return
        alphas = self.model.alphas_data()
        path = self.dir / "alphas" / f"epoch_{epoch + 1:03d}.json"
        with naming(path.parent):
            path.parent.mkdir(exist_ok=True)
        save_alphas(alphas, path)
        genotype = self.model.genotype()
        record = {"epoch": epoch + 1, "lr": lr, **stats,
                  "alpha_entropy": alpha_entropy(alphas),
                  "skip_connections": gt.count_ops(genotype, "skip_connect")}
        metrics.write(record, epoch + 1)
        if metrics.tb is not None:
            for name, param in self.model.named_alphas():
                metrics.tb.add_histogram(f"alphas/{name}", torch.softmax(param.detach(), -1),
                                         epoch + 1)
            metrics.tb.add_text("genotype", format_genotype(genotype), epoch + 1)
        self.log(f"epoch {epoch + 1}/{self.args.epochs} done: train loss {stats['loss']:.4f} "
                 f"top1 {stats['top1']:.2f}%"
                 + (f", held-out top1 {stats['valid_top1']:.2f}%" if "valid_top1" in stats else "")
                 + f", {stats['seconds']:.0f}s; genotype {format_genotype(genotype)}")

    def selected_alphas(self) -> tuple[dict, dict]:
        """(alphas handed to the next stage, selection.json): the last epoch's, or with
        --alphas_from best those of the best held-out epoch (the authors' alphas_best)."""
        last = self.args.epochs
        if (alphas_choice(self.args, bool(self.valid_idx)) == "best"
                and self.best["epoch"] is not None):
            epoch = self.best["epoch"]
            return (load_alphas(self.dir / "alphas" / f"epoch_{epoch:03d}.json"),
                    {"alphas_epoch": epoch, "last_epoch": last,
                     "valid_top1": self.best["valid_top1"],
                     "rule": "best held-out top-1 (the authors' alphas_best)"})
        return self.model.alphas_data(), {"alphas_epoch": last, "last_epoch": last,
                                          "rule": "last epoch"}

    def finish(self) -> None:
        if not self.ranks.is_main:
            return
        alphas, selection = self.selected_alphas()
        genotype = gt.derive_genotype(alphas)
        write_json(self.dir / "selection.json", selection)
        self.log("alphas.json and genotype.json take the alphas of epoch "
                 f"{selection['alphas_epoch']} of {selection['last_epoch']} ({selection['rule']}"
                 + (f", held-out top1 {selection['valid_top1']:.2f}%)" if "valid_top1" in selection
                    else ")"))
        save_alphas(alphas, self.dir / "alphas.json")
        save_genotype(genotype, self.dir / "genotype.json")
        write_text(self.dir / "genotype.txt", format_genotype(genotype) + "\n")
        plots = self.dir / "plots"
        with naming(plots):  # the figures' writers do not name their files
            plots.mkdir(exist_ok=True)
            plot_genotype(genotype, plots)
            plot_alpha_history(sorted((self.dir / "alphas").glob("epoch_*.json")), plots)
        self.log(f"final genotype: {format_genotype(genotype)}")


def run(args: argparse.Namespace) -> int:
    """The stage, from wherever its last run stopped. A stop signal before the epoch loop stops
    at once (StopNow), in the loop saves a checkpoint at the next step (GracefulStop), and
    while finishing stops at once with the last epoch's checkpoint kept (StageRun.finish)."""
    with StopNow(NOTHING_TO_SAVE):
        return run_stage(args)


def run_stage(args: argparse.Namespace) -> int:
    stage = StageRun(args, args.stage, "genotype.json")
    if stage.finished():
        return 0
    with stage:
        search = Search(args, stage.log, stage.device, stage.ranks)
        start, first_step, metrics = stage.begin(search)
        epoch_times = []
        with GracefulStop() as stop:
            try:
                for epoch in range(start, args.epochs):
                    lr = search.scheduler.get_last_lr()[0]
                    stats = search.train(epoch, first_step if epoch == start else 0,
                                         lambda: stop.requested(stage.ranks))
                    stats.update(search.held_out(epoch))
                    search.scheduler.step()
                    search.write_epoch(epoch, stats, lr, metrics)
                    epoch_times.append(stats["seconds"])
                    remaining = sum(epoch_times) / len(epoch_times) * (args.epochs - epoch - 1)
                    state = search.state(epoch + 1)
                    stage.save(state)
                    search.save_best(state)
                    stage.log(f"checkpoint saved; stage ETA {format_seconds(remaining)}")
            except Interrupted as stopped:
                return stage.interrupted(search, stopped, stop, metrics)

            def finish() -> None:
                final = search.state(args.epochs, finished=True)  # every rank, before the plots
                search.finish()
                stage.save(final, keep_previous=False)
                stage.log(f"done: {stage.dir / 'genotype.json'}")

            return stage.finish(stop, metrics, finish)


if __name__ == "__main__":
    sys.exit(main())
