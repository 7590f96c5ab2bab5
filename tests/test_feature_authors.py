"""feature.py as the authors run it: the first --num_samples training images in dataset order
(--samples first; random draws them), and the supernet of search1's best held-out epoch
(--model best: search.py keeps it as best.pt with --train_ratio below 1), falling back to the
last checkpoint with one line when the search had no held-out split. Searches and analyses run
as their own processes."""
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import feature
import search
from utils.analysis import features as ft

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--batch_size", "16", "--num_workers", "0", "--device", "cpu"]
NET = ["--num_cells", "3", "--init_channels", "4"]
# One class: every epoch scores 100% on the held-out split, so the first epoch stays the best
# (a later one must beat it) while the weights go on changing (weight decay, batch-norm
# statistics): the best held-out epoch is not the last.
HELD_OUT = ["--train_ratio", "0.5", "--epochs", "2", "--synthetic_classes", "1"]


def script(name: str, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / name), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    return done


def searched(save_dir: Path, name: str, *extra: str) -> Path:
    script("search.py", "--stage", "search1", "--name", name, "--save_dir", str(save_dir),
           "--seed", "1", *DATA, *NET, *extra)
    return save_dir / name / "search1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """search1 with a held-out split (2 epochs, the first the best) and without one."""
    root = tmp_path_factory.mktemp("feature_authors")
    return root, searched(root, "held", *HELD_OUT), searched(
        root, "plain", "--epochs", "1", "--synthetic_classes", "4")


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_search_keeps_the_best_held_out_epochs_supernet(runs):
    _, stage, _ = runs
    metrics = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    tops = [m["valid_top1"] for m in metrics]
    best_epoch = tops.index(max(tops)) + 1  # the first of the best
    assert best_epoch == 1 and len(tops) == 2
    best = torch.load(stage / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(stage / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == best_epoch and best["step"] == 0 and best["run"] == last["run"]
    assert last["best"]["epoch"] == best_epoch and last["finished"] and not best["finished"]
    # the weights at the end of epoch 1: checkpoint.prev.pt is that epoch's checkpoint (the
    # finished one replaced epoch 2's without rotating)
    assert torch.load(stage / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    assert same(best["model"], weights(stage / "checkpoint.prev.pt"))
    assert not same(best["model"], last["model"])
    # selection.json's alphas come from the same epoch
    assert json.loads((stage / "selection.json").read_text())["alphas_epoch"] == best_epoch


def test_feature_reads_the_best_held_out_supernet_by_default(runs):
    root, stage, _ = runs
    done = script("feature.py", "--name", "held", "--save_dir", str(root), "--stage", "search1",
                  "--num_samples", "16", "--num_groups", "2", *DATA, "--synthetic_classes", "1")
    lines = [line for line in done.stdout.splitlines() if "--model best" in line]
    assert len(lines) == 1 and f"{stage / 'best.pt'}, the best held-out epoch, 1 of 2" in lines[0]
    summary = json.loads((stage / "feature" / "summary.json").read_text())
    assert summary["checkpoint"] == str(stage / "best.pt") and summary["epoch"] == 1
    assert summary["model"] == "best" and summary["samples"] == "first"
    assert "not finished" not in done.stdout  # best.pt of a finished search


def _args(root: Path, name: str, *extra: str):
    return config.parse(feature.feature_parser(), feature.resolve_feature,
                        ["--name", name, "--save_dir", str(root), "--stage", "search1", *DATA,
                         *extra])


def test_model_last_and_checkpoint(runs):
    root, stage, _ = runs
    choice = feature.pick_model(_args(root, "held", "--model", "last"))
    assert choice.path == stage / "checkpoint.pt" and choice.state["epoch"] == 2
    choice = feature.pick_model(_args(root, "held", "--checkpoint", str(stage / "best.pt")))
    assert (choice.path == stage / "best.pt" and choice.note is None
            and choice.search_finished is False)
    with pytest.raises(SystemExit) as exc:
        _args(root, "held", "--model", "best", "--checkpoint", str(stage / "best.pt"))
    assert exc.value.code == 2


def test_without_a_held_out_split_the_last_checkpoint_with_one_line(runs):
    root, _, plain = runs
    done = script("feature.py", "--name", "plain", "--save_dir", str(root), "--stage", "search1",
                  "--num_samples", "16", "--num_groups", "2", *DATA, "--synthetic_classes", "4")
    lines = [line for line in done.stdout.splitlines() if "held-out" in line]
    assert len(lines) == 1, done.stdout
    assert "--model best: this search had no held-out split (--train_ratio 1.0)" in lines[0]
    assert f"analysing its last checkpoint {plain / 'checkpoint.pt'}" in lines[0]
    summary = json.loads((plain / "feature" / "summary.json").read_text())
    assert summary["checkpoint"] == str(plain / "checkpoint.pt") and summary["epoch"] == 1
    assert "no held-out split" in (plain / "feature" / "log.txt").read_text()


def test_a_best_pt_of_another_run_is_refused(runs, tmp_path, capsys):
    root, stage, plain = runs
    copy = tmp_path / "held" / "search1"
    shutil.copytree(stage, copy, ignore=shutil.ignore_patterns("feature", ".lock"))
    shutil.copy(plain / "checkpoint.pt", copy / "best.pt")  # another search's file
    assert feature.main(["--name", "held", "--save_dir", str(tmp_path), "--stage", "search1",
                         "--num_groups", "2", *DATA]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{copy / 'best.pt'}: holds epoch 1 of run" in err[0]
    assert "pass --model last" in err[0] and not (copy / "feature").exists()
    (copy / "best.pt").unlink()  # a search by an older version: no best.pt
    assert feature.main(["--name", "held", "--save_dir", str(tmp_path), "--stage", "search1",
                         "--num_groups", "2", *DATA]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.pt: not found, but" in err[0] and "--model last" in err[0]


def test_first_samples_are_exactly_the_first_n(runs, monkeypatch):
    assert ft.sample_indices(100, 10, "first", 3) == list(range(10))
    assert ft.sample_indices(5, 10, "first", 3) == list(range(5))
    drawn = ft.sample_indices(100, 10, "random", 3)
    assert drawn == sorted(set(drawn)) and len(drawn) == 10 and drawn != list(range(10))
    root, _, _ = runs
    seen = {}

    def capture(data, indices, *args, **kwargs):
        seen["indices"] = list(indices)
        raise RuntimeError("captured")  # stop here: the loader is all this test needs
    monkeypatch.setattr(feature, "make_loader", capture)
    for how, expected in (("first", list(range(8))),
                          ("random", ft.sample_indices(32, 8, "random", 2))):
        args = _args(root, "plain", "--num_samples", "8", "--samples", how, "--seed", "2",
                     "--synthetic_classes", "4", "--feature_dir", str(root / f"f_{how}"))
        assert feature.run_guarded(functools.partial(feature.run, args)) == 1
        assert seen.pop("indices") == expected, how


def test_first_samples_measure_what_the_first_images_give(runs):
    """As processes: the first 8 of 32 images give the same statistics as all the images of
    --subset 8 (8 drawn at random from the 32 would not: those are other images)."""
    root, _, _ = runs
    common = ["--name", "plain", "--save_dir", str(root), "--stage", "search1", "--num_samples",
              "8", "--num_groups", "2", *DATA, "--synthetic_classes", "4", "--batch_size", "4"]
    for label, extra in (("first", []), ("subset", ["--samples", "random", "--subset", "8"])):
        script("feature.py", *common, *extra, "--feature_dir", str(root / f"m_{label}"))
    summaries = {label: json.loads((root / f"m_{label}" / "summary.json").read_text())
                 for label in ("first", "subset")}
    assert summaries["first"]["samples"] == "first" and summaries["first"]["num_images"] == 8
    assert summaries["first"]["mean_correlation_by_statistic"] == \
        summaries["subset"]["mean_correlation_by_statistic"]
    assert summaries["first"]["kmeans_mean_maps"] == summaries["subset"]["kmeans_mean_maps"]


def test_samples_default_is_first_except_for_class_sorted_folders(tmp_path):
    assert _args(tmp_path, "x").samples == "first"
    args = config.parse(feature.feature_parser(), feature.resolve_feature,
                        ["--name", "x", "--save_dir", str(tmp_path), "--stage", "search1",
                         "--dataset", "imagenet"])
    assert args.samples == "random" and args.model == "best"


def test_a_resume_writes_the_best_pt_a_stop_left_unwritten(tmp_path, monkeypatch):
    """A stop between checkpoint.pt and best.pt (simulated: best.pt's write fails once) leaves
    checkpoint.pt holding the best epoch; the resume writes best.pt from it."""
    real = search.Search.save_best

    def fail_once(self, state):
        monkeypatch.setattr(search.Search, "save_best", real)
        raise RuntimeError("stopped before best.pt was written")
    monkeypatch.setattr(search.Search, "save_best", fail_once)
    argv = ["--stage", "search1", "--name", "r", "--save_dir", str(tmp_path), "--seed", "1",
            *DATA, *NET, *HELD_OUT]
    assert search.main(argv) == 1
    stage = tmp_path / "r" / "search1"
    assert not (stage / "best.pt").exists()
    assert torch.load(stage / "checkpoint.pt", weights_only=True)["epoch"] == 1
    epoch_1 = weights(stage / "checkpoint.pt")
    assert search.main(argv) == 0
    assert "best.pt written from the resumed checkpoint (epoch 1" in (stage / "log.txt").read_text()
    best = torch.load(stage / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and same(best["model"], epoch_1)
