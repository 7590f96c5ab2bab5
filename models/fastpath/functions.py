"""Autograd Functions of the CPU fast path: the same numbers as torch's operations, with a
backward built from operations the CPU libraries do fast.

DepthwiseConv2d is an nn.Conv2d (same parameters, same state dict) whose forward, on a CPU
tensor, goes through such a Function; on other devices it is plain nn.Conv2d. Measured on a
2-core Xeon with PyTorch 2.14 (bench/step_bench.py): the library's depthwise input gradient is
2-6x slower than a forward convolution for 5x5 and dilated kernels (20x at stride 2), and in
bfloat16 its weight gradient is 25-50x slower for them and, when dilated, wrong (values near
1e34).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _conv3x3_weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Depthwise weight gradient of an undilated 3x3, stride-1, unpadded convolution (x has
    two more rows and columns than grad): the case the CPU library does fast."""
    channels = grad.shape[1]
    weight = grad.new_empty(channels, 1, 3, 3)
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [0, 0], [1, 1], False,
                                               [0, 0], channels, [False, True, False])[1]


def _undilated_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: int) -> torch.Tensor:
    """float32 k x k weight gradient (k odd) from overlapping 3x3 windows of the kernel."""
    h, w = grad.shape[2], grad.shape[3]
    out = torch.zeros(grad.shape[1], 1, kernel, kernel, dtype=torch.float32, device=grad.device)
    for r in range(0, kernel - 2, 2):
        for s in range(0, kernel - 2, 2):
            window = x[:, :, r:r + h + 2, s:s + w + 2]
            out[:, :, r:r + 3, s:s + 3] = _conv3x3_weight_grad(grad, window).float()
    return out


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: int, padding: int,
                          dilation: int) -> torch.Tensor:
    """The weight gradient (float32, shape (C, 1, k, k)) of a stride-1 "same" depthwise
    convolution of `x` with output gradient `grad`, as sums of fast undilated 3x3 ones: a
    dilated kernel splits into dilation^2 polyphase components (rows and columns of one
    residue), a 5x5 kernel into four overlapping 3x3 windows."""
    xp = F.pad(x, [padding] * 4)
    if dilation == 1:
        return _undilated_weight_grad(grad, xp, kernel)
    total = None
    for r in range(dilation):
        for s in range(dilation):
            g = grad[:, :, r::dilation, s::dilation]
            if g.numel() == 0:
                continue
            part = _undilated_weight_grad(g, xp[:, :, r::dilation, s::dilation], kernel)
            total = part if total is None else total.add_(part)
    return total


def _use_library_weight_grad(dtype: torch.dtype, kernel: int, dilation: int) -> bool:
    """float32, or the undilated 3x3 case: the library's weight gradient is right and, in
    float32, faster than the decomposition (measured)."""
    return dtype not in _LOW_PRECISION or (kernel == 3 and dilation == 1)


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise "same" convolution, stride 1 or 2. Backward: the input gradient is a forward
    convolution of the (zero-interleaved, at stride 2) output gradient with the flipped
    kernel; the weight gradient comes from `depthwise_weight_grad` or, where it is fast and
    right, the library."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        channels, kernel = weight.shape[0], weight.shape[-1]
        if stride > 1:  # the stride-1 output gradient: zeros between the strided samples
            full = torch.zeros_like(x, dtype=grad.dtype)  # in x's memory format
            full[:, :, ::stride, ::stride] = grad
            grad = full
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, padding, dilation, channels)
        if ctx.needs_input_grad[1]:
            xg = x.to(grad.dtype)  # autocast does not cover the aten calls below
            if _use_library_weight_grad(grad.dtype, kernel, dilation):
                grad_w = torch.ops.aten.convolution_backward(
                    grad, xg, weight.to(grad.dtype), None, [1, 1], [padding] * 2, [dilation] * 2,
                    False, [0, 0], channels, [False, True, False])[1]
            else:
                grad_w = depthwise_weight_grad(grad, xg, kernel, padding, dilation)
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d with groups == channels, no bias, "same" padding (2 * padding ==
    dilation * (kernel - 1)); on CPU with gradients it runs through `_DepthwiseConvFn`."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int, dilation: int):
        super().__init__(channels, channels, kernel, stride, padding, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, p, d, s = self.kernel_size[0], self.padding[0], self.dilation[0], self.stride[0]
        if (x.device.type == "cpu" and torch.is_grad_enabled() and 2 * p == d * (k - 1)
                and k % 2 == 1 and s in (1, 2)):
            return _DepthwiseConvFn.apply(x, self.weight, s, p, d)
        return super().forward(x)


class _ConcatChannels(torch.autograd.Function):
    """torch.cat along channels whose backward hands each input a dense gradient rather than
    a channel slice of the output's: BatchNorm's backward on a channel slice of a
    channels_last tensor is ~8x slower on CPU than on a dense copy."""

    @staticmethod
    def forward(ctx, *xs):
        ctx.sizes = [x.shape[1] for x in xs]
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx, grad):
        fmt = (torch.channels_last if grad.dim() == 4 and not grad.is_contiguous()
               and grad.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)
        return tuple(g.contiguous(memory_format=fmt) for g in grad.split(ctx.sizes, dim=1))


def concat_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(xs, dim=1) with dense input gradients (see _ConcatChannels)."""
    return _ConcatChannels.apply(*xs) if torch.is_grad_enabled() else torch.cat(xs, dim=1)


def _dense_alike(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both dense (NCHW or NHWC), non-overlapping and laid out identically."""
    dense = a.is_contiguous() or (a.dim() == 4
                                  and a.is_contiguous(memory_format=torch.channels_last))
    return dense and a.stride() == b.stride() and a.dtype == b.dtype


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum(grad * x): one dot product over the memory of dense float32/64 tensors laid out
    alike, else the product and its sum."""
    if x.dtype in (torch.float32, torch.float64) and _dense_alike(x, grad):
        flat = (x.numel(),), (1,)
        return torch.dot(grad.as_strided(*flat), x.as_strided(*flat))
    return (grad * x).sum()


class _ScaleFn(torch.autograd.Function):
    """x * w for a 0-dim w, whose gradient is `_weight_grad` (2.3x faster forward+backward
    on CPU than autograd's multiply)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad * w if ctx.needs_input_grad[0] else None
        grad_w = _weight_grad(grad, x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


class _AddScaledFn(torch.autograd.Function):
    """out += x * w in place for a 0-dim w: no product tensor is made."""

    @staticmethod
    def forward(ctx, out, x, w):
        ctx.save_for_backward(x, w)
        ctx.mark_dirty(out)
        return out.addcmul_(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad * w if ctx.needs_input_grad[1] else None
        grad_w = _weight_grad(grad, x) if ctx.needs_input_grad[2] else None
        return grad, grad_x, grad_w


def scale_by(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x * w for a 0-dim tensor w (a mixed op's weight), with a cheaper backward; given `out`
    (a fresh tensor that backward does not need), out += x * w in place and return it."""
    if not torch.is_grad_enabled() or w.dim() != 0:
        return x * w if out is None else out.add_(x * w)
    return _ScaleFn.apply(x, w) if out is None else _AddScaledFn.apply(out, x, w)


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor,
                      scale: torch.Tensor | None) -> torch.Tensor:
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
    return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, batch_stats, momentum,
                        bn.eps)
