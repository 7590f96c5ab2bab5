"""The final (discrete) cell built from a genotype, trained from scratch in augment.py."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.fast_convs import concat_channels
from models.ops import Identity, drop_path, make_op, preprocess, preprocessing


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

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0,
                inputs_relued: bool = False) -> torch.Tensor:
        """With `inputs_relued`, s0 and s1 are already ReLU'd (see ops.preprocess)."""
        states = preprocess(self.preproc0, self.preproc1, s0, s1, inputs_relued)
        for i, (ops, sources) in enumerate(zip(self.nodes, self.inputs)):
            node = None
            for k, (op, src) in enumerate(zip(ops, sources)):
                h = op(states[src])
                fresh = not isinstance(op, Identity)  # other ops end in a BN, Zero or FR: new tensors
                if fresh:
                    h = drop_path(h, drop_prob, self.training)
                if self.gates is not None:
                    h, fresh = torch.sigmoid(self.gates[2 * i + k]) * h, True
                if node is None:
                    node, node_fresh = h, fresh
                elif node_fresh:  # a new tensor that backward does not need: sum in place
                    node = node.add_(h)
                else:
                    node, node_fresh = node + h, True
            states.append(node)
        return concat_channels([states[i] for i in self.concat])
