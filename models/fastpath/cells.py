"""Same-function forwards of the mixed op, the cells and the networks, with less work on CPU.

Each class here subclasses the plain one (models/search_cells.py, augment_cells.py,
search_cnn.py, augment_cnn.py) and only overrides `forward`; `models.fastpath.enable` turns a
built network's modules into them in place, so parameters and state-dict keys are the plain
ones. What they save, all without changing outputs, gradients or BatchNorm statistics
(tests/test_fastpath.py pins each to the plain path):
- one ReLU per state, shared by every op starting with a ReLU on every edge leaving it, and one
  per cell output, shared by the two cells that read it;
- weight-free ops (pooling with non-affine BatchNorm, the identity) computed once per state
  and shared by the edges leaving it (same input, same output, same statistics);
- each op's mixed-op weight folded into its last BatchNorm's affine weight (no separate
  multiply and no saved copy of its output), sums accumulated in place;
- concatenated cell outputs hand dense gradients back (functions.concat_channels).
"""
from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.augment_cells import FinalCell
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.fastpath.functions import concat_channels, scale_by, scaled_batch_norm
from models.ops import (DilConv, FacConv, FactorizedReduce, Identity, PoolBN, SepConv, StdConv,
                        drop_path)
from models.search_cells import MixedOp, SearchCell, edge_key
from models.shared import run_cell
from models.search_cnn import SearchNetwork

STARTS_WITH_RELU = (StdConv, DilConv, SepConv, FacConv, FactorizedReduce)


def is_weight_free(op: nn.Module) -> bool:
    """The identity, and pooling whose BatchNorm has no affine weights (supernets)."""
    return isinstance(op, Identity) or (isinstance(op, PoolBN) and not op.bn.affine)


def after_relu(op: nn.Module, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`scale * op(x')` for an op of STARTS_WITH_RELU, given x = relu(x'): the op's own ReLU
    is skipped and `scale` is folded into its last BatchNorm."""
    if isinstance(op, SepConv):
        # the inner ReLU may work in place: BatchNorm's backward needs its input, not its output
        inner = torch.relu_(after_relu(op.net[0], x))
        return after_relu(op.net[1], inner, scale)
    if isinstance(op, FactorizedReduce):
        # a strided 1x1 conv is a 1x1 conv of the strided samples (the CPU library's strided
        # backward is slow); the odd grid is padded at the far edge as the plain op does
        even, odd = x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]
        odd = F.pad(odd, (0, even.shape[3] - odd.shape[3], 0, even.shape[2] - odd.shape[2]))
        halves = [F.conv2d(even, op.conv1.weight), F.conv2d(odd, op.conv2.weight)]
        return scaled_batch_norm(op.bn, concat_channels(halves), scale)
    relu, layers, bn = op.net[0], op.net[1:-1], op.net[-1]
    assert isinstance(relu, nn.ReLU), f"{type(op).__name__} must start with its ReLU"
    return scaled_batch_norm(bn, layers(x), scale)


def _preprocess(cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor, inputs_relued: bool):
    if inputs_relued:
        return [after_relu(cell.preproc0, s0), after_relu(cell.preproc1, s1)]
    return [cell.preproc0(s0), cell.preproc1(s1)]


class FastMixedOp(MixedOp):
    """MixedOp.forward with a per-state `cache` (the ReLU of x, weight-free ops' outputs)."""

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
        cache = {} if cache is None else cache
        out = None
        # ops with weights first: each yields a fresh tensor that backward does not need, to
        # accumulate into in place; the shared weight-free outputs are then added to it scaled
        for i, key in enumerate(self.module_keys):
            op = self.ops[key] if key else None
            if op is None or is_weight_free(op):
                continue
            if isinstance(op, STARTS_WITH_RELU):
                if "relu" not in cache:
                    cache["relu"] = torch.relu(x)
                term = after_relu(op, cache["relu"], weights[i])
            else:
                term = scale_by(op(x), weights[i])
            out = term if out is None else out.add_(term)
        for i, (key, name) in enumerate(zip(self.module_keys, self.op_names)):
            if key and is_weight_free(self.ops[key]):
                if name not in cache:
                    cache[name] = self.ops[key](x)
                out = scale_by(cache[name], weights[i], out)
        if out is None:  # only `none`
            return super().forward(x, weights)
        return out


def share_weight_free_ops(cell: SearchCell) -> None:
    """Edges leaving the same state hold one instance of each weight-free op (matched by op
    name: both identities of a doubled skip_connect are one), so FastMixedOp's cache computes
    it once and its running statistics are updated once per step, as each edge's own would be."""
    for j in range(cell.num_nodes + 1):
        first: dict[str, nn.Module] = {}
        for i in range(max(j - 1, 0), cell.num_nodes):
            mixed = cell.edges[edge_key(i, j)]
            for key, name in zip(mixed.module_keys, mixed.op_names):
                if key and is_weight_free(mixed.ops[key]):
                    mixed.ops[key] = first.setdefault(name, mixed.ops[key])


class FastSearchCell(SearchCell):
    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: list[list[torch.Tensor]],
                inputs_relued: bool = False) -> torch.Tensor:
        states = _preprocess(self, s0, s1, inputs_relued)
        caches: list[dict] = [{}, {}]  # what the edges leaving each state share
        for i in range(self.num_nodes):
            node = None
            for j, h in enumerate(states):
                term = self.edges[edge_key(i, j)](h, weights[i][j], caches[j])
                node = term if node is None else node.add_(term)  # mixed-op outputs are fresh
            states.append(node)
            caches.append({})
        return concat_channels(states[2:])


def run_cells_relued(net: nn.Module, s0: torch.Tensor, s1: torch.Tensor, cell_args: Iterable):
    """models.shared.run_cells with one ReLU per cell output, shared by the two cells
    that read it (their preprocessing starts with that ReLU)."""
    aux_logits = None
    r0 = torch.relu(s0)
    r1 = r0 if s1 is s0 else torch.relu(s1)
    for i, (cell, arg) in enumerate(zip(net.cells, cell_args)):
        s1 = run_cell(cell, net.grad_checkpoint and net.training, r0, r1, arg, True)
        r0, r1 = r1, (torch.relu(s1) if i + 1 < len(net.cells) else None)
        if i == net.aux_pos and net.aux_head is not None and net.training:
            aux_logits = net.aux_head(s1)
    logits = net.classifier(torch.flatten(net.pool(s1), 1))
    return (logits, aux_logits) if aux_logits is not None else logits


class FastSearchNetwork(SearchNetwork):
    def forward(self, x: torch.Tensor):
        weights = {name: self._softmaxed(name) for name in self.arch}
        s = self.stem(x)
        return run_cells_relued(self, s, s, [weights[name] for name in self.cell_sets])


class FastFinalCell(FinalCell):
    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0,
                inputs_relued: bool = False) -> torch.Tensor:
        states = _preprocess(self, s0, s1, inputs_relued)
        for i, (ops, sources) in enumerate(zip(self.nodes, self.inputs)):
            node = None
            for k, (op, src) in enumerate(zip(ops, sources)):
                h = op(states[src])
                # other ops end in a BN, Zero or FR: new tensors
                fresh = not isinstance(op, Identity)
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


class FastFinalNetwork(FinalNetwork):
    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        return run_cells_relued(self, s0, s1, repeat(self.drop_path_prob))


class FastImageNetNetwork(ImageNetNetwork):
    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        return run_cells_relued(self, s0, s1, repeat(self.drop_path_prob))
