"""Run state on disk survives faults (issue 20, items 2, 3, 6, 11, 12), each reproduced with a
real process: a metrics append cut by a file size limit or a kill, a kill between the two
renames of checkpoint rotation, a forced rerun's stale outputs and unfinished stages, a
checkpoint of another kind passed to --resume, a stop signal while a stage finishes or
(SIGHUP) mid-epoch, and a network whose weights are NaN."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import augment
import search
from utils.io.checkpoint import load_checkpoint, previous_path, save_checkpoint
from utils.io.files import read_jsonl
from utils.runtime.logging import MetricsWriter
from tests.scripts import load_test_py

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
TEST_SCRIPT = load_test_py()
DATA = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu"]
NET = ["--num_cells", "3", "--init_channels", "4"]


def _argv(script: str, save: Path, name: str, *extra: str) -> list[str]:
    stage = {"search.py": ["--stage", "search1"],
             "augment.py": ["--arch", "DARTS_V2"]}.get(script, [])
    net = NET if script != "test.py" else []
    return [*stage, *DATA, *net, "--name", name, "--save_dir", str(save), *extra]


def _run(script: str, argv: list[str], timeout: float = 180, code: str = "", **popen):
    """`script` in a process of its own (after running `code`, e.g. a monkeypatch)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    prelude = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = [{script!r}] + "
               f"sys.argv[1:]\n{code}\nimport runpy; runpy.run_path({str(ROOT / script)!r}, "
               "run_name='__main__')")
    return subprocess.run([sys.executable, "-c", prelude, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def _in_process(main, script: str, save: Path, name: str, *extra: str) -> int:
    try:
        return main(_argv(script, save, name, *extra))
    finally:
        torch.use_deterministic_algorithms(False)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished search1 and a finished augment (2 epochs each), made in this process."""
    save = tmp_path_factory.mktemp("finished")
    assert _in_process(search.main, "search.py", save, "f", "--epochs", "2") == 0
    assert _in_process(augment.main, "augment.py", save, "f", "--epochs", "2") == 0
    return save / "f"


# -- item 2: metrics.jsonl --------------------------------------------------------------------
def test_a_full_disk_during_the_metrics_append_and_a_partial_line_never_stop_a_resume(
        tmp_path, capsys):
    assert _in_process(augment.main, "augment.py", tmp_path, "m", "--epochs", "8") == 0
    run = tmp_path / "m" / "augment"
    os.replace(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")  # stopped after epoch 7
    (run / "results.json").unlink()
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    seven = b"".join(lines[:7])
    limit = len(seven) + len(lines[7]) // 2  # epoch 8's record does not fit; the rest does
    assert (run / "config.json").stat().st_size < limit

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    argv = _argv("augment.py", tmp_path, "m", "--epochs", "8")
    proc = _run("augment.py", argv, preexec_fn=file_size_limit)
    assert proc.returncode == 1, proc.stderr
    assert _errors(proc.stderr) == [f"error: cannot write {run / 'metrics.jsonl'}: File too large; "
                                    "make room and rerun the same command"]
    assert "Traceback" not in proc.stderr
    assert (run / "metrics.jsonl").read_bytes() == seven  # the cut append was undone
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 7

    # a damaged line inside the file: one line naming the file and the line, nothing changed
    damaged = lines[0] + b'{"epoch": 2, "lo\n' + b"".join(lines[2:7])
    (run / "metrics.jsonl").write_bytes(damaged)
    capsys.readouterr()
    assert _in_process(augment.main, "augment.py", tmp_path, "m", "--epochs", "8") == 1
    err = capsys.readouterr().err
    assert (err.startswith(f"error: {run / 'metrics.jsonl'}: line 2: not JSON")
            and err.count("\n") == 1)
    assert (run / "metrics.jsonl").read_bytes() == damaged
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 7

    # what a kill in the middle of an append leaves: a last line without its newline
    (run / "metrics.jsonl").write_bytes(seven + lines[7][:40])
    proc = _run("augment.py", argv)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout and "after epoch 7" in proc.stdout
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 9))
    assert load_checkpoint(run / "checkpoint.pt")["finished"]


def test_metrics_records_are_strict_json(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"epoch": 1, "loss": float("nan"), "valid_loss": float("inf")}, 1)
    record = json.loads((tmp_path / "metrics.jsonl").read_text(),
                        parse_constant=lambda word: pytest.fail(f"{word} in metrics.jsonl"))
    assert record == {"epoch": 1, "loss": None, "valid_loss": None}


# -- item 3: checkpoint rotation --------------------------------------------------------------
KILL_AFTER_FIRST_RENAME = """
import os, signal
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if str(dst).endswith("checkpoint.prev.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
"""


def test_a_kill_between_the_renames_of_checkpoint_rotation_loses_nothing(tmp_path):
    argv = _argv("augment.py", tmp_path, "k", "--epochs", "2")
    proc = _run("augment.py", argv, code=KILL_AFTER_FIRST_RENAME)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = tmp_path / "k" / "augment"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # never only .prev and a temp
    assert previous_path(run / "checkpoint.pt").samefile(run / "checkpoint.pt")  # hard links
    # what an older version left at that moment: .prev and the temp file, no checkpoint.pt
    old = tmp_path / "old" / "k" / "augment"
    shutil.copytree(run, old)
    (old / "checkpoint.pt").unlink()
    assert (old / ".checkpoint.pt.tmp").is_file()

    assert _in_process(augment.main, "augment.py", tmp_path, "k", "--epochs", "2") == 0
    assert "resuming from" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["finished"] and not _temp_files(run)

    proc = _run("augment.py", _argv("augment.py", tmp_path / "old", "k", "--epochs", "2"))
    assert proc.returncode == 0, proc.stderr
    assert (f"{old / 'checkpoint.pt'} is missing but {old / 'checkpoint.prev.pt'} is there"
            in proc.stdout)
    assert "after epoch 1" in proc.stdout
    state = load_checkpoint(old / "checkpoint.pt")
    assert state["finished"] and state["epoch"] == 2
    assert (old / "results.json").is_file() and not _temp_files(old)


# -- item 6: stale and unfinished outputs ------------------------------------------------------
def test_a_forced_rerun_sets_the_old_outputs_aside_and_test_takes_the_new_network(tmp_path, capsys):
    assert _in_process(augment.main, "augment.py", tmp_path, "o", "--epochs", "1",
                       "--valid_ratio", "0.5") == 0
    run = tmp_path / "o" / "augment"
    old = {p.name: p.read_bytes() for p in run.iterdir()
           if p.is_file() and p.name not in ("log.txt", ".lock")}
    assert "best.pt" in old
    assert _in_process(augment.main, "augment.py", tmp_path, "o", "--epochs", "2", "--force") == 0
    assert not (run / "best.pt").exists()
    aside = run / "replaced" / "run_1"
    assert {n: (aside / n).read_bytes() for n in old} == old  # nothing lost
    proc = _run("test.py", _argv("test.py", tmp_path, "o"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "o" / "test" / "results.json").read_text())
    new = load_checkpoint(run / "checkpoint.pt")
    assert results["checkpoint"] == str(run / "checkpoint.pt")
    assert results["finished"] is True and results["run"] == new["run"]
    assert results["trained_epochs"] == results["epochs"] == 2

    # a best.pt an earlier run left (copied back by hand) is passed over, with a warning
    os.link(aside / "best.pt", run / "best.pt")
    assert load_checkpoint(run / "best.pt")["run"] != new["run"]
    capsys.readouterr()
    assert TEST_SCRIPT.main(_argv("test.py", tmp_path, "o")) == 0
    assert "best.pt was left by an earlier run" in capsys.readouterr().err
    results = json.loads((tmp_path / "o" / "test" / "results.json").read_text())
    assert results["checkpoint"] == str(run / "checkpoint.pt")


def test_test_refuses_an_unfinished_augment_or_marks_it_when_named(finished, tmp_path, capsys):
    run = tmp_path / "u" / "augment"
    run.mkdir(parents=True)
    # the checkpoint saved after epoch 1 of 2
    os.link(previous_path(finished / "augment" / "checkpoint.pt"), run / "checkpoint.pt")
    proc = _run("test.py", _argv("test.py", tmp_path, "u"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert _errors(proc.stderr) == [
        f"error: {run / 'checkpoint.pt'}: its training is not finished (saved after epoch 1 of 2; "
        "stopped, or still running); finish it (rerun the same augment.py command: it resumes), "
        "or pass "
        f"--checkpoint {run / 'checkpoint.pt'} to evaluate it anyway as an unfinished result"]
    assert not (tmp_path / "u" / "test" / "results.json").exists()
    capsys.readouterr()
    assert TEST_SCRIPT.main(_argv("test.py", tmp_path, "u",
                                  "--checkpoint", str(run / "checkpoint.pt"))) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "not a final result" in err
    results = json.loads((tmp_path / "u" / "test" / "results.json").read_text())
    assert results["finished"] is False and results["trained_epochs"] == 1


def test_search2_and_augment_refuse_a_search_whose_forced_rerun_is_unfinished(finished, tmp_path,
                                                                               capsys):
    s1 = tmp_path / "s" / "search1"
    shutil.copytree(finished / "search1", s1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rerun = subprocess.Popen([sys.executable, str(ROOT / "search.py"),
                              *_argv("search.py", tmp_path, "s", "--epochs", "40", "--force",
                                     "--print_freq", "1")],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while "step 1/" not in (s1 / "log.txt").read_text().partition("starts from scratch")[2]:
            assert time.time() < deadline, "the forced rerun never began its first epoch"
            assert rerun.poll() is None, rerun.communicate()
            time.sleep(0.05)
    finally:
        rerun.kill()
        rerun.communicate(timeout=60)
    assert (s1 / "replaced" / "run_1" / "alphas.json").is_file()
    proc = _run("search.py", ["--stage", "search2", *_argv("search.py", tmp_path, "s")[2:]])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = _errors(proc.stderr)
    assert line.startswith(f"error: {s1} is not finished (no checkpoint.pt")
    assert line.endswith("finish it first (rerun its search.py --stage search1 command), or point "
                         "--search1_dir at a finished one")
    assert not (tmp_path / "s" / "search2" / "checkpoint.pt").exists()
    capsys.readouterr()
    assert augment.main([*DATA, *NET, "--name", "a", "--save_dir", str(tmp_path), "--genotype",
                         str(s1 / "genotype.json")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {s1} is not finished")


# -- item 11: --resume with another kind of checkpoint ----------------------------------------
def test_resume_from_another_kind_of_checkpoint_says_what_it_is(finished, tmp_path, capsys):
    final = finished / "augment" / "checkpoint.pt"
    s1 = finished / "search1" / "checkpoint.pt"
    proc = _run("search.py", _argv("search.py", tmp_path, "x", "--resume", str(final), "--force"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert _errors(proc.stderr) == [
        f"error: {final}: a trained final network's checkpoint (augment.py); this command resumes "
        "from a search1 checkpoint (one that search.py --stage search1 wrote)"]
    capsys.readouterr()
    assert _in_process(augment.main, "augment.py", tmp_path, "y", "--resume", str(s1)) == 1
    assert capsys.readouterr().err == (f"error: {s1}: a search1 checkpoint (search.py --stage "
                                       "search1); this command resumes from a checkpoint that "
                                       "augment.py wrote\n")
    argv = ["--stage", "search2", *_argv("search.py", finished.parent, "f")[2:],
            "--resume", str(s1), "--force", "--save_dir", str(tmp_path)]
    assert search.main([*argv, "--search1_dir", str(finished / "search1")]) == 1
    assert capsys.readouterr().err == (f"error: {s1}: a search1 checkpoint (search.py --stage "
                                       "search1); this command resumes from a search2 checkpoint "
                                       "(one that search.py --stage search2 wrote)\n")


# -- item 12: stop signals while finishing and mid-epoch; NaN results -------------------------
STOP_DURING_WRITE = """
import os, signal
_fsync = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{{fd}}").endswith({target!r}):
        os.kill(os.getpid(), {sig})  # arrives while the file is half-way to its place
    return _fsync(fd)
os.fsync = fsync
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                    reason="finds the file of a descriptor in /proc")
@pytest.mark.parametrize("script, stage, target, sig", [
    ("search.py", "search1", ".genotype.txt.tmp", signal.SIGTERM),
    ("augment.py", "augment", ".results.json.tmp", signal.SIGHUP)])
def test_a_stop_signal_while_finishing_stops_with_one_line_and_a_rerun_finishes(
        tmp_path, script, stage, target, sig):
    argv = _argv(script, tmp_path, "z", "--epochs", "2")
    proc = _run(script, argv, code=STOP_DURING_WRITE.format(target=target, sig=int(sig)))
    run = tmp_path / "z" / stage
    assert proc.returncode == 128 + sig, proc.stderr
    assert "Traceback" not in proc.stderr and not _errors(proc.stderr)
    [line] = [printed for printed in proc.stdout.splitlines() if "stopped by" in printed]
    assert f"stopped by {sig.name} while finishing the stage" in line
    assert line.endswith(f"{run / 'checkpoint.pt'} holds all 2 epochs: rerun the same command to "
                         "finish the stage")
    assert not _temp_files(run)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and not state["finished"]
    main = search.main if script == "search.py" else augment.main
    assert _in_process(main, script, tmp_path, "z", "--epochs", "2") == 0
    assert "after epoch 2" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["finished"]
    assert (run / ("genotype.txt" if stage == "search1" else "results.json")).is_file()


def test_sighup_mid_epoch_saves_and_resumes(tmp_path):
    """A terminal or ssh session closing is a preemption too."""
    argv = _argv("augment.py", tmp_path, "h", "--epochs", "2", "--print_freq", "1",
                 "--synthetic_samples", "384")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "augment.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "h" / "augment" / "log.txt"
    try:
        deadline = time.time() + 120
        while not (log.is_file() and "epoch 1/2 step 2/24" in log.read_text()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "stopped by SIGHUP in epoch 1 of 2, after step" in out
    assert "rerun the same command to resume" in out
    state = load_checkpoint(log.parent / "checkpoint.pt")
    assert state["epoch"] == 0 and 2 <= state["step"] < 24
    assert augment.main(argv) == 0
    # the resume counts epochs as the stop message does (issue 22: one epoch numbering)
    assert f"stopped by SIGHUP in epoch 1 of 2, after step {state['step']};" in log.read_text()
    resumed = f"resuming from {log.parent / 'checkpoint.pt'} in epoch 1 of 2, after step"
    assert f"{resumed} {state['step']}" in log.read_text()


def test_test_on_nan_weights_writes_valid_json_and_says_so(finished, tmp_path):
    state = load_checkpoint(finished / "augment" / "checkpoint.pt")
    state["model"] = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                      for k, v in state["model"].items()}
    path = tmp_path / "nan.pt"
    save_checkpoint(state, path, keep_previous=False)
    proc = _run("test.py", _argv("test.py", tmp_path, "n", "--checkpoint", str(path)))
    assert proc.returncode == 0, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert ("hold NaN or infinite values" in warning
            and "test_loss not a number, written as null" in warning)
    text = (tmp_path / "n" / "test" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda word: pytest.fail(f"{word} in results.json"))
    assert results["test_loss"] is None
