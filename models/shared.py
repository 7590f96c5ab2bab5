"""What supernets and final networks share: the forward through the cells (each cell under
activation checkpointing when asked) and the auxiliary head (DARTS sec. 3.3)."""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _frozen_bn_statistics(module: nn.Module):
    """BatchNorm running statistics untouched while a checkpointed cell is recomputed (else
    every step would update them twice)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _frozen_recomputation(cell: nn.Module):
    """torch.utils.checkpoint's (forward, recomputation) contexts for `cell`: the BatchNorm
    statistics frozen while recomputing."""
    return contextlib.nullcontext(), _frozen_bn_statistics(cell)


def run_cell(cell: nn.Module, checkpointed: bool, *inputs):
    """cell(*inputs), optionally under activation checkpointing: only the cell's inputs are kept
    for backward and its inside is recomputed (torch.utils.checkpoint; RNG state replayed, so
    drop path draws the same masks; BatchNorm statistics updated once). Under torch.compile
    the checkpoint takes no context_fn (torch < 2.12 accepts only dispatch modes there):
    AOTAutograd applies buffer mutations once, from the forward graph, and recomputes values
    only; that needs the whole cell traced, so torch.compile runs the plain cells
    (utils.runtime.speed.prepare leaves the CPU fast path off)."""
    if not checkpointed:
        return cell(*inputs)
    if torch.compiler.is_compiling():
        return checkpoint(cell, *inputs, use_reentrant=False)
    return checkpoint(cell, *inputs, use_reentrant=False,
                      context_fn=functools.partial(_frozen_recomputation, cell))



class AuxiliaryHead(nn.Module):
    """ReLU - AvgPool 5 (stride size-5, no pad count) - Conv1x1 128 - BN - ReLU -
    Conv2x2 768 - BN - ReLU - Linear, on the map after cell 2*num_cells//3.

    Maps of 5x5 or smaller are pooled adaptively to 2x2 (same parameters). `bn_768=False`
    drops the BatchNorm after the 2x2 conv, as DARTS's ImageNet head does.
    """

    def __init__(self, channels: int, size: int, num_classes: int, bn_768: bool = True):
        super().__init__()
        pool = (nn.AvgPool2d(5, size - 5, 0, count_include_pad=False) if size > 5
                else nn.AdaptiveAvgPool2d(2))
        # not in place: the cell output it reads also feeds the next cell / the classifier
        layers = [nn.ReLU(inplace=False), pool,
                  nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128),
                  nn.ReLU(inplace=True), nn.Conv2d(128, 768, 2, bias=False)]
        layers += ([nn.BatchNorm2d(768), nn.ReLU(inplace=True)] if bn_768
                   else [nn.ReLU(inplace=True)])
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def run_cells(net: nn.Module, s0: torch.Tensor, s1: torch.Tensor, cell_args: Iterable):
    """A network's forward after its stem: each cell reads the two previous outputs and its
    entry of `cell_args` (a supernet cell its alphas' softmax, a final cell the drop-path
    probability), under activation checkpointing when `net.grad_checkpoint` is set in
    training; the auxiliary head reads cell `net.aux_pos` in training; then global pooling and
    the classifier. Logits, or (logits, aux_logits) when the auxiliary head ran."""
    aux_logits = None
    for i, (cell, arg) in enumerate(zip(net.cells, cell_args)):
        s0, s1 = s1, run_cell(cell, net.grad_checkpoint and net.training, s0, s1, arg)
        if i == net.aux_pos and net.aux_head is not None and net.training:
            aux_logits = net.aux_head(s1)
    logits = net.classifier(torch.flatten(net.pool(s1), 1))
    return (logits, aux_logits) if aux_logits is not None else logits
