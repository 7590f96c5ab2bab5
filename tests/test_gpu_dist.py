"""Collectives where NCCL puts them, without a GPU. NCCL has no CPU backend: a CPU tensor, a
barrier or an object broadcast on its default group fails ("No backend type associated with
device type cpu"). A default group created as "cuda:gloo" has a backend for CUDA alone and
fails the same way, so two CPU processes on it run our host-side coordination as a GPU job
would. The tensor collectives are checked with spies: their tensors stay on the model's device.
With a GPU, one process under torchrun trains on NCCL and resumes."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from utils.runtime import distributed
from utils.runtime.cli import seed_everything
from utils.runtime.distributed import Dist
from utils.runtime.lock import FolderBusy, hold_folder
from utils.runtime.signals import GracefulStop
from utils.train.stage import resume_rng, rng_entries

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _coordinate(rank: int, port: int, folder: str) -> None:
    """One rank of the harness: every host-side collective of a training run, on a default
    group without a CPU backend. Writes what it saw to <folder>/rank<N>.json."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      **{distributed.TIMEOUT_ENV: "30"})
    dist.init_process_group("cuda:gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    ranks, device = distributed.setup(torch.device("cpu"))  # joins it, adds the gloo groups
    seen = {"enabled": ranks.enabled}
    try:  # the harness is real: what our code must avoid fails here
        dist.all_reduce(torch.zeros(1))
        seen["cpu_all_reduce"] = "worked"
    except RuntimeError as err:
        seen["cpu_all_reduce"] = str(err)
    with GracefulStop() as stop:
        seen["stop_none"] = stop.requested(ranks)
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 gets it
        seen["stop_one"] = stop.requested(ranks)
    seen["from_main"] = distributed.from_main({"rank": rank}, ranks)
    distributed.barrier(ranks)
    distributed.barrier(ranks, patient=True)
    order = Path(folder) / "order.txt"
    with distributed.main_rank_first(ranks):
        seen["before_me"] = order.read_text() if order.exists() else ""
        with open(order, "a") as f:
            f.write(str(rank))
    with hold_folder(Path(folder) / "stage", ranks):
        try:
            hold_folder(Path(folder) / "stage", ranks)  # held by this run: refused on every rank
            seen["second_lock"] = "granted"
        except (FolderBusy, RuntimeError) as err:
            seen["second_lock"] = f"{type(err).__name__}: {err}"
    seed_everything(7 + rank)
    entries = rng_entries(ranks, device)
    seen["gathered"] = len(entries.get("rng_ranks", []))
    expected = torch.rand(4)
    saved = distributed.from_main(entries, ranks)  # rank 0's, as a checkpoint holds them
    torch.manual_seed(1234)
    resume_rng(saved, "c.pt", ranks, device, print)
    seen["own_draws"] = torch.equal(torch.rand(4), expected)
    seen["draws"] = expected.tolist()
    distributed.cleanup()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.e2e
def test_host_side_collectives_work_where_the_default_group_has_no_cpu_backend(tmp_path):
    procs = mp.start_processes(_coordinate, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                               join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("the two processes hung")
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for _rank, s in enumerate(seen):
        assert "No backend type associated with device type cpu" in s["cpu_all_reduce"]
        assert s["enabled"] and s["stop_none"] is False and s["stop_one"] is True
        assert s["from_main"] == {"rank": 0}
        assert "is in use by another run" in s["second_lock"]
        assert s["own_draws"]
    assert (seen[0]["before_me"], seen[1]["before_me"]) == ("", "0")
    assert seen[0]["second_lock"].startswith("FolderBusy")
    assert seen[1]["second_lock"].startswith("RuntimeError")  # rank 0's message, passed on
    assert seen[1]["second_lock"].split(": ", 1)[1] == seen[0]["second_lock"].split(": ", 1)[1]
    assert (seen[0]["gathered"], seen[1]["gathered"]) == (WORLD, 0)
    assert seen[0]["draws"] != seen[1]["draws"]  # seed + rank: each rank its own draws


# -- tensor collectives: spies ------------------------------------------------------------------
@pytest.fixture
def spies(monkeypatch):
    """Record (collective, tensor device, group) instead of communicating."""
    calls = []

    def spy(name):
        def collective(tensor, *args, group=None, **kwargs):
            calls.append((name, tensor.device, group))
        return collective

    for name in ("all_reduce", "broadcast"):
        monkeypatch.setattr(dist, name, spy(name))
    return calls


ON = Dist(0, 2, enabled=True, control="control group", patient="patient group")
META = torch.device("meta")  # no data, and never silently copied to the CPU


def test_tensor_collectives_keep_tensors_on_the_models_device(spies):
    distributed.average_([torch.zeros(3, device=META), torch.zeros(2, device=META)], ON)
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
        distributed.reduce_sums({"loss": 1.0, "n": 2.0}, ON, META)  # only the result leaves
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
        distributed.max_divergence([torch.zeros(3, device=META)], ON)
    model = nn.BatchNorm2d(3).to(META)
    distributed.sync_buffers(model, ON)
    assert [name for name, _, _ in spies] == ["all_reduce"] * 3 + ["broadcast", "all_reduce"] \
        + ["broadcast"] * 3
    assert all(device == META and group is None for _, device, group in spies)


def test_the_stop_flag_goes_over_the_control_group_on_the_cpu(spies):
    stop = GracefulStop()
    stop.requested(ON)
    assert spies == [("all_reduce", torch.device("cpu"), "control group")]


# -- with a GPU ---------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
@pytest.mark.e2e
def test_one_process_under_torchrun_on_nccl_trains_and_resumes(tmp_path):
    tiny = ["--stage", "search1", "--name", "g", "--save_dir", str(tmp_path), "--dataset",
            "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "64",
            "--synthetic_classes", "4", "--batch_size", "8", "--num_cells", "3",
            "--init_channels", "4", "--num_workers", "0", "--device", "cuda", "--print_freq", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(ROOT / "search.py"), *tiny, "--epochs", "2"]
    run = tmp_path / "g" / "search1"
    for again in (False, True):  # again: from the checkpoint after epoch 1
        if again:
            shutil.copy(run / "checkpoint.prev.pt", run / "checkpoint.pt")
            (run / "genotype.json").unlink()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["alpha_rank_divergence"] == 0.0 for r in records)
    log = (run / "log.txt").read_text()
    assert "resuming from" in log and ", 1 process (torchrun)" in log
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 1 and "cuda_device" in state["rng_ranks"][0]
