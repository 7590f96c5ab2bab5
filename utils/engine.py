"""The one training engine: `train_epoch` runs a caller-supplied step over a loader (search
passes its architect step, augment its weight step), `optimizer_step` is the backward and
update every step ends with, `evaluate` measures a model."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

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


class Interrupted(Exception):
    """A stop was requested (SIGTERM / SIGINT); `steps` of epoch `epoch` are done."""

    def __init__(self, epoch: int, steps: int):
        super().__init__(f"interrupted at epoch {epoch + 1} after step {steps}")
        self.epoch, self.steps = epoch, steps


class Meter:
    """Running average weighted by batch size."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / max(self.count, 1)


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent (k capped at the number of classes)."""
    topk = list(topk)
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target.reshape(-1, 1))
    return [correct[:, :min(k, maxk)].any(dim=1).float().mean().item() * 100.0 for k in topk]


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _totals(loss_m: "Meter", top1_m: "Meter", top5_m: "Meter", dist_info, device) -> dict:
    """Epoch averages, summed over ranks when distributed."""
    sums = {"loss": loss_m.total, "top1": top1_m.total, "top5": top5_m.total, "n": loss_m.count}
    if dist_info is not None:
        from utils.distributed import reduce_sums
        sums = reduce_sums(sums, dist_info, device)
    n = max(sums["n"], 1)
    return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n,
            "n": int(sums["n"])}


def train_epoch(loader, step: Step, *, device: torch.device, epoch: int, epochs: int,
                log: Callable[[str], None] = print, print_freq: int = 50,
                check_finite: bool = True, dist_info=None,
                memory_format: torch.memory_format = torch.contiguous_format,
                should_stop: Callable[[], bool] | None = None, first_step: int = 0) -> dict:
    """One pass over `loader`; `step(x, y)` updates the model and returns (loss, logits).

    Logs a line every `print_freq` steps with loss, top-1, images/s and the epoch's ETA.
    Returns loss, top1, top5, seconds and images_per_s of the epoch (over all ranks when
    `dist_info` describes a distributed run). `should_stop()` is asked after every step: True
    raises Interrupted at that step boundary. `first_step` > 0: the loader starts mid-epoch.
    """
    loss_m, top1_m, top5_m = Meter(), Meter(), Meter()
    n_steps = first_step + len(loader)
    start = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader, start=first_step):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        loss, logits = step(x, y)
        loss_value = float(loss)
        if check_finite and not torch.isfinite(torch.tensor(loss_value)):
            raise FloatingPointError(f"loss became {loss_value} at epoch {epoch + 1}, step "
                                     f"{i + 1}/{n_steps}; stopped, the last checkpoint (end of "
                                     f"epoch {epoch}) is intact: lower the learning rate or clip "
                                     "gradients harder, then rerun to resume")
        top1, top5 = accuracy(logits.detach(), y)
        n = y.size(0)
        seen += n
        loss_m.update(loss_value, n)
        top1_m.update(top1, n)
        top5_m.update(top5, n)
        if (i + 1) % print_freq == 0 or i + 1 == n_steps:
            elapsed = time.perf_counter() - start
            rate = seen / max(elapsed, 1e-9)
            eta = elapsed / (i + 1 - first_step) * (n_steps - i - 1)
            log(f"epoch {epoch + 1}/{epochs} step {i + 1}/{n_steps} loss {loss_m.avg:.4f} "
                f"top1 {top1_m.avg:.2f}% top5 {top5_m.avg:.2f}% {rate:.1f} img/s "
                f"epoch ETA {format_seconds(eta)}")
        if should_stop is not None and i + 1 < n_steps and should_stop():
            raise Interrupted(epoch, i + 1)
    seconds = time.perf_counter() - start
    totals = _totals(loss_m, top1_m, top5_m, dist_info, device)
    return {"loss": totals["loss"], "top1": totals["top1"], "top5": totals["top5"],
            "seconds": seconds, "images_per_s": totals["n"] / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion: nn.Module, *, device: torch.device,
             dist_info=None, memory_format: torch.memory_format = torch.contiguous_format,
             autocast: Callable = contextlib.nullcontext) -> dict:
    """Loss, top-1, top-5 and images/s of `model` in eval mode over `loader` (each rank
    evaluating its shard when `dist_info` is distributed; totals summed over ranks)."""
    if dist_info is not None:
        from utils.distributed import sync_buffers
        sync_buffers(model, dist_info)
    was_training = model.training
    model.eval()
    loss_m, top1_m, top5_m = Meter(), Meter(), Meter()
    start = time.perf_counter()
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast():
            logits = model(x).float()
        n = y.size(0)
        loss_m.update(criterion(logits, y).item(), n)
        top1, top5 = accuracy(logits, y)
        top1_m.update(top1, n)
        top5_m.update(top5, n)
    model.train(was_training)
    seconds = time.perf_counter() - start
    totals = _totals(loss_m, top1_m, top5_m, dist_info, device)
    return {"loss": totals["loss"], "top1": totals["top1"], "top5": totals["top5"],
            "images_per_s": totals["n"] / max(seconds, 1e-9)}
