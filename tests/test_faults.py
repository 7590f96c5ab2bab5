"""Faults survived, with processes really interrupted: kill -9 mid-epoch (resume gives exactly
the uninterrupted result), SIGTERM / SIGINT (checkpoint at the next step, resume), a damaged
checkpoint, a loss that turns NaN."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import augment
import search
from utils import genotype_files as gf
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
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
    assert f"after epoch 1, step {state['step']}" in out
    assert load_checkpoint(tmp_path / "r" / stage / "checkpoint.pt")["finished"]
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "r" / stage / "metrics.jsonl").read_text().splitlines()]
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
