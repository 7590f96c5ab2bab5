"""Supernet: mixed op, shared and per-cell alphas, per-edge candidate lists, readouts."""
import pytest
import torch

import genotypes as gt
from models.factory import build_supernet, stage_candidates
from models.ops import make_op
from models.search_cells import MixedOp
from models.search_cnn import SearchNetwork
from utils.io import genotype_files as gf
from utils.data.info import DatasetInfo

TINY = DatasetInfo(3, 16, 10)


def _net(candidates, num_cells=5, channels=4, auxiliary=False):
    torch.manual_seed(0)
    return build_supernet(candidates, **TINY.network_shape(), init_channels=channels,
                          num_cells=num_cells, auxiliary=auxiliary)


def _check_forward_backward(net, batch=2):
    x = torch.randn(batch, TINY.channels, TINY.size, TINY.size)
    logits = net(x)
    assert logits.shape == (batch, TINY.classes)
    logits.logsumexp(1).sum().backward()
    for name, a in net.named_alphas():
        assert a.grad is not None and torch.isfinite(a.grad).all(), name
    # every alpha of an edge with >= 2 ops gets a non-zero gradient
    assert all(a.grad.abs().sum() > 0 for a in net.alphas() if a.numel() > 1)


def test_mixed_op_skips_none_but_computes_the_same_function():
    torch.manual_seed(0)
    ops = ["none", "max_pool_3x3", "sep_conv_3x3", "skip_connect"]
    mixed = MixedOp(4, 2, ops).eval()
    assert "none" not in mixed.ops  # no module, no compute for `none`
    w = torch.softmax(torch.randn(len(ops)), 0)
    x = torch.randn(2, 4, 9, 9)
    zero = make_op("none", 4, 2, affine=False)
    full = sum(wi * (zero(x) if name == "none" else mixed.ops[name](x)) for wi, name in zip(w, ops))
    assert torch.allclose(mixed(x, w), full, atol=1e-6)


def test_mixed_op_of_none_alone_gives_zeros_of_output_shape():
    y = MixedOp(4, 2, ["none"])(torch.randn(1, 4, 9, 9), torch.ones(1))
    assert y.shape == (1, 4, 5, 5) and torch.count_nonzero(y) == 0


def test_mixed_op_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate.*'sep_conv_3x3' listed 2 times"):
        MixedOp(4, 1, ["sep_conv_3x3", "sep_conv_3x3"])
    with pytest.raises(ValueError, match="duplicate.*'skip_connect' listed 3 times"):
        MixedOp(4, 1, ["skip_connect"] * 3)
    # skip_connect twice, side by side, is the released code's identity group
    # (tests/test_identity_group.py)
    assert MixedOp(4, 1, ["skip_connect", "skip_connect"]).module_keys == ["skip_connect",
                                                                           "skip_connect_2"]


def test_search1_shared_alphas_forward_backward():
    net = _net(stage_candidates("search1", 5, alpha_share=True))
    assert sorted(net.arch.keys()) == ["normal", "reduce"]
    assert sum(p.numel() for p in net.alphas()) == 2 * 14 * 5
    _check_forward_backward(net)


def test_per_cell_alphas_forward_backward():
    net = _net(stage_candidates("search1", 5, alpha_share=False))
    assert sorted(net.arch.keys()) == [f"cell_{i}" for i in range(5)]
    assert sum(p.numel() for p in net.alphas()) == 5 * 14 * 5
    _check_forward_backward(net)
    g = net.genotype()
    assert isinstance(g, list) and len(g) == 5
    assert [c.reduction for c in g] == [False, True, False, True, False]


def test_mixed_candidate_lists_per_edge():
    stage1 = gt.uniform_candidates(gt.STAGE1_PRIMITIVES, ["normal", "reduce"])
    reps = [gt.GROUPS[g]["representative"] for g in ("pooling", "identity", "separable", "dilated")]
    alphas = {}
    for name, nodes in stage1.items():
        alphas[name] = []
        for i, edges in enumerate(nodes):
            node = []
            for j, ops in enumerate(edges):
                winner = reps[(i + j) % 4]
                node.append({"ops": ops, "alphas": [1.0 if o == winner else 0.0 for o in ops]})
            alphas[name].append(node)
    cands = stage_candidates("search2", 5, stage1_alphas=alphas)
    net = _net(cands)
    for name in ("normal", "reduce"):
        for i, edges in enumerate(cands[name]):
            for j, ops in enumerate(edges):
                group = list(gt.GROUPS)[(i + j) % 4]
                assert ops == gt.GROUPS[group]["members"]
                assert net.arch[name][f"{i + 2}<-{j}"].numel() == len(ops)
    _check_forward_backward(net)


def test_darts_supernet_and_auxiliary_head():
    net = _net(stage_candidates("darts", 5), auxiliary=True)
    assert all(a.numel() == 8 for a in net.alphas())
    net.train()
    logits, aux = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_weights_and_alphas_partition_parameters():
    net = _net(stage_candidates("search1", 5))
    ids_w = {id(p) for p in net.weights()}
    ids_a = {id(p) for p in net.alphas()}
    assert not ids_w & ids_a
    assert ids_w | ids_a == {id(p) for p in net.parameters()}
    # alphas are in the state_dict under readable edge keys
    assert "arch.normal.2<-0" in net.state_dict()


def test_alphas_data_readout_and_genotype(tmp_path):
    net = _net(stage_candidates("search1", 5))
    with torch.no_grad():
        for name in ("normal", "reduce"):
            for i in range(4):
                for j in range(i + 2):
                    a = net.arch[name][f"{i + 2}<-{j}"]
                    a.zero_()
                    a[gt.STAGE1_PRIMITIVES.index("sep_conv_3x3")] = 1.0 + j  # later inputs win
                    a[gt.STAGE1_PRIMITIVES.index("none")] = 10.0  # never chosen
    data = net.alphas_data()
    path = tmp_path / "alphas.json"
    gf.save_alphas(data, path)
    assert gf.load_alphas(path) == data
    g = net.genotype()
    # node i keeps its two latest inputs, strongest (latest) first
    assert g.normal == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
                        ("sep_conv_3x3", 2), ("sep_conv_3x3", 1),
                        ("sep_conv_3x3", 3), ("sep_conv_3x3", 2),
                        ("sep_conv_3x3", 4), ("sep_conv_3x3", 3)]


def test_odd_input_sizes_and_grey_images():
    net = SearchNetwork(stage_candidates("search1", 3), num_classes=10, in_channels=1,
                        init_channels=4, num_cells=3, input_size=13)
    assert net(torch.randn(2, 1, 13, 13)).shape == (2, 10)


def test_bad_candidates_rejected():
    with pytest.raises(ValueError, match="alpha sets"):
        SearchNetwork({"normal": [], "cell_0": []}, 10)
    with pytest.raises(ValueError, match="num_cells must be >= 3"):
        _net(stage_candidates("search1", 2), num_cells=2)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_candidates("search3", 5)


def test_checkpointed_cells_give_the_same_gradients_and_statistics():
    nets = []
    for checkpointing in (False, True):
        net = _net(stage_candidates("search1", 5), auxiliary=True)  # same seed: same weights
        net.grad_checkpoint = checkpointing
        torch.manual_seed(1)
        logits, aux = net(torch.randn(4, 3, 16, 16))
        (logits.logsumexp(1).sum() + aux.sum()).backward()
        nets.append(net)
    plain, ckpt = nets
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.allclose(b.float(), c.float(), atol=1e-6), name  # running stats updated once
