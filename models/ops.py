"""Candidate operations of the DARTS search space and the `OPS` registry.

Every op maps a tensor with C channels to one with C channels; at stride 2 the spatial size
becomes ceil(H / 2) for odd and even H alike. BatchNorm is affine=False in supernets and
affine=True in final networks (StacNAS facts sheet, "Operations").
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fast_convs import DepthwiseConv2d, concat_channels


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob`, rescaling the rest (device-agnostic)."""
    if not training or drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(keep)
    return x * mask.div_(keep)  # one pass over x


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """`scale * bn(x)` in one BatchNorm call: the scale joins BN's affine weight (and bias), so
    a supernet's alpha weight costs no separate multiply and no saved copy of the BN output.
    Running statistics are updated exactly as `bn(x)` would."""
    if scale is None:
        return bn(x)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    # a contiguous weight: a stride-0 expanded one takes a 2x slower BatchNorm backward on CPU
    weight = scale.expand(bn.num_features).contiguous() if bn.weight is None else bn.weight * scale
    bias = None if bn.bias is None else bn.bias * scale
    batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, batch_stats, momentum, bn.eps)


class _ReLUFirst(nn.Module):
    """An op `ReLU - ... - BN` held in `net`: `forward_after_relu` skips the ReLU, so a mixed op
    can share one ReLU of its input among all such candidates, and takes the mixed op's weight
    into the final BatchNorm (same function, less work)."""

    starts_with_relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(torch.relu(x))

    def forward_after_relu(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return scaled_batch_norm(self.net[-1], self.net[1:-1](x), scale)


class StdConv(_ReLUFirst):
    """ReLU - Conv - BN (the cells' input preprocessing)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(_ReLUFirst):
    """ReLU - depthwise Conv (dilated) - pointwise Conv - BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(c_in, kernel, stride, padding, dilation),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Module):
    """Two DilConv blocks with dilation 1: ReLU-dwConv-pwConv-BN twice, stride on the first."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    starts_with_relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(torch.relu(x))

    def forward_after_relu(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        # the inner ReLU may work in place: BatchNorm's backward needs its input, not its output
        inner = torch.relu_(self.net[0].forward_after_relu(x))
        return self.net[1].forward_after_relu(inner, scale)


class FacConv(_ReLUFirst):
    """ReLU - Conv(1 x k) - Conv(k x 1) - BN (the `conv_7x1_1x7` op)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool = True):
        super().__init__()
        pad = kernel // 2
        self.net = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, (1, kernel), (1, stride), (0, pad), bias=False),
            nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (pad, 0), bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class PoolBN(nn.Module):
    """3x3 max or average pooling (average excludes padding) - BN."""

    def __init__(self, kind: str, channels: int, stride: int, affine: bool = True):
        super().__init__()
        if kind == "max":
            self.pool = nn.MaxPool2d(3, stride, 1)
        elif kind == "avg":
            self.pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        else:
            raise ValueError(f"unknown pooling kind {kind!r}; use 'max' or 'avg'")
        self.bn = nn.BatchNorm2d(channels, affine=affine)
        # without affine BN it has no weights: edges reading the same state may share it
        self.weight_free = not affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))


class Identity(nn.Module):
    """The skip connection at stride 1."""

    weight_free = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (ceil(H / stride))."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, c, -(-h // s), -(-w // s))


class FactorizedReduce(nn.Module):
    """ReLU - two 1x1 convs at stride 2 on offset grids, concatenated - BN.

    The second path reads the input shifted by one pixel; padding it at the far edge makes
    both paths ceil(H / 2) wide for odd H too (identical values for even H). The convs are
    stride-2 nn.Conv2d modules (weights, state dict) applied as 1x1 convs of the samples.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    starts_with_relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        # a strided 1x1 conv is a 1x1 conv of the strided samples; taking them first avoids
        # the CPU library's slow strided backward
        even = x[:, :, ::2, ::2]
        odd = x[:, :, 1::2, 1::2]
        odd = F.pad(odd, (0, even.shape[3] - odd.shape[3], 0, even.shape[2] - odd.shape[2]))
        halves = [F.conv2d(even, self.conv1.weight), F.conv2d(odd, self.conv2.weight)]
        return scaled_batch_norm(self.bn, concat_channels(halves), scale)


OpFactory = Callable[[int, int, bool], nn.Module]

# name -> factory(channels, stride, affine)
OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: PoolBN("avg", c, stride, affine),
    "max_pool_3x3": lambda c, stride, affine: PoolBN("max", c, stride, affine),
    "skip_connect": lambda c, stride, affine: (
        Identity() if stride == 1 else FactorizedReduce(c, c, affine)),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda c, stride, affine: FacConv(c, c, 7, stride, affine),
}


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build the op `name`; an unknown name is a ValueError listing the known ones."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(OPS)}") from None
    return factory(channels, stride, affine)


def preprocessing(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool,
                  affine: bool) -> tuple[nn.Module, nn.Module]:
    """The two input adapters of a cell: c_{k-2} and c_{k-1} -> `channels` at the cell's size.

    c_{k-2} is one step larger after a reduction cell, so it is FactorizedReduce'd there.
    """
    if reduction_prev:
        pre0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine)
    else:
        pre0 = StdConv(c_prev_prev, channels, 1, 1, 0, affine)
    return pre0, StdConv(c_prev, channels, 1, 1, 0, affine)


def preprocess(pre0: nn.Module, pre1: nn.Module, s0: torch.Tensor, s1: torch.Tensor,
               inputs_relued: bool) -> list[torch.Tensor]:
    """The cell's two input states; with `inputs_relued`, s0 and s1 are already ReLU'd (the
    network applies one ReLU to each cell output for the two cells that read it)."""
    if inputs_relued:
        return [pre0.forward_after_relu(s0), pre1.forward_after_relu(s1)]
    return [pre0(s0), pre1(s1)]
