"""The two test tiers (pytest.ini, tests/conftest.py): an unmarked test that starts a process or
a server fails with the advice to mark it e2e, whichever way it starts one and even if it
swallows the error; a marked test may; `-m "not e2e"` leaves the marked ones out; every test
runs under a per-test timeout (pytest-timeout)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INNER_TESTS = '''
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest


def test_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)


def test_swallowed_by_except_exception():
    try:
        subprocess.run([sys.executable, "-c", "pass"], timeout=60)
    except Exception:
        pass


def test_swallowed_by_except_base_exception():
    try:
        os.system("true")
    except BaseException:
        pass


def test_multiprocessing():
    proc = multiprocessing.get_context("spawn").Process(target=print)
    proc.start()
    proc.join(60)


def test_dataloader_workers():
    import torch
    from torch.utils.data import DataLoader
    list(DataLoader(torch.arange(4), batch_size=2, num_workers=1))


def test_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def test_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


@pytest.fixture(scope="module")
def started():
    return subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True,
                          timeout=60).stdout


def test_module_fixture(started):
    assert started


def test_unit():
    assert sum(range(4)) == 6


@pytest.mark.e2e
def test_marked_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)


@pytest.mark.e2e
def test_marked_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


@pytest.mark.timeout(2)
def test_hangs():
    time.sleep(120)
'''

GUARDED = ["test_subprocess", "test_swallowed_by_except_exception",
           "test_swallowed_by_except_base_exception", "test_multiprocessing",
           "test_dataloader_workers", "test_fork", "test_server", "test_module_fixture"]


def run_inner(tmp_path: Path, *args: str) -> dict:
    """Runs INNER_TESTS under a copy of the suite's conftest.py and pytest.ini in a real pytest
    process; returns its exit status, its output, and {test name: (outcome, what pytest printed
    about it: its summary line and its failure section)}."""
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(ROOT / "pytest.ini", tmp_path / "pytest.ini")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
                           "-o", "testpaths=.", "test_inner.py", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "COLUMNS": "400"})
    out = proc.stdout
    assert "INTERNALERROR" not in out + proc.stderr, out + proc.stderr
    sections = {}
    for part in re.split(r"\n_{3,} (?:ERROR at \w+ of )?", out)[1:]:
        found = re.match(r"(\w+) _{3,}", part)
        if found:
            sections[found.group(1)] = sections.get(found.group(1), "") + part
    outcomes = {}
    for line in out.splitlines():
        found = re.match(r"(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", line)
        if found:
            name = found.group(2)
            outcomes.setdefault(name, (found.group(1), line + "\n" + sections.get(name, "")))
    return {"outcomes": outcomes, "out": out, "rc": proc.returncode}


@pytest.mark.e2e
def test_the_guard_fails_unmarked_tests_that_start_processes_and_lets_marked_ones(tmp_path):
    run = run_inner(tmp_path)
    outcomes, out = run["outcomes"], run["out"]
    for name in GUARDED:
        assert outcomes.get(name, ("missing",))[0] in ("FAILED", "ERROR"), (name, out)
    assert outcomes["test_unit"][0] == "PASSED", out
    assert outcomes["test_marked_subprocess"][0] == "PASSED", out
    assert outcomes["test_marked_server"][0] == "PASSED", out
    # every guarded test is told what to do, in its summary line
    for name in GUARDED:
        assert "mark it @pytest.mark.e2e" in outcomes[name][1], outcomes[name][1]
    assert "starts a network server" in outcomes["test_server"][1]
    assert "DataLoader workers" in outcomes["test_dataloader_workers"][1]
    # the per-test timeout stops a hanging test instead of the suite hanging
    assert outcomes["test_hangs"][0] == "FAILED" and "Timeout" in outcomes["test_hangs"][1], out
    assert run["rc"] == 1


@pytest.mark.e2e
def test_the_fast_tier_leaves_the_marked_tests_out(tmp_path):
    run = run_inner(tmp_path, "-m", "not e2e", "-k", "unit or marked")
    assert {name: outcome for name, (outcome, _) in run["outcomes"].items()} == \
        {"test_unit": "PASSED"}, run["out"]
    assert run["rc"] == 0


def test_the_suite_registers_the_tier_and_a_per_test_timeout(pytestconfig):
    """pytest.ini: the e2e marker is registered (with --strict-markers a misspelt mark is an
    error), and pytest-timeout gives every test a limit."""
    assert any(m.startswith("e2e:") for m in pytestconfig.getini("markers"))
    assert "--strict-markers" in pytestconfig.getini("addopts")
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 600


def test_make_runs_both_tiers_and_test_fast_the_first():
    """`make test` (CI's command, .ci/run) runs every test; `make test-fast` only the unmarked."""
    recipes = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        head = re.match(r"([\w-]+):", line)
        if head:
            target = head.group(1)
        elif line.startswith("\t") and target:
            recipes.setdefault(target, []).append(line.strip())
    assert any("pytest" in r and "e2e" not in r for r in recipes["test"]), recipes["test"]
    assert any("pytest" in r and '-m "not e2e"' in r for r in recipes["test-fast"])
    assert "make test" in (ROOT / ".ci" / "run").read_text()
