"""Learning-rate schedules of the search and of the final training (one per epoch, stepped
after the epoch)."""
from __future__ import annotations

import math

import torch


def power_cosine(epoch: int, epochs: int, lr: float, lr_min: float, p: float = 2.0) -> float:
    """Cosine power annealing (sharpDARTS; the authors' --power_lr, p = 2): lr at `epoch`."""
    cos = (1 + math.cos(math.pi * epoch / epochs)) / 2
    return lr_min + (lr - lr_min) * (p ** cos - 1) / (p - 1)


def lr_schedule(optimizer: torch.optim.Optimizer, epochs: int, lr: float, lr_min: float, *,
                power: bool = False, gamma: float | None = None):
    """Cosine from `lr` to `lr_min` over `epochs`; `power`: cosine power annealing instead;
    `gamma`: exponential decay per epoch (the ImageNet setting) instead."""
    if power:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: power_cosine(e, epochs, lr, lr_min) / lr)
    if gamma is not None:
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr_min)
