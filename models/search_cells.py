"""Supernet building blocks: the mixed op over an explicit candidate list, and the search cell.

The candidate list is data handed down per edge, so stage 1 (group representatives), stage 2
(the members of one group, different on every edge) and the DARTS baseline (8 ops) share the
same code.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.fast_convs import concat_channels, scale_by
from models.ops import make_op, preprocess, preprocessing


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


def run_cell(cell: nn.Module, checkpointed: bool, *inputs):
    """cell(*inputs), optionally under activation checkpointing: only the cell's inputs are kept
    for backward and its inside is recomputed (torch.utils.checkpoint; RNG state replayed, so
    drop path draws the same masks; BatchNorm statistics updated once)."""
    if not checkpointed:
        return cell(*inputs)
    return checkpoint(cell, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _frozen_bn_statistics(cell)))


def edge_key(node: int, source: int) -> str:
    """Readable edge name: node index counted from 2 (0, 1 are the cell inputs) <- source."""
    return f"{node + 2}<-{source}"


class MixedOp(nn.Module):
    """sum_i softmax(alpha)_i * op_i(x) over the edge's candidates (DARTS eq. 2).

    `none` is listed among the candidates (it has an alpha) but owns no module: its term is
    zero, so its weight simply drops out of the sum and no compute is spent on it. The same
    function is computed with less work: ops starting with a ReLU read one ReLU of `x` shared
    by every edge leaving that state, and take their weight inside their last BatchNorm;
    weight-free ops (pooling with non-affine BN, identity) are computed once per state and
    reused by every edge leaving it (`cache`, one dict per state and forward pass).
    """

    def __init__(self, channels: int, stride: int, op_names: list[str]):
        super().__init__()
        if not op_names:
            raise ValueError("an edge needs at least one candidate op")
        if len(set(op_names)) != len(op_names):
            raise ValueError(f"duplicate candidate ops on one edge: {op_names}")
        self.op_names = list(op_names)
        self.stride = stride
        self.ops = nn.ModuleDict({name: make_op(name, channels, stride, affine=False)
                                  for name in op_names if name != "none"})
        indexed = [(i, name) for i, name in enumerate(op_names) if name != "none"]
        self._weight_free = [(i, name) for i, name in indexed
                             if getattr(self.ops[name], "weight_free", False)]
        self._parametric = [(i, name) for i, name in indexed if (i, name) not in self._weight_free]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """`weights` holds one value per candidate, in `op_names` order; `cache` holds what
        the edges leaving `x` share (the ReLU of `x`, weight-free ops' outputs)."""
        cache = {} if cache is None else cache
        out = None
        # ops with weights first: each yields a fresh tensor, which backward does not need,
        # to accumulate into in place; the weight-free ops' shared outputs are then added
        # to it scaled, without a product tensor
        for i, name in self._parametric:
            op = self.ops[name]
            if getattr(op, "starts_with_relu", False):
                if "relu" not in cache:
                    cache["relu"] = torch.relu(x)
                term = op.forward_after_relu(cache["relu"], weights[i])
            else:
                term = scale_by(op(x), weights[i])
            out = term if out is None else out.add_(term)
        for i, name in self._weight_free:
            if name not in cache:
                cache[name] = self.ops[name](x)
            out = scale_by(cache[name], weights[i], out)
        if out is None:  # only `none`: the edge contributes zeros
            n, c, h, w = x.shape
            s = self.stride
            out = x.new_zeros(n, c, -(-h // s), -(-w // s))
        return out


class SearchCell(nn.Module):
    """A supernet cell: 2 inputs, `num_nodes` intermediate nodes, every earlier state feeds
    every node through a MixedOp, output = concat of the intermediate nodes.

    `candidates[i][j]` is the op list of the edge from state j into intermediate node i.
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
        self._share_weight_free_ops()

    def _share_weight_free_ops(self) -> None:
        """Edges leaving the same state hold one instance of each weight-free op (same
        stride, same input, hence the same output and the same BatchNorm statistics), so the
        cache of MixedOp.forward computes it once and its running statistics stay the ones
        every edge would have."""
        for j in range(self.num_nodes + 1):
            first: dict[str, nn.Module] = {}
            for i in range(max(j - 1, 0), self.num_nodes):
                ops = self.edges[edge_key(i, j)].ops
                for name, op in list(ops.items()):
                    if getattr(op, "weight_free", False):
                        ops[name] = first.setdefault(name, op)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: list[list[torch.Tensor]],
                inputs_relued: bool = False) -> torch.Tensor:
        """`weights[i][j]`: softmaxed alphas of edge j into node i. With `inputs_relued`, s0
        and s1 are already ReLU'd (see ops.preprocess)."""
        states = preprocess(self.preproc0, self.preproc1, s0, s1, inputs_relued)
        caches: list[dict] = [{}, {}]  # what the edges leaving each state share
        for i in range(self.num_nodes):
            node = None
            for j, h in enumerate(states):
                term = self.edges[edge_key(i, j)](h, weights[i][j], caches[j])
                node = term if node is None else node.add_(term)  # mixed-op outputs are fresh
            states.append(node)
            caches.append({})
        return concat_channels(states[2:])
