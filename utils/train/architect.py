"""The alpha step of the search: one-level (StacNAS) or bilevel (DARTS, first or second order).

StacNAS (arXiv 1909.11926, sec. 3) updates weights and alphas together on the same training
batch: one forward/backward, then both optimisers step. DARTS (arXiv 1806.09055, sec. 2.3)
alternates an alpha step on a validation batch with a weight step on a training batch; its
second-order variant differentiates through one virtual SGD step (eq. 6-7) and approximates
the Hessian-vector product by central differences (eq. 8).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor

from utils.runtime.context import Runtime
from utils.runtime.distributed import average_
from utils.train.engine import loss_and_logits, optimizer_step

MODES = ("one-level", "bilevel")


def make_optimizers(model: nn.Module, w_lr: float = 0.025, w_momentum: float = 0.9,
                    w_weight_decay: float = 3e-4, a_lr: float = 3e-4,
                    a_betas: tuple[float, float] = (0.5, 0.999),
                    a_weight_decay: float = 1e-3) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """SGD over `model.weights()` and Adam over `model.alphas()` with the search settings of
    DARTS sec. 3.1.1, which StacNAS keeps."""
    w_opt = torch.optim.SGD(model.weights(), lr=w_lr, momentum=w_momentum,
                            weight_decay=w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), lr=a_lr, betas=a_betas, weight_decay=a_weight_decay)
    return w_opt, a_opt


def _attribute(obj: object, name: str, value: object) -> tuple[Callable, Callable, object]:
    return (lambda: getattr(obj, name)), (lambda v: setattr(obj, name, v)), value


def _reduced_precision_settings() -> list[tuple[Callable, Callable, object]]:
    """(get, set, full-precision value) of each setting that lets float32 math run in less
    precision, in the order to set and to restore them: float32 matmuls (TF32 on CUDA, bf16 on
    some CPUs) through set_float32_matmul_precision, which keeps PyTorch's older and newer
    matmul settings in agreement (cuBLAS refuses a disagreement); then, from PyTorch 2.9 on,
    the newer matmul setting and cuDNN's per-op ones (convolutions and RNNs read those), and
    before 2.9 cuDNN's `allow_tf32`. Plain Python settings: on CPU only the matmuls' counts."""
    settings = [(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest")]
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        return settings + [_attribute(torch.backends.cuda.matmul, "fp32_precision", "ieee"),
                           _attribute(cudnn.conv, "fp32_precision", "ieee"),
                           _attribute(cudnn.rnn, "fp32_precision", "ieee")]
    return settings + [_attribute(cudnn, "allow_tf32", False)]


@contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """The block computes float32 in IEEE float32 (float64 stays float64): autocast off on
    `device_type`, TF32 (and CPU bf16 matmuls) off; every setting is restored on exit, even
    after an exception. For DARTS eq. 8, whose weight perturbation (~1e-5 per weight) is
    below the resolution of bf16/fp16 and of TF32's 10-bit mantissa."""
    settings = _reduced_precision_settings()
    saved = [get() for get, _, _ in settings]
    try:
        for _, put, value in settings:
            put(value)
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for (_, put, _), value in zip(settings, saved):
            put(value)


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    """d loss / d params, zeros for parameters the loss does not reach (e.g. the aux head)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class Architect:
    """Performs one search step: weights and alphas of `model` (a `SearchNetwork`).

    mode="one-level" (StacNAS): both optimisers step on the gradients of one training loss.
    mode="bilevel" (DARTS sec. 2.3): alpha step on the validation batch, then weight step on
    the training batch; `unrolled=True` is the second-order approximation (eq. 7-8).
    `grad_clip` bounds the norm of the weights' gradient only (alphas are never clipped).
    `hessian_eps` is the r of eps = r / ||dL_val/dw'|| in eq. 8 (DARTS uses 0.01).
    `runtime`: autocast, fp16's gradient scaler and the process group (default: one process,
    float32).
    """

    def __init__(self, model: nn.Module, w_optimizer: torch.optim.Optimizer,
                 a_optimizer: torch.optim.Optimizer, criterion: Callable, *,
                 mode: str = "one-level", unrolled: bool = False,
                 grad_clip: float | None = 5.0, aux_weight: float = 0.0,
                 hessian_eps: float = 0.01, forward_model: nn.Module | None = None,
                 runtime: Runtime | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if unrolled and mode != "bilevel":
            raise ValueError("unrolled=True (second order) needs mode='bilevel'")
        self.model = model
        self.w_optimizer = w_optimizer
        self.a_optimizer = a_optimizer
        self.criterion = criterion
        self.mode = mode
        self.unrolled = unrolled
        self.grad_clip = grad_clip
        self.aux_weight = aux_weight
        self.hessian_eps = hessian_eps
        # Weight steps run through `forward_model` (a DDP wrapper all-reduces the gradients of
        # weights and alphas in backward); alpha gradients taken with autograd.grad bypass DDP
        # and are averaged over ranks explicitly, so every rank holds the same alphas.
        self.forward_model = forward_model if forward_model is not None else model
        # device, mixed precision (forward passes under its autocast; fp16's gradient scaler,
        # one-level only) and the process group
        self.runtime = runtime if runtime is not None else Runtime()
        if self.runtime.scaler is not None and mode != "one-level":
            raise ValueError("fp16 with a gradient scaler is supported for one-level search; "
                             "use bf16 for bilevel")

    # -- parameters ---------------------------------------------------------------------
    def _weights(self) -> list[nn.Parameter]:
        return list(self.model.weights())

    def _alphas(self) -> list[nn.Parameter]:
        return list(self.model.alphas())

    def _loss(self, x: Tensor, y: Tensor, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        with self.runtime.autocast():
            return loss_and_logits(self.model if model is None else model, x, y, self.criterion,
                                   self.aux_weight)

    # -- the step -----------------------------------------------------------------------
    def step(self, x: Tensor, y: Tensor, x_valid: Tensor | None = None,
             y_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One optimisation step; returns (loss, logits) of the training batch, detached."""
        if self.mode == "one-level":
            if x_valid is not None or y_valid is not None:
                raise ValueError("mode='one-level' updates weights and alphas on the training "
                                 "batch only; do not pass x_valid/y_valid")
            self.a_optimizer.zero_grad()
            self.w_optimizer.zero_grad()
            loss, logits = self._loss(x, y, self.forward_model)
            optimizer_step(loss, [self.a_optimizer, self.w_optimizer], self._weights(),
                           self.grad_clip, self.runtime.scaler)
            return loss.detach(), logits.detach()

        if x_valid is None or y_valid is None:
            raise ValueError("mode='bilevel' needs a validation batch (x_valid, y_valid) "
                             "for the alpha step")
        self._alpha_step(x, y, x_valid, y_valid)
        self.w_optimizer.zero_grad()
        loss, logits = self._loss(x, y, self.forward_model)
        optimizer_step(loss, [self.w_optimizer], self._weights(), self.grad_clip)
        return loss.detach(), logits.detach()

    def _alpha_step(self, x: Tensor, y: Tensor, x_valid: Tensor, y_valid: Tensor) -> None:
        """DARTS sec. 2.3: alphas descend dL_val/da, first order (xi = 0) or eq. 7-8."""
        alphas = self._alphas()
        if self.unrolled:
            grads = self.hypergradient(x, y, x_valid, y_valid)
        else:
            loss, _ = self._loss(x_valid, y_valid)
            grads = _grads(loss, alphas)
        average_(grads, self.runtime.dist)  # alphas alike on every rank (a no-op alone)
        self.a_optimizer.zero_grad()
        for a, g in zip(alphas, grads):
            a.grad = g.detach().clone()
        self.a_optimizer.step()

    # -- second order (DARTS eq. 6-8) -----------------------------------------------------
    @contextmanager
    def _preserved(self) -> Iterator[list[Tensor]]:
        """Save the weights and every buffer (BatchNorm running stats); restore them exactly
        on exit, even after an exception. Yields the saved weights."""
        weights = self._weights()
        saved_w = [p.detach().clone() for p in weights]
        buffers = list(self.model.buffers())
        saved_b = [b.detach().clone() for b in buffers]
        try:
            yield saved_w
        finally:
            with torch.no_grad():
                for p, s in zip(weights, saved_w):
                    p.copy_(s)
                for b, s in zip(buffers, saved_b):
                    b.copy_(s)

    def _groups(self) -> dict[int, dict]:
        """The weight optimiser's param_group of every weight, by id."""
        return {id(p): g for g in self.w_optimizer.param_groups for p in g["params"]}

    def _sgd_direction(self, p: Tensor, grad: Tensor, group: dict) -> Tensor:
        """The update direction the SGD weight optimiser would apply next to `p`:
        momentum * v + (g + wd * w) (a missing momentum buffer counts as zero; dampening and
        Nesterov as in `torch.optim.SGD`)."""
        d_p = grad + group.get("weight_decay", 0.0) * p.detach()
        momentum = group.get("momentum", 0.0)
        if not momentum:
            return d_p
        buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
        b = d_p if buf is None else momentum * buf + (1 - group.get("dampening", 0.0)) * d_p
        return d_p + momentum * b if group.get("nesterov", False) else b

    def _move_to_virtual(self, x: Tensor, y: Tensor) -> None:
        """In place: w <- w' = w - xi * (momentum * v + dL_train(w, a)/dw + wd * w) (eq. 6)."""
        weights = self._weights()
        loss, _ = self._loss(x, y)
        grads = _grads(loss, weights)
        groups = self._groups()
        with torch.no_grad():
            for p, g in zip(weights, grads):
                group = groups[id(p)]
                p.sub_(group["lr"] * self._sgd_direction(p, g, group))

    @contextmanager
    def virtual_step(self, x: Tensor, y: Tensor) -> Iterator[list[Tensor]]:
        """Inside the block the weights are w' (one virtual SGD step on (x, y), DARTS eq. 6);
        yields the weights w before the step; on exit weights and BatchNorm buffers are
        restored exactly."""
        with self._preserved() as saved:
            self._move_to_virtual(x, y)
            yield saved

    def hypergradient(self, x: Tensor, y: Tensor, x_valid: Tensor,
                      y_valid: Tensor) -> list[Tensor]:
        """The second-order alpha gradient of DARTS eq. 7, without stepping:

            dL_val(w', a)/da - xi * d2L_train(w, a)/(da dw) . dL_val(w', a)/dw'

        with the Hessian-vector product by central differences (eq. 8):
            (dL_train(w+, a)/da - dL_train(w-, a)/da) / (2 * eps),  w+- = w +- eps * dw',
            eps = hessian_eps / ||dw'||   (hessian_eps = 0.01 in DARTS).
        Per-group learning rates are folded into the direction (u = xi * dw'); with a single
        lr this is exactly the formula above. Weights and buffers are left untouched.
        The two gradients of eq. 8 are taken in full float32 (`hessian_vector_product`),
        also under --amp: in bf16 their difference would be rounding noise.
        """
        alphas = self._alphas()
        weights = self._weights()
        groups = self._groups()
        with self.virtual_step(x, y) as w0:
            loss_val, _ = self._loss(x_valid, y_valid)
            grads = _grads(loss_val, alphas + weights)
            d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
            u = [groups[id(p)]["lr"] * g for p, g in zip(weights, d_w)]
            hvp = self.hessian_vector_product(x, y, w0, u)
            return [(da - h).detach() for da, h in zip(d_alpha, hvp)]

    def hessian_vector_product(self, x: Tensor, y: Tensor, w0: list[Tensor],
                               u: list[Tensor]) -> list[Tensor]:
        """d2L_train(w0, a)/(da dw) . u by central differences (DARTS eq. 8):
        (dL_train(w0 + eps u, a)/da - dL_train(w0 - eps u, a)/da) / (2 eps),
        eps = hessian_eps / ||u||; zeros when u is zero. Both gradients are taken without
        autocast or TF32 (`full_precision`). Leaves the weights moved: call it inside
        `virtual_step` (or `_preserved`), which restores them."""
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in u]))
        if norm == 0:
            return [torch.zeros_like(a) for a in self._alphas()]
        eps = self.hessian_eps / norm
        g_pos = self._alpha_grad_at(x, y, w0, u, eps)
        g_neg = self._alpha_grad_at(x, y, w0, u, -eps)
        return [(p - n) / (2 * eps) for p, n in zip(g_pos, g_neg)]

    def _alpha_grad_at(self, x: Tensor, y: Tensor, w0: list[Tensor], u: list[Tensor],
                       eps: Tensor) -> list[Tensor]:
        """dL_train(w0 + eps * u, a)/da in full precision (sets the weights in place; the
        caller restores)."""
        with torch.no_grad():
            for p, w, d in zip(self._weights(), w0, u):
                p.copy_(w + eps * d)
        with full_precision(x.device.type):
            loss, _ = loss_and_logits(self.model, x, y, self.criterion, self.aux_weight)
            return _grads(loss, self._alphas())
