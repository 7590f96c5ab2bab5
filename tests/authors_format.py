"""Stand-ins for the StacNAS authors' model code, to write files shaped like their releases.

The authors' cifar10.pth.tar etc. are whole `nn.Module` objects pickled by `torch.save(model)`
in the legacy format (PyTorch 1.x's `torch.save(model)`). The classes
below reproduce the modules, attribute names and nesting of that document (`augment_cnn`,
`cells`, `operators`), with forwards following pt.darts: stem -> cells (s0, s1 = s1,
cell(s0, s1)) -> auxiliary head in training -> global pool -> Linear; a cell sums, per node,
its ops on `states[op.edge_id]` and concatenates the nodes.

Nothing happens at import: `install_authors_modules()` (called by the helpers) registers the
fake modules in `sys.modules` so that pickle can name the classes as the authors' files do.
"""
from __future__ import annotations

import sys
import types
import warnings

import torch
import torch.nn as nn

Nested = list  # [[(op, input), (op, input)], ...] one pair per intermediate node


# ----------------------------------------------------------------------------- operators
class DropPath(nn.Module):
    """Zero whole samples with probability p (training only)."""
    __module__ = "operators"

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p <= 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(1.0 - self.p)
        return x * mask / (1.0 - self.p)


class StdConv(nn.Module):
    """ReLU - Conv - BN."""
    __module__ = "operators"

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self._ops = nn.Sequential(nn.ReLU(inplace=False),
                                  nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                                  nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self._ops(x)


class DilConv(nn.Module):
    """ReLU - depthwise (dilated) Conv - pointwise Conv - BN."""
    __module__ = "operators"

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__()
        self._ops = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self._ops(x)


class SepConv(nn.Module):
    """DilConv(stride) - DilConv(1), both with dilation 1."""
    __module__ = "operators"

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self._ops = nn.Sequential(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                                  DilConv(c_in, c_out, kernel, 1, padding, 1, affine))

    def forward(self, x):
        return self._ops(x)


class PoolBN(nn.Module):
    """3x3 max / average (padding not counted) pooling - BN."""
    __module__ = "operators"

    def __init__(self, pool_type, channels, kernel, stride, padding, affine=True):
        super().__init__()
        if pool_type == "max":
            self.pool = nn.MaxPool2d(kernel, stride, padding)
        else:
            self.pool = nn.AvgPool2d(kernel, stride, padding, count_include_pad=False)
        self.bn = nn.BatchNorm2d(channels, affine=affine)

    def forward(self, x):
        return self.bn(self.pool(x))


class FactorizedReduce(nn.Module):
    """ReLU - cat(conv1(x), conv2(x[:, :, 1:, 1:])) - BN (even sizes only, as pt.darts)."""
    __module__ = "operators"

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, 0, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, 2, 0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


class Identity(nn.Module):
    __module__ = "operators"

    def forward(self, x):
        return x


OPS = {
    "avg_pool_3x3": lambda c, stride: PoolBN("avg", c, 3, stride, 1),
    "max_pool_3x3": lambda c, stride: PoolBN("max", c, 3, stride, 1),
    "skip_connect": lambda c, stride: Identity() if stride == 1 else FactorizedReduce(c, c),
    "sep_conv_3x3": lambda c, stride: SepConv(c, c, 3, stride, 1),
    "sep_conv_5x5": lambda c, stride: SepConv(c, c, 5, stride, 2),
    "dil_conv_3x3": lambda c, stride: DilConv(c, c, 3, stride, 2, 2),
    "dil_conv_5x5": lambda c, stride: DilConv(c, c, 5, stride, 4, 2),
}


# ----------------------------------------------------------------------------- cells
class AugmentCell(nn.Module):
    """Preprocess both inputs; node i = sum of its ops on states[op.edge_id]; concat nodes."""
    __module__ = "cells"

    def __init__(self, cell_id, c_pp, c_p, channels, reduction_prev, reduction, genotype):
        super().__init__()
        self._cell_id = cell_id
        self._channels_prev_prev = c_pp
        self._channels_prev = c_p
        self._channels = channels
        self._reduction_prev = reduction_prev
        self._reduction = reduction
        self._genotype = genotype
        self._primitive = None
        self._preproc0 = (FactorizedReduce(c_pp, channels) if reduction_prev
                          else StdConv(c_pp, channels, 1, 1, 0))
        self._preproc1 = StdConv(c_p, channels, 1, 1, 0)
        self._dag = nn.ModuleList()
        for edges in genotype:
            row = nn.ModuleList()
            for op_name, edge_id in edges:
                op = OPS[op_name](channels, 2 if reduction and edge_id < 2 else 1)
                if not isinstance(op, Identity):
                    op = nn.Sequential(op, DropPath())
                op.edge_id = edge_id
                row.append(op)
            self._dag.append(row)

    def forward(self, s0, s1):
        states = [self._preproc0(s0), self._preproc1(s1)]
        for edges in self._dag:
            states.append(sum(op(states[op.edge_id]) for op in edges))
        return torch.cat(states[2:], dim=1)


# ----------------------------------------------------------------------------- network
class AuxiliaryHead(nn.Module):
    """ReLU - AvgPool5 - Conv1x1 128 - BN - ReLU - Conv2x2 768 - BN - ReLU - Linear."""
    __module__ = "augment_cnn"

    def __init__(self, input_size, channels, num_classes):
        super().__init__()
        self._features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=input_size - 5, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self._classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self._classifier(self._features(x).flatten(1))


class AugmentCNN(nn.Module):
    """Stem - cells (reductions at n//3, 2n//3) - aux head at 2n//3 - global pool - Linear."""
    __module__ = "augment_cnn"

    def __init__(self, input_size, channels_in, channels_init, num_classes, num_cells,
                 genotypes, alpha_share=True, stem_multiplier=3, auxiliary=True):
        super().__init__()
        self._input_size = input_size
        self._channels_in = channels_in
        self._channels_init = channels_init
        self._num_cells = num_cells
        self._num_nodes = len(genotypes[0])
        self._num_classes = num_classes
        self._stem_multiplier = stem_multiplier
        self._auxiliary = auxiliary
        self._aux_pos = 2 * num_cells // 3 if auxiliary else -1
        self._genotypes = genotypes
        self._alpha_share = alpha_share
        c_cur = stem_multiplier * channels_init
        self._stem = nn.Sequential(nn.Conv2d(channels_in, c_cur, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(c_cur))
        c_pp, c_p, c_cur = c_cur, c_cur, channels_init
        self._cells = nn.ModuleList()
        self._aux_head = None
        reduction_prev = False
        for i in range(num_cells):
            reduction = i in (num_cells // 3, 2 * num_cells // 3)
            if reduction:
                c_cur *= 2
            genotype = genotypes[int(reduction)] if alpha_share else genotypes[i]
            self._cells.append(AugmentCell(i, c_pp, c_p, c_cur, reduction_prev, reduction,
                                           genotype))
            reduction_prev = reduction
            c_pp, c_p = c_p, c_cur * len(genotype)
            if i == self._aux_pos:
                self._aux_head = AuxiliaryHead(input_size // 4, c_p, num_classes)
        self._gap = nn.AdaptiveAvgPool2d(1)
        self._classifier = nn.Linear(c_p, num_classes)

    def forward(self, x):
        s0 = s1 = self._stem(x)
        aux_logits = None
        for i, cell in enumerate(self._cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self._aux_pos and self.training:
                aux_logits = self._aux_head(s1)
        return self._classifier(self._gap(s1).flatten(1)), aux_logits


_MODULES = {"augment_cnn": (AugmentCNN, AuxiliaryHead), "cells": (AugmentCell,),
            "operators": (DilConv, SepConv, PoolBN, FactorizedReduce, Identity, DropPath,
                          StdConv)}


# ----------------------------------------------------------------------------- helpers
def install_authors_modules() -> None:
    """Register fake `augment_cnn`, `cells`, `operators` modules holding the classes above
    (with `__file__` set to this file, so torch.save records their source like the authors')."""
    for name, classes in _MODULES.items():
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != __file__:
            module = types.ModuleType(name)
            module.__file__ = __file__
            sys.modules[name] = module
        for cls in classes:
            setattr(module, cls.__name__, cls)


def to_nested(flat_ops) -> Nested:
    """Our flat genotype list [(op, in), ...] -> the authors' per-node pairs."""
    flat = [(str(op), int(src)) for op, src in flat_ops]
    return [flat[i:i + 2] for i in range(0, len(flat), 2)]


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN affine params and running stats, so logits comparisons bite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                               * (1.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def make_authors_model(genotype_nested_normal: Nested, genotype_nested_reduce: Nested,
                       channels_init: int = 8, num_cells: int = 5, num_classes: int = 10,
                       input_size: int = 32, channels_in: int = 3, auxiliary: bool = True,
                       cell_genotypes: list | None = None, seed: int = 0) -> AugmentCNN:
    """An authors'-style AugmentCNN in eval mode with random weights and BN statistics.

    With `cell_genotypes` (one nested genotype per cell) alphas are not shared
    (`_alpha_share = False`, `_genotypes` = that list); normal/reduce are then ignored.
    """
    install_authors_modules()
    if cell_genotypes is None:
        genotypes, share = [genotype_nested_normal, genotype_nested_reduce], True
    else:
        genotypes, share = list(cell_genotypes), False
    torch.manual_seed(seed)
    model = AugmentCNN(input_size, channels_in, channels_init, num_classes, num_cells,
                       genotypes, alpha_share=share, auxiliary=auxiliary)
    return randomise_(model, seed).eval()


def save_like_authors(model: nn.Module, path) -> None:
    """`torch.save(model)` in the legacy (non-zip) format, as PyTorch 1.x wrote it."""
    install_authors_modules()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, path, _use_new_zipfile_serialization=False)
