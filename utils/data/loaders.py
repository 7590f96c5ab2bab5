"""Loaders: every epoch's order a function of (seed, epoch), random augmentation seeded per batch
(so a resumed epoch replays exactly), DataLoader workers that ignore the stop signals and are
shut down when a pass fails or the interpreter exits, and a loading failure as one line naming
the file."""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 -- its exit handler is registered before ours (_LOADERS)
import os
import random
import signal
import weakref
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from utils.data.info import IMAGE_FIX, DataError, files_of, reason
from utils.runtime.signals import STOP_SIGNALS, Stopped


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (1 << 63)


# Signals the main process alone handles (utils.runtime.signals.GracefulStop): sent to the whole process
# group (Slurm's preemption and time limit, `timeout`, Ctrl-C), they must not kill the
# DataLoader workers under it, or the run ends with "DataLoader worker ... is killed" instead of
# its step-boundary checkpoint.


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from torch's per-worker seed, and make
    the worker ignore SIGTERM / SIGINT / SIGHUP (the main process stops the run and shuts its workers
    down; if the main process dies, torch's watchdog ends them within seconds)."""
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # also drops one that arrived while held
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# Every Loader alive. multiprocessing's exit handler terminates daemonic processes with SIGTERM
# and then joins them without a timeout; a worker ignores SIGTERM (worker_init_fn), so a
# loader whose workers were not shut down before that (a pass left by an exception, a
# reference cycle keeping the loader alive) would hang the exit forever. `_close_loaders`,
# registered after multiprocessing's and torch's exit handlers (so it runs before them),
# shuts down every live loader's workers first.
_LOADERS: "weakref.WeakSet[Loader]" = weakref.WeakSet()


class Loader(DataLoader):
    """A DataLoader whose workers start with the stop signals held, so that a signal to the
    process group in the moment a worker starts is dropped by it (worker_init_fn) rather than
    killing it; the main process gets such a signal once its workers are started. A failure
    while loading (an unreadable file in a worker, a worker killed) shuts the workers down
    (`close`) and is a one-line DataError (`loading_failure`); `close` also runs for every live
    loader before the interpreter exits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _LOADERS.add(self)

    def __iter__(self):
        return _Pass(self, self._start_pass())

    def _start_pass(self):
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def close(self) -> None:
        """Shut this loader's worker processes down now and wait for them (a worker that does
        not stop within seconds is killed); a later pass starts new ones. Safe to call at any
        time, more than once, and on a loader without workers."""
        passing, self._iterator = getattr(self, "_iterator", None), None
        _stop_workers(passing)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next pass visits epoch `epoch`'s order from batch `skip_batches` on; the
        loader, and its persistent workers, stay."""
        if not isinstance(self.batch_sampler, EpochBatches):
            raise ValueError("this loader's order comes from the sampler it was given")
        self.batch_sampler.set_epoch(epoch, skip_batches)


class _Pass:
    """One pass over a Loader's batches. Any failure while loading closes the loader's workers
    before it propagates, as a one-line DataError when it is a loading failure."""

    def __init__(self, loader: Loader, batches: Iterator) -> None:
        self.loader, self.batches = loader, batches

    def __iter__(self) -> "_Pass":
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __next__(self):
        try:
            return next(self.batches)
        except StopIteration:
            raise
        except BaseException as err:
            self.loader.close()
            failure = loading_failure(err)
            if failure is None:
                raise
            raise failure from err


def _stop_workers(passing: Any) -> None:
    """Shut down the worker processes of a DataLoader iterator (none: nothing to do), the way
    torch does, then kill any that still runs (they ignore SIGTERM) and reap it."""
    workers = list(getattr(passing, "_workers", ()) or ())
    try:
        if workers and hasattr(passing, "_shutdown_workers"):
            passing._shutdown_workers()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)


def _close_loaders() -> None:
    """Close every live Loader (at interpreter exit): no worker outlives the main process,
    and multiprocessing's exit handler never waits on one."""
    for loader in list(_LOADERS):
        try:
            loader.close()
        except Exception:  # at exit, one loader's trouble must not keep the others' workers
            pass


atexit.register(_close_loaders)


# What a loading failure looks like once torch re-raises it in the main process: the worker's
# exception as "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...", its
# last line "<module.Type>: <message>"; a dead worker as "DataLoader worker (pid ...) ...".
_OOM_HINT = ("out of memory? (the kernel's OOM killer sends SIGKILL); rerun the same command "
             "(a training stage resumes from its last checkpoint), with a lower --num_workers or "
             "--batch_size if it recurs")


def loading_failure(err: BaseException) -> DataError | None:
    """The one-line DataError for `err` when it is a failure of data loading: an exception in
    a DataLoader worker (its own message, which names the file for a dataset item: see
    `read_item`) or a worker that died (killed by a signal). None for anything else."""
    if isinstance(err, DataError) and "\n" not in str(err):
        return None  # already one line (loaded in the main process)
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return None
    first = lines[0]
    if first.startswith("Caught ") and "DataLoader worker process" in first:
        worker = first.rstrip(".").rsplit(" ", 1)[-1]
        last = lines[-1].strip()
        if isinstance(err, DataError):
            return DataError(f"{last.partition(': ')[2] or last} (in data-loading worker {worker})")
        return DataError(f"data-loading worker {worker} failed: {last[:300]}")
    if first.startswith("DataLoader worker (pid"):
        return DataError(f"{first.strip().rstrip('.')}: {_OOM_HINT}")
    return None


def _item_source(dataset: Dataset, index: int) -> tuple[str, str]:
    """(where item `index` of `dataset` comes from, what to do when it is unreadable): an image
    folder's file, else the folder of the dataset's files."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and 0 <= index < len(samples):
        return f"{samples[index][0]} (image {index} of {files_of(dataset)})", IMAGE_FIX
    return f"item {index} of {files_of(dataset)}", "check or replace the dataset's files"


def read_item(dataset: Dataset, index: int) -> Any:
    """``dataset[index]``; any failure (an image PIL cannot read, a truncated file, a missing
    label) is a one-line DataError naming the file and the index, in a worker as in the main
    process. A stop (utils.runtime.signals.Stopped) passes unchanged."""
    try:
        return dataset[index]
    except (DataError, Stopped):
        raise
    except Exception as err:
        where, fix = _item_source(dataset, index)
        raise DataError(f"{where}: cannot be read ({reason(err)}); {fix}") from err


class _ReadSubset(Subset):
    """torch's Subset, each item read through `read_item`."""

    def __getitem__(self, idx: int) -> Any:
        return read_item(self.dataset, self.indices[idx])

    def __getitems__(self, indices: list[int]) -> list:
        return [self[i] for i in indices]


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int,
                replicas: tuple[int, int] | None = None) -> list[int]:
    """Positions 0..n-1 in the order one epoch visits them: a permutation drawn from
    (seed, epoch) when shuffling, this rank's DistributedSampler share under `replicas`."""
    if replicas is not None and replicas[1] > 1 and shuffle:
        sampler = DistributedSampler(range(n), num_replicas=replicas[1], rank=replicas[0],
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)
    if shuffle:
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        return torch.randperm(n, generator=g).tolist()
    return list(range(n))


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of one batch's random augmentation: (seed, epoch, rank, batch) hashed."""
    state = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


class EpochBatches(Sampler):
    """The batches of one epoch (`set_epoch`): positions 0..n-1 in `epoch_order`'s order for
    (seed, epoch), cut into batches, from batch `skip_batches` on; each position comes paired
    with its batch's `batch_seed`, for `SeededSubset`."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 replicas: tuple[int, int] | None) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.replicas = seed, replicas
        self.rank = replicas[0] if replicas else 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches
        self.order = epoch_order(self.n, self.shuffle, self.seed, epoch, self.replicas)

    def _batches(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(self._batches() - self.skip, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        size = self.batch_size
        for b in range(self.skip, self._batches()):
            key = batch_seed(self.seed, self.epoch, self.rank, b)
            yield [(key, pos) for pos in self.order[b * size:(b + 1) * size]]


class SeededSubset(Dataset):
    """``dataset`` at ``indices``, read a batch at a time from (batch seed, position) pairs:
    the loading process's RNGs (torch, numpy, random) are seeded with the batch's seed first,
    so its random augmentation is a function of (seed, epoch, rank, batch) alone, whichever
    worker loads it, however many workers there are, persistent or not, and after a resume.
    Loading in the main process (no workers), the training RNGs are put back afterwards."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, items: list[tuple[int, int]]) -> list:
        in_main = torch.utils.data.get_worker_info() is None
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate()) if in_main else None
        seed = items[0][0]
        torch.default_generator.manual_seed(seed)  # the CPU generator only, not CUDA's
        np.random.seed(seed % (1 << 32))
        random.seed(seed)
        try:
            return [read_item(self.dataset, self.indices[pos]) for _, pos in items]
        finally:
            if saved is not None:
                torch.set_rng_state(saved[0])
                np.random.set_state(saved[1])
                random.setstate(saved[2])

    def __getitem__(self, item: tuple[int, int]):
        return self.__getitems__([item])[0]


def _some_batch(drop_last: bool, items: int, batch_size: int) -> None:
    """Refuse a loader that would yield no batch because drop_last drops a short one."""
    if drop_last and 0 < items < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the {items} images to load, and "
                         f"the last short batch is dropped, so there would be no step; lower "
                         f"--batch_size to {items} or less")


def make_loader(dataset: Dataset, indices: Iterable[int] | None, batch_size: int, *, shuffle: bool,
                num_workers: int = 0, drop_last: bool = False, seed: int = 0, epoch: int = 0,
                sampler: Sampler | None = None, replicas: tuple[int, int] | None = None,
                skip_batches: int = 0, pin_memory: bool = False) -> Loader:
    """A loader over ``dataset`` restricted to ``indices`` (None: all). The order is a function of
    (seed, epoch), so an epoch replays exactly after a resume; ``skip_batches`` starts it later
    (resuming mid-epoch); ``loader.set_epoch(epoch, skip_batches)`` moves the same loader to
    another epoch, so one loader serves a whole stage and its workers persist. Random
    augmentation is seeded per batch (SeededSubset). ``replicas=(rank, world_size)`` shards a
    shuffled training set with a DistributedSampler (every rank the same number of batches).
    ``pin_memory``: page-locked batches, for CUDA. A ``sampler`` decides the order itself
    (shuffle must then be False; no set_epoch, no per-batch seeds)."""
    if sampler is not None and shuffle:
        raise ValueError("pass either shuffle=True or a sampler, not both")
    base = list(range(len(dataset))) if indices is None else list(indices)
    if sampler is None:
        batches = EpochBatches(len(base), batch_size, shuffle=shuffle, drop_last=drop_last,
                               seed=seed, replicas=replicas)
        batches.set_epoch(epoch, skip_batches)
        _some_batch(drop_last, len(batches.order), batch_size)
        data, order = SeededSubset(dataset, base), {"batch_sampler": batches}
    else:
        _some_batch(drop_last, len(sampler), batch_size)
        data, order = _ReadSubset(dataset, base), {"batch_size": batch_size, "sampler": sampler,
                                              "drop_last": drop_last}
    return Loader(data, **order, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(  # workers' draws: one stream per rank
                          _epoch_seed(seed, epoch) + (replicas[0] << 32 if replicas else 0)),
                      worker_init_fn=worker_init_fn, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def default_num_workers(device: torch.device) -> int:
    """Data-loading processes when --num_workers is not given: 2 on CPU, where they share the
    cores with training; on CUDA the CPUs this process may use, divided among the training
    processes on this machine (torchrun's LOCAL_WORLD_SIZE), at most 8 and at least 1."""
    if device.type != "cuda":
        return 2
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(8, cpus // local))


def loader_options(device: torch.device, num_workers: int | None) -> dict[str, Any]:
    """make_loader's worker count (``num_workers``, or `default_num_workers` for None) and
    memory pinning (on CUDA only: page-locked batches copy to the GPU asynchronously)."""
    return {"num_workers": default_num_workers(device) if num_workers is None else num_workers,
            "pin_memory": device.type == "cuda"}


def infinite(loader: Iterable) -> Iterator:
    """Cycle over ``loader`` forever (bilevel search's validation batches); an empty loader is
    a ValueError rather than a silent hang."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("infinite(): the loader yields no batches")
