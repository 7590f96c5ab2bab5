"""A script run as the user runs it, for the tests of data faults (tests/test_faults_data.py,
tests/test_faults_loaders.py): in a process group of its own (so that its DataLoader workers
can be looked for), under a time limit (a hang fails the test instead of the suite), and the
one `error:` line it ends with."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import group_gone

ROOT = Path(__file__).resolve().parents[1]
NET = ["--num_cells", "3", "--init_channels", "4", "--epochs", "1", "--device", "cpu"]
LIMIT = 120  # seconds any one script may take here; a hang fails the test instead of the suite


def start_script(script, argv, save_dir):
    """`script` in a process group of its own (so that its workers can be looked for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(save_dir))  # HOME: the idx cache
    return subprocess.Popen([sys.executable, str(ROOT / script), *argv, "--name", "r",
                             "--save_dir", str(save_dir)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(proc, timeout=LIMIT):
    """(exit code, stderr) of `proc`; a process still running after `timeout` is killed with
    its group and fails the test."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: still running after {timeout} s")
    return proc.returncode, err


def one_error_line(err):
    """The message of stderr's one `error:` line (and there is nothing else on stderr)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def run_script(script, argv, save_dir):
    proc = start_script(script, argv, save_dir)
    code, err = finish(proc)
    assert group_gone(proc.pid), "a DataLoader worker outlived the run"
    return code, err

