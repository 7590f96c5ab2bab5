"""alpha_efficiency.py: candidates, genotype substitution and correlations on known values;
real tiny runs on synthetic data (a StacNAS search2 and a DARTS edge side by side, killed and
resumed); bad input."""
import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

import alpha_efficiency
import genotypes as gt
import search
from utils.analysis import alpha_efficiency as ae
from utils.analysis import alpha_runs
from utils.io import genotype_files as gf
from utils.train.stage import is_finished

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--num_workers", "0", "--device", "cpu"]
TRAIN = ["--epochs", "1", "--num_cells", "3", "--init_channels", "4", "--batch_size", "16",
         "--num_workers", "0", "--device", "cpu"]


def _search(save_dir, stage):
    argv = ["--stage", stage, "--name", "exp", "--save_dir", str(save_dir), "--epochs", "1",
            "--batch_size", "16", "--num_cells", "3", "--init_channels", "4", *DATA]
    assert search.main(argv) == 0
    return save_dir / "exp" / stage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """<tmp>/exp/: search2 (seeded by a stage-1 alphas.json that picks the separable group on
    every edge) and darts, each one tiny epoch."""
    save_dir = tmp_path_factory.mktemp("runs")
    stage1 = gt.uniform_candidates(gt.STAGE1_PRIMITIVES, ["normal", "reduce"])
    (save_dir / "exp" / "search1").mkdir(parents=True)
    gf.save_alphas({k: [[{"ops": ops, "alphas": [float(op == "sep_conv_3x3") for op in ops]}
                         for ops in node] for node in nodes] for k, nodes in stage1.items()},
                   save_dir / "exp" / "search1" / "alphas.json")
    return _search(save_dir, "search2"), _search(save_dir, "darts")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- pure logic
def test_edges_syntax():
    assert ae.parse_edges("0,3") == [("normal", 0), ("normal", 3)]
    assert ae.parse_edges("normal:0,reduce:2,0") == [("normal", 0), ("reduce", 2)]
    assert ae.parse_edges("reduce") == [("reduce", k) for k in range(8)]
    for bad, words in (("9", "0..7"), ("-1", "0..7"), ("x", "0..7"),
                       ("middle:1", "normal or reduce")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            ae.parse_edges(bad)


def _alphas():
    """Shared alphas with every DARTS op on every edge; node 0 input 1: sep_conv_3x3 strongest."""
    sets = gt.uniform_candidates(gt.PRIMITIVES, ["normal", "reduce"])
    alphas = {k: [[{"ops": ops, "alphas": [0.01 * i for i in range(len(ops))]} for ops in node]
                  for node in nodes] for k, nodes in sets.items()}
    alphas["normal"][0][1]["alphas"][gt.PRIMITIVES.index("sep_conv_3x3")] = 1.0
    return alphas


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_candidates_and_substitution():
    alphas = _alphas()
    genotype = gt.derive_genotype(alphas)
    assert genotype.normal[0] == ("sep_conv_3x3", 1)
    cands = ae.edge_candidates(alphas, genotype, "normal", 0)
    assert [c.op for c in cands] == gt.PRIMITIVES[1:]  # none excluded
    values = alphas["normal"][0][1]["alphas"]
    expected = _softmax(values)
    for c in cands:
        k = gt.PRIMITIVES.index(c.op)
        assert (c.node, c.input, c.alpha) == (0, 1, values[k])
        assert c.softmax_alpha == pytest.approx(expected[k])  # over all 8 ops, none included
        assert c.derived == (c.op == "sep_conv_3x3")
    swapped = ae.substitute(genotype, "normal", 0, "max_pool_3x3")
    assert swapped.normal == [("max_pool_3x3", 1)] + genotype.normal[1:]
    assert swapped.reduce == genotype.reduce and genotype.normal[0] == ("sep_conv_3x3", 1)
    cands, runs = ae.plan(alphas, genotype, [("normal", 0), ("reduce", 1)])
    assert len(cands) == 14 and len(runs) == 13  # the derived genotype is trained once
    assert runs[ae.DERIVED] == genotype and runs["normal_0_max_pool_3x3"] == swapped
    # the released identity group: skip_connect twice is one candidate
    alphas["normal"][0][1] = {"ops": ["skip_connect", "skip_connect", "none"],
                              "alphas": [0.5, 0.2, 0.0]}
    genotype = gt.derive_genotype(alphas)
    (skip,) = ae.edge_candidates(alphas, genotype, "normal", 0)
    weights = _softmax([0.5, 0.2, 0.0])
    assert skip.alpha == 0.5 and skip.softmax_alpha == pytest.approx(weights[0] + weights[1])
    with pytest.raises(gt.GenotypeError, match="per-cell"):
        ae.edge_candidates({"cell_0": alphas["normal"]}, genotype, "normal", 0)


def test_correlations_on_known_values():
    monotone = ae.correlations([0.1, 0.2, 0.3, 0.9], [10.0, 20.0, 25.0, 26.0])
    assert monotone["n"] == 4
    assert monotone["spearman"]["rho"] == 1.0 and monotone["kendall"]["tau"] == 1.0
    x, y = [0.1, 0.4, 0.2, 0.3, 0.5], [50.0, 40.0, 45.0, 60.0, 70.0]
    got = ae.correlations(x, y)
    r, p = stats.pearsonr(x, y)
    assert got["pearson"] == {"r": pytest.approx(r, abs=1e-6), "p": pytest.approx(p, abs=1e-6)}
    # by hand: ranks x 1 4 2 3 5, y 3 1 2 4 5, sum d^2 = 4+9+0+1+0 = 14, rho = 1 - 6*14/120
    assert got["spearman"]["rho"] == pytest.approx(0.3)
    # pairs: 6 concordant, 4 discordant -> tau = 2/10
    assert got["kendall"]["tau"] == pytest.approx(0.2)
    assert ae.correlations([0.1, 0.2], [1.0, 2.0]) == {"n": 2, "pearson": None, "spearman": None,
                                                        "kendall": None}
    flat = ae.correlations([0.1, 0.2, 0.3], [5.0, 5.0, 5.0])  # constant: undefined, not NaN
    assert flat["spearman"] is None and flat["pearson"] is None


def test_table_of_two_seeds(tmp_path):
    alphas = _alphas()
    genotype = gt.derive_genotype(alphas)
    cands, runs = ae.plan(alphas, genotype, [("normal", 0), ("normal", 1)])
    # held-out top-1 rising with the op's index (mean index + 10); the derived genotype best
    mean = {run: 30 if run == ae.DERIVED else gt.PRIMITIVES.index(run.split("_", 2)[2]) + 10
            for run in runs}
    results = {(run, s): {"best_valid_top1": mean[run] + d, "test_top1": 50.0}
               for run in runs for s, d in ((1, -1), (2, 1))}
    rows = ae.make_rows("x", cands, results, [1, 2])
    assert len(rows) == 14 and rows[0]["valid_top1"] == {"1": 10, "2": 12}
    assert [r["valid_top1_mean"] for r in rows[:7]] == [11, 12, 13, 30, 15, 16, 17]
    summary = ae.summarise(rows)
    assert summary["pooled"]["n"] == 14 and set(summary["edges"]) == {"normal[0] 2<-1",
                                                                        "normal[1] 2<-0"}
    # edge 1: alphas 0.01 * index, so softmax(alpha) ranks the ops as their accuracy does
    edge = summary["edges"]["normal[1] 2<-0"]["softmax_alpha"]
    assert edge["spearman"]["rho"] == 1.0 and edge["kendall"]["tau"] == 1.0
    ae.write_csv(rows, [1, 2], tmp_path / "t.csv")
    header = (tmp_path / "t.csv").read_text().splitlines()[0].split(",")
    assert header[-5:] == ["valid_top1_seed1", "valid_top1_seed2", "valid_top1_mean",
                           "test_top1_mean", "run"]
    assert any(line.startswith("x ") for line in ae.format_table(rows))


# ----------------------------------------------------------------------------- real runs
@pytest.mark.e2e
def test_stacnas_and_darts_killed_then_resumed(runs, tmp_path, capsys):
    s2, darts = runs
    argv = ["--search_dir", str(s2), str(darts), "--edges", "0", *TRAIN]
    out = s2.parent / "alpha_efficiency_stacnas+darts"  # default: one per set of searches
    log = open(tmp_path / "first.txt", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "alpha_efficiency.py"), *argv], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    first = out / "stacnas" / ae.DERIVED / "seed_2" / "augment"
    began = time.time()
    while not is_finished(first, "results.json"):
        assert proc.poll() is None, (tmp_path / "first.txt").read_text()
        assert time.time() - began < 120, "the first run never finished"
        time.sleep(0.2)
    proc.kill()  # SIGKILL: the run in flight is stopped by its parent's death
    proc.wait()
    log.close()
    before = (first / "results.json").read_bytes(), (first / "results.json").stat().st_mtime_ns
    assert not (out / "alpha_efficiency.json").exists()

    assert alpha_efficiency.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/9] stacnas derived genotype" in printed and "finished before" in printed
    assert before == ((first / "results.json").read_bytes(),
                      (first / "results.json").stat().st_mtime_ns)
    rows = _rows(out / "alpha_efficiency.csv")
    assert all(r["valid_top1_mean"] != "" for r in rows)
    # StacNAS: the members of the edge's stage-1 group (separable), none excluded
    assert [r["op"] for r in rows if r["label"] == "stacnas"] == ["sep_conv_3x3", "sep_conv_5x5"]
    # DARTS: one row per op but none
    assert sorted(r["op"] for r in rows if r["label"] == "darts") == sorted(gt.PRIMITIVES[1:])
    assert [r["derived"] for r in rows].count("True") == 2
    data = json.loads((out / "alpha_efficiency.json").read_text())
    pooled = data["correlations"]["darts"]["pooled"]
    assert pooled["n"] == 7 and set(pooled["softmax_alpha"]) == {"pearson", "spearman", "kendall"}
    edge = data["correlations"]["stacnas"]["edges"]
    assert list(edge.values()) == [{"n": 2, "softmax_alpha": None, "alpha": None}]
    assert data["correlations"]["stacnas"]["pooled"]["softmax_alpha"]["spearman"] is None
    assert (out / "alpha_efficiency.png").stat().st_size > 0
    for label, search_dir in (("stacnas", s2), ("darts", darts)):
        genotype = gf.load_genotype(search_dir / "genotype.json")
        for r in (r for r in rows if r["label"] == label):
            trained = gf.load_genotype(out / r["run"] / "genotype.json")
            assert trained.normal[0] == (r["op"], genotype.normal[0][1])
            assert trained.normal[1:] == genotype.normal[1:] and trained.reduce == genotype.reduce


# ----------------------------------------------------------------------------- bad input
@pytest.mark.e2e
def test_bad_inputs(runs, tmp_path, capsys):
    darts_dir = runs[1]
    broken = tmp_path / "darts"
    shutil.copytree(darts_dir, broken, ignore=shutil.ignore_patterns("alphas.json", "checkpoint*"))
    assert alpha_efficiency.main(["--search_dir", str(broken), *TRAIN]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken / "alphas.json") in err and "search.py" in err
    shutil.copy(darts_dir / "alphas.json", broken / "alphas.json")  # no finished checkpoint
    assert alpha_efficiency.main(["--search_dir", str(broken), *TRAIN]) == 1
    assert str(broken / "checkpoint.pt") in capsys.readouterr().err
    alphas = gf.load_alphas(darts_dir / "alphas.json")
    gf.save_alphas({"cell_0": alphas["normal"], "cell_1": alphas["reduce"],
                    "cell_2": alphas["normal"]}, broken / "alphas.json")
    assert alpha_efficiency.main(["--search_dir", str(broken), *TRAIN]) == 1
    assert "--no-alpha_share" in capsys.readouterr().err
    for argv, words in ((["--edges", "9"], "0..7"), (["--labels", "a,b"], "--labels"),
                        (["--valid_ratio", "1"], "valid_ratio")):
        with pytest.raises(SystemExit) as exit_:
            alpha_efficiency.main(["--search_dir", str(darts_dir), *argv])
        assert exit_.value.code == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "alpha_efficiency").exists()  # nothing written on bad input


def test_speed_flags_reach_each_training_run(tmp_path):
    args = alpha_efficiency.build_parser().parse_args(
        ["--search_dir", str(tmp_path), "--amp", "bf16", "--no-channels_last", "--compile"])
    cmd = alpha_runs.augment_command(args, {"dataset": "synthetic"}, {"seed": 2},
                                           tmp_path / "g.json", tmp_path)
    assert cmd[cmd.index("--amp") + 1] == "bf16" and "--no-channels_last" in cmd
    assert "--compile" in cmd and "--num_workers" not in cmd
    plain = alpha_efficiency.build_parser().parse_args(["--search_dir", str(tmp_path)])
    cmd = alpha_runs.augment_command(plain, {}, {"seed": 2}, tmp_path / "g.json", tmp_path)
    assert not {"--amp", "--compile", "--channels_last", "--no-channels_last"} & set(cmd)
