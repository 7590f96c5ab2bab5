"""Architect's second-order hypergradient (DARTS eq. 6-8): checked against finite differences
of the unrolled loss and against eq. 8 written out by hand; the unrolled step and the virtual
step; the Hessian-vector product of eq. 8 under bf16 autocast, and full_precision.

The finite-difference tests would catch pt.darts's `(p - n) / 2.*eps` (the Hessian term
vanishes) and a virtual step that never moves the weights (NNI): each asserts the Hessian
term is material by also checking that the first-order answer is far off. One-level and
first-order bilevel steps: test_architect.py.
"""
import copy
import warnings

import pytest
import torch

from utils.train.architect import Architect, _reduced_precision_settings, full_precision
from utils.runtime.context import Runtime
from utils.runtime.speed import SpeedPlan
from utils.train.engine import loss_and_logits
from tests.tiny_supernet import CE, clone_all, grads_of, make_batch, make_net, plain_sgd


# -- second order ---------------------------------------------------------------------------
def _sgd_with_momentum_buffers(net, lr, momentum, weight_decay):
    """SGD whose momentum buffers are populated by one real step on a separate batch."""
    w_opt = torch.optim.SGD(net.weights(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        x, y = make_batch(7, dtype=next(net.parameters()).dtype)
        loss_and_logits(net, x, y, CE)[0].backward()
        w_opt.step()
        w_opt.zero_grad()
        net.zero_grad()
    return w_opt


def _expected_virtual_weights(net, w_opt, x, y):
    """w - xi * (momentum * v + dL_train/dw + wd * w), computed without the Architect."""
    group = w_opt.param_groups[0]
    weights = list(net.weights())
    grads = grads_of(loss_and_logits(net, x, y, CE)[0], weights)
    out = []
    for p, g in zip(weights, grads):
        buf = w_opt.state.get(p, {}).get("momentum_buffer")
        d = g + group["weight_decay"] * p.detach()
        if buf is not None:
            d = d + group["momentum"] * buf
        out.append((p - group["lr"] * d).detach())
    return out


def _unrolled_loss(net, w_opt, x, y, xv, yv) -> float:
    """f(a) = L_val(w', a) at the current alphas, w' from `_expected_virtual_weights`;
    the weights and buffers are restored afterwards."""
    weights = list(net.weights())
    w0, b0 = clone_all(weights), clone_all(net.buffers())
    w_virtual = _expected_virtual_weights(net, w_opt, x, y)
    with torch.no_grad():
        for p, w in zip(weights, w_virtual):
            p.copy_(w)
        value = loss_and_logits(net, xv, yv, CE)[0].item()
        for p, w in zip(weights, w0):
            p.copy_(w)
        for b, s in zip(net.buffers(), b0):
            b.copy_(s)
    return value


def _add_to_alphas(net, flat_delta):
    with torch.no_grad():
        offset = 0
        for a in net.alphas():
            a += flat_delta[offset:offset + a.numel()].view_as(a)
            offset += a.numel()


def _directions(net, n_random=4):
    """Unit vectors over every alpha of one edge, plus a few random unit directions."""
    sizes = [a.numel() for a in net.alphas()]
    total = sum(sizes)
    eye = torch.eye(total, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    rand = torch.randn(n_random, total, generator=g, dtype=torch.float64)
    return torch.cat([eye[:sizes[0]], rand / rand.norm(dim=1, keepdim=True)])


def _fd_directional(net, w_opt, x, y, xv, yv, directions, h=1e-5):
    """Central differences of f along each direction (float64): (f(a+hd) - f(a-hd)) / 2h."""
    a0 = clone_all(net.alphas())
    out = []
    for d in directions:
        _add_to_alphas(net, h * d)
        f_pos = _unrolled_loss(net, w_opt, x, y, xv, yv)
        _add_to_alphas(net, -2 * h * d)
        f_neg = _unrolled_loss(net, w_opt, x, y, xv, yv)
        with torch.no_grad():
            for a, s in zip(net.alphas(), a0):
                a.copy_(s)
        out.append((f_pos - f_neg) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.05)])
def test_hypergradient_matches_finite_differences_of_the_unrolled_loss(momentum, weight_decay):
    net = make_net(double=True)
    (x, y), (xv, yv) = make_batch(0, torch.float64), make_batch(1, torch.float64)
    w_opt = _sgd_with_momentum_buffers(net, lr=1.0, momentum=momentum,
                                       weight_decay=weight_decay)
    a_opt = torch.optim.Adam(net.alphas(), lr=3e-4)
    # DARTS's r = 0.01 moves every weight by up to 0.01: on this 2-channel net that flips
    # ReLU / max-pool switches, and eq. 8 then measures kinks, not the Hessian. A small r
    # keeps the central difference in the smooth regime, so the check can be tight.
    arch = Architect(net, w_opt, a_opt, CE, mode="bilevel", unrolled=True, hessian_eps=1e-6)
    w0, b0, a0 = clone_all(net.weights()), clone_all(net.buffers()), clone_all(net.alphas())

    hyper = torch.cat([g.flatten() for g in arch.hypergradient(x, y, xv, yv)])
    assert hyper.dtype == torch.float64
    # hypergradient leaves no trace: weights, BN buffers, alphas, .grad all untouched
    assert all(torch.equal(p, q) for p, q in zip(net.weights(), w0))
    assert all(torch.equal(p, q) for p, q in zip(net.buffers(), b0))
    assert all(torch.equal(p, q) for p, q in zip(net.alphas(), a0))
    assert all(p.grad is None for p in net.parameters())

    directions = _directions(net)
    fd = _fd_directional(net, w_opt, x, y, xv, yv, directions)
    assert all(torch.equal(p, q) for p, q in zip(net.alphas(), a0))
    assert _rel_err(directions @ hyper, fd) < 1e-3
    # the Hessian term matters here: first order at w' (what `(p - n) / 2.*eps` leaves) and
    # the gradient at w (a virtual step that never moves) are both far off
    with arch.virtual_step(x, y):
        first_order_virtual = torch.cat([g.flatten() for g in grads_of(
            loss_and_logits(net, xv, yv, CE)[0], list(net.alphas()))])
    first_order = torch.cat(
        [g.flatten() for g in grads_of(loss_and_logits(net, xv, yv, CE)[0], list(net.alphas()))])
    assert _rel_err(directions @ first_order_virtual, fd) > 0.05
    assert _rel_err(directions @ first_order, fd) > 0.05


def test_hypergradient_uses_darts_eq8_with_r_001_by_default():
    """Eq. 8 written out by hand: w+- = w +- 0.01 * dw' / ||dw'||, central difference."""
    net = make_net(double=True)
    (x, y), (xv, yv) = make_batch(0, torch.float64), make_batch(1, torch.float64)
    lr = 0.3
    w_opt = _sgd_with_momentum_buffers(net, lr=lr, momentum=0.9, weight_decay=0.01)
    arch = Architect(net, w_opt, torch.optim.Adam(net.alphas()), CE, mode="bilevel",
                     unrolled=True)
    assert arch.hessian_eps == 0.01
    hyper = arch.hypergradient(x, y, xv, yv)

    weights, alphas = list(net.weights()), list(net.alphas())
    w0 = clone_all(weights)
    w_virtual = _expected_virtual_weights(net, w_opt, x, y)
    with torch.no_grad():
        for p, w in zip(weights, w_virtual):
            p.copy_(w)
    grads = grads_of(loss_and_logits(net, xv, yv, CE)[0], alphas + weights)
    d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
    eps = 0.01 / torch.cat([g.flatten() for g in d_w]).norm()
    at = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, w, g in zip(weights, w0, d_w):
                p.copy_(w + sign * eps * g)
        at.append(grads_of(loss_and_logits(net, x, y, CE)[0], alphas))
    expected = [da - lr * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, *at)]
    for h, e in zip(hyper, expected):
        assert torch.allclose(h, e, rtol=1e-6, atol=1e-9)
    wrong = [da - lr * (gp - gn) / 2. * eps for da, gp, gn in zip(d_alpha, *at)]  # pt.darts
    assert not all(torch.allclose(h, e, rtol=1e-3) for h, e in zip(hyper, wrong))


def test_unrolled_step_applies_the_hypergradient_then_steps_the_weights():
    net = make_net(double=True)
    (x, y), (xv, yv) = make_batch(0, torch.float64), make_batch(1, torch.float64)
    w_opt = plain_sgd(net.weights(), 0.1)
    arch = Architect(net, w_opt, plain_sgd(net.alphas(), 1.0), CE, mode="bilevel",
                     unrolled=True, grad_clip=None)
    a0, w0 = clone_all(net.alphas()), clone_all(net.weights())
    hyper = arch.hypergradient(x, y, xv, yv)
    arch.step(x, y, xv, yv)
    for a, a_old, g in zip(net.alphas(), a0, hyper):
        assert torch.allclose(a, a_old - g, atol=1e-12)
    ref = copy.deepcopy(net)  # new alphas; put back the old weights to recompute the step
    with torch.no_grad():
        for p, w in zip(ref.weights(), w0):
            p.copy_(w)
    g_train = grads_of(loss_and_logits(ref, x, y, CE)[0], list(ref.weights()))
    for p, p_old, g in zip(net.weights(), w0, g_train):
        assert torch.allclose(p, p_old - 0.1 * g, atol=1e-12)


def test_virtual_step_moves_the_weights_and_restores_them_exactly():
    net = make_net(double=True)
    x, y = make_batch(0, torch.float64)
    w_opt = _sgd_with_momentum_buffers(net, lr=0.5, momentum=0.9, weight_decay=0.01)
    arch = Architect(net, w_opt, torch.optim.Adam(net.alphas()), CE, mode="bilevel",
                     unrolled=True)
    w0, b0 = clone_all(net.weights()), clone_all(net.buffers())
    expected = _expected_virtual_weights(net, w_opt, x, y)
    with torch.no_grad():  # that forward moved the BN running stats: undo it
        for b, s in zip(net.buffers(), b0):
            b.copy_(s)
    with arch.virtual_step(x, y):
        for p, _p0, e in zip(net.weights(), w0, expected):
            assert torch.allclose(p, e, atol=1e-12)
        assert sum(not torch.equal(p, p0) for p, p0 in zip(net.weights(), w0)) > len(w0) // 2
        assert any(not torch.equal(b, s) for b, s in zip(net.buffers(), b0))  # BN was touched
    assert all(torch.equal(p, p0) for p, p0 in zip(net.weights(), w0))
    assert all(torch.equal(b, s) for b, s in zip(net.buffers(), b0))

    with pytest.raises(RuntimeError, match="boom"):  # restored even on an exception
        with arch.virtual_step(x, y):
            raise RuntimeError("boom")
    assert all(torch.equal(p, p0) for p, p0 in zip(net.weights(), w0))
    assert all(torch.equal(b, s) for b, s in zip(net.buffers(), b0))


# -- precision of eq. 8 under --amp -----------------------------------------------------------
def _flat(tensors):
    return torch.cat([t.flatten().double() for t in tensors])


def _hessian_vector_product(net, x, y, amp):
    """The Architect's eq. 8 product along a fixed direction u (lr-sized, the same for every
    precision), weights restored."""
    arch = Architect(net, plain_sgd(net.weights(), 0.025), torch.optim.Adam(net.alphas()), CE,
                     mode="bilevel", unrolled=True, runtime=Runtime(speed=SpeedPlan(amp=amp)))
    g = torch.Generator().manual_seed(5)
    weights = list(net.weights())
    u = [0.025 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
         for p in weights]
    with arch._preserved() as w0:
        return _flat(arch.hessian_vector_product(x, y, w0, u))


def test_hessian_vector_product_under_bf16_autocast_matches_float64():
    """Eq. 8 moves each weight by ~1e-5, below bf16's resolution: under bf16 autocast its two
    gradients must be taken in float32. Measured cosine to the float64 product on this net,
    seeds 0-5: 1.0000 with them in float32; -0.11 to 0.48 with them under autocast."""
    net = make_net(seed=1)
    ref = copy.deepcopy(net).double()
    x, y = make_batch(1)
    bf16 = _hessian_vector_product(net, x, y, "bf16")
    exact = _hessian_vector_product(ref, x.double(), y, "none")
    assert exact.norm() > 0
    assert torch.nn.functional.cosine_similarity(bf16, exact, dim=0) > 0.99
    assert _rel_err(bf16, exact) < 0.05


@pytest.mark.parametrize("matmul", ["highest", "high"])
def test_full_precision_turns_autocast_and_tf32_off_and_restores_them(matmul):
    """Also after TF32 matmuls were allowed the older way: PyTorch >= 2.9 refuses to run a
    cuBLAS matmul when its older and newer settings disagree (the check reads the same on CPU)."""
    settings = _reduced_precision_settings()
    original = [get() for get, _, _ in settings]
    torch.set_float32_matmul_precision(matmul)
    try:
        before = [get() for get, _, _ in settings]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither API may warn
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with full_precision("cpu"):
                    assert not torch.is_autocast_enabled("cpu")
                    assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32
                    assert [get() for get, _, _ in settings] == [v for _, _, v in settings]
                    assert torch.backends.cuda.matmul.allow_tf32 is False  # settings agree
                assert torch.is_autocast_enabled("cpu")
            assert [get() for get, _, _ in settings] == before
            with pytest.raises(RuntimeError, match="boom"):
                with full_precision("cpu"):
                    raise RuntimeError("boom")
            assert [get() for get, _, _ in settings] == before
            assert torch.backends.cuda.matmul.allow_tf32 is (matmul == "high")
    finally:
        for (_, put, _), value in zip(settings, original):
            put(value)
