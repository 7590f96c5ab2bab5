"""Final networks built from a genotype: CIFAR-style (any input size >= 8, any channels) and
the ImageNet mobile setting, each with its auxiliary head (DARTS sec. 3.3; models.shared)."""
from __future__ import annotations

from itertools import repeat

import torch
import torch.nn as nn

from genotypes import reduction_cells
from models.augment_cells import FinalCell
from models.shared import AuxiliaryHead, run_cells


def cell_specs(genotype, num_cells: int) -> list[tuple[list, list[int], bool]]:
    """(ops, concat, reduction) for every cell, from a shared Genotype (normal/reduce) or a
    list with one CellGenotype per cell."""
    reductions = reduction_cells(num_cells)
    if hasattr(genotype, "normal"):
        return [(genotype.reduce, list(genotype.reduce_concat), True) if i in reductions
                else (genotype.normal, list(genotype.normal_concat), False)
                for i in range(num_cells)]
    if len(genotype) != num_cells:
        raise ValueError(f"per-cell genotype has {len(genotype)} cells but the network has "
                         f"{num_cells}; pass --num_cells {len(genotype)}")
    specs = []
    for i, cell in enumerate(genotype):
        if bool(cell.reduction) != (i in reductions):
            raise ValueError(f"per-cell genotype: cell {i} reduction={cell.reduction} but "
                             f"reductions of a {num_cells}-cell network are at "
                             f"{sorted(reductions)}")
        specs.append((cell.ops, list(cell.concat), i in reductions))
    return specs


class _FinalBase(nn.Module):
    """Cells, auxiliary head and classifier shared by both final networks."""

    def _build_cells(self, genotype, c_pp: int, c_p: int, channels: int, num_cells: int,
                     size: int, reduction_prev: bool, keep_zero: bool) -> tuple[int, int, int]:
        self.cells = nn.ModuleList()
        self.grad_checkpoint = False  # recompute each cell in backward (saves memory)
        self.aux_pos = 2 * num_cells // 3
        aux = (c_p, size)
        for i, (ops, concat, reduction) in enumerate(cell_specs(genotype, num_cells)):
            if reduction:
                channels *= 2
                size = -(-size // 2)
            cell = FinalCell(ops, concat, c_pp, c_p, channels, reduction, reduction_prev, keep_zero)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.out_channels
            if i == self.aux_pos:
                aux = (c_p, size)
        return c_p, aux[0], aux[1]

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        return run_cells(self, s0, s1, repeat(self.drop_path_prob))


class FinalNetwork(_FinalBase):
    """CIFAR-style final network: Conv3x3 stem (in_channels -> 3C) + BN, `num_cells` cells with
    reductions at num_cells//3 and 2*num_cells//3, global pool, Linear.

    forward returns logits, or (logits, aux_logits) in training mode with `auxiliary`.
    `drop_path_prob` is set by the training loop (ramped 0 -> p over the epochs).
    """

    def __init__(self, genotype, num_classes: int = 10, init_channels: int = 36,
                 num_cells: int = 20, auxiliary: bool = False, in_channels: int = 3,
                 input_size: int = 32, stem_multiplier: int = 3, keep_zero: bool = False):
        super().__init__()
        if num_cells < 3:
            raise ValueError(f"num_cells must be >= 3 (two reduction cells), got {num_cells}")
        if input_size < 8:
            raise ValueError(f"input size must be >= 8 pixels, got {input_size}")
        self.drop_path_prob = 0.0
        c_stem = stem_multiplier * init_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_last, c_aux, size_aux = self._build_cells(genotype, c_stem, c_stem, init_channels,
                                                    num_cells, input_size, False, keep_zero)
        self.aux_head = AuxiliaryHead(c_aux, size_aux, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor):
        s = self.stem(x)
        return self._run_cells(s, s)


class ImageNetNetwork(_FinalBase):
    """ImageNet mobile setting (DARTS): 224x224 input; stem0 = Conv3x3/2 (3 -> C/2) - BN -
    ReLU - Conv3x3/2 (C/2 -> C) - BN; stem1 = ReLU - Conv3x3/2 (C -> C) - BN; cells from
    28x28 with a reduced c_{k-2}; auxiliary head after cell 2*num_cells//3 (the 7x7 map, as
    DARTS's code places it, without BN after the 2x2 conv); global pool; Linear.
    """

    def __init__(self, genotype, num_classes: int = 1000, init_channels: int = 48,
                 num_cells: int = 14, auxiliary: bool = False, in_channels: int = 3,
                 input_size: int = 224, keep_zero: bool = False):
        super().__init__()
        if num_cells < 3:
            raise ValueError(f"num_cells must be >= 3 (two reduction cells), got {num_cells}")
        if input_size < 32:
            raise ValueError(f"the ImageNet network needs inputs >= 32 pixels, got {input_size}")
        self.drop_path_prob = 0.0
        c = init_channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, c // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
        size = -(-input_size // 8)
        c_last, c_aux, size_aux = self._build_cells(genotype, c, c, c, num_cells, size, True,
                                                    keep_zero)
        self.aux_head = (AuxiliaryHead(c_aux, size_aux, num_classes, bn_768=False)
                         if auxiliary else None)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))
