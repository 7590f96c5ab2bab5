"""search.py end to end on tiny synthetic data: search1 -> search2, darts, resume, bad input."""
import json
import shutil

import pytest
import torch

import genotypes as gt
import search
from utils.io import genotype_files as gf
from utils.io.checkpoint import load_checkpoint, previous_path
from utils.train import groups as tgroups

TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_cells", "3",
        "--init_channels", "4", "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]


def _run(tmp_path, stage, *extra, epochs=2, name="exp"):
    argv = ["--stage", stage, "--name", name, "--save_dir", str(tmp_path), "--epochs", str(epochs),
            *TINY, *extra]
    return search.main(argv)


@pytest.mark.e2e
def test_search1_then_search2(tmp_path):
    assert _run(tmp_path, "search1") == 0
    s1 = tmp_path / "exp" / "search1"
    for name in ("config.json", "log.txt", "metrics.jsonl", "alphas.json", "genotype.json",
                 "genotype.txt", "checkpoint.pt", "alphas/epoch_001.json", "alphas/epoch_002.json",
                 "plots/alphas_normal.png", "plots/alphas_reduce.png"):
        assert (s1 / name).is_file(), name
    assert any((s1 / "tb").iterdir())
    records = [json.loads(line) for line in (s1 / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("loss", "top1", "top5", "lr", "seconds", "images_per_s", "alpha_entropy",
                "skip_connections"):
        assert key in records[0], key
    assert records[1]["lr"] < records[0]["lr"]  # cosine schedule steps once per epoch
    alphas1 = gf.load_alphas(s1 / "alphas.json")
    assert all(e["ops"] == gt.STAGE1_PRIMITIVES for n in alphas1["normal"] for e in n)
    genotype = gf.load_genotype(s1 / "genotype.json")
    assert genotype == gt.derive_genotype(alphas1)
    assert gf.load_genotype(s1 / "genotype.txt") == genotype
    assert json.loads((s1 / "config.json").read_text())["optimization"] == "one-level"

    assert _run(tmp_path, "search2") == 0
    s2 = tmp_path / "exp" / "search2"
    alphas2 = gf.load_alphas(s2 / "alphas.json")
    expected = gt.candidates_from_stage1(alphas1)
    got = {k: [[e["ops"] for e in node] for node in nodes] for k, nodes in alphas2.items()}
    assert got == expected
    # stage 2 starts from fresh alphas, not stage 1's
    first = gf.load_alphas(s2 / "alphas" / "epoch_001.json")
    assert first != alphas1
    assert gf.load_genotype(s2 / "genotype.json") == gt.derive_genotype(alphas2)


@pytest.mark.e2e
def test_darts_stage_runs_bilevel(tmp_path):
    assert _run(tmp_path, "darts", epochs=1) == 0
    d = tmp_path / "exp" / "darts"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["optimization"] == "bilevel" and cfg["train_ratio"] == 0.5
    record = json.loads((d / "metrics.jsonl").read_text().splitlines()[0])
    assert "valid_top1" in record and "valid_loss" in record
    alphas = gf.load_alphas(d / "alphas.json")
    assert all(e["ops"] == gt.PRIMITIVES for n in alphas["normal"] for e in n)


@pytest.mark.e2e
def test_unrolled_and_per_cell_alphas(tmp_path):
    assert _run(tmp_path, "search1", "--optimization", "bilevel", "--unrolled",
                "--train_ratio", "0.5", "--no-alpha_share", epochs=1) == 0
    g = gf.load_genotype(tmp_path / "exp" / "search1" / "genotype.json")
    assert isinstance(g, list) and len(g) == 3


@pytest.mark.e2e
def test_resume_gives_the_same_alphas(tmp_path):
    assert _run(tmp_path, "search1", "--deterministic", epochs=3, name="straight") == 0
    assert _run(tmp_path, "search1", "--deterministic", epochs=3, name="resumed") == 0
    run = tmp_path / "resumed" / "search1"
    # go back to the checkpoint after epoch 2 (kept as checkpoint.prev.pt) and rerun
    shutil.copy(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    for name in ("alphas.json", "alphas/epoch_003.json"):
        (run / name).unlink()
    assert _run(tmp_path, "search1", "--deterministic", epochs=3, name="resumed") == 0
    assert "resuming from" in (run / "log.txt").read_text()
    a = gf.load_alphas(tmp_path / "straight" / "search1" / "alphas.json")
    b = gf.load_alphas(run / "alphas.json")
    assert a == b
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    w_a = load_checkpoint(tmp_path / "straight" / "search1" / "checkpoint.pt")["model"]
    w_b = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


@pytest.mark.e2e
def test_finished_stage_is_not_rerun(tmp_path, capsys):
    assert _run(tmp_path, "search1", epochs=1) == 0
    genotype = tmp_path / "exp" / "search1" / "genotype.json"
    before = genotype.stat().st_mtime_ns
    assert _run(tmp_path, "search1", epochs=1) == 0
    assert "already finished" in capsys.readouterr().out
    assert genotype.stat().st_mtime_ns == before


@pytest.mark.e2e
def test_changed_config_on_resume_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "search1", epochs=2) == 0
    run = tmp_path / "exp" / "search1"
    shutil.copy(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")
    assert _run(tmp_path, "search1", "--w_lr", "0.1", epochs=2) == 1
    err = capsys.readouterr().err
    assert "--w_lr: 0.025 -> 0.1" in err and err.count("\n") == 1


def test_search2_without_stage1_is_a_clear_error(tmp_path, capsys):
    assert _run(tmp_path, "search2") == 1
    err = capsys.readouterr().err
    assert "search1/alphas.json: not found" in err and err.count("\n") == 1
    assert not (tmp_path / "exp" / "search2" / "genotype.json").exists()


@pytest.mark.e2e
def test_search2_refuses_stage2_alphas(tmp_path, capsys):
    assert _run(tmp_path, "darts", epochs=1) == 0
    assert _run(tmp_path, "search2", "--search1_dir", str(tmp_path / "exp" / "darts")) == 1
    assert "look like stage-2 (or DARTS) alphas" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "imagenet2"], "invalid choice"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--batch_size", "0"], "must be a positive integer"),
    (["--num_cells", "2"], "must be >= 3"),
    (["--train_ratio", "1.5"], "must be in (0, 1]"),
    (["--train_ratio", "0"], "must be in (0, 1]"),
    (["--optimization", "bilevel"], "needs a held-out split"),
    (["--unrolled"], "--unrolled needs --optimization bilevel"),
    (["--epoch", "3"], "unrecognized arguments"),
])
def test_bad_flags_exit_2(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        search.main(["--stage", "search1", "--name", "x", "--save_dir", str(tmp_path), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_malformed_groups_file(tmp_path, capsys):
    bad = tmp_path / "groups.json"
    bad.write_text('{"pool": {"representative": "max_pool_9x9", "members": ["max_pool_9x9"]}}')
    assert _run(tmp_path, "search1", "--groups", str(bad)) == 1
    assert "groups.json" in capsys.readouterr().err


@pytest.mark.e2e
def test_custom_groups(tmp_path):
    groups = {"pool": {"representative": "avg_pool_3x3",
                       "members": ["avg_pool_3x3", "max_pool_3x3"]},
              "conv": {"representative": "sep_conv_5x5",
                       "members": ["sep_conv_5x5", "dil_conv_5x5"]}}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(groups))
    assert _run(tmp_path, "search1", "--groups", str(path), epochs=1) == 0
    alphas = gf.load_alphas(tmp_path / "exp" / "search1" / "alphas.json")
    assert alphas["normal"][0][0]["ops"] == ["avg_pool_3x3", "sep_conv_5x5"]
    # search2 maps stage-1 winners through the groups search1 used
    assert _run(tmp_path, "search2", epochs=1) == 0
    alphas2 = gf.load_alphas(tmp_path / "exp" / "search2" / "alphas.json")
    assert all(e["ops"] in (groups["pool"]["members"], groups["conv"]["members"])
               for n in alphas2["normal"] for e in n)


@pytest.mark.e2e
def test_bf16_autocast_search_on_cpu_trains_with_finite_alphas(tmp_path):
    # every op of the DARTS space, under bf16 autocast on CPU (the fast backward paths included)
    assert _run(tmp_path, "darts", "--amp", "bf16", "--force_amp", "--optimization", "one-level",
                epochs=1) == 0
    assert json.loads((tmp_path / "exp" / "darts" / "config.json").read_text())["amp"] == "bf16"
    alphas = gf.load_alphas(tmp_path / "exp" / "darts" / "alphas.json")
    values = [v for n in alphas["normal"] for e in n for v in e["alphas"]]
    assert all(abs(v) < 1.0 for v in values) and any(v != 0.0 for v in values)
    record = json.loads((tmp_path / "exp" / "darts" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == record["loss"] and record["loss"] < 10  # finite, not NaN


def _scripted_held_out(monkeypatch, top1s):
    """Held-out top-1 of epoch k = top1s[k] (the network's own evaluation replaced)."""
    values = iter(top1s)
    monkeypatch.setattr(search, "evaluate", lambda *a, **k: {"loss": 1.0, "top1": next(values),
                                                             "top5": 100.0, "images_per_s": 1.0})


@pytest.mark.parametrize("extra, expected_epoch", [([], 2), (["--alphas_from", "last"], 3)])
@pytest.mark.e2e
def test_held_out_split_hands_on_the_best_epochs_alphas(tmp_path, monkeypatch, extra,
                                                        expected_epoch):
    """--train_ratio < 1: alphas.json and genotype.json take the alphas of the best held-out
    epoch (the authors' alphas_best; ties go to the earlier epoch), unless --alphas_from last."""
    _scripted_held_out(monkeypatch, [50.0, 80.0, 80.0])
    assert _run(tmp_path, "search1", "--train_ratio", "0.5", *extra, epochs=3) == 0
    s1 = tmp_path / "exp" / "search1"
    selection = json.loads((s1 / "selection.json").read_text())
    assert selection["alphas_epoch"] == expected_epoch and selection["last_epoch"] == 3
    chosen = gf.load_alphas(s1 / "alphas" / f"epoch_{expected_epoch:03d}.json")
    assert gf.load_alphas(s1 / "alphas.json") == chosen
    assert gf.load_genotype(s1 / "genotype.json") == gt.derive_genotype(chosen)
    assert chosen != gf.load_alphas(s1 / "alphas" / "epoch_001.json")  # the alphas did move
    assert f"take the alphas of epoch {expected_epoch} of 3" in (s1 / "log.txt").read_text()


@pytest.mark.e2e
def test_authors_search_options(tmp_path):
    """The authors' search flags: --power_lr sets cosine power annealing of --learning_rate;
    --label_smooth and --cutout_length are taken and recorded."""
    assert _run(tmp_path, "search1", "--power_lr", "--learning_rate", "0.1",
                "--learning_rate_min", "0.0", "--label_smooth", "0.1", "--cutout_length", "4",
                epochs=2) == 0
    records = [json.loads(line) for line in
               (tmp_path / "exp" / "search1" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == pytest.approx(0.1)
    assert records[1]["lr"] == pytest.approx(0.1 * (2 ** 0.5 - 1))  # power cosine at half-way
    saved = json.loads((tmp_path / "exp" / "search1" / "config.json").read_text())
    assert saved["label_smooth"] == 0.1 and saved["cutout"] == 4 and saved["power_lr"]


@pytest.mark.e2e
def test_search2_with_the_released_identity_group(tmp_path):
    """--identity_group released: identity edges search skip_connect twice, then none."""
    assert _run(tmp_path, "search1", epochs=1) == 0
    assert _run(tmp_path, "search2", "--identity_group", "released", epochs=1) == 0
    exp = tmp_path / "exp"
    expected = gt.candidates_from_stage1(gf.load_alphas(exp / "search1" / "alphas.json"),
                                         tgroups.released_groups())
    alphas2 = gf.load_alphas(exp / "search2" / "alphas.json")
    got = {k: [[e["ops"] for e in node] for node in nodes] for k, nodes in alphas2.items()}
    assert got == expected
    lists = [ops for nodes in got.values() for node in nodes for ops in node]
    assert any("skip_connect" in ops for ops in lists)  # stage 1 chose the identity somewhere
    assert all(ops.count("skip_connect") == 2 for ops in lists if "skip_connect" in ops)
    gf.load_genotype(exp / "search2" / "genotype.json")


@pytest.mark.e2e
def test_bf16_without_native_support_falls_back_to_float32_with_a_warning(tmp_path, monkeypatch):
    """--amp bf16 on a CPU without native bf16 (AVX2 class): one warning, float32 training."""
    from utils.runtime import speed
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    assert _run(tmp_path, "search1", "--amp", "bf16", epochs=1) == 0
    stage = tmp_path / "exp" / "search1"
    saved = json.loads((stage / "config.json").read_text())
    assert saved["amp"] == "bf16" and saved["speed"]["amp"] == "none"  # asked for / what ran
    assert (stage / "log.txt").read_text().count("warning: --amp bf16 ignored") == 1
