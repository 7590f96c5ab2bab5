"""What a job restores when it resumes, checked without processes: each rank's random-generator
states (a single-process run's entries, per-rank states, an older checkpoint's "rng" alone, a
change of world size mid-epoch, states Python, NumPy, PyTorch or the GPU refuse, CUDA states
only on CUDA paths), the fp16 grad scaler of a search and an augment job, and a checkpoint of
the old format. Resume under torchrun, with real processes: test_distributed.py."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import augment
import config
import search
from utils.io.checkpoint import (SEARCH_FORMAT, CheckpointError, rng_state, save_checkpoint,
                                 set_rng_state)
from utils.runtime.distributed import Dist
from utils.train.stage import resume_rng, rng_entries

TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "64",
        "--synthetic_classes", "4", "--batch_size", "8", "--num_cells", "3", "--init_channels", "4",
        "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]


# -- per-rank random-generator states ----------------------------------------------------------
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


# -- which checkpoint to resume from ------------------------------------------------------------
def test_only_the_main_rank_moves_a_damaged_checkpoint_aside_under_resume(tmp_path):
    """With --resume FILE, every torchrun rank picks FILE, and only rank 0 (the one that saves)
    moves the unreadable checkpoint.pt aside: a second rank doing it too would find the file
    gone (FileNotFoundError) or move rank 0's fresh one."""
    from argparse import Namespace

    from utils.train.stage import resume_path
    chosen, checkpoint = tmp_path / "checkpoint.prev.pt", tmp_path / "checkpoint.pt"
    save_checkpoint({"format": SEARCH_FORMAT, "epoch": 1}, chosen)
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    args, lines = Namespace(resume=str(chosen)), []
    assert resume_path(args, checkpoint, lines.append, main=False) == chosen
    assert checkpoint.is_file() and lines == []  # another rank: the folder left alone
    assert resume_path(args, checkpoint, lines.append, main=True) == chosen
    aside = tmp_path / "checkpoint.corrupt.pt"
    assert not checkpoint.exists() and aside.read_bytes() == b"PK\x03\x04 truncated"
    assert lines == [f"{checkpoint} is unreadable; moved to {aside}"]
    assert resume_path(args, checkpoint, lines.append, main=False) == chosen  # nothing to move
