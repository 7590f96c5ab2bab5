"""Processes on CPU (gloo) under torchrun: identical alphas, rank-0-only files, resume, one
process in a process group; and, without processes, the pieces around them: the collective
timeout, GPU selection, per-rank RNG states and loaders, world-size changes on resume."""
import json
import os
import random
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

import augment
import config
import search
from utils.runtime import distributed
from utils.io import genotype_files as gf
from utils.io.checkpoint import (CheckpointError, load_checkpoint, previous_path, rng_state,
                                 save_checkpoint, set_rng_state)
from utils.io.checkpoint_fields import check_search_checkpoint
from utils.data.loaders import epoch_order, make_loader
from utils.runtime.distributed import Dist
from utils.train.stage import resume_rng, rng_entries
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


def _seed(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def _draws() -> tuple:
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def _states_and_draws(seeds):
    """For each seed: (rng_state() after seeding with it, the draws that follow)."""
    out = []
    for seed in seeds:
        _seed(seed)
        out.append((rng_state(), _draws()))
    return out


def test_rng_entries_of_a_single_process_run():
    entries = rng_entries(Dist(), torch.device("cpu"))
    assert entries["world_size"] == 1 and entries["rng_ranks"] == [entries["rng"]]
    assert "cuda_device" not in entries["rng"]


def test_each_rank_resumes_its_own_states():
    (s0, d0), (s1, d1) = _states_and_draws([1, 2])
    state = {"epoch": 1, "step": 7, "world_size": 2, "rng": s0, "rng_ranks": [s0, s1]}
    for rank, draws in ((0, d0), (1, d1)):
        _seed(99)
        resume_rng(state, "c.pt", Dist(rank, 2, enabled=True), torch.device("cpu"), print)
        assert _draws() == draws


def test_an_older_checkpoint_gives_rank_0_its_states_and_the_others_keep_theirs():
    """Before per-rank states: "rng" alone (rank 0's), no world size; "cuda" listed every
    GPU's state."""
    (s0, d0), (_, d2) = _states_and_draws([1, 2])
    old = {"epoch": 1, "step": 3, "rng": {**s0, "cuda": [torch.zeros(8, dtype=torch.uint8)]}}
    _seed(99)
    resume_rng(old, "c.pt", Dist(), torch.device("cpu"), print)
    assert _draws() == d0
    _seed(2)  # rank 1 seeded with seed + 1: it keeps that
    resume_rng(old, "c.pt", Dist(1, 2, enabled=True), torch.device("cpu"), print)
    assert _draws() == d2


def test_another_world_size_mid_epoch_names_file_sizes_and_the_way_out():
    state = {"epoch": 3, "step": 5, "world_size": 4, "rng": rng_state(), "rng_ranks": []}
    with pytest.raises(ValueError) as err:
        resume_rng(state, "run/checkpoint.pt", Dist(0, 2, enabled=True), torch.device("cpu"), print)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "run/checkpoint.pt: saved in the middle of epoch 4 (step 5) by 4 processes, but this "
        "run has 2 processes;")
    assert "torchrun --nproc_per_node 4" in message and "end of an epoch" in message


RNG_DAMAGE = [  # (change to rank 1's states, error type named in the line)
    (lambda r: r.update(numpy=[]), "ValueError"),
    (lambda r: r.pop("torch"), "KeyError"),
    (lambda r: r.update(python="seed"), "ValueError"),
    (lambda r: r.update(torch=torch.zeros(2, 2, dtype=torch.uint8)), "RuntimeError"),
    (lambda r: r.update(numpy=["MT19937", [2 ** 40] * 624, 0, 0, 0.0]), "OverflowError"),
]


@pytest.mark.parametrize("change, error", RNG_DAMAGE, ids=[e for _, e in RNG_DAMAGE])
def test_rng_states_that_cannot_be_restored_are_one_line_naming_the_field(change, error):
    """The states are checked by Python, NumPy and PyTorch as they are restored (before any
    training step): what they refuse is one line naming the file and the rank's entry."""
    s0, s1 = rng_state(), rng_state()
    change(s1)
    state = {"epoch": 1, "step": 0, "world_size": 2, "rng": s0, "rng_ranks": [s0, s1]}
    resume_rng(state, "c.pt", Dist(0, 2, enabled=True), torch.device("cpu"), print)  # rank 0: fine
    with pytest.raises(CheckpointError) as err:
        resume_rng(state, "c.pt", Dist(1, 2, enabled=True), torch.device("cpu"), print)
    message = str(err.value)
    assert message.startswith("c.pt: rng_ranks[1]: not random-generator states this run can "
                              f"restore ({error}") and "\n" not in message
    older = {"epoch": 1, "rng": s1}  # before per-rank states: "rng" alone
    with pytest.raises(CheckpointError, match=r"^c\.pt: rng: not random-generator states"):
        resume_rng(older, "c.pt", Dist(), torch.device("cpu"), print)


def test_a_gpu_state_the_gpu_refuses_is_one_line(monkeypatch):
    """On CUDA the GPU generator's state is restored too; PyTorch's refusal (e.g. a state of
    another size) is one line naming the entry (CUDA calls stand-ins: no GPU here)."""
    def refuse(state, device=None):
        raise RuntimeError("Expected a CUDA generator state of size 16\nsecond line")
    monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
    state = {"epoch": 1, "world_size": 1, "rng": rng_state(),
             "rng_ranks": [{**rng_state(), "cuda_device": torch.zeros(3, dtype=torch.uint8)}]}
    with pytest.raises(CheckpointError) as err:
        resume_rng(state, "c.pt", Dist(), torch.device("cuda", 0), print)
    assert str(err.value) == ("c.pt: rng_ranks[0]: not random-generator states this run can "
                              "restore (RuntimeError: Expected a CUDA generator state of size 16)")


def test_cuda_states_only_on_cuda_paths(monkeypatch):
    """A CPU run makes no CUDA call; a CUDA run saves and restores its own GPU's generator; an
    older checkpoint's list of every GPU's state shorter than this device's index is skipped."""
    calls = []

    def record(name):
        return lambda *a: calls.append((name, *a)) or torch.full((8,), 7, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", record("get"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", record("set"))
    cpu = rng_state(torch.device("cpu"))
    set_rng_state({**cpu, "cuda": [torch.zeros(8, dtype=torch.uint8)]}, torch.device("cpu"))
    assert calls == [] and "cuda_device" not in cpu
    gpu1 = torch.device("cuda", 1)
    saved = rng_state(gpu1)
    assert calls == [("get", gpu1)] and saved["cuda_device"].tolist() == [7] * 8
    set_rng_state(saved, gpu1)
    assert calls[-1][0] == "set" and calls[-1][2] == gpu1
    assert torch.equal(calls[-1][1], saved["cuda_device"])
    calls.clear()
    old = {**cpu, "cuda": [torch.zeros(8, dtype=torch.uint8)]}  # a 1-GPU machine's
    set_rng_state(old, torch.device("cuda", 3))  # no IndexError
    assert calls == []
    set_rng_state(old, torch.device("cuda", 0))
    assert [c[0] for c in calls] == ["set"] and torch.equal(calls[0][1], old["cuda"][0])


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


# -- checkpoints of the jobs themselves (no processes) -----------------------------------------
def _job(kind, tmp_path):
    """A search or augment job on tiny data with fp16's gradient scaler (a CPU one)."""
    argv = [*TINY, "--name", kind, "--save_dir", str(tmp_path), "--epochs", "2", "--amp", "fp16",
            "--force_amp"]
    if kind == "search":
        args = config.parse(config.search_parser(), config.resolve_search,
                            ["--stage", "search1", *argv])
        job_class = search.Search
    else:
        args = config.parse(config.augment_parser(), config.resolve_augment,
                            ["--arch", "DARTS_V2", *argv])
        job_class = augment.Augment
    Path(args.stage_dir).mkdir(parents=True, exist_ok=True)
    return job_class(args, lambda message: None, torch.device("cpu"), Dist())


def _one_step(job):
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    (job.architect if isinstance(job, search.Search) else job).step(x, y)


@pytest.mark.parametrize("kind", ["search", "augment"])
def test_the_fp16_grad_scaler_is_saved_and_restored(kind, tmp_path):
    job = _job(kind, tmp_path)
    for _ in range(3):
        _one_step(job)
    saved = job.runtime.scaler.state_dict()
    assert saved != torch.amp.GradScaler("cpu").state_dict()  # it has counted steps
    save_checkpoint(job.state(0, step=3), tmp_path / "c.pt")
    again = _job(kind, tmp_path)
    assert again.resume(tmp_path / "c.pt") == (0, 3)
    assert again.runtime.scaler.state_dict() == saved


def test_an_old_format_checkpoint_still_resumes(tmp_path):
    """Written before per-rank states: "rng" alone, with "cuda" listing every GPU's state; no
    world size, no scaler."""
    job = _job("search", tmp_path)
    state = job.state(1)
    for key in ("rng_ranks", "world_size", "scaler"):
        del state[key]
    state["rng"] = {**state["rng"], "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    save_checkpoint(state, tmp_path / "old.pt")
    set_rng_state(state["rng"])
    expected = _draws()
    again = _job("search", tmp_path)
    assert again.resume(tmp_path / "old.pt") == (1, 0)
    assert _draws() == expected
