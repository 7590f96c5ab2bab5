"""Architect steps: one-level (StacNAS: weights and alphas from one batch, only the weights'
gradient clipped; also with fp16's GradScaler) and bilevel first order (DARTS sec. 2.3), with
loss_and_logits, the default optimisers and the bad arguments refused. The second-order
hypergradient (DARTS eq. 6-8) and full_precision: test_hypergradient.py.
"""
import copy

import pytest
import torch

from utils.train.architect import Architect, make_optimizers
from utils.runtime.context import Runtime
from utils.train.engine import loss_and_logits
from tests.tiny_supernet import CE, clone_all, grads_of, make_batch, make_net, plain_sgd


# -- loss_and_logits / make_optimizers ------------------------------------------------------
def test_loss_and_logits_adds_weighted_aux_loss_in_training_mode():
    net = make_net(auxiliary=True).train()
    x, y = make_batch(0)
    logits, aux = net(x)
    loss, out = loss_and_logits(net, x, y, CE, aux_weight=0.4)
    assert torch.allclose(out, logits)
    assert torch.allclose(loss, CE(logits, y) + 0.4 * CE(aux, y))
    assert not torch.allclose(loss, CE(logits, y))  # the aux term is really there
    loss0, _ = loss_and_logits(net, x, y, CE)  # aux_weight 0: main loss only
    assert torch.allclose(loss0, CE(logits, y))
    net.eval()
    loss_eval, out_eval = loss_and_logits(net, x, y, CE, aux_weight=0.4)
    assert torch.allclose(loss_eval, CE(out_eval, y))


def test_make_optimizers_follow_the_darts_search_settings():
    net = make_net()
    w_opt, a_opt = make_optimizers(net)
    assert isinstance(w_opt, torch.optim.SGD) and isinstance(a_opt, torch.optim.Adam)
    w_ids = {id(p) for g in w_opt.param_groups for p in g["params"]}
    a_ids = {id(p) for g in a_opt.param_groups for p in g["params"]}
    assert w_ids == {id(p) for p in net.weights()} and a_ids == {id(p) for p in net.alphas()}
    assert not w_ids & a_ids
    w, a = w_opt.param_groups[0], a_opt.param_groups[0]
    assert (w["lr"], w["momentum"], w["weight_decay"]) == (0.025, 0.9, 3e-4)
    assert (a["lr"], a["betas"], a["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)


# -- bad inputs ---------------------------------------------------------------------------
def test_unknown_mode_names_the_choices():
    net = make_net()
    with pytest.raises(ValueError, match="one-level.*bilevel"):
        Architect(net, *make_optimizers(net), CE, mode="second-order")


def test_bilevel_needs_a_validation_batch_and_one_level_refuses_one():
    net = make_net()
    x, y = make_batch(0)
    with pytest.raises(ValueError, match="validation"):
        Architect(net, *make_optimizers(net), CE, mode="bilevel").step(x, y)
    with pytest.raises(ValueError, match="one-level"):
        Architect(net, *make_optimizers(net), CE).step(x, y, x, y)


# -- one-level ----------------------------------------------------------------------------
def test_one_level_steps_both_and_clips_only_the_weights():
    net = make_net()
    x, y = make_batch(0)
    ref = copy.deepcopy(net)
    w_lr, a_lr, clip = 0.5, 0.5, 1e-3
    # plain SGD on both sides, so the expected update is computable by hand
    arch = Architect(net, plain_sgd(net.weights(), w_lr), plain_sgd(net.alphas(), a_lr), CE,
                     grad_clip=clip)
    loss, logits = arch.step(x, y)

    ref_loss, ref_logits = loss_and_logits(ref, x, y, CE)
    w_ref, a_ref = list(ref.weights()), list(ref.alphas())
    grads = grads_of(ref_loss, w_ref + a_ref)
    g_w, g_a = grads[:len(w_ref)], grads[len(w_ref):]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in g_w]))
    assert norm > 100 * clip  # the clip is active
    scale = clip / (norm + 1e-6)
    for p, p0, g in zip(net.weights(), w_ref, g_w):
        assert torch.allclose(p, p0 - w_lr * scale * g, atol=1e-7)
    changed_w = sum(not torch.equal(p, p0) for p, p0 in zip(net.weights(), w_ref))
    assert changed_w > len(w_ref) // 2
    for a, a0, g in zip(net.alphas(), a_ref, g_a):  # alphas: full, unclipped gradient
        assert torch.allclose(a, a0 - a_lr * g, atol=1e-7)
        assert not torch.equal(a, a0)
    assert torch.allclose(loss, ref_loss) and torch.allclose(logits, ref_logits)
    assert not loss.requires_grad and not logits.requires_grad


def test_one_level_with_default_optimisers_changes_weights_and_alphas():
    net = make_net()
    w0, a0 = clone_all(net.weights()), clone_all(net.alphas())
    Architect(net, *make_optimizers(net), CE, grad_clip=3.0).step(*make_batch(1))
    assert all(not torch.equal(a, b) for a, b in zip(net.alphas(), a0))
    assert sum(not torch.equal(p, q) for p, q in zip(net.weights(), w0)) > len(w0) // 2


def test_one_level_with_a_grad_scaler_steps_as_without_one():
    """fp16's GradScaler path (a CPU scaler on a float32 net): the loss scaled by a power of
    two, the gradients unscaled before clipping, then the same update as without a scaler."""
    nets = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)):
        net = make_net()
        Architect(net, *make_optimizers(net), CE, grad_clip=1e-3,
                  runtime=Runtime(scaler=scaler)).step(*make_batch(1))
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_a_grad_scaler_skips_a_step_whose_gradients_overflow():
    net = make_net()
    params = clone_all(net.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))  # every gradient overflows
    Architect(net, *make_optimizers(net), CE, runtime=Runtime(scaler=scaler)).step(*make_batch(1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))


# -- bilevel, first order -------------------------------------------------------------------
def test_bilevel_first_order_alpha_grad_at_pre_step_weights_then_weight_step():
    net = make_net()
    (x, y), (xv, yv) = make_batch(0), make_batch(1)
    ref = copy.deepcopy(net)
    arch = Architect(net, plain_sgd(net.weights(), 0.1), plain_sgd(net.alphas(), 1.0), CE,
                     mode="bilevel", grad_clip=None)
    arch.step(x, y, xv, yv)

    a_ref, w_ref = list(ref.alphas()), list(ref.weights())
    g_val = grads_of(loss_and_logits(ref, xv, yv, CE)[0], a_ref)
    for a, a0, g in zip(net.alphas(), a_ref, g_val):
        assert torch.allclose(a, a0 - g, atol=1e-7)
    with torch.no_grad():  # the weight step sees the new alphas and the train batch
        for a, a_new in zip(a_ref, net.alphas()):
            a.copy_(a_new)
    g_train = grads_of(loss_and_logits(ref, x, y, CE)[0], w_ref)
    for p, p0, g in zip(net.weights(), w_ref, g_train):
        assert torch.allclose(p, p0 - 0.1 * g, atol=1e-6)
    g_train_on_val = grads_of(loss_and_logits(ref, xv, yv, CE)[0], w_ref)
    assert not all(torch.allclose(p, p0 - 0.1 * g, atol=1e-6)
                   for p, p0, g in zip(net.weights(), w_ref, g_train_on_val))
