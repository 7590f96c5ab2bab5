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

from genotypes import duplicate_problem
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
    """sum_i softmax(alpha)_i * op_i(x) over the edge's candidates (DARTS eq. 2).

    `none` is listed among the candidates (it has an alpha) but owns no module: its term is
    zero, so its weight simply drops out of the sum and no compute is spent on it. The same
    function is computed with less work: ops starting with a ReLU read one ReLU of `x` shared
    by every edge leaving that state, and take their weight inside their last BatchNorm;
    weight-free ops (pooling with non-affine BN, identity) are computed once per state and
    reused by every edge leaving it (`cache`, one dict per state and forward pass).

    `ops` is keyed by op name. The released code's identity group lists skip_connect twice
    (genotypes.released_groups): each copy has its own alpha and its own module, the second
    under the key `skip_connect_2` (`module_keys`). At stride 1 both are the weight-free
    identity, computed once and added twice, each term scaled by its own weight; at stride 2
    they are two FactorizedReduce modules with separate weights. No other op may repeat.
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
        # (index, module key, op name); weight-free outputs are cached by op name, so the two
        # identities of a doubled skip_connect share one
        indexed = [(i, key, name) for i, (name, key) in enumerate(zip(op_names, self.module_keys))
                   if key]
        self._weight_free = [t for t in indexed if getattr(self.ops[t[1]], "weight_free", False)]
        self._parametric = [t for t in indexed if t not in self._weight_free]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """`weights` holds one value per candidate, in `op_names` order; `cache` holds what
        the edges leaving `x` share (the ReLU of `x`, weight-free ops' outputs)."""
        cache = {} if cache is None else cache
        out = None
        # ops with weights first: each yields a fresh tensor, which backward does not need,
        # to accumulate into in place; the weight-free ops' shared outputs are then added
        # to it scaled, without a product tensor
        for i, key, _ in self._parametric:
            op = self.ops[key]
            if getattr(op, "starts_with_relu", False):
                if "relu" not in cache:
                    cache["relu"] = torch.relu(x)
                term = op.forward_after_relu(cache["relu"], weights[i])
            else:
                term = scale_by(op(x), weights[i])
            out = term if out is None else out.add_(term)
        for i, key, name in self._weight_free:
            if name not in cache:
                cache[name] = self.ops[key](x)
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
        every edge would have. Instances are matched by op name: both identities of a doubled
        skip_connect are the same one."""
        for j in range(self.num_nodes + 1):
            first: dict[str, nn.Module] = {}
            for i in range(max(j - 1, 0), self.num_nodes):
                mixed = self.edges[edge_key(i, j)]
                for key, name in zip(mixed.module_keys, mixed.op_names):
                    if key and getattr(mixed.ops[key], "weight_free", False):
                        mixed.ops[key] = first.setdefault(name, mixed.ops[key])

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
