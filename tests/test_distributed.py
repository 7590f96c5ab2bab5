"""Processes on CPU (gloo) under torchrun: identical alphas, rank-0-only files, every rank's RNG
states in the checkpoint and the one-line checks of them, resume (also by another number of
processes), augment and test, one process in a process group; and, without processes, the
collective timeout, GPU selection and each rank's loader shard. What a resume restores (RNG
states, world-size changes, the grad scaler, older checkpoints), without processes:
test_resume_state.py."""
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import search
from utils.runtime import distributed
from utils.io import genotype_files as gf
from utils.io.checkpoint import CheckpointError, load_checkpoint, previous_path
from utils.io.checkpoint_fields import check_search_checkpoint
from utils.data.loaders import epoch_order, make_loader
from utils.io import genotype_checks as gchecks

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "64",
        "--synthetic_classes", "4", "--batch_size", "8", "--num_cells", "3", "--init_channels", "4",
        "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]


def torchrun(script, *argv, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), str(ROOT / script), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("dist")
    torchrun("search.py", "--stage", "search1", "--name", "d", "--save_dir", str(save),
             "--epochs", "2", *TINY)
    return save / "d" / "search1"


@pytest.mark.e2e
def test_alphas_identical_on_every_rank(search_run):
    records = _records(search_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["alpha_rank_divergence"] == 0.0 for r in records)
    # 64 images over 2 ranks: 4 steps of 8 per rank and epoch, 64 images counted in total
    assert "step 4/4" in (search_run / "log.txt").read_text()


@pytest.mark.e2e
def test_files_come_from_rank_0_only(search_run):
    log = (search_run / "log.txt").read_text()
    assert log.count("epoch 1/2 done") == 1 and log.count("2 processes") == 1
    state = load_checkpoint(search_run / "checkpoint.pt")
    assert state["finished"] and state["epoch"] == 2
    assert (gf.load_genotype(search_run / "genotype.json")
            == gchecks.genotype_from_dict(state["genotype"]))
    assert (sorted(p.name for p in search_run.iterdir() if p.suffix == ".pt")
            == ["checkpoint.prev.pt", "checkpoint.pt"])


@pytest.mark.e2e
def test_bilevel_alphas_identical(tmp_path):
    torchrun("search.py", "--stage", "darts", "--name", "b", "--save_dir", str(tmp_path),
             "--epochs", "1", "--unrolled", *TINY)
    assert _records(tmp_path / "b" / "darts" / "metrics.jsonl")[0]["alpha_rank_divergence"] == 0.0


@pytest.mark.e2e
def test_resumed_distributed_run(search_run, tmp_path):
    run = tmp_path / "d" / "search1"
    shutil.copytree(search_run, run)
    shutil.copy(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")
    (run / "genotype.json").unlink()
    torchrun("search.py", "--stage", "search1", "--name", "d", "--save_dir", str(tmp_path),
             "--epochs", "2", *TINY)
    assert "resuming from" in (run / "log.txt").read_text()
    assert [r["epoch"] for r in _records(run / "metrics.jsonl")] == [1, 2]
    a = load_checkpoint(search_run / "checkpoint.pt")["model"]
    b = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("arch."))


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_checkpoint_holds_every_ranks_rng_states(search_run):
    """Each rank seeds with seed + rank and saves its own states; rank 0's is also "rng"."""
    state = load_checkpoint(search_run / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    first, second = state["rng_ranks"]
    assert torch.equal(first["torch"], state["rng"]["torch"])
    assert not torch.equal(first["torch"], second["torch"])
    assert first["python"] != second["python"] and first["numpy"] != second["numpy"]


@pytest.mark.e2e
def test_one_process_under_torchrun_runs_the_collectives(tmp_path):
    torchrun("search.py", "--stage", "search1", "--name", "one", "--save_dir", str(tmp_path),
             "--epochs", "1", *TINY, nproc=1)
    run = tmp_path / "one" / "search1"
    assert _records(run / "metrics.jsonl")[0]["alpha_rank_divergence"] == 0.0  # distributed only
    assert ", 1 process (torchrun)" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["world_size"] == 1


def _resume_in_one_process(search_run, tmp_path, step):
    """search_run's checkpoint after epoch 1 (2 processes), `step` steps into epoch 2, resumed
    by a plain single-process run."""
    run = tmp_path / "d" / "search1"
    shutil.copytree(search_run, run)
    state = load_checkpoint(previous_path(run / "checkpoint.pt"))
    torch.save({**state, "step": step}, run / "checkpoint.pt")
    (run / "genotype.json").unlink()
    code = search.main(["--stage", "search1", "--name", "d", "--save_dir", str(tmp_path),
                        "--epochs", "2", *TINY])
    return code, run


@pytest.mark.e2e
def test_another_number_of_processes_resumes_at_an_epoch_boundary(search_run, tmp_path):
    code, run = _resume_in_one_process(search_run, tmp_path, step=0)
    assert code == 0
    log = (run / "log.txt").read_text()
    assert ("was written by 2 processes, this run has 1 process: its random draws and data "
            "order differ from an uninterrupted run") in log
    assert load_checkpoint(run / "checkpoint.pt")["world_size"] == 1


@pytest.mark.e2e
def test_another_number_of_processes_mid_epoch_is_one_clear_error(search_run, tmp_path, capsys):
    code, run = _resume_in_one_process(search_run, tmp_path, step=2)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {run / 'checkpoint.pt'}: saved in the middle of epoch 2 "
                          "(step 2) by 2 processes, but this run has 1 process;")
    assert "torchrun --nproc_per_node 2" in err


# -- search_run's per-rank data, damaged: one-line errors --------------------------------------
@pytest.fixture(scope="module")
def saved_state(search_run):
    path = search_run / "checkpoint.pt"
    return path, check_search_checkpoint(load_checkpoint(path), path)  # as saved: valid


MALFORMED = [
    (lambda s: s.update(rng_ranks="all"), "rng_ranks: is 'all', expected a list"),
    (lambda s: s.update(world_size=3), "rng_ranks: holds 2 states, expected one per process "
                                       "(world_size 3)"),
    (lambda s: s.update(world_size=0), "world_size: is 0, expected 1..100000"),
    (lambda s: s.pop("world_size"), "world_size: missing"),
    (lambda s: s["rng_ranks"].__setitem__(1, 5), "rng_ranks[1]: is 5, expected a dict"),
    (lambda s: s.update(scaler={"scale": -1.0}), "scaler.scale: is -1.0, expected a number > 0"),
    (lambda s: s.update(scaler=[]), "scaler: is [], expected a dict or null"),
]


@pytest.mark.parametrize("change, message", MALFORMED, ids=[m.split(":")[0] for _, m in MALFORMED])
@pytest.mark.e2e
def test_malformed_per_rank_data_is_one_line(saved_state, change, message):
    path, saved = saved_state
    state = {**saved, "rng": dict(saved["rng"]), "rng_ranks": [dict(r) for r in saved["rng_ranks"]]}
    change(state)
    with pytest.raises(CheckpointError) as err:
        check_search_checkpoint(state, path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


# -- without processes ---------------------------------------------------------------------
def test_collective_timeout_is_30_minutes_unless_set(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.collective_timeout() == timedelta(minutes=30)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.collective_timeout() == timedelta(seconds=90)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="STACNAS_DIST_TIMEOUT must be a number of seconds"):
        distributed.collective_timeout()


@pytest.mark.parametrize("name, selected", [("cuda:3", [torch.device("cuda", 3)]),
                                            ("cuda", []), ("cpu", [])])
def test_without_torchrun_gpu_n_becomes_the_current_device(monkeypatch, name, selected):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ranks, device = distributed.setup(torch.device(name))
    assert calls == selected and device == torch.device(name)
    assert not ranks.enabled and ranks.world_size == 1


def test_loader_draws_per_rank_in_a_rank_independent_order():
    data = torch.utils.data.TensorDataset(torch.arange(32))
    loaders = [make_loader(data, None, 4, shuffle=True, seed=5, epoch=2, replicas=(rank, 2))
               for rank in (0, 1)]
    alone = make_loader(data, None, 4, shuffle=True, seed=5, epoch=2)
    seeds = [loader.generator.initial_seed() for loader in loaders]
    assert seeds[0] == alone.generator.initial_seed() and seeds[0] != seeds[1]
    visited = [[int(i) for (batch,) in loader for i in batch] for loader in loaders]
    for rank in (0, 1):  # the shards of one DistributedSampler order
        assert visited[rank] == epoch_order(32, True, 5, 2, (rank, 2))
    assert sorted(visited[0] + visited[1]) == list(range(32))
