"""Test-wide settings and the two test tiers.

One intra-op thread: the suite's networks are tiny, so one thread is as fast and avoids
oversubscribing a 2-core machine (also in the subprocesses tests start).

Tiers (pytest.ini registers the marker): a test marked ``e2e`` may start processes (scripts,
torchrun, DataLoader workers, multiprocessing) and network servers; every other test is a fast
unit test, and this file makes that a rule rather than a hope: while an unmarked test runs
(its setup, call and teardown), starting a process or listening on a socket raises
``NotMarkedE2E`` and the test fails with a line telling its author to mark it ``e2e``. The
guard is on in both tiers, so a missing mark fails ``make test`` (and CI) as well as
``make test-fast``."""
import multiprocessing.process
import os
import socket
import subprocess

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

E2E = "e2e"
ADVICE = ("this test {what} but is not marked e2e: mark it @pytest.mark.e2e (or "
          "`pytestmark = pytest.mark.e2e` for a file that is end-to-end throughout) so that "
          "`make test-fast` (pytest -m 'not e2e') stays free of processes and servers")
VIOLATIONS = pytest.StashKey[list]()


@pytest.fixture
def download_isolated(tmp_path, monkeypatch):
    """For the download tests: no real system copy, no home cache, no internet
    (tests/download_server.isolate)."""
    from tests.download_server import isolate
    isolate(tmp_path, monkeypatch)


@pytest.fixture
def server():
    """A local HTTP server serving nothing yet (tests/download_server.Server)."""
    from tests.download_server import Server
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="session")
def bad_input_run(tmp_path_factory):
    """A finished tiny run with hand-made bad files beside it (tests/bad_input_files.py),
    built once for tests/test_bad_input.py and tests/test_hostile_files.py."""
    from tests.bad_input_files import build_finished_run
    return build_finished_run(tmp_path_factory.mktemp("bad"))


class NotMarkedE2E(BaseException):
    """Raised where an unmarked test starts a process or a server. A BaseException, so that a
    script's `except Exception` (utils.runtime.cli.run_guarded's error line) cannot swallow it; the
    test also fails if something swallows it anyway (see pytest_runtest_makereport)."""


def _guarded(what: str, record: list):
    """A stand-in for a process- or server-starting function: records `what` and raises."""
    def refuse(*_args, **_kwargs):
        message = ADVICE.format(what=what)
        record.append(message)
        raise NotMarkedE2E(message)
    return refuse


def _entry_points() -> list:
    """(owner, attribute, what) for every way the suite could start a process or a server:
    subprocess (run/call/check_output/Popen/os.popen all reach Popen._execute_child), fork and
    spawn in os (os.spawn*/os.system go through these), multiprocessing and
    torch.multiprocessing (DataLoader workers, Pool, torch.multiprocessing.spawn all call
    BaseProcess.start), and listening sockets (http.server, socketserver)."""
    points = [(subprocess.Popen, "_execute_child", "starts a process (subprocess)"),
              (multiprocessing.process.BaseProcess, "start",
               "starts a process (multiprocessing / torch.multiprocessing / DataLoader workers)"),
              (socket.socket, "listen", "starts a network server (socket.listen)")]
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            points.append((os, name, f"starts a process (os.{name})"))
    return points


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around each unmarked test (setup, call, teardown, fixtures of any scope set up or torn
    down there): every entry point of _entry_points refuses; all are restored afterwards."""
    if item.get_closest_marker(E2E) is not None:
        yield
        return
    record = item.stash.setdefault(VIOLATIONS, [])
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _entry_points()]
    for owner, name, what in _entry_points():
        setattr(owner, name, _guarded(what, record))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test whose NotMarkedE2E was caught by its own code still fails, with the advice."""
    outcome = yield
    report = outcome.get_result()
    record = item.stash.get(VIOLATIONS, [])
    if record and report.passed and report.when == "call":
        report.outcome = "failed"
        report.longrepr = f"NotMarkedE2E: {record[0]}"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole session (see above); the old number restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
