"""run_all.py: the smoke preset end to end, a failing stage, reruns, the cross-seed summary."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genotypes as gt
import run_all
from utils.io import genotype_files as gf
from utils.analysis.alpha_efficiency import summarise
from utils.analysis.summary import genotype_agreement, write_summary

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--device", "cpu", "--num_workers", "0"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("runs")
    assert run_all.main(["--name", "p", "--save_dir", str(save_dir), *SMOKE]) == 0
    return save_dir


@pytest.mark.e2e
def test_smoke_preset_end_to_end(smoke):
    run = smoke / "p"
    seed = run / "seed_2"  # the default seed
    for path in ("search1/alphas.json", "search2/genotype.json", "augment/results.json",
                 "test/results.json", "timings.json", "curves.png"):
        assert (seed / path).is_file(), path
    # search2 was handed search1's output, augment search2's genotype
    assert (json.loads((seed / "search2" / "config.json").read_text())["search1_dir"]
            == str(seed / "search1"))
    assert json.loads((seed / "augment" / "config.json").read_text())["genotype"] == \
        str(seed / "search2" / "genotype.json")
    summary = json.loads((run / "summary.json").read_text())
    test = json.loads((seed / "test" / "results.json").read_text())
    assert summary["seeds"][0]["test_top1"] == test["test_top1"]
    assert summary["test_error_mean"] == pytest.approx(100 - test["test_top1"])
    assert (set(json.loads((seed / "timings.json").read_text()))
            == {"search1", "search2", "augment", "test"})
    md = (run / "summary.md").read_text()
    assert "seed_2" in md and "Genotype(normal=" in md


@pytest.mark.e2e
def test_rerun_skips_finished_stages(smoke, capsys):
    genotype = smoke / "p" / "seed_2" / "search2" / "genotype.json"
    before = genotype.stat().st_mtime_ns
    assert run_all.main(["--name", "p", "--save_dir", str(smoke), *SMOKE]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 4
    assert genotype.stat().st_mtime_ns == before


@pytest.mark.e2e
def test_failing_stage_stops_the_chain(smoke, capsys):
    shutil.copytree(smoke / "p", smoke / "broken")
    augment = smoke / "broken" / "seed_2" / "augment"
    (augment / "results.json").unlink()
    (augment / "checkpoint.pt").write_bytes(b"garbage")
    shutil.rmtree(smoke / "broken" / "seed_2" / "test")
    assert run_all.main(["--name", "broken", "--save_dir", str(smoke), *SMOKE]) == 1
    err = capsys.readouterr().err
    assert "stage augment (seed 2) failed with exit code 1" in err
    assert str(augment / "log.txt") in err
    assert not (smoke / "broken" / "seed_2" / "test").exists()  # the chain stopped


def test_dry_run_prints_commands_only(tmp_path, capsys):
    assert run_all.main(["--name", "d", "--save_dir", str(tmp_path), "--seeds", "1,3",
                         "--feature", "--dry_run", *SMOKE]) == 0
    out = capsys.readouterr().out
    assert out.count("search.py --stage search1") == 2 and "feature.py" in out
    assert "--search1_dir " + str(tmp_path / "d" / "seed_3" / "search1") in out
    assert not (tmp_path / "d").exists()


def test_gpus_launch_stages_with_torchrun(tmp_path, capsys):
    assert run_all.main(["--name", "g", "--save_dir", str(tmp_path), "--gpus", "4", "--feature",
                         "--dry_run", *SMOKE]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("[run_all] seed ")]
    torchrun = "torch.distributed.run --standalone --nproc_per_node=4"
    launched = {line.split()[3].rstrip(":"): torchrun in line for line in lines}
    assert launched == {"search1": True, "search2": True, "augment": True, "test": True,
                        "feature": False}


def test_paper_preset_uses_the_stage_defaults(tmp_path):
    args = run_all.build_parser().parse_args(["--name", "c", "--preset", "paper",
                                              "--save_dir", str(tmp_path)])
    commands = dict(run_all.stage_commands(args, 1))
    assert "--epochs" not in commands["search1"] and "--num_cells" not in commands["augment"]
    assert commands["search1"][commands["search1"].index("--dataset") + 1] == "cifar10"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1,x"], "comma-separated integers"),
    (["--seeds", "1,1"], "distinct"),
    (["--preset", "huge"], "invalid choice"),
    (["--gpus", "0"], "must be a positive integer"),
    (["--name", "../escape"], "must be one folder name inside --save_dir"),
    (["--name", ""], "must be a folder name"),
    (["--method", "enas"], "invalid choice"),
])
def test_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--name", "x", "--save_dir", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_save_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--name", "x", "--save_dir", str(tmp_path / "runs"), *SMOKE])
    assert exc.value.code == 2 and f"{tmp_path / 'runs'} is a file" in capsys.readouterr().err


def _with(genotype, **changes):
    normal = list(genotype.normal)
    for index, entry in changes.items():
        normal[int(index[1:])] = entry
    return genotype._replace(normal=normal)


def test_agreement_on_hand_made_genotypes():
    g = gt.DARTS_V2
    assert genotype_agreement([g, g]) == {"pairs": 1, "edges": 1.0, "ops": 1.0}
    other_op = _with(g, e0=("sep_conv_5x5", 0))            # same edge, other op
    other_edge = _with(g, e7=("dil_conv_3x3", 1))          # node 3: input 2 -> 1
    assert genotype_agreement([g, other_op]) == {"pairs": 1, "edges": 1.0, "ops": 15 / 16}
    assert genotype_agreement([g, other_edge]) == {"pairs": 1, "edges": 15 / 16, "ops": 15 / 16}
    three = genotype_agreement([g, other_op, other_edge])
    # pairs: (g, op) 16/16 & 15/16; (g, edge) 15/16 & 15/16; (op, edge) 15/16 & 14/16
    assert three["pairs"] == 3
    assert three["edges"] == pytest.approx((1 + 15 / 16 + 15 / 16) / 3)
    assert three["ops"] == pytest.approx((15 / 16 + 15 / 16 + 14 / 16) / 3)
    assert genotype_agreement([g])["edges"] is None


def test_summary_across_seeds(tmp_path):
    for seed, (genotype, top1) in enumerate([(gt.DARTS_V2, 90.0), (gt.DARTS_V1, 80.0)]):
        d = tmp_path / f"seed_{seed}"
        (d / "search2").mkdir(parents=True)
        (d / "test").mkdir()
        gf.save_genotype(genotype, d / "search2" / "genotype.json")
        (d / "test" / "results.json").write_text(json.dumps({"test_top1": top1, "test_top5": 99.0}))
    md, data = write_summary(tmp_path, ["seed_0", "seed_1"])
    assert data["test_error_mean"] == pytest.approx(15.0)
    assert data["test_error_std"] == pytest.approx(7.0710678, rel=1e-6)
    expected = genotype_agreement([gt.DARTS_V2, gt.DARTS_V1])
    assert data["agreement"] == expected and 0 < expected["ops"] < 1
    assert f"{expected['edges']:.0%} of kept edges" in md.read_text()


# -- --method darts / both: the DARTS baseline beside StacNAS, compared in the summary ------
def test_method_both_runs_the_darts_baseline_beside_stacnas(tmp_path, capsys):
    assert run_all.main(["--name", "m", "--save_dir", str(tmp_path), "--method", "both",
                         "--seeds", "1,2", "--optimization", "bilevel", "--train_ratio", "0.5",
                         "--alpha_efficiency", "--dry_run", *SMOKE]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[run_all] ")]
    darts = [line for line in lines if "--stage darts" in line]
    assert len(darts) == 2 and all("--optimization" not in line and "--train_ratio" not in line
                                   for line in darts)  # DARTS keeps its own bilevel 50/50 scheme
    assert "--save_dir " + str(tmp_path / "m" / "darts") in darts[0]
    assert ("--genotype " + str(tmp_path / "m" / "darts" / "seed_1" / "darts" / "genotype.json")
            in out)
    stacnas_search = [line for line in lines if "--stage search1" in line]
    assert len(stacnas_search) == 2 and "--optimization bilevel" in stacnas_search[0]
    ae = [line for line in lines if "alpha_efficiency.py" in line]
    assert len(ae) == 2 and ("--search_dir " + str(tmp_path / "m" / "seed_1" / "search2") + " "
                             + str(tmp_path / "m" / "darts" / "seed_1" / "darts")) in ae[0]
    assert "--labels stacnas,darts" in ae[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.e2e
def test_method_darts_end_to_end(tmp_path):
    assert run_all.main(["--name", "d", "--save_dir", str(tmp_path), "--method", "darts",
                         "--seeds", "3", *SMOKE]) == 0
    seed = tmp_path / "d" / "darts" / "seed_3"
    for path in ("darts/genotype.json", "darts/alphas.json", "augment/results.json",
                 "test/results.json", "timings.json"):
        assert (seed / path).is_file(), path
    assert not (tmp_path / "d" / "seed_3").exists()
    assert not (tmp_path / "d" / "summary.json").exists()  # --method darts: its own summary
    summary = json.loads((tmp_path / "d" / "summary_darts.json").read_text())
    assert (tmp_path / "d" / "summary_darts.md").read_text().startswith("# DARTS baseline summary")
    only = summary["methods"]["darts"]["seeds"][0]
    test = json.loads((seed / "test" / "results.json").read_text())
    assert list(summary["methods"]) == ["darts"] and only["test_top1"] == test["test_top1"]
    assert only["search_seconds"] == json.loads((seed / "timings.json").read_text())["darts"]
    assert 0 < only["alpha_entropy"]["normalised"] <= 1


def _edge(ops, alphas):
    return {"ops": ops, "alphas": alphas}


def _fake_seed(d, stage, genotype, top1, alphas, timings):
    (d / stage).mkdir(parents=True)
    (d / "test").mkdir()
    gf.save_genotype(genotype, d / stage / "genotype.json")
    nodes = [[alphas for _ in range(i + 2)] for i in range(4)]
    gf.save_alphas({"normal": nodes, "reduce": nodes}, d / stage / "alphas.json")
    (d / "test" / "results.json").write_text(json.dumps({"test_top1": top1, "test_top5": 99.0}))
    (d / "timings.json").write_text(json.dumps(timings))


def test_summary_compares_the_methods(tmp_path):
    uniform = _edge(["sep_conv_3x3", "sep_conv_5x5", "none"], [0.0, 0.0, 0.0])
    peaked = _edge(list(gt.PRIMITIVES), [8.0] + [0.0] * 7)
    skips = _with(gt.DARTS_V2, e0=("skip_connect", 0), e1=("skip_connect", 1))
    for seed, top1 in ((1, 90.0), (2, 92.0)):
        _fake_seed(tmp_path / f"seed_{seed}", "search2", gt.DARTS_V2, top1, uniform,
                   {"search1": 60, "search2": 40 + seed, "augment": 500})
        _fake_seed(tmp_path / "darts" / f"seed_{seed}", "darts", skips, top1 - 10, peaked,
                   {"darts": 50 * seed})
    # alpha_efficiency.py's correlations for seed 1: accuracy rises with alpha (rho = tau = 1)
    rows = [{"edge_name": f"normal[{i % 2}]", "softmax_alpha": 0.1 * i, "alpha": 0.1 * i,
             "valid_top1_mean": 50.0 + i} for i in range(5)]
    (tmp_path / "alpha_efficiency" / "seed_1").mkdir(parents=True)
    (tmp_path / "alpha_efficiency" / "seed_1" / "alpha_efficiency.json").write_text(json.dumps(
        {"correlations": {"stacnas": summarise(rows), "darts": summarise(rows[:3])}}))
    md, data = write_summary(tmp_path, [1, 2], ("stacnas", "darts"))
    assert data["alpha_efficiency"]["seed_1"]["stacnas"]["spearman"]["rho"] == pytest.approx(1.0)
    stacnas, darts = data["methods"]["stacnas"], data["methods"]["darts"]
    assert stacnas["test_error_mean"] == pytest.approx(9.0)
    assert darts["test_error_mean"] == pytest.approx(19.0)
    # DARTS_V2's normal cell has 2 skip connections and no pooling; `skips` 2 more
    assert (stacnas["skips_mean"], stacnas["param_free_mean"]) == (2, 2)
    assert (darts["skips_mean"], darts["param_free_mean"]) == (4, 4)
    assert stacnas["alpha_entropy_mean"] == pytest.approx(1.0)  # uniform alphas
    p = torch.softmax(torch.tensor(peaked["alphas"], dtype=torch.float64), 0)
    expected = float(-(p * p.log()).sum() / math.log(8))
    assert darts["alpha_entropy_mean"] == pytest.approx(expected, rel=1e-6) and expected < 0.1
    assert darts["search_seconds_mean"] == 75 and stacnas["search_seconds_mean"] == 101.5
    assert stacnas["agreement"]["ops"] == 1.0
    text = md.read_text()
    assert "## StacNAS against DARTS" in text and "| stacnas | 2 | 9.00 +- 1.41 |" in text
    assert ("| darts | 2 | 19.00 +- 1.41 | 100% | 100% | 4.0 +- 0.0 | 4.0 +- 0.0 |" in text
            and "### darts seed_1" in text)
    assert data["test_error_mean"] == stacnas["test_error_mean"]  # the first method at the top
    assert "| seed_1 | stacnas | 5 | 1.00 | 1.00 | 1.00 |" in text
    assert "| seed_1 | darts | 3 | 1.00 | 1.00 | 1.00 |" in text


def test_summary_without_results_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_all.plan, "stage_done", lambda seed_dir, stage: True)
    assert run_all.main(["--name", "empty", "--save_dir", str(tmp_path), *SMOKE]) == 1
    err = capsys.readouterr().err
    assert "error: the summary found no genotype or test result for stacnas seed_2" in err


@pytest.mark.e2e
def test_sigterm_to_run_all_stops_the_stage_and_the_rerun_resumes(tmp_path):
    argv = [sys.executable, str(ROOT / "run_all.py"), "--name", "t", "--save_dir", str(tmp_path),
            *SMOKE, "--search1_epochs", "30"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = tmp_path / "t" / "seed_2" / "search1" / "log.txt"
    deadline = time.time() + 120
    while not (log.is_file() and "epoch 2/30" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to run_all.py only: it forwards it to the stage
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM during seed 2 search1" in err and "rerun the same command" in err
    assert "stopped by SIGTERM" in log.read_text()
    assert not (tmp_path / "t" / "seed_2" / "search2").exists()
    rerun = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in log.read_text()
    assert (tmp_path / "t" / "seed_2" / "test" / "results.json").is_file()


def test_relative_save_dir_means_the_callers_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run_all is started from another folder than the project's
    assert run_all.main(["--name", "r", "--save_dir", "relruns", "--data_dir", "d", "--dry_run",
                         *SMOKE]) == 0
    out = capsys.readouterr().out
    assert f"--save_dir {tmp_path / 'relruns' / 'r'} " in out
    assert f"--data_dir {tmp_path / 'd'} " in out and "--save_dir relruns" not in out


def test_speed_flags_reach_every_stage(tmp_path, capsys):
    """--amp / --channels_last reach every stage that runs a network, --compile the training
    ones; --gpus N says the effective batch grows N-fold."""
    argv = ["--name", "s", "--save_dir", str(tmp_path), "--preset", "smoke", "--dry_run",
            "--gpus", "2", "--amp", "bf16", "--no-channels_last", "--compile",
            "--alpha_efficiency", "--feature"]
    assert run_all.main(argv) == 0
    out = capsys.readouterr().out
    stages = {line.split(": ", 1)[0].split()[-1]: line for line in out.splitlines()
              if line.startswith("[run_all] seed 2 ")}
    for stage in ("search1", "search2", "augment", "test", "alpha_efficiency"):
        assert "--amp bf16" in stages[stage] and "--no-channels_last" in stages[stage], stage
        assert ("--compile" in stages[stage]) is (stage != "test"), stage
        assert "--num_workers" not in stages[stage]  # each stage's own device default
    assert "--amp" not in stages["feature"]
    assert "nproc_per_node=2" in stages["search1"]
    assert "effective batch is 32 / 32, 2x the single-GPU run" in out
    assert "--search_batch_size 8 --augment_batch_size 8" in out


def test_fp16_refused_with_bilevel(tmp_path, capsys):
    for extra in (["--method", "both"], ["--optimization", "bilevel"]):
        code = run_all.main(["--name", "f", "--save_dir", str(tmp_path), "--preset", "smoke",
                             "--dry_run", "--amp", "fp16", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and "--amp fp16 works with one-level search" in err[0]
    assert not (tmp_path / "f").exists()
