"""The CPU fast path: the same networks computing the same function with less work.

`enable(model)` turns a network built by models.factory (plain modules, reading like the
paper) into its fast form in place: cells, mixed ops and network forwards from
`cells.py`, depthwise convolutions with the faster backward of `functions.py`, weight-free ops
shared per state. Parameters, buffers and state-dict keys do not change, so checkpoints move
freely between the two forms. utils.runtime.speed enables it on CPU, where it was measured to pay
(README, "Speed, memory and multiple GPUs"); on GPUs cuDNN serves the plain path.
tests/test_fastpath.py pins every fast form to the plain one (outputs, gradients, BatchNorm
statistics).
"""
from __future__ import annotations

import torch.nn as nn

from models.augment_cells import FinalCell
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.fastpath import cells as fast
from models.fastpath.functions import DepthwiseConv2d
from models.search_cells import MixedOp, SearchCell
from models.search_cnn import SearchNetwork

# plain class -> its fast form (exact classes only: subclasses are left alone)
FAST_FORMS = {MixedOp: fast.FastMixedOp, SearchCell: fast.FastSearchCell,
              SearchNetwork: fast.FastSearchNetwork, FinalCell: fast.FastFinalCell,
              FinalNetwork: fast.FastFinalNetwork, ImageNetNetwork: fast.FastImageNetNetwork}


def _is_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels
            and m.bias is None and m.kernel_size[0] == m.kernel_size[1])


# The parts of the fast path, each measured on its own (bench/step_bench.py variants):
# "cells": the fast forms of FAST_FORMS; "depthwise": DepthwiseConv2d's backward.
PARTS = ("cells", "depthwise")


def enable(model: nn.Module, parts: tuple[str, ...] = PARTS) -> nn.Module:
    """Switch `model` (and its submodules) to the fast path, in place; returns it."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown fast-path parts {sorted(unknown)}; choose from {PARTS}")
    for module in list(model.modules()):
        if "cells" in parts and type(module) in FAST_FORMS:
            module.__class__ = FAST_FORMS[type(module)]
            if isinstance(module, SearchCell):
                fast.share_weight_free_ops(module)
        elif "depthwise" in parts and _is_depthwise(module):
            module.__class__ = DepthwiseConv2d
    return model
