"""The one training engine: `train_epoch` runs a caller-supplied step over a loader (search
passes its architect step, augment its weight step), `optimizer_step` is the backward and
update every step ends with, `evaluate` measures a model."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from utils.data.loaders import loading_failure
from utils.runtime.context import Runtime
from utils.runtime.distributed import reduce_sums, sync_buffers

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def loss_and_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: Callable,
                    aux_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward `x`; loss = criterion(logits, y) [+ aux_weight * criterion(aux_logits, y) when
    the model returns (logits, aux_logits), i.e. in training mode with an auxiliary head]."""
    out = model(x)
    if isinstance(out, tuple):
        logits, aux_logits = out
        loss = criterion(logits, y)
        if aux_weight:
            loss = loss + aux_weight * criterion(aux_logits, y)
        return loss, logits
    return criterion(out, y), out


def optimizer_step(loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
                   params: Iterable[torch.Tensor], grad_clip: float | None, scaler=None) -> None:
    """Backward `loss`, clip the gradient norm of `params` to `grad_clip` (None: no clipping),
    then step every optimiser in order. With an fp16 GradScaler the loss is scaled, the
    gradients unscaled before clipping, and a step with inf/NaN gradients skipped."""
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(params, grad_clip)
    for optimizer in optimizers:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
    if scaler is not None:
        scaler.update()


@contextlib.contextmanager
def closing_on_error(loader) -> Iterator[None]:
    """Leaving the block by any exception shuts `loader`'s worker processes down first (its
    `close()`, where it has one: utils.data.loaders.Loader), so that no worker is left for the exit
    to wait on; a loading failure (a worker's exception, a worker killed by a signal, which torch
    may raise at any point of a step) becomes its one-line DataError."""
    try:
        yield
    except BaseException as err:
        close = getattr(loader, "close", None)
        if close is not None:
            close()
        failure = loading_failure(err)
        if failure is None:
            raise
        raise failure from err


class Interrupted(Exception):
    """A stop was requested (SIGTERM / SIGINT); `steps` of epoch `epoch` are done."""

    def __init__(self, epoch: int, steps: int):
        super().__init__(f"interrupted at epoch {epoch + 1} after step {steps}")
        self.epoch, self.steps = epoch, steps


class DeviceTotals:
    """Running sums of the loss (times batch size) and of top-1 / top-5 correct predictions,
    kept as a float64 tensor on the device: adding a batch does not wait for it; `read()` is
    the one device-to-host copy."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.size(0)
        top1, top5 = correct_counts(logits, target, (1, 5))
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double()])
        self.count += n

    def read(self) -> dict:
        """{"loss": loss sum, "top1"/"top5": 100 * correct, "n": images}, as Python numbers."""
        loss, top1, top5 = self.sums.tolist()
        return {"loss": loss, "top1": 100.0 * top1, "top5": 100.0 * top5, "n": self.count}


def correct_counts(logits: torch.Tensor, target: torch.Tensor,
                   topk: Iterable[int] = (1, 5)) -> list[torch.Tensor]:
    """How many samples have their target among the top-k logits, per k (k capped at the
    number of classes), as 0-dim tensors on the logits' device."""
    topk = list(topk)
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target.reshape(-1, 1))
    return [correct[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _averages(sums: dict, runtime: Runtime) -> dict:
    """Averages of `DeviceTotals.read()` sums, summed over ranks first when distributed."""
    sums = reduce_sums(sums, runtime.dist, runtime.device)
    n = max(sums["n"], 1)
    return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n,
            "n": int(sums["n"])}


def _nonfinite(loss_sum: float, epoch: int, first: int, last: int,
               n_steps: int) -> FloatingPointError:
    """The one-line error for a loss that became inf/NaN at one of steps first..last."""
    where = (f"step {last}/{n_steps}" if first == last
             else f"between steps {first} and {last} of {n_steps}")
    return FloatingPointError(
        f"loss became {loss_sum} at epoch {epoch + 1}, {where}; stopped, the last checkpoint "
        f"(end of epoch {epoch}) is intact: lower the learning rate or clip gradients harder, "
        "then rerun to resume")


def train_epoch(loader, step: Step, *, runtime: Runtime, epoch: int, epochs: int,
                log: Callable[[str], None] = print, print_freq: int = 50,
                should_stop: Callable[[], bool] | None = None, first_step: int = 0) -> dict:
    """One pass over `loader`; `step(x, y)` updates the model and returns (loss, logits).

    Loss and accuracy are summed on the device and read back only every `print_freq` steps,
    for a log line (loss, top-1, images/s, the epoch's ETA), and at the end: no step waits
    for the device. The loss is checked to be finite at those reads (and before stopping for
    `should_stop`), so a non-finite loss is reported with the steps since the last. Returns loss,
    top1, top5, seconds and images_per_s of the epoch (over all ranks when `runtime` is
    distributed). `should_stop()` is asked after every step: True raises
    Interrupted at that step boundary. `first_step` > 0: the loader starts mid-epoch.
    """
    totals = DeviceTotals(runtime.device)
    n_steps = first_step + len(loader)
    start = time.perf_counter()
    checked = done = first_step  # steps whose loss is known to be finite / steps taken

    def read() -> dict:
        nonlocal checked
        sums = totals.read()
        if not math.isfinite(sums["loss"]):
            raise _nonfinite(sums["loss"], epoch, checked + 1, done, n_steps)
        checked = done
        return sums

    with closing_on_error(loader):
        for i, (x, y) in enumerate(loader, start=first_step):
            x, y = runtime.batch(x, y)
            loss, logits = step(x, y)
            totals.add(loss, logits.detach(), y)
            done = i + 1
            if done % print_freq == 0 or done == n_steps:
                sums = read()
                elapsed = time.perf_counter() - start
                rate = sums["n"] / max(elapsed, 1e-9)
                eta = elapsed / (done - first_step) * (n_steps - done)
                n = max(sums["n"], 1)
                log(f"epoch {epoch + 1}/{epochs} step {done}/{n_steps} loss {sums['loss'] / n:.4f} "
                    f"top1 {sums['top1'] / n:.2f}% top5 {sums['top5'] / n:.2f}% {rate:.1f} img/s "
                    f"epoch ETA {format_seconds(eta)}")
            if should_stop is not None and done < n_steps and should_stop():
                read()  # no checkpoint of a model whose loss already went non-finite
                raise Interrupted(epoch, done)
    seconds = time.perf_counter() - start
    averages = _averages(read(), runtime)
    return {"loss": averages["loss"], "top1": averages["top1"], "top5": averages["top5"],
            "seconds": seconds, "images_per_s": averages["n"] / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion: nn.Module, runtime: Runtime) -> dict:
    """Loss, top-1, top-5 and images/s of `model` in eval mode over `loader` (each rank
    evaluating its shard when `runtime` is distributed; totals summed over ranks). Sums
    stay on the device until the end."""
    sync_buffers(model, runtime.dist)  # a no-op unless distributed
    was_training = model.training
    model.eval()
    totals = DeviceTotals(runtime.device)
    start = time.perf_counter()
    with closing_on_error(loader):
        for x, y in loader:
            x, y = runtime.batch(x, y)
            with runtime.autocast():
                logits = model(x).float()
            totals.add(criterion(logits, y), logits, y)
    model.train(was_training)
    averages = _averages(totals.read(), runtime)  # the one wait for the device
    seconds = time.perf_counter() - start
    return {"loss": averages["loss"], "top1": averages["top1"], "top5": averages["top5"],
            "images_per_s": averages["n"] / max(seconds, 1e-9)}
