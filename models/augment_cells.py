"""The final (discrete) cell built from a genotype, trained from scratch in augment.py."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.ops import Identity, drop_path, make_op, preprocessing


class FinalCell(nn.Module):
    """A cell with the ops of a genotype: node i sums ops[2i](state[in]) and ops[2i+1](...).

    `ops` is the genotype's flat list of (op, input) pairs, two per intermediate node; the
    output concatenates the nodes listed in `concat`. Drop path applies to every op except
    the identity. With `keep_zero`, each kept edge also carries a learned gate: softmax over
    (op, none) with none's logit fixed at 0, i.e. sigmoid(gate) * op(x) (the authors'
    unpublished "keep ZERO" idea; off by default).
    """

    def __init__(self, ops: list[tuple[str, int]], concat: list[int], c_prev_prev: int,
                 c_prev: int, channels: int, reduction: bool, reduction_prev: bool,
                 keep_zero: bool = False):
        super().__init__()
        if len(ops) % 2:
            raise ValueError(f"a genotype lists 2 ops per node, got {len(ops)} entries")
        self.reduction = reduction
        self.concat = list(concat)
        self.preproc0, self.preproc1 = preprocessing(c_prev_prev, c_prev, channels,
                                                     reduction_prev, affine=True)
        self.inputs: list[list[int]] = []
        self.nodes = nn.ModuleList()
        for i in range(len(ops) // 2):
            pair = ops[2 * i: 2 * i + 2]
            self.inputs.append([int(src) for _, src in pair])
            self.nodes.append(nn.ModuleList(
                make_op(name, channels, 2 if reduction and src < 2 else 1, affine=True)
                for name, src in pair))
        self.gates = nn.Parameter(torch.zeros(len(ops))) if keep_zero else None
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for i, (ops, sources) in enumerate(zip(self.nodes, self.inputs)):
            node = 0
            for k, (op, src) in enumerate(zip(ops, sources)):
                h = op(states[src])
                if not isinstance(op, Identity):
                    h = drop_path(h, drop_prob, self.training)
                if self.gates is not None:
                    h = torch.sigmoid(self.gates[2 * i + k]) * h
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)
