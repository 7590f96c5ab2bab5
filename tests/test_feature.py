"""feature.py: both streaming statistics (the authors' per-position centring and one global
mean per op) against a direct float64 computation, identical ops correlate 1 and share a
group, the KMeans views are written, the groups round-trip into search1, and bad inputs are
one-line errors."""
import copy
import json

import numpy as np
import pytest
import torch

import feature
import genotypes as gt
import search
from models.search_cnn import SearchNetwork
from utils.analysis import feature_plots as fp
from utils.analysis import features as ft
from utils.io.genotype_files import load_alphas, load_groups

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
    stats = ft.PositionCovariance(5)  # one position: every row is one observation
    for b in batches:
        dtype = torch.float32 if len(b) == 7 else torch.float64
        stats.update(torch.tensor(b, dtype=dtype)[:, :, None])
    batches[1] = batches[1].astype(np.float32).astype(np.float64)
    data = np.concatenate(batches)
    assert stats.count == len(data)
    np.testing.assert_allclose(stats.mean.numpy()[:, 0], data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(data.T), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.correlation(), np.corrcoef(data.T), atol=1e-10)


def _direct(data: np.ndarray) -> dict[str, np.ndarray]:
    """Both co-moments of (N images, K ops, P positions) straight from the definitions."""
    n, k, p = data.shape
    by_position = data - data.mean(axis=0, keepdims=True)             # mean_i[p] over images
    by_op = data - data.mean(axis=(0, 2), keepdims=True)               # one mean per op
    return {"position": np.einsum("nip,njp->ij", by_position, by_position),
            "global": np.einsum("nip,njp->ij", by_op, by_op)}


def _corr(m: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(m))
    return m / np.outer(d, d)


def test_position_and_global_statistics_equal_a_direct_float64_computation():
    rng = np.random.default_rng(1)
    k, shape = 4, (3, 5, 5)
    p = int(np.prod(shape))
    # a large per-position offset (what would cancel in raw sums) plus correlated noise
    offset = 1e3 + 50 * rng.normal(size=(1, k, p))
    mix = rng.normal(size=(k, k))
    batches = [(np.einsum("nip,ij->njp", rng.normal(size=(n, k, p)), mix) + offset)
               for n in (1, 6, 17, 2, 40)]
    stats = ft.PositionCovariance(k)
    for b in batches:
        stats.update(torch.tensor(b.reshape(len(b), k, *shape)))
    data = np.concatenate(batches)
    assert stats.count == len(data) and stats.positions == p
    np.testing.assert_allclose(stats.mean_maps(), data.mean(axis=0), rtol=1e-13)
    direct = _direct(data)
    for statistic in ft.STATISTICS:
        np.testing.assert_allclose(stats.comoment(statistic).numpy(), direct[statistic], rtol=1e-9)
        np.testing.assert_allclose(stats.correlation(statistic), _corr(direct[statistic]),
                                   atol=1e-10)
    n = len(data)
    np.testing.assert_allclose(stats.covariance("position"), direct["position"] / (p * (n - 1)),
                               rtol=1e-9)
    # "global" is the old rows-as-observations statistic
    rows = ft.PositionCovariance(k)
    rows.update(torch.tensor(data.transpose(0, 2, 1).reshape(-1, k))[:, :, None])
    np.testing.assert_allclose(stats.covariance("global"), rows.covariance(), rtol=1e-9)


def test_a_shared_spatial_pattern_correlates_globally_but_not_per_position():
    """Two ops = one position-dependent pattern + independent noise per image: the same mean
    map, nothing in common from image to image."""
    rng = np.random.default_rng(2)
    n, p = 300, 64
    pattern = 3 * rng.normal(size=p)
    data = pattern + rng.normal(size=(n, 2, p))
    stats = ft.PositionCovariance(2)
    for chunk in np.array_split(data, 7):
        stats.update(torch.tensor(chunk, dtype=torch.float32))
    position, global_ = stats.correlation("position")[0, 1], stats.correlation("global")[0, 1]
    direct = _direct(data.astype(np.float32).astype(np.float64))
    assert position == pytest.approx(_corr(direct["position"])[0, 1], abs=1e-9)
    assert global_ == pytest.approx(_corr(direct["global"])[0, 1], abs=1e-9)
    assert abs(position) < 0.05 and global_ > 0.85


def test_statistic_input_errors():
    stats = ft.PositionCovariance(2)
    with pytest.raises(ValueError, match="observations"):
        stats.correlation()
    stats.update(torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="more observations"):
        stats.correlation("position")  # one image: no spread across images
    with pytest.raises(ValueError, match="statistic must be"):
        stats.correlation("pooled")
    with pytest.raises(ValueError, match="3 positions"):
        stats.update(torch.ones(1, 2, 4))
    with pytest.raises(ValueError, match="shape"):
        stats.update(torch.ones(1, 3, 3))


def test_kmeans_labels_are_canonical():
    assert ft.canonical([2, 2, 0, 1, 0]) == [0, 0, 1, 2, 1]
    maps = np.array([[-9, 3], [5, 5], [0.0, 0], [5.1, 5], [0.1, 0], [-9.1, 3]])
    assert ft.kmeans_mean_maps(maps, [3]) == {3: [0, 1, 2, 1, 2, 0]}


def test_zero_variance_op_correlates_zero():
    stats = ft.PositionCovariance(2)
    stats.update(torch.stack([torch.arange(10.0), torch.zeros(10)], 1)[:, :, None])
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
    assert list(ft.select_edges(model)) == [f"cell{i:02d}_{k}" for i in range(3)
                                            for k in ("2<-0", "5<-4")]
    batches = [torch.randn(n, 3, 8, 8) for n in (5, 3)]
    stats = ft.collect(model, batches, edges, torch.device("cpu"))
    ops = ft.measured_ops(model.cells[0].edges["2<-0"])
    assert ops == gt.PRIMITIVES[1:]
    i, j = ops.index("max_pool_3x3"), ops.index("avg_pool_3x3")
    for s in stats.values():
        for statistic in ft.STATISTICS:
            assert abs(s.correlation(statistic)[i, j] - 1) < 1e-6
        labels = ft.kmeans_mean_maps(s.mean_maps(), [2, 3, 4])
        assert all(lab[i] == lab[j] for lab in labels.values())  # identical mean maps
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


@pytest.mark.e2e
def test_end_to_end_groups_round_trip_into_search1(darts_run, capsys):
    assert _feature(darts_run, "--plots", "all") == 0
    out = darts_run / "exp" / "darts" / "feature"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statistic"] == "position" and summary["transform"] == "train"  # the authors'
    np.testing.assert_allclose(summary["mean_correlation"],
                               summary["mean_correlation_by_statistic"]["position"])
    ops, mean = fp.read_csv(out / "correlation_mean.csv")
    assert ops == gt.PRIMITIVES[1:] and mean.shape == (7, 7)
    np.testing.assert_allclose(np.diag(mean), 1.0)
    edge_csvs = sorted(out.glob("correlation_cell*.csv"))
    assert [p.name for p in edge_csvs][:2] == ["correlation_cell00_2from0.csv",
                                               "correlation_cell00_5from4.csv"]
    assert len(edge_csvs) == 6 and len(list(out.glob("heatmap_cell*.png"))) == 6
    assert len(list(out.glob("kmeans_cell*.png"))) == 6
    for name in ("heatmap_mean.png", "clusters_mean.png", "dendrogram_mean.png", "kmeans_edges.png",
                 "kmeans_cell00_2from0.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    groups = load_groups(out / "groups.json")
    assert len(groups) == 5 and groups["zero"]["members"] == ["none"]
    assert summary["groups"] == groups and len(summary["edges"]) == 6
    assert set(summary["kmeans_correlation_rows"]) == {"2", "3", "4"}
    assert list(summary["kmeans_mean_maps"]) == summary["edges"]
    for by_k in summary["kmeans_mean_maps"].values():
        assert set(by_k) == {"2", "3", "4"}
        for k, lab in by_k.items():
            assert len(lab) == 7 and lab[0] == 0 and set(lab) <= set(range(int(k)))
    printed = capsys.readouterr().out
    assert "mean over 6 edges" in printed and "representative" in printed
    assert _feature(darts_run, "--plots", "all") == 0  # same options: not measured again
    assert "already finished" in capsys.readouterr().out
    # the other statistic on the same supernet and images, into another folder
    other = darts_run / "global"
    assert _feature(darts_run, "--statistic", "global", "--transform", "eval",
                    "--feature_dir", str(other)) == 0
    summary_g = json.loads((other / "summary.json").read_text())
    assert summary_g["statistic"] == "global" and summary_g["transform"] == "eval"
    np.testing.assert_allclose(fp.read_csv(other / "correlation_mean.csv")[1],
                               summary_g["mean_correlation_by_statistic"]["global"], atol=1e-6)
    assert (other / "kmeans_edges.png").is_file() and not list(other.glob("kmeans_cell*.png"))

    assert search.main(["--stage", "search1", "--name", "s1", "--save_dir", str(darts_run),
                        "--groups", str(out / "groups.json"), "--epochs", "1", *TINY, *NET]) == 0
    alphas = load_alphas(darts_run / "s1" / "search1" / "alphas.json")
    reps = [g["representative"] for g in groups.values()]
    assert all(e["ops"] == reps for nodes in alphas.values() for node in nodes for e in node)
    # and a search1 supernet (the representatives) can be analysed in turn
    assert _feature(darts_run, "--num_groups", "2", "--edges", "all", stage="search1",
                    name="s1") == 0
    groups1 = load_groups(darts_run / "s1" / "search1" / "feature" / "groups.json")
    assert (sorted(m for g in groups1.values() for m in g["members"] if m != "none")
            == sorted(reps[:-1]))


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert _feature(tmp_path, name="nothing") == 1
    err = capsys.readouterr().err
    assert "nothing/darts/checkpoint.pt: checkpoint not found" in err and err.count("\n") == 1
    assert not (tmp_path / "nothing").exists()
    assert _feature(tmp_path, "--checkpoint", str(tmp_path / "gone.pt")) == 1
    assert "gone.pt: checkpoint not found" in capsys.readouterr().err


@pytest.mark.e2e
def test_wrong_stage_checkpoint_is_refused(darts_run, capsys):
    assert _feature(darts_run, "--checkpoint", str(darts_run / "exp" / "darts" / "checkpoint.pt"),
                    stage="search1", name="other") == 1
    assert "a darts supernet, but --stage is search1" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--num_groups", "1"], "must be >= 2"),
    (["--num_groups", "8"], "8 groups of 7 ops"),
    (["--stage", "search2"], "invalid choice"),
    (["--edges", "some"], "invalid choice"),
    (["--statistic", "pooled"], "invalid choice"),
    (["--transform", "test"], "invalid choice"),
    (["--num_sample", "3"], "unrecognized arguments"),
])
@pytest.mark.e2e
def test_bad_flags_exit_2(darts_run, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        _feature(darts_run, *extra)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        feature.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--statistic {position,global}" in text and "position (the authors')" in text
    assert "(default: position)" in text and "(default: train)" in text
    assert ("--transform {train,eval}" in text
            and "train (augmentation, the authors' choice)" in text)
