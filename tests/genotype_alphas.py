"""Alphas made by hand for the genotype tests (test_genotypes.py, test_genotype_files.py): one
edge's alphas, uniform alphas of every edge, and a cell whose derivation is known."""
import genotypes as G


def edge(ops, **values):
    """An alphas edge over ``ops``; unnamed ops get -1.0."""
    return {"ops": list(ops), "alphas": [float(values.get(op, -1.0)) for op in ops]}


def uniform_alphas(keys, ops, num_nodes=G.NUM_NODES):
    return {k: [[edge(ops) for _ in range(i + 2)] for i in range(num_nodes)] for k in keys}


def hand_made_cell(ops=G.PRIMITIVES):
    """Node-by-node alphas with a known derivation (see EXPECTED_CELL)."""
    return [
        # node 0: none is the largest value on edge 0 but never counts
        [edge(ops, none=9.0, sep_conv_3x3=0.5), edge(ops, skip_connect=0.8)],
        [edge(ops, max_pool_3x3=0.1), edge(ops, dil_conv_3x3=0.9), edge(ops, sep_conv_5x5=0.7)],
        [edge(ops, avg_pool_3x3=0.3), edge(ops), edge(ops, none=5.0), edge(ops, dil_conv_5x5=2.0)],
        [edge(ops, sep_conv_3x3=0.2), edge(ops, sep_conv_3x3=0.6), edge(ops),
         edge(ops, none=3.0, skip_connect=0.4), edge(ops, max_pool_3x3=0.1)],
    ]


EXPECTED_CELL = [
    ("skip_connect", 1), ("sep_conv_3x3", 0),
    ("dil_conv_3x3", 1), ("sep_conv_5x5", 2),
    ("dil_conv_5x5", 3), ("avg_pool_3x3", 0),
    ("sep_conv_3x3", 1), ("skip_connect", 3),
]
