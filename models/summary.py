"""How large a network is: parameters (all, or without the auxiliary head) and multiply-adds.

Multiply-adds are counted with torch.utils.flop_counter (convolutions and matrix products of
one eval-mode forward pass for one image at the network's input size; FLOPs / 2).
`python summary.py` prints them for a network before training it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_params_without_aux(model: nn.Module) -> int:
    """Parameters without the auxiliary head's (the size papers report)."""
    return count_params(model) - count_params(getattr(model, "aux_head", None))


def count_macs(model: nn.Module, in_channels: int, input_size: int) -> int:
    """Multiply-adds of one eval-mode forward pass for one image (FLOPs / 2), the probe image
    made on the network's device and in its dtype."""
    was_training = model.training
    model.eval()
    like = next(p for p in model.parameters() if p.is_floating_point())
    x = like.new_zeros(1, in_channels, input_size, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
