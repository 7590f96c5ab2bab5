"""Two processes on CPU (gloo) under torchrun: identical alphas, rank-0-only files, resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genotypes as gt
from utils import genotype_files as gf
from utils.checkpoint import load_checkpoint, previous_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "64",
        "--synthetic_classes", "4", "--batch_size", "8", "--num_cells", "3", "--init_channels", "4",
        "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]


def torchrun(script, *argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / script), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("dist")
    torchrun("search.py", "--stage", "search1", "--name", "d", "--save_dir", str(save), "--epochs", "2", *TINY)
    return save / "d" / "search1"


def test_alphas_identical_on_every_rank(search_run):
    records = _records(search_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["alpha_rank_divergence"] == 0.0 for r in records)
    # 64 images over 2 ranks: 4 steps of 8 per rank and epoch, 64 images counted in total
    assert "step 4/4" in (search_run / "log.txt").read_text()


def test_files_come_from_rank_0_only(search_run):
    log = (search_run / "log.txt").read_text()
    assert log.count("epoch 1/2 done") == 1 and log.count("2 processes") == 1
    state = load_checkpoint(search_run / "checkpoint.pt")
    assert state["finished"] and state["epoch"] == 2
    assert gf.load_genotype(search_run / "genotype.json") == gt.genotype_from_dict(state["genotype"])
    assert sorted(p.name for p in search_run.iterdir() if p.suffix == ".pt") == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_bilevel_alphas_identical(tmp_path):
    torchrun("search.py", "--stage", "darts", "--name", "b", "--save_dir", str(tmp_path), "--epochs", "1",
             "--unrolled", *TINY)
    assert _records(tmp_path / "b" / "darts" / "metrics.jsonl")[0]["alpha_rank_divergence"] == 0.0


def test_resumed_distributed_run(search_run, tmp_path):
    run = tmp_path / "d" / "search1"
    shutil.copytree(search_run, run)
    shutil.copy(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")
    (run / "genotype.json").unlink()
    torchrun("search.py", "--stage", "search1", "--name", "d", "--save_dir", str(tmp_path), "--epochs", "2", *TINY)
    assert "resuming from" in (run / "log.txt").read_text()
    assert [r["epoch"] for r in _records(run / "metrics.jsonl")] == [1, 2]
    a = load_checkpoint(search_run / "checkpoint.pt")["model"]
    b = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("arch."))


def test_augment_and_test_under_torchrun(tmp_path):
    common = ["--save_dir", str(tmp_path), *TINY[:8], "--num_workers", "0", "--device", "cpu"]
    torchrun("augment.py", "--name", "a", "--arch", "DARTS_V2", "--epochs", "1", "--num_cells", "3",
             "--init_channels", "4", "--valid_ratio", "0.25", *common)
    out = tmp_path / "a" / "augment"
    results = json.loads((out / "results.json").read_text())
    assert results["best_valid_top1"] is not None and (out / "best.pt").is_file()
    torchrun("test.py", "--name", "a", "--checkpoint", str(out / "checkpoint.pt"), *common)
    tested = json.loads((tmp_path / "a" / "test" / "results.json").read_text())
    assert tested["images"] == 32  # the whole test split, counted once over both ranks
    assert tested["test_loss"] == pytest.approx(results["test_loss"], rel=1e-5)
