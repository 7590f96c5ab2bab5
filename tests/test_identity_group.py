"""The released code's stage-2 identity group (skip_connect listed twice, then none) as an
option next to our single skip: groups, candidates, alphas files, derivation, the supernet
(two identity terms at stride 1, two FactorizedReduce at stride 2) and the summary CLI."""
import hashlib
import json

import pytest
import torch

import genotypes as gt
from models.factory import build_supernet, stage_candidates
from models.ops import FactorizedReduce, Identity
from models.search_cells import MixedOp, edge_key, module_keys
from summary import main as summary_main
from utils.analysis import derive
from utils.io import genotype_files as gf
from utils.data.info import DatasetInfo
from utils.io import genotype_checks as gchecks
from utils.train import groups as tgroups

TINY = DatasetInfo(3, 16, 10)
SKIP2 = ["skip_connect", "skip_connect", "none"]
REPS = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]


def stage1_alphas(winner=lambda i, j: REPS[(i + j) % 4]):
    """Shared stage-1 alphas where `winner(i, j)` has the largest alpha on edge j of node i."""
    ops = gt.STAGE1_PRIMITIVES
    return {k: [[{"ops": list(ops), "alphas": [float(o == winner(i, j)) for o in ops]}
                 for j in range(i + 2)] for i in range(gt.NUM_NODES)] for k in ("normal", "reduce")}


def _net(candidates, num_cells=5, channels=4):
    torch.manual_seed(0)
    return build_supernet(candidates, **TINY.network_shape(), init_channels=channels,
                          num_cells=num_cells)


def _forward_backward(net):
    logits = net(torch.randn(2, TINY.channels, TINY.size, TINY.size))
    assert logits.shape == (2, TINY.classes)
    logits.logsumexp(1).sum().backward()
    for name, a in net.named_alphas():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0, name
    return logits


# ----------------------------------------------------------------------------- groups
def test_released_groups_lists():
    released = tgroups.released_groups(gt.GROUPS)
    assert tgroups.RELEASED_IDENTITY_MEMBERS == SKIP2
    assert released["identity"] == {"representative": "skip_connect", "members": SKIP2}
    assert {k: v for k, v in released.items() if k != "identity"} == \
        {k: v for k, v in gt.GROUPS.items() if k != "identity"}
    assert list(released) == list(gt.GROUPS)
    assert gt.stage1_primitives(released) == gt.STAGE1_PRIMITIVES  # stage 1 unchanged
    assert gt.GROUPS["identity"]["members"] == ["skip_connect", "none"]  # a new dict
    assert tgroups.released_groups() == released == tgroups.released_groups(released)  # idempotent
    assert gf.validate_groups(released) == released


def test_identity_group_choices():
    assert tgroups.IDENTITY_GROUP_CHOICES == ("single", "released")
    assert tgroups.identity_group(gt.GROUPS, "single") == gt.GROUPS
    assert tgroups.identity_group(gt.GROUPS, "released") == tgroups.released_groups(gt.GROUPS)
    assert tgroups.identity_group(tgroups.released_groups(gt.GROUPS), "single") == gt.GROUPS
    with pytest.raises(ValueError, match="unknown identity group 'double'"):
        tgroups.identity_group(gt.GROUPS, "double")


def test_released_groups_of_custom_groups():
    # feature.py may put skip_connect in a group with other ops: its copy follows it
    custom = {"group_0": {"representative": "max_pool_3x3",
                          "members": ["max_pool_3x3", "skip_connect", "avg_pool_3x3", "none"]},
              "zero": {"representative": "none", "members": ["none"]}}
    assert tgroups.released_groups(custom)["group_0"]["members"] == [
        "max_pool_3x3", "skip_connect", "skip_connect", "avg_pool_3x3", "none"]
    with pytest.raises(gt.GenotypeError, match="no group has 'skip_connect'"):
        tgroups.released_groups({"zero": {"representative": "none", "members": ["none"]}})


def test_released_groups_file_round_trip(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(tgroups.released_groups()))
    assert gf.load_groups(path) == tgroups.released_groups()


@pytest.mark.parametrize("ops, problem", [
    (["sep_conv_3x3", "sep_conv_3x3", "none"], "op 'sep_conv_3x3' listed 2 times"),
    (["none", "skip_connect", "none"], "op 'none' listed 2 times"),
    (["skip_connect"] * 3, "'skip_connect' listed 3 times"),
    (["skip_connect", "none", "skip_connect"], "side by side"),
])
def test_only_skip_connect_twice_side_by_side(ops, problem):
    assert problem in gt.duplicate_problem(ops)
    groups = {"g": {"representative": ops[0], "members": ops}}
    with pytest.raises(gt.GenotypeError, match=f"g: members must be distinct: .*{problem}"):
        gf.validate_groups(groups)
    with pytest.raises(ValueError, match=f"duplicate candidate ops on one edge: .*{problem}"):
        MixedOp(4, 1, ops)


def test_allowed_lists():
    for ops in (SKIP2, ["none", "skip_connect", "skip_connect"], gt.PRIMITIVES, ["none"]):
        assert gt.duplicate_problem(ops) is None


# ----------------------------------------------------------------------------- candidates
def test_candidates_from_stage1_with_released_groups():
    alphas = stage1_alphas()
    single = gt.candidates_from_stage1(alphas)
    released = gt.candidates_from_stage1(alphas, tgroups.released_groups())
    assert stage_candidates("search2", 5, stage1_alphas=alphas,
                            groups=tgroups.released_groups()) == released
    identity_edges = 0
    for key in ("normal", "reduce"):
        for i, edges in enumerate(released[key]):
            for j, ops in enumerate(edges):
                if REPS[(i + j) % 4] == "skip_connect":
                    identity_edges += 1
                    assert ops == SKIP2 and single[key][i][j] == ["skip_connect", "none"]
                else:
                    assert ops == single[key][i][j] and ops.count("skip_connect") == 0
    assert identity_edges == 2 * 4


# ----------------------------------------------------------------------------- alphas files
def test_alphas_round_trip_and_derivation_with_duplicates(tmp_path):
    sep = ["sep_conv_3x3", "sep_conv_5x5", "none"]
    alphas = {k: [[{"ops": sep, "alphas": [0.1, 0.0, 9.0]} for _ in range(i + 2)]
                  for i in range(gt.NUM_NODES)] for k in ("normal", "reduce")}
    alphas["normal"][0][0] = {"ops": SKIP2, "alphas": [0.9, 0.2, 5.0]}  # first copy wins
    alphas["normal"][0][1] = {"ops": SKIP2, "alphas": [0.2, 0.8, 5.0]}  # second copy wins
    alphas["reduce"][0][1] = {"ops": SKIP2, "alphas": [0.05, 0.05, 5.0]}  # tie, below sep's 0.1
    path = tmp_path / "alphas.json"
    gf.save_alphas(alphas, path)
    assert gf.load_alphas(path) == alphas
    g = gt.derive_genotype(gf.load_alphas(path))
    assert g.normal[:2] == [("skip_connect", 0), ("skip_connect", 1)]  # 0.9 first, then 0.8
    assert g.reduce[:2] == [("sep_conv_3x3", 0), ("skip_connect", 1)]  # one name, either copy
    assert gt.count_ops(g, "skip_connect") == 3
    assert gchecks.validate_genotype(g) == g
    assert derive.main(["--alphas", str(path)]) == 0


# ----------------------------------------------------------------------------- mixed op
def test_mixed_op_two_identities_at_stride_1():
    mixed = MixedOp(4, 1, SKIP2)
    assert mixed.module_keys == ["skip_connect", "skip_connect_2", None]
    assert list(mixed.ops) == ["skip_connect", "skip_connect_2"]
    assert all(isinstance(m, Identity) for m in mixed.ops.values())
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.tensor([0.5, 0.3, 0.2], requires_grad=True)
    y = mixed(x, w)
    assert torch.allclose(y, 0.8 * x)
    y.sum().backward()
    assert torch.allclose(w.grad[:2], x.sum().expand(2)) and w.grad[2] == 0


def test_mixed_op_two_factorized_reduces_at_stride_2():
    torch.manual_seed(0)
    mixed = MixedOp(4, 2, SKIP2).eval()
    a, b = mixed.ops["skip_connect"], mixed.ops["skip_connect_2"]
    assert isinstance(a, FactorizedReduce) and isinstance(b, FactorizedReduce) and a is not b
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # separately initialised
    assert not {id(p) for p in a.parameters()} & {id(p) for p in b.parameters()}
    assert sum(p.numel() for p in mixed.parameters()) == 2 * 4 * 4  # two C x C/2 convs each
    x = torch.randn(2, 4, 9, 9)
    w = torch.tensor([0.5, 0.3, 0.2])
    assert torch.allclose(mixed(x, w), 0.5 * a(x) + 0.3 * b(x), atol=1e-6)


def test_module_keys():
    assert module_keys(["none", "skip_connect", "sep_conv_3x3"]) == [None, "skip_connect",
                                                                     "sep_conv_3x3"]
    assert module_keys(SKIP2) == ["skip_connect", "skip_connect_2", None]


# ----------------------------------------------------------------------------- supernet
def _released_and_single(alphas=None):
    alphas = alphas or stage1_alphas()
    single = _net(gt.candidates_from_stage1(alphas))
    released = _net(gt.candidates_from_stage1(alphas, tgroups.released_groups()))
    return single, released


def test_supernet_forward_backward_stride_1_and_2():
    # identity everywhere: each cell is sums of identities (normal) / FactorizedReduces (reduce)
    net = _net(gt.candidates_from_stage1(stage1_alphas(lambda i, j: "skip_connect"),
                                         tgroups.released_groups()))
    assert all(a.numel() == 3 for a in net.alphas())
    _forward_backward(net)
    # stride-2 edges: both FactorizedReduce copies get gradients
    mixed = net.cells[1].edges[edge_key(0, 0)]
    assert mixed.stride == 2
    for key in ("skip_connect", "skip_connect_2"):
        assert mixed.ops[key].conv1.weight.grad.abs().sum() > 0, key
    # the mixed lists of groups train too, as does a checkpointed pass
    _, released = _released_and_single()
    released.grad_checkpoint = True
    _forward_backward(released)


def test_initial_softmax_mass_on_skip_is_two_thirds():
    net = _net(gt.candidates_from_stage1(stage1_alphas(), tgroups.released_groups()))
    with torch.no_grad():
        weights = net._softmaxed("normal")
    cands = net.candidates["normal"]
    masses = [float(w[0] + w[1]) for ws, ops in zip(weights, cands) for w, o in zip(ws, ops)
              if o == SKIP2]
    assert len(masses) == 4 and all(abs(m - 2 / 3) < 1e-2 for m in masses)  # 1e-3 randn init
    with torch.no_grad():
        for a in net.alphas():
            a.zero_()
    w = net._softmaxed("reduce")[0][1]
    assert net.candidates["reduce"][0][1] == SKIP2
    assert torch.allclose(w[0] + w[1], torch.tensor(2 / 3)) and torch.allclose(w[0], w[1])


def test_parameter_count_is_default_plus_one_factorized_reduce_per_reduction_edge():
    single, released = _released_and_single()
    extra, edges = 0, 0
    for cell in released.cells:
        for _name, mixed in cell.edges.items():
            if mixed.op_names == SKIP2 and mixed.stride == 2:
                c = mixed.ops["skip_connect_2"].bn.num_features
                extra += c * c  # two 1x1 convs C -> C/2, non-affine BN
                edges += 1
    assert edges == 2 * 2  # two reduction cells, two stride-2 identity edges each
    count = lambda net: sum(p.numel() for p in net.weights())  # noqa: E731
    assert count(released) == count(single) + extra == count(single) + 2 * 8 * 8 + 2 * 16 * 16
    alphas = lambda net: sum(p.numel() for p in net.alphas())  # noqa: E731
    assert alphas(released) == alphas(single) + 2 * 4  # one more alpha per identity edge
    # the released net's state dict: the default one plus the second copies' entries
    single_keys, released_keys = set(single.state_dict()), set(released.state_dict())
    assert single_keys <= released_keys
    added = released_keys - single_keys
    assert added and all(".ops.skip_connect_2." in k for k in added)
    assert "cells.1.edges.2<-1.ops.skip_connect_2.conv1.weight" in added


def test_default_state_dict_keys_unchanged():
    single, _ = _released_and_single()
    keys = sorted(single.state_dict())
    # computed before the released-identity option existed
    assert len(keys) == 688
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest() == \
        "185d082af6c4fb0d22bec5c877956de8ce8dc7d137c4a0dd24d2e3b237e989b4"
    assert "cells.1.edges.2<-1.ops.skip_connect.conv1.weight" in keys
    assert "arch.reduce.3<-0" in keys
    assert not any("skip_connect_2" in k for k in keys)


def test_released_supernet_readout_and_state_dict_round_trip(tmp_path):
    _, net = _released_and_single()
    with torch.no_grad():
        net.arch["normal"][edge_key(0, 1)].copy_(torch.tensor([0.0, 3.0, 1.0]))  # 2nd skip wins
    data = net.alphas_data()
    assert data["normal"][0][1]["ops"] == SKIP2
    gf.save_alphas(data, tmp_path / "alphas.json")
    assert gf.load_alphas(tmp_path / "alphas.json") == data
    assert ("skip_connect", 1) in net.genotype().normal[:2]
    other = _net(net.candidates)
    other.load_state_dict(net.state_dict())
    net.eval(), other.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(net(x), other(x))


# ----------------------------------------------------------------------------- summary CLI
def _summary(capsys, *argv):
    assert summary_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip())


def test_summary_identity_group_option(capsys, tmp_path):
    path = tmp_path / "alphas.json"
    gf.save_alphas(stage1_alphas(lambda i, j: "skip_connect"), path)
    args = ("--stage", "search2", "--alphas", str(path), "--num_cells", "5", "--init_channels", "4")
    single = _summary(capsys, *args)
    released = _summary(capsys, *args, "--identity_group", "released")
    assert single["alphas"] == 2 * 14 * 2 and released["alphas"] == 2 * 14 * 3
    # reduction cells 1 and 3 (C = 8, 16), 4 nodes x 2 stride-2 input edges each
    assert released["weights"] == single["weights"] + 8 * 8 * 8 + 8 * 16 * 16
    assert _summary(capsys, *args, "--identity_group", "single") == single
    with pytest.raises(SystemExit) as exc:
        summary_main(["--stage", "search1", "--identity_group", "released"])
    assert exc.value.code == 2
    assert "--identity_group applies to --stage search2 only" in capsys.readouterr().err
