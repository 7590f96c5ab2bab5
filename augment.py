"""Train a genotype from scratch (StacNAS / DARTS evaluation protocol) and evaluate it.

    python augment.py --name exp --dataset cifar10                 # exp/search2/genotype.json
    python augment.py --name darts_v2 --arch DARTS_V2 --dataset cifar10
    python augment.py --name mine --genotype genotype.json --dataset fashionmnist --epochs 10

Never selects on the test set: by default it trains on the whole training set and keeps the
final epoch (the test accuracy of each epoch is logged for monitoring, labelled test_*);
with --valid_ratio R a held-out part of the training set picks best.pt.
Writes into <save_dir>/<name>/augment/: config.json, log.txt, metrics.jsonl, tb/,
checkpoint.pt (last, resumable), best.pt (with --valid_ratio), results.json.
"""
from __future__ import annotations

from utils.runtime.signals import keep_while_starting

if __name__ == "__main__":  # before the imports below (torch: seconds), so that a stop signal
    keep_while_starting()   # meanwhile is acted on, with one line, once the script runs

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import config
import genotypes as gt
from models.summary import count_macs, count_params_without_aux
from utils.runtime import distributed, speed
from utils.runtime.context import Runtime
from utils.io.checkpoint import FINAL_FORMAT, load_checkpoint, save_checkpoint
from utils.io.checkpoint_fields import check_final_checkpoint, require_kind
from utils.runtime.cli import run_guarded, seed_everything
from utils.data.datasets import get_dataset
from utils.data.loaders import loader_options, make_loader
from utils.data.splits import check_split, split_indices, subset_size
from utils.runtime.distributed import Dist
from utils.train.engine import Interrupted, evaluate, loss_and_logits, optimizer_step, train_epoch
from utils.io.files import write_json
from utils.io.genotype_files import format_genotype, load_genotype
from utils.io.network_spec import build_from_spec, network_spec
from utils.runtime.logging import describe_device, params_text
from utils.io.runconfig import config_dict
from utils.train.schedules import lr_schedule
from utils.runtime.signals import GracefulStop, StopNow
from utils.train.stage import (NOTHING_TO_SAVE, StageRun, check_same_config, check_stage_finished,
                               new_run_id, resume_rng, rng_entries)


def main(argv: list[str] | None = None) -> int:
    args = config.parse(config.augment_parser(), config.resolve_augment, argv)
    return run_guarded(lambda: run(args), args.debug)


def chosen_genotype(args: argparse.Namespace):
    """--arch NAME or the --genotype file."""
    if args.arch:
        return gt.get_named_genotype(args.arch)
    # a search's genotype.json is its result only once that search is finished
    check_stage_finished(Path(args.genotype).parent,
                         "finish that search first (rerun its search.py command), or pass "
                         "another --genotype FILE or --arch NAME")
    if not Path(args.genotype).is_file():
        raise gt.GenotypeError(f"{args.genotype}: not found; pass --genotype FILE or --arch NAME, "
                               "or run search.py --stage search2 for this --name first")
    return load_genotype(args.genotype)


class Augment:
    """Data, network, optimiser and outputs of one training run."""

    def __init__(self, args: argparse.Namespace, log, device: torch.device, ranks: Dist):
        self.args, self.log = args, log
        self.dir = Path(args.stage_dir)
        self.device, self.ranks = device, ranks
        # each rank its own draws (drop path, augmentation); DDP gives all rank 0's network
        seed_everything(args.seed + ranks.rank, args.deterministic)
        genotype = chosen_genotype(args)
        self.run_id = new_run_id()  # kept through resumes (resume); best.pt carries it too
        spec_kwargs = dict(synthetic=config.synthetic_spec(args), download=not args.no_download,
                           log=log)
        with distributed.main_rank_first(ranks):  # rank 0 downloads a missing dataset
            self.train_set, info = get_dataset(args.dataset, args.data_dir, train=True,
                                               transform="train", cutout=args.cutout,
                                               auto_aug=args.auto_aug, **spec_kwargs)
        self.test_set, _ = get_dataset(args.dataset, args.data_dir, train=False, transform="eval",
                                       **spec_kwargs)
        n = subset_size(len(self.train_set), args.subset)
        if args.valid_ratio is None:
            self.train_idx, self.valid_idx = list(range(n)), []
        else:
            self.train_idx, self.valid_idx = split_indices(n, 1 - args.valid_ratio, args.seed)
        check_split(len(self.train_idx), len(self.valid_idx), flag="--valid_ratio",
                    value=args.valid_ratio, images=n, train_share=False, processes=ranks.world_size,
                    held_out_for=None if args.valid_ratio is None else "picking best.pt")
        # one loader each for the stage (set_epoch picks the epoch; the workers persist)
        loading = loader_options(device, args.num_workers)
        self.train_loader = make_loader(self.train_set, self.train_idx, args.batch_size,
                                        shuffle=True, seed=args.seed,
                                        replicas=(ranks.rank, ranks.world_size), **loading)
        evaluated = {"test": (self.test_set, list(range(len(self.test_set))))}
        if self.valid_idx:  # the held-out training images, without augmentation
            eval_train_set, _ = get_dataset(args.dataset, args.data_dir, train=True,
                                            transform="eval", **spec_kwargs)
            evaluated["valid"] = (eval_train_set, self.valid_idx)
        self.eval_loaders = {split: make_loader(data, distributed.shard(indices, ranks),
                                                args.batch_size, shuffle=False, **loading)
                             for split, (data, indices) in evaluated.items()}
        self.spec = network_spec(genotype, **info.network_shape(), init_channels=args.init_channels,
                                 num_cells=args.num_cells, auxiliary=args.aux_weight > 0,
                                 keep_zero=args.keep_zero)
        self.model = build_from_spec(self.spec).to(self.device)
        if args.sync_bn and device.type != "cuda":
            # a refusal here would come after torchrun started every process, under its own
            # 40-line report; a no-op with one line is what the flag can mean on the CPU
            log(f"note: --sync_bn has no effect on {device.type}: PyTorch's SyncBatchNorm runs "
                "on CUDA only, so each process normalises with its own batch statistics")
        elif args.sync_bn and ranks.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # device, speed plan, fp16's scaler and process group: for the engine
        self.runtime = Runtime.for_stage(args, device, "final", ranks, log)
        speed.prepare(self.model, self.runtime.speed, device)
        self.forward_model = speed.maybe_compile(distributed.wrap(self.model, ranks, device),
                                                 self.runtime.speed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr,
                                         momentum=args.momentum, weight_decay=args.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, args.epochs, args.lr, args.lr_min,
                                     power=args.power_lr,
                                     gamma=args.lr_gamma if args.dataset == "imagenet" else None)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.best = {"valid_top1": None, "epoch": None}
        self.elapsed = 0.0
        self.last_test: tuple[int, dict] | None = None  # (epoch, figures) of the last test run
        log(f"augment: {format_genotype(genotype)}")
        log(f"{len(self.train_idx)} training / {len(self.valid_idx)} held-out / "
            f"{len(self.test_set)} test images; {args.num_cells} cells, {args.init_channels} "
            f"channels, {params_text(count_params_without_aux(self.model))}M parameters without "
            f"the auxiliary head; device {self.device}"
            + distributed.describe(ranks))

    # -- checkpoints --------------------------------------------------------------------
    def state(self, epoch: int, finished: bool = False, step: int = 0) -> dict:
        """`epoch` completed epochs (+ `step` steps of the next one, after an interruption).
        Every rank calls it: rank 0's result holds every rank's RNG states (rng_entries)."""
        return {"format": FINAL_FORMAT, "epoch": epoch, "step": step, "finished": finished,
                "run": self.run_id, "config": config_dict(self.args), "network": self.spec,
                "dataset": self.args.dataset, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": None if self.runtime.scaler is None else self.runtime.scaler.state_dict(),
                **rng_entries(self.ranks, self.device), "best": dict(self.best),
                "elapsed": self.elapsed}

    def resume(self, path: Path) -> int:
        state = require_kind(load_checkpoint(path, self.device), path, FINAL_FORMAT)
        state = check_final_checkpoint(state, path, resume=True)
        check_same_config(state, self.args, path)
        if state.get("network") != self.spec:
            raise ValueError(f"{path}: its network differs from the one this command builds "
                             "(changed genotype file?); use a new --name")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.runtime.scaler is not None and state.get("scaler"):
            self.runtime.scaler.load_state_dict(state["scaler"])
        resume_rng(state, path, self.ranks, self.device, self.log)
        self.best, self.elapsed = state["best"], state["elapsed"]
        self.run_id = state.get("run") or self.run_id
        return state["epoch"], state.get("step", 0)

    # -- one epoch ----------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor):
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            loss, logits = loss_and_logits(self.forward_model, x, y, self.criterion,
                                           self.args.aux_weight)
        optimizer_step(loss, [self.optimizer], self.model.parameters(), self.args.grad_clip,
                       self.runtime.scaler)
        return loss.detach(), logits.detach()

    def train(self, epoch: int, first_step: int = 0, should_stop=None) -> dict:
        """One epoch (from `first_step` on when resuming mid-epoch)."""
        a = self.args
        self.model.drop_path_prob = a.drop_path * epoch / a.epochs
        self.model.train()
        self.train_loader.set_epoch(epoch, first_step)
        return train_epoch(self.train_loader, self.step, runtime=self.runtime, epoch=epoch,
                           epochs=a.epochs, log=self.log, print_freq=a.print_freq,
                           should_stop=should_stop, first_step=first_step)

    def evaluate(self, split: str) -> dict:
        """The network's figures on "valid" (the held-out part of the training set) or "test"."""
        return evaluate(self.model, self.eval_loaders[split], self.eval_criterion, self.runtime)

    def epoch_record(self, epoch: int) -> dict:
        """Held-out (keeps best.pt) and test (monitoring only) figures after `epoch`."""
        a, record = self.args, {}
        if self.valid_idx:
            valid = self.evaluate("valid")
            record.update({f"valid_{k}": v for k, v in valid.items() if k != "images_per_s"})
            if self.best["valid_top1"] is None or valid["top1"] > self.best["valid_top1"]:
                self.best = {"valid_top1": valid["top1"], "epoch": epoch + 1}
        if (epoch + 1) % a.test_every == 0 or epoch + 1 == a.epochs:
            self.last_test = (epoch + 1, self.evaluate("test"))
            record.update({f"test_{k}": v for k, v in self.last_test[1].items()
                           if k != "images_per_s"})
        return record

    def save_best(self, state: dict) -> None:
        """best.pt: the end-of-epoch `state` when that epoch's held-out score is the best so far
        (rank 0 writes; before checkpoint.pt, whose "best" entry then never names a best.pt
        that is not there yet)."""
        if self.best["epoch"] == state["epoch"] and self.ranks.is_main:
            save_checkpoint(state, self.dir / "best.pt", keep_previous=False)

    def results(self, test: dict) -> dict:
        return {"best_valid_top1": self.best["valid_top1"], "best_epoch": self.best["epoch"],
                "test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                "params_millions": round(count_params_without_aux(self.model) / 1e6, 6),
                "macs": count_macs(self.model, self.spec["in_channels"], self.spec["input_size"]),
                "epochs": self.args.epochs,
                "wall_seconds": round(self.elapsed, 1), "device": describe_device(self.device),
                "genotype": self.spec["genotype"], "dataset": self.args.dataset,
                "run": self.run_id, "finished": True}


def run(args: argparse.Namespace) -> int:
    """The training, from wherever its last run stopped. A stop signal before the epoch loop
    stops at once (StopNow), in the loop saves a checkpoint at the next step (GracefulStop),
    and during the final test stops at once with the last epoch's checkpoint kept
    (StageRun.finish: a rerun resumes after it and finishes)."""
    with StopNow(NOTHING_TO_SAVE):
        return run_stage(args)


def run_stage(args: argparse.Namespace) -> int:
    stage = StageRun(args, "augment", "results.json")
    if stage.finished():
        return 0
    with stage:
        job = Augment(args, stage.log, stage.device, stage.ranks)
        start, first_step, metrics = stage.begin(job)
        with GracefulStop() as stop:
            try:
                for epoch in range(start, args.epochs):
                    began = time.perf_counter()
                    lr = job.scheduler.get_last_lr()[0]
                    stats = job.train(epoch, first_step if epoch == start else 0,
                                      lambda: stop.requested(stage.ranks))
                    stats.update(job.epoch_record(epoch))
                    job.scheduler.step()
                    job.elapsed += time.perf_counter() - began
                    metrics.write({"epoch": epoch + 1, "lr": lr,
                                   "drop_path_prob": job.model.drop_path_prob, **stats}, epoch + 1)
                    stage.log(f"epoch {epoch + 1}/{args.epochs}: train top1 {stats['top1']:.2f}%"
                              + (f", held-out top1 {stats['valid_top1']:.2f}%"
                                 if "valid_top1" in stats else "")
                              + (f", test top1 {stats['test_top1']:.2f}% (monitoring)"
                                 if "test_top1" in stats else ""))
                    state = job.state(epoch + 1)  # on every rank: it gathers their RNG states
                    job.save_best(state)
                    stage.save(state)
            except Interrupted as stopped:
                return stage.interrupted(job, stopped, stop, metrics)
            return stage.finish(stop, metrics, lambda: finish(job, stage))


def finish(job: Augment, stage: StageRun) -> None:
    """The final test (unless the last epoch ran it), results.json, the checkpoint marked
    finished; every rank (the test is sharded), rank 0 writes."""
    args = job.args
    if job.last_test is not None and job.last_test[0] == args.epochs:
        test = job.last_test[1]
    else:
        test = job.evaluate("test")
    if stage.ranks.is_main:
        nulls = write_json(stage.dir / "results.json", job.results(test))
        if nulls:
            stage.log(f"warning: {', '.join(nulls)} not a number (NaN or infinite: the network "
                      f"diverged?); written as null in {stage.dir / 'results.json'}")
    stage.save(job.state(args.epochs, finished=True), keep_previous=False)
    stage.log(f"final test top1 {test['top1']:.2f}% top5 {test['top5']:.2f}% "
              f"({params_text(count_params_without_aux(job.model))}M parameters without the "
              f"auxiliary head); {stage.dir / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
