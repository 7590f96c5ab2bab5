"""What every stage script does around its loop: detect a finished stage, hold the stage folder
for one run at a time, check that a resumed run has the configuration it was started with, stop
cleanly on SIGTERM / SIGINT / SIGHUP at any moment (in the loop: a checkpoint at the next step;
before it or while finishing: at once, nothing lost), and trust another stage's outputs only
once that stage is finished (README "Interruptions and bad input")."""
from __future__ import annotations

import argparse
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from utils.runtime import distributed
from utils.io.checkpoint import (CheckpointError, load_checkpoint, previous_path, rng_state,
                                 set_rng_state)
from utils.io.checkpoint_values import check_bounded
from utils.io.files import naming, sync_folder
from utils.runtime.lock import FolderLock, hold_folder
from utils.io.runconfig import config_dict, config_differences, save_config
from utils.runtime.signals import GracefulStop, StopNow, Stopped

# What a stop before the training loop (or after the stage is done) says: nothing needs saving.
NOTHING_TO_SAVE = "nothing needed saving at this moment; rerun the same command to go on"
# A forced rerun of a finished stage moves the old run's outputs here (<stage>/replaced/run_<k>).
REPLACED = "replaced"


def finished_config(stage_dir: str | Path, output: str) -> dict | None:
    """The configuration a finished stage ran with (`<stage_dir>/checkpoint.pt` marked finished
    and `output` present); None when the stage is not finished."""
    stage_dir = Path(stage_dir)
    path = stage_dir / "checkpoint.pt"
    if not path.is_file() or not (stage_dir / output).is_file():
        return None
    state = load_checkpoint(path)
    check_bounded(state, path)
    if not state.get("finished"):
        return None
    config = state.get("config", {})
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config: is {type(config).__name__}, expected a dict")
    return config


def is_finished(stage_dir: str | Path, output: str) -> bool:
    """True when `<stage_dir>/checkpoint.pt` is marked finished and `output` exists."""
    return finished_config(stage_dir, output) is not None


def made_by_a_stage(folder: str | Path) -> bool:
    """True when a stage script has run in `folder` (it locks the folder before anything else,
    so its .lock file is there); False for a folder of files put there by hand."""
    return (Path(folder) / ".lock").is_file()


def check_stage_finished(folder: str | Path, fix: str) -> None:
    """Before a stage reads another stage's output (search2: search1's alphas.json and
    groups.json; augment: a search's genotype.json): a folder a stage script made must hold a
    checkpoint.pt marked finished, else one ValueError line naming the folder, how far it got
    and `fix`. Files put in a folder by hand (no .lock) are taken as they are."""
    folder = Path(folder)
    if not made_by_a_stage(folder):
        return
    path = folder / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{folder} is not finished (no checkpoint.pt: a run of it is starting, "
                         f"was stopped in its first epoch or is being redone with --force); "
                         f"{fix}")
    state = load_checkpoint(path)
    check_bounded(state, path)
    if state.get("finished") is True:
        return
    epochs = (state.get("config", {}).get("epochs") if isinstance(state.get("config"), dict)
              else None)
    got = progress_text(state.get("epoch"), state.get("step", 0), epochs)
    raise ValueError(f"{folder} is not finished (its checkpoint was saved {got}: a run of it was "
                     f"stopped or is still going), so its outputs are not its result; {fix}")


def progress_text(done: int, step: int = 0, epochs: int | None = None) -> str:
    """Where a checkpoint stands, as every message says it: epochs counted from 1, as the
    training log counts them (`epoch 3/50 step 10/20`). `done` epochs are complete and `step`
    steps of the next one: `in epoch 3 of 50, after step 5`; at an epoch's end, `after epoch 2
    of 50`; before any, `before epoch 1 of 50`. Values that are not counts are shown as given
    (a hand-edited checkpoint)."""
    of = "" if epochs is None else f" of {epochs}"
    if not isinstance(done, int) or isinstance(done, bool):
        return f"at epoch {done!r}{of}"
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        return f"in epoch {done + 1}{of}, after step {step}"
    return f"after epoch {done}{of}" if done > 0 else f"before epoch 1{of}"


def new_run_id() -> str:
    """An id for one training run from scratch; its checkpoints (and best.pt) carry it, so a
    file left by an earlier run of the same folder can be told apart."""
    return uuid.uuid4().hex[:12]


def set_aside(folder: str | Path) -> Path | None:
    """Move what a finished run left in `folder` (all but .lock, log.txt and earlier runs set
    aside) into `folder/replaced/run_<k>/`, the next free k, checkpoint.pt first (so that
    the stage reads as unfinished before its outputs go). Nothing is deleted. Returns the
    folder they went to (None when there was nothing)."""
    folder = Path(folder)
    keep = {".lock", "log.txt", REPLACED}
    entries = sorted((p for p in folder.iterdir() if p.name not in keep),
                     key=lambda p: (p.name != "checkpoint.pt", p.name))
    if not entries:
        return None
    k = 1
    while (folder / REPLACED / f"run_{k}").exists():
        k += 1
    target = folder / REPLACED / f"run_{k}"
    with naming(target):
        target.mkdir(parents=True)
        for entry in entries:
            os.replace(entry, target / entry.name)
    sync_folder(folder)
    return target


def check_same_config(state: dict, args: argparse.Namespace, path: str | Path) -> None:
    """Refuse to resume with other options than the run was started with (unless --force)."""
    diffs = config_differences(state["config"], config_dict(args))
    if diffs and not args.force:
        raise ValueError(f"{path} was written with other options ({'; '.join(diffs)}); rerun "
                         "with the same options, --force to resume anyway, or a new --name")


def rng_entries(ranks: distributed.Dist, device) -> dict:
    """A checkpoint's random-generator entries: "rng_ranks", every rank's states in rank order
    (each rank draws its own drop-path masks and augmentations: seed + rank), "rng", rank 0's
    (what older code reads), and "world_size". Every rank calls it: the states are gathered to
    rank 0, whose result is the one saved (the other ranks get their own state alone)."""
    own = rng_state(device)
    states = distributed.gather(own, ranks)
    if states is None:
        return {"rng": own, "world_size": ranks.world_size}
    return {"rng": states[0], "rng_ranks": states, "world_size": ranks.world_size}


def resume_rng(state: dict, path: str | Path, ranks: distributed.Dist, device, log) -> None:
    """Give this rank its random-generator states from a checkpoint, after checking that the
    number of processes allows the resume. Mid-epoch it must be the same: how many steps of the
    epoch are done depends on it. At an epoch boundary it may differ (one log line); a rank the
    saving run did not have keeps its own seed. An older checkpoint holds rank 0's states alone
    ("rng"), which rank 0 takes."""
    saved, now = state.get("world_size"), ranks.world_size
    if saved is not None and saved != now:
        if state.get("step", 0) > 0:
            raise ValueError(
                f"{path}: saved in the middle of epoch {state['epoch'] + 1} (step "
                f"{state['step']}) by {_processes(saved)}, but this run has {_processes(now)}; "
                f"the steps of a part-done epoch depend on the number of processes: resume with "
                f"torchrun --nproc_per_node {saved}, or --resume a checkpoint saved at the end "
                "of an epoch")
        log(f"{path} was written by {_processes(saved)}, this run has {_processes(now)}: its "
            "random draws and data order differ from an uninterrupted run from here on")
    states = state.get("rng_ranks") or [state["rng"]]
    if ranks.rank >= len(states):
        return
    field = f"rng_ranks[{ranks.rank}]" if state.get("rng_ranks") else "rng"
    try:  # Python, NumPy and PyTorch check their own states as they take them
        set_rng_state(states[ranks.rank], device)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, OverflowError,
            RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: {field}: not random-generator states this run can "
                              f"restore ({type(err).__name__}: {reason})") from None


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


class NullMetrics:
    """What ranks other than 0 get instead of a MetricsWriter: nothing is written."""

    tb = None

    def write(self, record: dict, step: int) -> None:
        pass

    def truncate_after(self, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass


def silent(message: str) -> None:
    """The log of ranks other than 0."""


def resume_path(args: argparse.Namespace, checkpoint: Path, log,
                main: bool = True) -> Path | None:
    """The checkpoint to resume from: --resume FILE, else <stage>/checkpoint.pt if present,
    else checkpoint.prev.pt if present (with a log line: checkpoint.pt can only be missing if
    something removed it, or an older version was killed while rotating them), else None.
    With --resume, the main process (`main`; rank 0, the one that saves) moves an unreadable
    checkpoint.pt aside (checkpoint.corrupt.pt) so that rotating checkpoints never replaces
    the good previous one with it; the other ranks leave the folder alone."""
    if getattr(args, "resume", None):
        chosen = Path(args.resume)
        load_checkpoint(chosen)  # a clear error if this one is bad too
        if main and checkpoint.is_file() and checkpoint.resolve() != chosen.resolve():
            try:
                load_checkpoint(checkpoint)
            except CheckpointError:
                aside = checkpoint.with_name("checkpoint.corrupt.pt")
                os.replace(checkpoint, aside)
                log(f"{checkpoint} is unreadable; moved to {aside}")
        return chosen
    if checkpoint.is_file():
        return checkpoint
    prev = previous_path(checkpoint)
    if prev.is_file():
        log(f"{checkpoint} is missing but {prev} is there (a run was stopped while replacing "
            f"them): resuming from {prev}")
        return prev
    unfinished = checkpoint.with_name(f".{checkpoint.name}.tmp")
    if unfinished.is_file():
        log(f"{unfinished} is a checkpoint whose writing was interrupted before it was complete; "
            "it is not used: starting from epoch 0")
    return None


class StageRun:
    """What search.py and augment.py do around their epoch loop: skip a finished stage, join
    the torchrun process group, create and lock the folder and open the log (rank 0), set a
    finished run's outputs aside on --force, pick the checkpoint to resume from, save
    checkpoints (rank 0), and stop cleanly on SIGTERM / SIGINT / SIGHUP."""

    def __init__(self, args: argparse.Namespace, name: str, output: str):
        self.args, self.name, self.output = args, name, output
        self.dir = Path(args.stage_dir)
        self.checkpoint = self.dir / "checkpoint.pt"
        self.logger = None
        self.log = silent
        self.lock: FolderLock | None = None
        self.restart = False

    def finished(self) -> bool:
        """True (with a message) when the stage is done with these options and --force was not
        given; done with other options, a ValueError listing them."""
        saved = None if self.args.force else finished_config(self.dir, self.output)
        if saved is None:
            return False
        diffs = config_differences(saved, config_dict(self.args))
        if diffs:
            raise ValueError(f"{self.dir} is already finished ({self.output}), with other options "
                             f"({'; '.join(diffs)}); --force runs it again from scratch with these "
                             "options, another --name keeps this run")
        print(f"{self.dir} is already finished ({self.output}); pass --force to run it again")
        return True

    def __enter__(self) -> StageRun:
        from utils.runtime.logging import get_logger, resolve_device
        self.ranks, self.device = distributed.setup(resolve_device(self.args.device))
        try:
            self.lock = hold_folder(self.dir, self.ranks)
        except BaseException:
            distributed.cleanup()
            raise
        if self.ranks.is_main:
            self.logger = get_logger(self.dir, self.name)
            self.log = self.logger.info
        self.restart = self._forced_restart()
        return self

    def _forced_restart(self) -> bool:
        """--force on a finished stage runs it again from scratch: the finished run's outputs
        (checkpoints, best.pt, results, alphas, genotype, metrics, plots...) are moved to
        <stage>/replaced/run_<k>/ first, so that nothing reads them as the new run's (test.py
        would test the old best.pt; search2 would read the old alphas.json) and nothing is
        lost. Decided by rank 0, for every rank."""
        if not self.args.force:
            return False
        restart, problem = False, None
        if self.ranks.is_main:
            try:
                restart = is_finished(self.dir, self.output)
                if restart:
                    aside = set_aside(self.dir)
                    self.log(f"--force: {self.dir} was finished; its outputs are moved to {aside}, "
                             "and this run starts from scratch")
            except (OSError, ValueError, RuntimeError) as err:
                problem = str(err)
        restart, problem = distributed.from_main((restart, problem), self.ranks)
        if problem is not None:
            raise RuntimeError(problem)
        return restart

    def __exit__(self, exc_type, exc, tb) -> None:
        from utils.runtime.logging import close_logger
        if self.logger is not None:
            close_logger(self.logger)
        if self.lock is not None:
            self.lock.release()
        distributed.cleanup()
        lost = distributed.lost_peer(exc) if exc is not None and self.ranks.enabled else None
        if lost is not None:
            raise RuntimeError(f"{lost}; the last checkpoint is intact: rerun the same command "
                               "to resume") from exc

    def begin(self, job) -> tuple[int, int, object]:
        """Resume `job` if there is a checkpoint; (first epoch, first step, metrics writer)."""
        from utils.runtime.logging import MetricsWriter, run_info
        source = None if self.restart else resume_path(self.args, self.checkpoint, self.log,
                                                          self.ranks.is_main)
        start, first_step = job.resume(source) if source is not None else (0, 0)
        if source is not None:
            self.log(f"resuming from {source} {progress_text(start, first_step, self.args.epochs)}")
        metrics = MetricsWriter(self.dir) if self.ranks.is_main else NullMetrics()
        if self.ranks.is_main:
            save_config(self.args, self.dir / "config.json", job.runtime.speed.as_dict())
            metrics.truncate_after(start)
        self.log(f"run info: {run_info(self.device)}")
        return start, first_step, metrics

    def save(self, state: dict, keep_previous: bool = True) -> None:
        """Rank 0 writes `state` (which every rank built: see rng_entries)."""
        if self.ranks.is_main:
            from utils.io.checkpoint import save_checkpoint
            save_checkpoint(state, self.checkpoint, keep_previous=keep_previous)

    def interrupted(self, job, stopped, stop: GracefulStop, metrics) -> int:
        """Save the mid-epoch state after a signal; the exit code to return."""
        self.save(job.state(stopped.epoch, step=stopped.steps))
        metrics.close()
        where = progress_text(stopped.epoch, stopped.steps, self.args.epochs)
        self.log(f"stopped by {stop.name} {where}; checkpoint saved to {self.checkpoint}: rerun "
                 "the same command to resume")
        return stop.exit_code

    def finish(self, stop: GracefulStop, metrics, work: Callable[[], None]) -> int:
        """Run `work` (write the stage's outputs, then the checkpoint marked finished) after the
        last epoch's checkpoint; the exit code. A signal now (or one that came after the last
        step of the loop) stops at once with one log line: the writers remove their temp files,
        the checkpoint is the last epoch's, and a rerun of the same command resumes after it
        and finishes the stage (no training is lost)."""
        saved = (f"{self.checkpoint} holds all {self.args.epochs} epochs: rerun the same "
                 "command to finish the stage")
        try:
            with StopNow(saved):
                if stop.requested(self.ranks):  # on any rank: every rank stops here
                    raise Stopped(stop.signum or signal.SIGTERM, saved)
                work()
        except Stopped as stopped:
            metrics.close()
            self.log(f"stopped by {stopped.name} while finishing the stage; {saved}")
            return stopped.exit_code
        self.done(metrics)
        return 0

    def done(self, metrics) -> None:
        metrics.close()
        distributed.barrier(self.ranks, patient=True)  # rank 0 wrote the outputs meanwhile
