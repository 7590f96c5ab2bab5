"""Tests for genotypes.py: the search space (primitives, op groups, stage-1 ops, reduction
cells, alpha sets), the named genotypes, and the derivation rules (top-2 edges, none excluded,
shared and per-cell; stage-1 -> stage-2 candidates). The files these are read from and written
to, their checks, plots and the CLI: test_genotype_files.py. Pure CPU, no torch."""
import subprocess
import sys
from pathlib import Path

import pytest

import genotypes as G
from utils.io import genotype_files as GF
from utils.io import genotype_checks as gchecks
from tests.genotype_alphas import EXPECTED_CELL, edge, hand_made_cell, uniform_alphas

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- constants
def test_primitives_groups_and_stage1_ops():
    assert G.PRIMITIVES == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                            "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    assert G.KNOWN_OPS == G.PRIMITIVES + ["conv_7x1_1x7"]
    assert list(G.GROUPS) == ["pooling", "identity", "separable", "dilated", "zero"]
    assert G.GROUPS["identity"]["members"] == ["skip_connect", "none"]
    assert G.STAGE1_PRIMITIVES == ["max_pool_3x3", "skip_connect", "sep_conv_3x3",
                                   "dil_conv_3x3", "none"]
    assert G.stage1_primitives(G.GROUPS) == G.STAGE1_PRIMITIVES
    assert GF.validate_groups(G.GROUPS) == G.GROUPS


@pytest.mark.e2e
def test_modules_do_not_import_torch():
    code = ("import sys, genotypes, utils.io.genotype_files; "
            "print('torch' in sys.modules, 'graphviz' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("name", G.NAMED_GENOTYPES)
def test_named_genotypes_validate(name):
    g = G.get_named_genotype(name)
    assert gchecks.validate_genotype(g) is g
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]


def test_named_genotype_details_and_unknown_names():
    assert G.DARTS_V2.normal[-1] == ("dil_conv_3x3", 2)
    assert G.STACNAS_C10.reduce[2] == ("dil_conv_5x5", 2)
    assert G.count_ops(G.DARTS_V1) == 6 and G.count_ops(G.DARTS_V2) == 5
    assert G.count_ops(G.STACNAS_C10, "dil_conv_5x5") == 3
    for bad in ["DARTS_V3", "Genotype", "PRIMITIVES", "__name__"]:
        with pytest.raises(ValueError, match="known: DARTS_V1, DARTS_V2, STACNAS_C10"):
            G.get_named_genotype(bad)


def test_reduction_cells_and_set_names():
    assert G.reduction_cells(20) == {6, 13} and G.reduction_cells(14) == {4, 9}
    assert G.set_names(3, alpha_share=True) == ["normal", "reduce"]
    assert G.set_names(3, alpha_share=False) == ["cell_0", "cell_1", "cell_2"]
    cands = G.uniform_candidates(["a", "b"], ["normal"], num_nodes=2)
    assert cands == {"normal": [[["a", "b"]] * 2, [["a", "b"]] * 3]}


# ----------------------------------------------------------------------------- derivation
def test_derive_top2_none_excluded_strongest_first():
    alphas = {"normal": hand_made_cell(), "reduce": hand_made_cell()}
    g = G.derive_genotype(alphas)
    assert g == G.Genotype(EXPECTED_CELL, [2, 3, 4, 5], EXPECTED_CELL, [2, 3, 4, 5])
    assert G.derive_genotype(alphas, num_nodes=4) == g
    with pytest.raises(G.GenotypeError, match="4 nodes per cell, expected 5"):
        G.derive_genotype(alphas, num_nodes=5)


def test_derive_per_cell():
    alphas = uniform_alphas([f"cell_{i}" for i in range(5)], G.PRIMITIVES)
    alphas["cell_3"] = hand_made_cell()
    cells = G.derive_genotype(alphas)
    assert [c.reduction for c in cells] == [False, True, False, True, False]
    assert cells[3] == G.CellGenotype(EXPECTED_CELL, [2, 3, 4, 5], True)
    # all-equal alphas: first non-none op, lower inputs win ties
    assert cells[0].ops[:2] == [("max_pool_3x3", 0), ("max_pool_3x3", 1)]


def test_derive_needs_two_edges_with_a_real_op():
    alphas = uniform_alphas(["normal", "reduce"], G.PRIMITIVES)
    alphas["reduce"][2][1] = edge(["none"], none=1.0)
    alphas["reduce"][2][3] = edge(["none"], none=1.0)
    assert G.derive_genotype(alphas).reduce[4:6] == [("max_pool_3x3", 0), ("max_pool_3x3", 2)]
    alphas["reduce"][2][0] = edge(["none"], none=1.0)
    with pytest.raises(G.GenotypeError, match="reduce node 2: 1 edge"):
        G.derive_genotype(alphas)


def test_candidates_from_stage1_gives_winning_group_members():
    ops = G.STAGE1_PRIMITIVES
    alphas = {"normal": [
        [edge(ops, none=5.0, sep_conv_3x3=1.0), edge(ops, max_pool_3x3=0.2)],
        [edge(ops, skip_connect=0.1), edge(ops, dil_conv_3x3=3.0), edge(ops, sep_conv_3x3=-0.5)],
    ]}
    alphas["reduce"] = [alphas["normal"][0], alphas["normal"][1]]
    cands = G.candidates_from_stage1(alphas)
    expected = [
        [["sep_conv_3x3", "sep_conv_5x5", "none"], ["avg_pool_3x3", "max_pool_3x3", "none"]],
        [["skip_connect", "none"], ["dil_conv_3x3", "dil_conv_5x5", "none"],
         ["sep_conv_3x3", "sep_conv_5x5", "none"]],
    ]
    assert cands == {"normal": expected, "reduce": expected}
    cands["normal"][0][0].append("x")  # copies, not the GROUPS lists
    assert G.GROUPS["separable"]["members"] == ["sep_conv_3x3", "sep_conv_5x5", "none"]


def test_candidates_from_stage1_rejects_stage2_alphas():
    alphas = uniform_alphas(["normal", "reduce"], G.PRIMITIVES)
    with pytest.raises(G.GenotypeError, match=r"stage-2 \(or DARTS\) alphas: op 'avg_pool_3x3' "
                                              r"on normal node 0 edge 0 .*alphas.json of search1"):
        G.candidates_from_stage1(alphas)
