"""Supernet building blocks: the mixed op over an explicit candidate list, and the search cell.

The candidate list is data handed down per edge, so stage 1 (group representatives), stage 2
(the members of one group, different on every edge) and the DARTS baseline (8 ops) share the
same code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from genotypes import duplicate_problem
from models.ops import make_op, preprocessing


def module_keys(op_names: list[str]) -> list[str | None]:
    """The `MixedOp.ops` key of each candidate: its op name, `<name>_2` for a second copy (the
    released code's doubled skip_connect: `skip_connect_2`), None for `none` (no module). Lists
    without repeats keep plain op names, so their state-dict keys do not change."""
    seen: dict[str, int] = {}
    keys: list[str | None] = []
    for name in op_names:
        seen[name] = seen.get(name, 0) + 1
        if name == "none":
            keys.append(None)
        else:
            keys.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return keys


def edge_key(node: int, source: int) -> str:
    """Readable edge name: node index counted from 2 (0, 1 are the cell inputs) <- source."""
    return f"{node + 2}<-{source}"


class MixedOp(nn.Module):
    """One supernet edge: sum_i softmax(alpha)_i * op_i(x) over the edge's candidates
    (DARTS eq. 2; the softmaxed alphas arrive as `weights`).

    `none` is listed among the candidates (it has an alpha) but owns no module: its term is
    zero, so no compute is spent on it. `ops` is keyed by op name; the released code's
    identity group lists skip_connect twice (--identity_group released), each copy with its
    own alpha and module, the second under the key `skip_connect_2` (`module_keys`). No other
    op may repeat.
    """

    def __init__(self, channels: int, stride: int, op_names: list[str]):
        super().__init__()
        if not op_names:
            raise ValueError("an edge needs at least one candidate op")
        problem = duplicate_problem(list(op_names))
        if problem:
            raise ValueError(f"duplicate candidate ops on one edge: {problem}")
        self.op_names = list(op_names)
        self.module_keys = module_keys(self.op_names)
        self.stride = stride
        self.ops = nn.ModuleDict({key: make_op(name, channels, stride, affine=False)
                                  for name, key in zip(op_names, self.module_keys) if key})

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`weights`: one value per candidate, in `op_names` order."""
        terms = [w * self.ops[key](x) for w, key in zip(weights, self.module_keys) if key]
        if not terms:  # only `none`: the edge contributes zeros
            n, c, h, w = x.shape
            return x.new_zeros(n, c, -(-h // self.stride), -(-w // self.stride))
        return sum(terms)


class SearchCell(nn.Module):
    """A supernet cell (DARTS sec. 2.1): 2 inputs, `num_nodes` intermediate nodes, every
    earlier state feeds every node through a MixedOp, output = concat of the intermediate
    nodes. `candidates[i][j]` is the op list of the edge from state j into node i.
    """

    def __init__(self, candidates: list[list[list[str]]], c_prev_prev: int, c_prev: int,
                 channels: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = len(candidates)
        self.preproc0, self.preproc1 = preprocessing(c_prev_prev, c_prev, channels,
                                                     reduction_prev, affine=False)
        self.edges = nn.ModuleDict()
        for i, node_edges in enumerate(candidates):
            if len(node_edges) != i + 2:
                raise ValueError(f"node {i} needs {i + 2} incoming edges, got {len(node_edges)}")
            for j, op_names in enumerate(node_edges):
                stride = 2 if reduction and j < 2 else 1
                self.edges[edge_key(i, j)] = MixedOp(channels, stride, op_names)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                weights: list[list[torch.Tensor]]) -> torch.Tensor:
        """`weights[i][j]`: softmaxed alphas of the edge from state j into node i."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        for i in range(self.num_nodes):
            states.append(sum(self.edges[edge_key(i, j)](h, weights[i][j])
                              for j, h in enumerate(states)))
        return torch.cat(states[2:], dim=1)
