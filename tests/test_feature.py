"""feature.py: streaming statistics, identical ops correlate 1 and share a group, the groups
round-trip into search1, and bad inputs are one-line errors."""
import copy
import json

import numpy as np
import pytest
import torch

import feature
import genotypes as gt
import search
from models.search_cnn import SearchNetwork
from utils import features as ft

TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu",
        "--print_freq", "1"]
NET = ["--num_cells", "3", "--init_channels", "4"]
PNG = b"\x89PNG\r\n\x1a\n"


def _feature(save_dir, *extra, stage="darts", name="exp"):
    return feature.main(["--stage", stage, "--name", name, "--save_dir", str(save_dir),
                         "--num_samples", "32", *TINY, *extra])


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory):
    """A 1-epoch tiny `darts` search: its checkpoint is feature.py's input."""
    root = tmp_path_factory.mktemp("runs")
    assert search.main(["--stage", "darts", "--name", "exp", "--save_dir", str(root),
                        "--epochs", "1", *TINY, *NET]) == 0
    return root


def test_streaming_statistics_equal_one_shot():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, 5))
    batches = [rng.normal(size=(n, 5)) @ mix + 1e3 for n in (1, 7, 64, 3, 200, 2)]
    stats = ft.StreamingCovariance(5)
    for b in batches:
        stats.update(torch.tensor(b, dtype=torch.float32 if len(b) == 7 else torch.float64))
    batches[1] = batches[1].astype(np.float32).astype(np.float64)
    data = np.concatenate(batches)
    assert stats.count == len(data)
    np.testing.assert_allclose(stats.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(data.T), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.correlation(), np.corrcoef(data.T), atol=1e-10)


def test_zero_variance_op_correlates_zero():
    stats = ft.StreamingCovariance(2)
    stats.update(torch.stack([torch.arange(10.0), torch.zeros(10)], 1))
    np.testing.assert_array_equal(stats.correlation(), np.eye(2))


def test_identical_ops_correlate_one_and_share_a_group():
    torch.manual_seed(0)
    candidates = gt.uniform_candidates(gt.PRIMITIVES, gt.set_names(3, True))
    model = SearchNetwork(candidates, 4, in_channels=3, init_channels=4, num_cells=3, input_size=8)
    for cell in model.cells:
        for mixed in cell.edges.values():
            mixed.ops["avg_pool_3x3"] = copy.deepcopy(mixed.ops["max_pool_3x3"])
    edges = ft.select_edges(model, "all")
    assert len(edges) == 3 * 14 and "cell02_5<-4" in edges
    assert list(ft.select_edges(model)) == [f"cell{i:02d}_{k}" for i in range(3) for k in ("2<-0", "5<-4")]
    batches = [torch.randn(n, 3, 8, 8) for n in (5, 3)]
    stats = ft.collect(model, batches, edges, torch.device("cpu"))
    ops = ft.measured_ops(model.cells[0].edges["2<-0"])
    assert ops == gt.PRIMITIVES[1:]
    i, j = ops.index("max_pool_3x3"), ops.index("avg_pool_3x3")
    for s in stats.values():
        assert abs(s.correlation()[i, j] - 1) < 1e-6
    mean = np.mean([s.correlation() for s in stats.values()], axis=0)
    groups = ft.find_groups(mean, ops, 4)
    assert sum(len(g["members"]) - 1 for g in groups.values() if g["representative"] != "none") == 7
    together = [g for g in groups.values() if "max_pool_3x3" in g["members"]]
    assert "avg_pool_3x3" in together[0]["members"]
    assert together[0]["representative"] == "max_pool_3x3"  # tie: the paper's representative
    assert groups["zero"] == {"representative": "none", "members": ["none"]}


def test_groups_and_representatives_from_a_known_matrix():
    ops = gt.PRIMITIVES[1:]
    corr = np.full((7, 7), 0.1)
    for a, b in [("max_pool_3x3", "avg_pool_3x3"), ("sep_conv_3x3", "sep_conv_5x5"),
                 ("dil_conv_3x3", "dil_conv_5x5")]:
        corr[ops.index(a), ops.index(b)] = corr[ops.index(b), ops.index(a)] = -0.9  # |corr| counts
    np.fill_diagonal(corr, 1.0)
    groups = ft.find_groups(corr, ops, 4)
    assert ft.same_partition(groups)
    assert {k: v["representative"] for k, v in groups.items()} == \
        {k: v["representative"] for k, v in gt.GROUPS.items()}
    assert not ft.same_partition(ft.find_groups(corr, ops, 5))


def test_end_to_end_groups_round_trip_into_search1(darts_run, capsys):
    assert _feature(darts_run, "--plots", "all") == 0
    out = darts_run / "exp" / "darts" / "feature"
    ops, mean = ft.read_csv(out / "correlation_mean.csv")
    assert ops == gt.PRIMITIVES[1:] and mean.shape == (7, 7)
    np.testing.assert_allclose(np.diag(mean), 1.0)
    edge_csvs = sorted(out.glob("correlation_cell*.csv"))
    assert [p.name for p in edge_csvs][:2] == ["correlation_cell00_2from0.csv", "correlation_cell00_5from4.csv"]
    assert len(edge_csvs) == 6 and len(list(out.glob("heatmap_cell*.png"))) == 6
    for name in ("heatmap_mean.png", "clusters_mean.png", "dendrogram_mean.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    groups = gt.load_groups(out / "groups.json")
    assert len(groups) == 5 and groups["zero"]["members"] == ["none"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"] == groups and len(summary["edges"]) == 6
    assert set(summary["kmeans"]) == {"2", "3", "4"}
    printed = capsys.readouterr().out
    assert "mean over 6 edges" in printed and "representative" in printed
    assert _feature(darts_run, "--plots", "all") == 0  # same options: not measured again
    assert "already finished" in capsys.readouterr().out

    assert search.main(["--stage", "search1", "--name", "s1", "--save_dir", str(darts_run),
                        "--groups", str(out / "groups.json"), "--epochs", "1", *TINY, *NET]) == 0
    alphas = gt.load_alphas(darts_run / "s1" / "search1" / "alphas.json")
    reps = [g["representative"] for g in groups.values()]
    assert all(e["ops"] == reps for nodes in alphas.values() for node in nodes for e in node)
    # and a search1 supernet (the representatives) can be analysed in turn
    assert _feature(darts_run, "--num_groups", "2", "--edges", "all", stage="search1", name="s1") == 0
    groups1 = gt.load_groups(darts_run / "s1" / "search1" / "feature" / "groups.json")
    assert sorted(m for g in groups1.values() for m in g["members"] if m != "none") == sorted(reps[:-1])


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert _feature(tmp_path, name="nothing") == 1
    err = capsys.readouterr().err
    assert "nothing/darts/checkpoint.pt: checkpoint not found" in err and err.count("\n") == 1
    assert not (tmp_path / "nothing").exists()
    assert _feature(tmp_path, "--checkpoint", str(tmp_path / "gone.pt")) == 1
    assert "gone.pt: checkpoint not found" in capsys.readouterr().err


def test_wrong_stage_checkpoint_is_refused(darts_run, capsys):
    assert _feature(darts_run, "--checkpoint", str(darts_run / "exp" / "darts" / "checkpoint.pt"),
                    stage="search1", name="other") == 1
    assert "a darts supernet, but --stage is search1" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--num_groups", "1"], "must be >= 2"),
    (["--num_groups", "8"], "8 groups of 7 ops"),
    (["--stage", "search2"], "invalid choice"),
    (["--edges", "some"], "invalid choice"),
    (["--num_sample", "3"], "unrecognized arguments"),
])
def test_bad_flags_exit_2(darts_run, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        _feature(darts_run, *extra)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
