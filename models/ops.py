"""Candidate operations of the DARTS search space and the `OPS` registry.

Every op maps a tensor with C channels to one with C channels; at stride 2 the spatial size
becomes ceil(H / 2) for odd and even H alike. BatchNorm is affine=False in supernets and
affine=True in final networks, as in DARTS's code.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob`, rescaling the rest (device-agnostic)."""
    if not training or drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(keep)
    return x * (mask / keep)


class StdConv(nn.Module):
    """ReLU - Conv - BN (the cells' input preprocessing)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DilConv(nn.Module):
    """ReLU - depthwise Conv (dilated) - pointwise Conv - BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SepConv(nn.Module):
    """Two DilConv blocks with dilation 1: ReLU-dwConv-pwConv-BN twice, stride on the first."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FacConv(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))


class Identity(nn.Module):
    """The skip connection at stride 1."""

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

    The second path reads the input shifted by one pixel, padded at the far edge so that both
    paths are ceil(H / 2) wide for odd H too (for even H the padding is never read).
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError("FactorizedReduce needs an even number of output channels, "
                             f"got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


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
