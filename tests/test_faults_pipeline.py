"""Faults of the pipeline driver and of feature.py, with real processes: a stop signal
(SIGTERM, SIGINT, SIGHUP) at every moment of run_all.py's life (before a stage, while a stage's
process is being created or is still importing, while a finished stage is recorded, while the
summary is written), a damaged timings.json, and feature.py's done marker (groups.json, written
last: an interrupted or failed analysis is never taken as finished).

The moments are reached with run_all's test-only hook STACNAS_RUN_ALL_PAUSE (run_all.py): it
waits at the named point until a signal arrives."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import feature
import genotypes as gt
import run_all
import search
from utils.analysis import features as ft
from utils.io import genotype_files as gf
from utils.pipeline import plan
from utils.runtime.signals import ForwardToChild

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--device", "cpu", "--num_workers", "0"]
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu",
        "--print_freq", "1"]
NET = ["--num_cells", "3", "--init_channels", "4"]


# ----------------------------------------------------------------------------- helpers
def _start(argv: list[str], tmp_path: Path, tag: str, pause: str | None = None):
    """A script (argv[0] in the project) in a process of its own, its stdout and stderr in
    files under tmp_path; with `pause`, run_all's test hook set to that point."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(run_all.PAUSE_ENV, None)
    if pause:
        env[run_all.PAUSE_ENV] = pause
    out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path,
                                env=env, stdout=o, stderr=e)
    proc.out, proc.err = out, err
    return proc


def _wait_for(path: Path, text: str, proc, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended ({proc.returncode}) before {text!r}: "
                                 f"{proc.err.read_text()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError(f"{text!r} never appeared in {path}")


def _finish(proc, timeout: float = 60) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("did not stop: " + proc.err.read_text()[-2000:]) from None
    return proc.returncode, proc.out.read_text(), proc.err.read_text()


def _run_all(tmp_path: Path, name: str, pause: str | None = None, *extra: str):
    return _start(["run_all.py", "--name", name, "--save_dir", str(tmp_path), *SMOKE, *extra],
                  tmp_path, name, pause)


def _signalled_at(tmp_path: Path, name: str, point: str, sig: int) -> tuple[int, str]:
    """run_all paused at `point`, sent `sig` there; (exit code, stderr)."""
    proc = _run_all(tmp_path, name, point)
    _wait_for(proc.err, f"test pause at {point}", proc)
    proc.send_signal(sig)
    code, _, err = _finish(proc)
    return code, err


def _stop_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[run_all] stopped by")]


# ----------------------------------------------------------------------------- run_all
def test_forwarder_passes_on_a_signal_that_came_before_the_child_existed():
    """A signal while no child is registered is kept and sent, once, as soon as one is."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ForwardToChild() as forwarder:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: recorded, nobody to pass it to
            assert forwarder.signum == signal.SIGTERM and child.poll() is None
            forwarder.proc = child
            assert child.wait(timeout=10) == -signal.SIGTERM
            forwarder.proc = None
            assert forwarder._unsent == []
    finally:
        child.kill()
        child.wait()


def _wait_importing_torch(proc, timeout: float = 60) -> None:
    """Until `proc` is importing torch (its library mapped): the seconds before main() runs."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.time() + timeout
    while "torch" not in maps.read_text(errors="replace"):
        assert proc.poll() is None and time.time() < deadline, proc.err.read_text()
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
def test_a_signal_while_run_all_is_still_importing(tmp_path):
    """Before run_all's main() runs (importing torch takes seconds): SIGINT was a
    KeyboardInterrupt traceback, SIGTERM a silent end. Now one line, no stage started."""
    proc = _run_all(tmp_path, "early")
    _wait_importing_torch(proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = _finish(proc)
    assert code == 128 + signal.SIGINT, err
    assert err.splitlines() == ["[run_all] stopped by SIGINT before seed 2 search1 started; "
                                "rerun the same command to go on"]
    assert not (tmp_path / "early" / "seed_2").exists()


def test_a_signal_before_a_stage_starts_none(tmp_path):
    code, err = _signalled_at(tmp_path, "before", "stage", signal.SIGINT)
    assert code == 128 + signal.SIGINT, err
    assert _stop_lines(err) == ["[run_all] stopped by SIGINT before seed 2 search1 started; "
                                "rerun the same command to go on"]
    assert "Traceback" not in err and "error:" not in err
    assert not (tmp_path / "before" / "seed_2").exists()  # no stage process was started


@pytest.mark.parametrize("point, sig", [("spawned", signal.SIGTERM), ("spawn", signal.SIGHUP)])
def test_a_signal_while_a_stage_starts_reaches_it(tmp_path, point, sig):
    """The issue's case: the stage, killed by the forwarded signal while still importing, must
    not make run_all exit 241 ("exit code -15"); it exits 128 + signal with one line."""
    name = signal.Signals(sig).name
    code, err = _signalled_at(tmp_path, "starting", point, sig)
    assert code == 128 + sig, err
    # the stage is killed by the signal if it comes before the stage's first line runs, and
    # stops with its own stop line (128 + signal) once keep_while_starting() holds it
    assert _stop_lines(err) in ([f"[run_all] stopped by {name} during seed 2 search1 (the stage "
                                 f"{how}); rerun the same command to resume"]
                                for how in (f"was killed by {name}",
                                            f"exited with code {code}")), err
    assert "Traceback" not in err
    seed = tmp_path / "starting" / "seed_2"
    assert not (seed / "search1" / "genotype.json").exists() and not (seed / "search2").exists()


def test_a_signal_while_a_finished_stage_is_recorded_starts_no_further_stage(tmp_path):
    """The issue's case: run_all used to start the next stage, let it run to its end and then
    say "stopped by SIGTERM ... (exit code 0)"."""
    code, err = _signalled_at(tmp_path, "record", "record", signal.SIGTERM)
    assert code == 143, err
    assert _stop_lines(err) == ["[run_all] stopped by SIGTERM after seed 2 search1 finished; "
                                "rerun the same command to go on"]
    assert "exit code 0" not in err and "Traceback" not in err
    seed = tmp_path / "record" / "seed_2"
    assert not (seed / "search2").exists()
    assert json.loads((seed / "timings.json").read_text()).keys() == {"search1"}
    assert plan.stage_done(seed, "search1")  # a rerun skips it
    # search's done marker (the checkpoint marked finished) is the last output it wrote
    search1 = seed / "search1"
    marker = (search1 / "checkpoint.pt").stat().st_mtime_ns
    outputs = [p for p in search1.rglob("*") if p.is_file()
               and p.name not in ("log.txt", "metrics.jsonl", ".lock")]
    assert outputs and all(p.stat().st_mtime_ns <= marker for p in outputs)


def _finished_seed(seed: Path) -> None:
    """A seed folder whose stages all look finished (no network trained: seconds)."""
    for stage, output in (("search1", "genotype.json"), ("search2", "genotype.json"),
                          ("augment", "results.json")):
        (seed / stage).mkdir(parents=True)
        torch.save({"format": "stacnas-test", "finished": True, "config": {}},
                   seed / stage / "checkpoint.pt")
        if output == "genotype.json":
            gf.save_genotype(gt.DARTS_V2, seed / stage / output)
        else:
            (seed / stage / output).write_text(json.dumps({"test_top1": 50.0}))
    (seed / "test").mkdir()
    (seed / "test" / "results.json").write_text(json.dumps({"test_top1": 50.0, "test_top5": 90.0}))


def test_a_signal_while_the_summary_is_written(tmp_path):
    """The issue's case: run_all used to die with no message."""
    _finished_seed(tmp_path / "sum" / "seed_2")
    code, err = _signalled_at(tmp_path, "sum", "summary", signal.SIGTERM)
    assert code == 143, err
    md = tmp_path / "sum" / "summary.md"
    assert _stop_lines(err) == [f"[run_all] stopped by SIGTERM while the summary was written "
                                f"(completed first: {md}); every stage is finished"]
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "sum" / "summary.json").read_text())
    assert summary["seeds"][0]["test_top1"] == 50.0


def _timings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t" / "seed_2" / "timings.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def _one_line_naming(err: str, path: Path, problem: str) -> None:
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert problem in err and "remove it" in err


@pytest.mark.parametrize("text, problem", [("[1, 2]", "holds a list"),
                                           ('{"search1": 12.5', "not JSON")])
def test_a_damaged_timings_json_is_one_line_naming_it(tmp_path, text, problem):
    """The issue's cases: a list was an AttributeError traceback, a truncated file an unnamed
    JSON error."""
    path = _timings(tmp_path, text)
    code, out, err = _finish(_run_all(tmp_path, "t"))
    assert code == 1, err
    _one_line_naming(err, path, problem)
    assert path.read_text() == text  # left as it was
    assert not (path.parent / "search1").exists()


def test_timings_json_with_a_value_that_is_no_time(tmp_path, capsys):
    """The summary adds the search times up: a string there was a TypeError traceback."""
    path = _timings(tmp_path, '{"search1": "soon", "search2": 1e999}')
    assert run_all.main(["--name", "t", "--save_dir", str(tmp_path), *SMOKE]) == 1
    _one_line_naming(capsys.readouterr().err, path, "'search1' is 'soon', not a number of seconds")


def test_a_stage_killed_by_a_signal_from_elsewhere_is_128_plus_n(tmp_path, capsys, monkeypatch):
    """A stage the kernel killed (SIGKILL: out of memory) is no exit code -9 (247)."""
    monkeypatch.setattr(run_all, "launcher",
                        lambda gpus: [sys.executable, "-c", "import os, signal; "
                                      "os.kill(os.getpid(), signal.SIGKILL)", "--"])
    assert run_all.main(["--name", "k", "--save_dir", str(tmp_path), *SMOKE]) == 128 + 9
    assert "stage search1 (seed 2) was killed by SIGKILL" in capsys.readouterr().err


# ----------------------------------------------------------------------------- feature.py
@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    """A 1-epoch tiny search1 supernet: what run_all's feature stage analyses."""
    root = tmp_path_factory.mktemp("runs")
    assert search.main(["--stage", "search1", "--name", "seed_2", "--save_dir", str(root),
                        "--epochs", "1", *TINY, *NET]) == 0
    return root


def _feature_argv(root: Path, *extra: str) -> list[str]:
    return ["feature.py", "--stage", "search1", "--name", "seed_2", "--save_dir", str(root),
            "--num_samples", "32", "--num_groups", "2", *TINY, *extra]


def _outputs(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()
            if p.is_file() and p.name not in ("log.txt", ".lock")}


def test_feature_failing_after_its_groups_is_not_taken_as_finished(supernet, tmp_path):
    """The issue's case: groups.json, run_all's "done" marker, was written before the plots,
    summary.json and config.json. A write that fails there (a folder in summary.json's place)
    must leave no groups.json; the rerun measures and writes it last."""
    out = supernet / "seed_2" / "search1" / "feature"
    out.mkdir()
    (out / "summary.json").mkdir()
    code, _, err = _finish(_start(_feature_argv(supernet), tmp_path, "fail"))
    assert code == 1 and err.count("\n") == 1 and "summary.json" in err, err
    assert not (out / ft.DONE_FILE).exists()
    assert not plan.stage_done(supernet / "seed_2", "feature")
    (out / "summary.json").rmdir()
    assert feature.main(_feature_argv(supernet)[1:]) == 0
    written = _outputs(out)
    assert written[ft.DONE_FILE] == max(written.values())  # the marker is the last file
    assert plan.stage_done(supernet / "seed_2", "feature")
    # a folder as the old feature.py left it when stopped after groups.json: not finished
    for name in ft.WRITTEN_BEFORE_DONE:
        half = tmp_path / f"half_{name}"
        half.mkdir()
        for other in (ft.DONE_FILE, *ft.WRITTEN_BEFORE_DONE):
            if other != name:
                (half / other).write_bytes((out / other).read_bytes())
        assert not ft.is_finished(half)


def test_feature_interrupted_while_measuring_again_is_not_finished(supernet, tmp_path, capsys):
    """A rerun with other options removes the marker first: stopped half-way, the folder
    (old and new files mixed) is not taken as the first run's finished analysis."""
    out = supernet / "seed_2" / "search1" / "feature"
    if not ft.is_finished(out):
        assert feature.main(_feature_argv(supernet)[1:]) == 0
    proc = _start(_feature_argv(supernet, "--statistic", "global", "--print_freq", "1"),
                  tmp_path, "again")
    _wait_for(out / "log.txt", "measuring again: removed the previous", proc)
    proc.send_signal(signal.SIGHUP)
    code, _, err = _finish(proc)
    assert code == 128 + signal.SIGHUP and "is incomplete" in err and "Traceback" not in err
    assert not (out / ft.DONE_FILE).exists() and not ft.is_finished(out)
    # the first run's options again: measured again, not "already finished"
    capsys.readouterr()
    assert feature.main(_feature_argv(supernet)[1:]) == 0
    assert "already finished" not in capsys.readouterr().out and ft.is_finished(out)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
def test_feature_signalled_while_importing_stops_with_one_line(supernet, tmp_path):
    out = tmp_path / "f"
    proc = _start([*_feature_argv(supernet), "--feature_dir", str(out)], tmp_path, "early")
    _wait_importing_torch(proc)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 143 and err.splitlines() == [f"stopped by SIGTERM: {out} is incomplete; "
                                                "rerun the same command to measure again"], err
    assert not ft.is_finished(out)


@pytest.fixture(scope="module")
def analysed(supernet, tmp_path_factory):
    """A finished feature.py analysis of the supernet, in a folder of its own."""
    out = tmp_path_factory.mktemp("analysed") / "f"
    assert feature.main([*_feature_argv(supernet)[1:], "--feature_dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("data, problem", [(b"[1, 2]", "holds a list"),
                                           (b"\xff\xfe{}", "not UTF-8"),
                                           (b'{"seed": 2', "not JSON")])
def test_feature_config_json_damaged_is_one_line_naming_it(supernet, analysed, tmp_path, capsys,
                                                           data, problem):
    """The issue's cases: a list or a file not in UTF-8 were a traceback or an unnamed error."""
    out = tmp_path / "f"
    shutil.copytree(analysed, out)
    (out / "config.json").write_bytes(data)
    capsys.readouterr()
    assert feature.main([*_feature_argv(supernet)[1:], "--feature_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out / 'config.json'}: ")
    assert problem in err and "--force" in err
    assert (out / "config.json").read_bytes() == data


def test_feature_refuses_a_stage_folder_as_its_output(supernet, capsys):
    """search1's own groups.json (search2 reads it) is never removed or replaced."""
    stage = supernet / "seed_2" / "search1"
    before = (stage / "groups.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        feature.main([*_feature_argv(supernet)[1:], "--feature_dir", str(stage)])
    assert exc.value.code == 2 and "is a stage folder" in capsys.readouterr().err
    assert (stage / "groups.json").read_bytes() == before


STAGE_ARGS = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--num_cells", "3", "--init_channels", "4", "--batch_size",
        "16", "--epochs", "1", "--device", "cpu", "--num_workers", "0"]


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
@pytest.mark.parametrize("script, extra, sig", [
    ("search.py", ["--stage", "search1"], signal.SIGINT),
    ("augment.py", ["--arch", "DARTS_V2"], signal.SIGHUP),
    ("test.py", [], signal.SIGTERM)])
def test_a_stage_signalled_while_importing_stops_with_one_line(tmp_path, script, extra, sig):
    """A signal in a stage script's first seconds (a run_all stage being started, a Ctrl-C
    right after Enter): SIGINT was a KeyboardInterrupt traceback, SIGTERM / SIGHUP a silent
    end. Now the script's one stop line and 128 + the signal; nothing trained."""
    # test.py takes the data flags, no network or training ones
    data = (STAGE_ARGS[:8] + STAGE_ARGS[12:14] + STAGE_ARGS[16:] if script == "test.py"
            else STAGE_ARGS)
    proc = _start([script, *extra, *data, "--name", "early", "--save_dir", str(tmp_path)],
                  tmp_path, "early")
    _wait_importing_torch(proc)
    proc.send_signal(sig)
    code, _, err = _finish(proc)
    lines = err.splitlines()
    assert code == 128 + sig and len(lines) == 1, err
    assert lines[0].startswith(f"stopped by {signal.Signals(sig).name}"), err
    assert not list(tmp_path.glob("early/*/checkpoint.pt"))
