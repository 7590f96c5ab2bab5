"""Faults survived, with processes really interrupted: kill -9 mid-epoch (resume gives exactly
the uninterrupted result), SIGTERM / SIGINT (checkpoint at the next step, resume), SIGTERM to
the whole process group (DataLoader workers included), a second run on a busy folder, names
that are paths, a file size limit (a full disk), a name the C locale cannot print, a changed
option on a finished stage, a damaged checkpoint, a loss that turns NaN."""
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import augment
import feature
import search
from tests.processes import group_gone
from utils.io import genotype_files as gf
from utils.io.checkpoint import load_checkpoint, previous_path
from utils.runtime.lock import FolderLock, hold_folder
from tests.scripts import load_test_py

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
TEST_SCRIPT = load_test_py()
DATA = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "256",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu",
        "--print_freq", "1", "--deterministic"]
NET = ["--num_cells", "3", "--init_channels", "4"]
SEARCH = ["search.py", "--stage", "search1", "--epochs", "3", *DATA, *NET]
AUGMENT = ["augment.py", "--arch", "DARTS_V2", "--epochs", "3", "--test_every", "3", *DATA, *NET]


def _start(argv, save_dir, name):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / argv[0]), *argv[1:], "--name", name,
                             "--save_dir", str(save_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(log: Path, text: str, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and text in log.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {log}")


def _run_to_end(argv, save_dir, name):
    proc = _start(argv, save_dir, name)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.mark.parametrize("argv, stage, final", [(SEARCH, "search1", "alphas.json"),
                                                 (AUGMENT, "augment", "results.json")])
def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path, argv, stage, final):
    _run_to_end(argv, tmp_path, "straight")
    proc = _start(argv, tmp_path, "killed")
    log = tmp_path / "killed" / stage / "log.txt"
    _wait_for(log, "epoch 2/3 step 5/16", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / stage / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "killed" / stage / final).exists()
    out = _run_to_end(argv, tmp_path, "killed")
    assert "resuming from" in out and "after epoch 1" in out
    a = load_checkpoint(tmp_path / "straight" / stage / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / stage / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if stage == "search1":
        assert gf.load_alphas(tmp_path / "straight" / stage / final) == \
            gf.load_alphas(tmp_path / "killed" / stage / final)


@pytest.mark.parametrize("argv, stage, sig", [(SEARCH, "search1", signal.SIGTERM),
                                               (AUGMENT, "augment", signal.SIGINT)])
def test_signal_saves_at_the_next_step_and_resumes(tmp_path, argv, stage, sig):
    proc = _start(argv, tmp_path, "r")
    log = tmp_path / "r" / stage / "log.txt"
    _wait_for(log, "epoch 2/3 step 3/16", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    assert "rerun the same command to resume" in out and "Traceback" not in err
    state = load_checkpoint(tmp_path / "r" / stage / "checkpoint.pt")
    assert state["epoch"] == 1 and 3 <= state["step"] < 16
    out = _run_to_end(argv, tmp_path, "r")
    assert f"in epoch 2 of 3, after step {state['step']}" in out  # as the stop message counts
    assert load_checkpoint(tmp_path / "r" / stage / "checkpoint.pt")["finished"]
    epochs = [json.loads(line)["epoch"]
              for line in (tmp_path / "r" / stage / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def _tiny(stage="search1", epochs=2):
    return ["--stage", stage, "--epochs", str(epochs), *DATA[:-1], *NET]


def test_damaged_checkpoint_is_named_and_the_previous_one_used_when_asked(tmp_path, capsys):
    argv = [*_tiny(epochs=3), "--name", "c", "--save_dir", str(tmp_path)]
    assert search.main(argv) == 0
    run = tmp_path / "c" / "search1"
    (run / "genotype.json").unlink()  # pretend the run stopped after its last checkpoint
    prev = run / "checkpoint.prev.pt"
    prev_bytes = prev.read_bytes()
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    assert search.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt: not a readable checkpoint" in err
    assert f"--resume {prev}" in err
    assert prev.read_bytes() == prev_bytes  # kept
    assert search.main([*argv, "--resume", str(prev)]) == 0
    assert (run / "checkpoint.corrupt.pt").is_file() and (run / "genotype.json").is_file()
    assert load_checkpoint(run / "checkpoint.pt")["finished"]


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real_step = search.Architect.step

    def failing_step(self, x, y, *rest):
        calls["n"] += 1
        loss, logits = real_step(self, x, y, *rest)
        return (torch.tensor(float("nan")) if calls["n"] == 20 else loss), logits

    monkeypatch.setattr(search.Architect, "step", failing_step)
    argv = [*_tiny(epochs=3), "--name", "n", "--save_dir", str(tmp_path)]
    assert search.main(argv) == 1
    err = capsys.readouterr().err
    assert "loss became nan at epoch 2, step 4/16" in err and err.count("\n") == 1
    state = load_checkpoint(tmp_path / "n" / "search1" / "checkpoint.pt")
    assert state["epoch"] == 1 and not state["finished"]


def test_augment_resume_refuses_another_genotype(tmp_path, capsys):
    base = ["--epochs", "2", *DATA[:-1], *NET, "--name", "g", "--save_dir", str(tmp_path)]
    assert augment.main(["--arch", "DARTS_V2", *base]) == 0
    run = tmp_path / "g" / "augment"
    (run / "results.json").unlink()
    os.replace(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    assert augment.main(["--arch", "DARTS_V1", *base]) == 1
    assert "--arch: 'DARTS_V2' -> 'DARTS_V1'" in capsys.readouterr().err


# -- the whole process group, a busy folder, names, a full disk, the C locale ---------------
# A tiny search: 8 steps per epoch, 2 epochs.
GROUP_RUN = ["--stage", "search1", "--epochs", "2", "--dataset", "synthetic", "--synthetic_shape",
             "3,8,8", "--synthetic_samples", "128", "--synthetic_classes", "4", "--batch_size",
             "16", "--device", "cpu", "--print_freq", "1", "--deterministic", *NET]


def _spawn(argv, save_dir, name, env=None, **popen):
    """search.py in a process of its own; `name` may be bytes (an undecodable file name)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "search.py"), *argv, "--name", name,
                             "--save_dir", str(save_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="backslashreplace", **popen)


def _in_process(argv, save_dir, name):
    """search.main in the test process (no interpreter start-up); --deterministic undone after."""
    try:
        return search.main([*argv, "--name", name, "--save_dir", str(save_dir)])
    finally:
        torch.use_deterministic_algorithms(False)


def _same_result(a: Path, b: Path) -> None:
    wa = load_checkpoint(a / "checkpoint.pt")["model"]
    wb = load_checkpoint(b / "checkpoint.pt")["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert gf.load_alphas(a / "alphas.json") == gf.load_alphas(b / "alphas.json")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted tiny search (no workers: the synthetic batches are the same)."""
    save = tmp_path_factory.mktemp("straight")
    assert _in_process([*GROUP_RUN, "--num_workers", "0"], save, "s") == 0
    return save / "s" / "search1"


def test_sigterm_to_the_process_group_saves_and_resumes_bitwise(tmp_path, straight):
    """Slurm's preemption: SIGTERM to every process of the job, DataLoader workers included;
    under LC_ALL=C, with a name holding a byte that no encoding of the locale decodes."""
    name = os.fsdecode(b"r\xff")
    proc = _spawn([*GROUP_RUN, "--num_workers", "2"], tmp_path, os.fsencode(name),
                  env={"LC_ALL": "C"}, start_new_session=True)
    run = tmp_path / name / "search1"
    _wait_for(run / "log.txt", "epoch 2/2 step 3/8", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "rerun the same command to resume" in out
    assert "Traceback" not in err and "DataLoader worker" not in err and "Logging error" not in err
    assert group_gone(proc.pid, 10), "DataLoader workers outlived the run"
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and 3 <= state["step"] < 8
    assert not list(run.glob(".*.tmp"))
    assert _in_process([*GROUP_RUN, "--num_workers", "2"], tmp_path, name) == 0
    log = (run / "log.txt").read_text(encoding="utf-8")
    assert f"in epoch 2 of 2, after step {state['step']}" in log
    _same_result(straight, run)


def test_a_second_run_on_a_busy_folder_is_refused_and_kill_9_leaves_no_lock(tmp_path, capsys):
    argv = [*GROUP_RUN[:2], "--epochs", "50", *GROUP_RUN[4:], "--num_workers", "2"]
    holder = _spawn(argv, tmp_path, "busy", start_new_session=True)
    run = tmp_path / "busy" / "search1"
    try:
        _wait_for(run / "log.txt", "step 2/8", holder)
        # paused, still holding the lock: now only the refused run below could change a file
        os.killpg(holder.pid, signal.SIGSTOP)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        capsys.readouterr()
        assert _in_process(argv, tmp_path, "busy") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(run) in err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    finally:
        try:
            os.killpg(holder.pid, signal.SIGCONT)  # its workers too, so that they see it die
        except ProcessLookupError:
            pass
        holder.kill()  # the main process only: its workers are left to torch's watchdog
        holder.communicate()
    FolderLock(run).acquire().release()  # free at once, though the workers may still live
    assert group_gone(holder.pid, 20), "DataLoader workers outlived their killed main process"


def test_feature_and_test_refuse_a_busy_output_folder(straight, tmp_path, capsys):
    """The lock is the kernel's: a second open of the lock file conflicts even in one process."""
    save = straight.parents[1]
    common = [*DATA[:-1], "--synthetic_samples", "128"]
    with hold_folder(straight / "feature"):
        capsys.readouterr()
        assert feature.main(["--stage", "search1", "--name", "s", "--save_dir", str(save),
                             "--num_samples", "16", *common]) == 1
        err = capsys.readouterr().err
        assert err == (f"error: {straight / 'feature'} is in use by another run (pid {os.getpid()} "
                       f"on {socket.gethostname()}); wait for it to end or stop it, or pass "
                       "another --name\n")
        assert [p.name for p in (straight / "feature").iterdir()] == [".lock"]
    assert augment.main(["--arch", "DARTS_V2", "--epochs", "1", *common, *NET, "--name", "t",
                         "--save_dir", str(tmp_path)]) == 0
    with hold_folder(tmp_path / "t" / "test"):
        capsys.readouterr()
        assert TEST_SCRIPT.main(["--name", "t", "--save_dir", str(tmp_path), *common]) == 1
        assert "is in use by another run" in capsys.readouterr().err
        assert not (tmp_path / "t" / "test" / "results.json").exists()


@pytest.mark.parametrize("name", ["../escape", "/an/absolute/path", "", ".", "..", "a\\b",
                                  "a\nb", "x" * 256])
@pytest.mark.parametrize("main", [search.main, augment.main, feature.main],
                         ids=["search", "augment", "feature"])
def test_a_name_that_is_not_a_folder_name_is_a_usage_error(tmp_path, capsys, main, name):
    save = tmp_path / "runs"
    stage = {search.main: "search1", augment.main: "augment", feature.main: "darts"}[main]
    argv = ["--stage", stage, "--name", name, "--save_dir", str(save), *DATA[:-1]]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{main.__module__}.py: error: "
                                                               "argument --name")
    assert list(tmp_path.iterdir()) == []


def test_a_save_dir_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "runs").write_text("")
    with pytest.raises(SystemExit) as exit_:
        search.main([*GROUP_RUN, "--name", "x", "--save_dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert f"--save_dir: {tmp_path / 'runs'} is a file, not a folder" in capsys.readouterr().err


def test_a_file_size_limit_names_the_file_keeps_the_checkpoint_and_resumes(tmp_path, straight):
    """`ulimit -f` (a full disk reads the same): the end-of-epoch checkpoint does not fit."""
    run = tmp_path / "s" / "search1"
    shutil.copytree(straight, run)
    os.replace(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")  # stopped after epoch 1
    (run / "genotype.json").unlink()
    saved = (run / "checkpoint.pt").read_bytes()
    limit = len(saved) // 2

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = _spawn([*GROUP_RUN, "--num_workers", "0"], tmp_path, "s", preexec_fn=file_size_limit)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err == f"error: cannot write {run / 'checkpoint.pt'}: File too large; make room and " \
                  "rerun the same command\n"
    assert (run / "checkpoint.pt").read_bytes() == saved and not list(run.glob(".*.tmp"))
    assert _in_process([*GROUP_RUN, "--num_workers", "0"], tmp_path, "s") == 0
    _same_result(straight, run)


def test_a_finished_stage_rerun_with_other_options_lists_them(straight, capsys):
    save, name = straight.parents[1], straight.parent.name
    before = (straight / "log.txt").read_bytes()
    capsys.readouterr()
    argv = [*GROUP_RUN[:2], "--epochs", "4", *GROUP_RUN[4:], "--num_workers", "0", "--w_lr", "0.1"]
    assert _in_process(argv, save, name) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already finished" in err
    assert "--epochs: 2 -> 4; --w_lr: 0.025 -> 0.1" in err
    assert "--force" in err and "--name" in err
    assert (straight / "log.txt").read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the ranks in /proc")
def test_under_torchrun_a_rank_killed_with_9_stops_the_other_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", STACNAS_DIST_TIMEOUT="60")
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node", "2", str(ROOT / "search.py"), *GROUP_RUN,
                              "--epochs", "20", "--num_workers", "0", "--name", "d",
                              "--save_dir", str(tmp_path)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        _wait_for(tmp_path / "d" / "search1" / "log.txt", "step 2/4", agent)
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        rank_1 = next(int(pid) for pid in children
                      if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        os.kill(rank_1, signal.SIGKILL)
        began = time.time()
        out, err = agent.communicate(timeout=90)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert time.time() - began < 60 and agent.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]  # rank 0's; rank 1 died silently
    assert lines[0].startswith("error: another process of this torchrun job died or hangs (")
    assert lines[0].endswith("the last checkpoint is intact: rerun the same command to resume")
