"""The CPU fast path (models.fastpath) computes the plain path's function: fast-backward
convolutions, the alpha weight folded into BatchNorm, dense concat gradients, per-state sharing
inside a search cell, and whole networks (outputs, gradients, BatchNorm statistics)."""
import copy
import platform
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import genotypes as gt
from models import fastpath
from models.augment_cells import FinalCell
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.factory import stage_candidates
from models.fastpath.cells import FastFinalCell, FastSearchCell, is_weight_free
from models.fastpath.functions import (DepthwiseConv2d, concat_channels, depthwise_weight_grad,
                                       scale_by, scaled_batch_norm)
from models.ops import FactorizedReduce, PoolBN
from models.search_cells import SearchCell, edge_key
from models.search_cnn import SearchNetwork
from utils.runtime.speed import keep_freed_memory
from utils.train import groups as tgroups

CASES = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]  # kernel, padding, dilation


def _reference_grads(x, weight, grad, stride, padding, dilation):
    """Input and weight gradients of torch's own depthwise convolution, in float64."""
    x = x.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    y = F.conv2d(x, w, None, stride, padding, dilation, w.shape[0])
    return torch.autograd.grad(y, (x, w), grad.double())


def _assert_same_gradients(ours, theirs, ours_inputs, their_inputs, atol=1e-4, out_atol=1e-5):
    """Equal outputs, and equal gradients of the same random output gradient."""
    assert torch.allclose(ours, theirs, atol=out_atol)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, ours_inputs, grad),
                    torch.autograd.grad(theirs, their_inputs, grad)):
        assert torch.allclose(a, b, atol=atol)


@pytest.mark.parametrize("kernel,padding,dilation", CASES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_forward_and_gradients_match_torch(kernel, padding, dilation, stride, size,
                                                          channels_last):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, kernel, stride, padding, dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, size, size).to(memory_format=fmt).requires_grad_()
    y = conv(x)
    assert y.grad_fn.name().startswith("_DepthwiseConvFn")  # the fast path ran
    plain = F.conv2d(x, conv.weight, None, stride, padding, dilation, 6)
    assert torch.allclose(y, plain, atol=1e-6)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), grad)
    rx, rw = _reference_grads(x, conv.weight, grad, stride, padding, dilation)
    assert torch.allclose(gx.double(), rx, atol=1e-5)
    assert torch.allclose(gw.double(), rw, atol=1e-4)


@pytest.mark.parametrize("kernel,padding,dilation", CASES)
def test_depthwise_weight_grad_decomposition_matches_float64(kernel, padding, dilation):
    torch.manual_seed(1)
    x, grad = torch.randn(2, 5, 11, 11), torch.randn(2, 5, 11, 11)
    _, truth = _reference_grads(x, torch.zeros(5, 1, kernel, kernel), grad, 1, padding, dilation)
    ours = depthwise_weight_grad(grad, x, kernel, padding, dilation)
    assert ours.dtype == torch.float32 and ours.shape == truth.shape
    assert torch.allclose(ours.double(), truth, atol=1e-4)


@pytest.mark.parametrize("kernel,padding,dilation", CASES)
def test_depthwise_weight_grad_is_right_under_bf16_autocast(kernel, padding, dilation):
    # the CPU library's own bf16 weight gradient of a dilated depthwise conv is garbage
    torch.manual_seed(2)
    conv = DepthwiseConv2d(16, kernel, 1, padding, dilation)
    x = torch.randn(8, 16, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    grad = torch.randn(y.shape)
    y.backward(grad.to(y.dtype))
    _, truth = _reference_grads(x, conv.weight, grad, 1, padding, dilation)
    assert conv.weight.grad.dtype == torch.float32
    rel = (conv.weight.grad.double() - truth).abs().max() / truth.abs().max()
    assert rel < 3e-2, rel


def test_depthwise_conv_without_grad_or_off_cpu_rules_is_plain_conv2d():
    conv = DepthwiseConv2d(4, 3, 1, 1, 1)
    with torch.no_grad():
        y = conv(torch.randn(1, 4, 6, 6))
    assert y.grad_fn is None
    assert isinstance(conv, nn.Conv2d) and set(conv.state_dict()) == {"weight"}


@pytest.mark.parametrize("channels_last", [False, True])
def test_concat_channels_is_cat_with_dense_gradients(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.randn(2, c, 5, 5).to(memory_format=fmt).requires_grad_() for c in (3, 4, 2)]
    y = concat_channels(xs)
    assert torch.equal(y, torch.cat(xs, 1))
    grad = torch.randn(2, 9, 5, 5).to(memory_format=fmt)
    grads = torch.autograd.grad(y, xs, grad)
    for g, ref in zip(grads, grad.split([3, 4, 2], 1)):
        assert torch.equal(g, ref)
        assert g.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_scaled_batch_norm_is_scale_times_bn_including_statistics_and_gradients(affine, momentum):
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(4, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    ref_bn = copy.deepcopy(bn)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    scale = torch.tensor(0.37, requires_grad=True)
    for _ in range(2):  # two steps: running statistics and the batch counter move alike
        y = scaled_batch_norm(bn, x, scale)
        ref = scale * ref_bn(x)
    _assert_same_gradients(y, ref, (x, scale), (x, scale), atol=1e-5, out_atol=1e-6)
    assert torch.allclose(bn.running_mean, ref_bn.running_mean)
    assert torch.allclose(bn.running_var, ref_bn.running_var)
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 2
    bn.eval(), ref_bn.eval()
    assert torch.allclose(scaled_batch_norm(bn, x, scale), scale * ref_bn(x), atol=1e-6)


@pytest.mark.parametrize("size", [8, 9])
def test_factorized_reduce_equals_strided_convs_on_offset_grids(size):
    torch.manual_seed(4)
    fr = FactorizedReduce(4, 6).eval()
    x = torch.randn(2, 4, size, size)
    shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
    relu = torch.relu
    ref = fr.bn(torch.cat([fr.conv1(relu(x)), fr.conv2(relu(shifted))], 1))
    assert torch.allclose(fr(x), ref, atol=1e-6)


def _fast_cell(candidates_per_edge):
    torch.manual_seed(5)
    nodes = [[list(candidates_per_edge) for _ in range(i + 2)] for i in range(3)]
    plain = SearchCell(nodes, 8, 8, 4, reduction=False, reduction_prev=False)
    return plain, fastpath.enable(copy.deepcopy(plain))


def test_search_cell_shares_weight_free_ops_per_state_and_computes_the_plain_function():
    ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    plain, cell = _fast_cell(ops)
    assert isinstance(cell, FastSearchCell)
    # every edge leaving state 1 holds the same pooling module; different states differ
    pools = [cell.edges[edge_key(i, 1)].ops["max_pool_3x3"] for i in range(3)]
    assert (all(p is pools[0] for p in pools) and isinstance(pools[0], PoolBN)
            and is_weight_free(pools[0]))
    assert cell.edges[edge_key(0, 0)].ops["max_pool_3x3"] is not pools[0]
    assert (cell.edges[edge_key(0, 0)].ops["sep_conv_3x3"]
            is not cell.edges[edge_key(1, 0)].ops["sep_conv_3x3"])
    assert (plain.edges[edge_key(1, 1)].ops["max_pool_3x3"]
            is not plain.edges[edge_key(0, 1)].ops["max_pool_3x3"])
    torch.manual_seed(6)
    s0, s1 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    weights = [[torch.softmax(torch.randn(len(ops)), 0) for _ in range(i + 2)] for i in range(3)]
    y, y_plain = cell.train()(s0, s1, weights), plain.train()(s0, s1, weights)
    # one training forward updates each shared BatchNorm once, as each plain edge's own
    assert int(pools[0].bn.num_batches_tracked) == 1
    assert _same_state(cell, plain)
    assert torch.allclose(y, y_plain, atol=1e-5) and y.shape == (2, 12, 6, 6)
    assert torch.allclose(cell.eval()(s0, s1, weights), plain.eval()(s0, s1, weights), atol=1e-5)


def test_search_cell_gradients_match_the_plain_cell():
    ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    plain, cell = _fast_cell(ops)
    s0, s1 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    alphas = [[torch.randn(len(ops), requires_grad=True) for _ in range(i + 2)] for i in range(3)]
    ours = cell.train()(s0, s1, [[a.softmax(0) for a in node] for node in alphas])
    flat = [a for node in alphas for a in node]
    theirs = plain.train()(s0, s1, [[a.softmax(0) for a in node] for node in alphas])
    _assert_same_gradients(ours, theirs, flat + list(cell.parameters()),
                           flat + list(plain.parameters()))


def _same_state(a: nn.Module, b: nn.Module, atol=1e-5) -> bool:
    """Equal state dicts: same keys, same values (parameters and BatchNorm statistics)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.allclose(sa[k].float(), sb[k].float(), atol=atol) for k in sa)


def _search_net(stage):
    if stage == "search2_released":
        alphas = {k: [[{"ops": ops, "alphas": [0.1 * i for i in range(len(ops))]} for ops in node]
                      for node in nodes]
                  for k, nodes in stage_candidates("search1", 4).items()}
        candidates = gt.candidates_from_stage1(alphas, tgroups.released_groups())
    else:
        candidates = stage_candidates(stage, 4)
    return SearchNetwork(candidates, 5, init_channels=4, num_cells=4, auxiliary=True, input_size=9)


def _final_net(kind):
    if kind == "imagenet":
        return ImageNetNetwork(gt.DARTS_V2, num_classes=5, init_channels=8, num_cells=4,
                               auxiliary=True, input_size=32)
    return FinalNetwork(gt.STACNAS_C10 if kind == "stacnas" else gt.DARTS_V2, num_classes=5,
                        init_channels=4, num_cells=4, auxiliary=True, input_size=9,
                        keep_zero=kind == "keep_zero")


NETWORKS = [("search1", _search_net), ("darts", _search_net), ("search2_released", _search_net),
            ("darts_v2", _final_net), ("stacnas", _final_net), ("keep_zero", _final_net),
            ("imagenet", _final_net)]


@pytest.mark.parametrize("kind, build", NETWORKS, ids=[n for n, _ in NETWORKS])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_network_equals_the_plain_network(kind, build, channels_last):
    """One training step's loss and every gradient, the BatchNorm statistics after it, and
    the eval-mode logits: the same with and without the fast path (drop path on, same RNG)."""
    torch.manual_seed(8)
    plain = build(kind)
    fast = fastpath.enable(copy.deepcopy(plain))
    fast_types = set(fastpath.FAST_FORMS.values())
    assert type(fast) in fast_types and not any(type(m) in fast_types for m in plain.modules())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    size = 32 if kind == "imagenet" else 9
    x = torch.randn(3, 3, size, size).to(memory_format=fmt)
    for net in (plain, fast):
        net.to(memory_format=fmt).train()
        net.drop_path_prob = 0.3
    grads = []
    for net in (plain, fast):
        torch.manual_seed(9)  # the same drop-path masks
        logits, aux = net(x)
        loss = logits.logsumexp(1).mean() + 0.4 * aux.square().mean()
        grads.append((loss, torch.autograd.grad(loss, list(net.parameters()))))
    (loss_p, grads_p), (loss_f, grads_f) = grads
    assert torch.allclose(loss_p, loss_f, atol=1e-5)
    for gp, gf in zip(grads_p, grads_f):
        # float32 sums in another order: equal to 1e-4 of the gradient's scale
        assert (gp - gf).abs().max() <= 1e-4 * max(1.0, gp.abs().max()), (gp - gf).abs().max()
    assert _same_state(plain, fast)
    assert torch.allclose(plain.eval()(x), fast.eval()(x), atol=1e-5)


def test_enable_takes_exact_classes_and_keeps_parameters():
    net = _final_net("darts_v2")
    params = list(net.parameters())
    fastpath.enable(net)
    assert all(type(c) is FastFinalCell for c in net.cells) and list(net.parameters()) == params
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert any(type(m) is DepthwiseConv2d for m in convs)
    assert all(m.groups == 1 for m in convs if type(m) is nn.Conv2d)  # only depthwise ones swap


def test_keep_freed_memory_applies_on_glibc_linux_only():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_by_matches_multiplication_and_its_gradients(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 4, 5).to(memory_format=fmt).requires_grad_()
    w = torch.tensor(0.7, requires_grad=True)
    grad = torch.randn(2, 3, 4, 5).to(memory_format=fmt)
    ours = torch.autograd.grad(scale_by(x, w), (x, w), grad)
    theirs = torch.autograd.grad(x * w, (x, w), grad)
    assert torch.allclose(ours[0], theirs[0]) and torch.allclose(ours[1], theirs[1], atol=1e-5)
    # a gradient laid out unlike x takes the general path, with the same result
    other_format = torch.contiguous_format if channels_last else torch.channels_last
    other = torch.autograd.grad(scale_by(x, w), (x, w),
                                grad.contiguous(memory_format=other_format))
    assert torch.allclose(other[1], theirs[1], atol=1e-5)


def test_final_cell_in_place_sums_leave_identity_inputs_intact_and_match_plain_sums():
    torch.manual_seed(7)
    ops = [("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 2), ("skip_connect", 0),
           ("max_pool_3x3", 3), ("skip_connect", 2), ("dil_conv_3x3", 1), ("skip_connect", 4)]
    plain = FinalCell(ops, [2, 3, 4, 5], 8, 8, 4, reduction=False, reduction_prev=False).train()
    cell = fastpath.enable(copy.deepcopy(plain))
    s0 = torch.randn(2, 8, 6, 6, requires_grad=True)
    s1 = torch.randn(2, 8, 6, 6, requires_grad=True)
    _assert_same_gradients(cell(s0, s1), plain(s0, s1), (s0, s1), (s0, s1))
