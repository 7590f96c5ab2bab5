"""run_all.py: the smoke preset end to end, a failing stage, reruns, the cross-seed summary."""
import json
import shutil

import pytest

import genotypes as gt
import run_all
from utils import genotype_files as gf
from utils.summary import genotype_agreement, write_summary

SMOKE = ["--preset", "smoke", "--device", "cpu", "--num_workers", "0"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("runs")
    assert run_all.main(["--name", "p", "--save_dir", str(save_dir), *SMOKE]) == 0
    return save_dir


def test_smoke_preset_end_to_end(smoke):
    run = smoke / "p"
    seed = run / "seed_2"  # the default seed
    for path in ("search1/alphas.json", "search2/genotype.json", "augment/results.json",
                 "test/results.json", "timings.json", "curves.png"):
        assert (seed / path).is_file(), path
    # search2 was handed search1's output, augment search2's genotype
    assert json.loads((seed / "search2" / "config.json").read_text())["search1_dir"] == str(seed / "search1")
    assert json.loads((seed / "augment" / "config.json").read_text())["genotype"] == \
        str(seed / "search2" / "genotype.json")
    summary = json.loads((run / "summary.json").read_text())
    test = json.loads((seed / "test" / "results.json").read_text())
    assert summary["seeds"][0]["test_top1"] == test["test_top1"]
    assert summary["test_error_mean"] == pytest.approx(100 - test["test_top1"])
    assert set(json.loads((seed / "timings.json").read_text())) == {"search1", "search2", "augment", "test"}
    md = (run / "summary.md").read_text()
    assert "seed_2" in md and "Genotype(normal=" in md


def test_rerun_skips_finished_stages(smoke, capsys):
    genotype = smoke / "p" / "seed_2" / "search2" / "genotype.json"
    before = genotype.stat().st_mtime_ns
    assert run_all.main(["--name", "p", "--save_dir", str(smoke), *SMOKE]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 4
    assert genotype.stat().st_mtime_ns == before


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
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[run_all] seed ")]
    launched = {l.split()[3].rstrip(":"): "torch.distributed.run --standalone --nproc_per_node=4" in l
                for l in lines}
    assert launched == {"search1": True, "search2": True, "augment": True, "test": True, "feature": False}


def test_paper_preset_uses_the_stage_defaults(tmp_path):
    args = run_all.build_parser().parse_args(["--name", "c", "--preset", "paper", "--save_dir", str(tmp_path)])
    commands = dict(run_all.stage_commands(args, 1))
    assert "--epochs" not in commands["search1"] and "--num_cells" not in commands["augment"]
    assert commands["search1"][commands["search1"].index("--dataset") + 1] == "cifar10"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1,x"], "comma-separated integers"),
    (["--seeds", "1,1"], "distinct"),
    (["--preset", "huge"], "invalid choice"),
    (["--gpus", "0"], "must be a positive integer"),
])
def test_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--name", "x", "--save_dir", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


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
