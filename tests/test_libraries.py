"""Where a library does the work (issue 21): the folder lock is filelock's, the TensorBoard
records are tensorboardX's RecordWriter's. Each guarantee the project needs from them is shown
here with real processes: the holder named, kill -9 (a forked child included) leaves no lock,
a lock handed to alpha_efficiency.py's training run outlives a killed parent, a filesystem
without locks is one warning, a full disk is one line naming the file; event files stay
readable after a full disk, and a second writer never truncates the first one's file."""
import errno
import fcntl
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils.runtime.lock import FolderBusy, FolderLock

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def _python(code: str, *args, **popen) -> subprocess.Popen:
    """`python -c code args` in the project root, its output piped as text."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _reap(pid: int) -> None:
    """Kill the process `pid` (one this test started, indirectly) if it still runs."""
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------- the lock
HOLD_AND_FORK = """
import os, sys, time
from utils.runtime.lock import FolderLock
FolderLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:          # like a DataLoader worker, forked while the lock is held
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


@pytest.mark.e2e
def test_a_busy_folder_names_its_holder_and_kill_9_frees_it_though_a_forked_child_lives(tmp_path):
    holder = _python(HOLD_AND_FORK, tmp_path)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(FolderBusy) as busy:
            FolderLock(tmp_path).acquire()
        assert str(busy.value) == (f"{tmp_path} is in use by another run (pid {holder.pid} on "
                                   f"{HOST}); wait for it to end or stop it, "
                                   "or pass another --name")
        holder.kill()
        holder.wait(timeout=30)  # not communicate(): the child still holds the output pipes
        assert _alive(child)
        FolderLock(tmp_path).acquire().release()  # free at once: the child closed its copy
    finally:
        holder.kill()
        _reap(child)
        holder.communicate(timeout=30)


HAND_OVER_THEN_DIE = """
import os, signal, subprocess, sys
from utils.analysis import alpha_runs as ae
from pathlib import Path
# the training run: PR_SET_PDEATHSIG sends it SIGTERM when we die, and it saves first; here
# it ignores SIGTERM, says so, and runs until the test creates <folder>/release
RUN = ("import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, lambda *a: None); "
       "print('ready', flush=True); release = pathlib.Path(sys.argv[1]) / 'release'; "
       "[time.sleep(0.05) for _ in range(1200) if not release.exists()]")
with ae.out_lock(Path(sys.argv[1])) as fd:
    run = subprocess.Popen([sys.executable, "-c", RUN, sys.argv[1]], pass_fds=(fd,),
                           preexec_fn=ae._stop_with_parent(), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    assert run.stdout.readline() == "ready\\n"   # its SIGTERM handler is in place
    print(run.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
WAIT_FOR_IT = """
import sys
from utils.analysis import alpha_runs as ae
from pathlib import Path
with ae.out_lock(Path(sys.argv[1])):
    print("got it", flush=True)
"""


@pytest.mark.e2e
def test_alpha_efficiency_hands_its_lock_to_the_training_run_which_outlives_a_kill_9(tmp_path):
    """One lock implementation for the stages and alpha_efficiency.py (utils.runtime.lock): the
    training run holds the analysis' lock, so a rerun after kill -9 waits until that run has
    stopped."""
    first = _python(HAND_OVER_THEN_DIE, tmp_path)
    line = first.stdout.readline()
    assert line.strip().isdigit(), first.communicate(timeout=60)[1]  # the run's pid, or why not
    run = int(line)
    try:
        first.communicate(timeout=60)  # the run does not hold our pipes
        assert first.returncode == -signal.SIGKILL and _alive(run)
        with pytest.raises(FolderBusy, match=f"pid {first.pid} on "):
            FolderLock(tmp_path).acquire()
        rerun = _python(WAIT_FOR_IT, tmp_path)
        waiting = rerun.stdout.readline()
        assert waiting == (f"waiting for another alpha_efficiency.py (or a training run it "
                           f"left) to release {tmp_path}\n")
        time.sleep(0.5)
        assert rerun.poll() is None and _alive(run)  # the rerun waits while the run lives
        (tmp_path / "release").touch()
        out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        assert out == "got it\n"
        assert not _alive(run)  # the rerun got the lock only once the run had ended
    finally:
        _reap(run)


def test_a_filesystem_without_locks_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                       capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with FolderLock(tmp_path).acquire() as lock, FolderLock(tmp_path).acquire():
        assert lock.inheritable_fd() is None
    assert capsys.readouterr().err == 2 * (f"warning: cannot lock {tmp_path / '.lock'} (No locks "
                                           "available); a second run on this folder would not "
                                           "be noticed\n")


@pytest.mark.e2e
def test_a_full_disk_while_locking_is_one_line_naming_the_lock_file(tmp_path):
    def no_room():
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "search.py", "--stage", "search1", "--dataset",
                           "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
                           "--synthetic_classes", "4", "--num_cells", "3", "--init_channels", "4",
                           "--epochs", "1", "--device", "cpu", "--num_workers", "0", "--name", "r",
                           "--save_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=no_room, timeout=120)
    lock_file = tmp_path / "r" / "search1" / ".lock"
    assert proc.returncode == 1
    assert proc.stderr == f"error: cannot write {lock_file}: File too large; make room and rerun " \
                          "the same command\n"


def test_a_filelock_without_the_hooks_we_need_is_one_line(tmp_path, monkeypatch):
    import filelock
    monkeypatch.setattr(filelock, "FileLock", type("OldFileLock", (), {}))
    with pytest.raises(RuntimeError, match=r"too old to lock .*filelock>=3\.30"):
        FolderLock(tmp_path).acquire()


# ------------------------------------------------------------------------ TensorBoard records
def read_events(path: Path) -> tuple[list, int]:
    """(events, bytes of a partial last record) of an event file, every whole record's two
    checksums checked as TensorBoard's reader does."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c
    blob, at, events = path.read_bytes(), 0, []
    while at + 12 <= len(blob):
        header = blob[at:at + 8]
        (length,), (header_crc,) = (struct.unpack("<Q", header),
                                    struct.unpack("<I", blob[at + 8:at + 12]))
        assert header_crc == masked_crc32c(header)
        if at + 16 + length > len(blob):
            break
        data = blob[at + 12:at + 12 + length]
        assert (struct.unpack("<I", blob[at + 12 + length:at + 16 + length])[0]
                == masked_crc32c(data))
        events.append(Event.FromString(data))
        at += 16 + length
    return events, len(blob) - at


FILL_THE_DISK = """
import sys, torch
from pathlib import Path
from utils.runtime.cli import run_guarded
from utils.runtime.logging import MetricsWriter

def fill():
    metrics = MetricsWriter(Path(sys.argv[1]))
    for epoch in range(1, 100000):
        metrics.write({"epoch": epoch, "loss": 1.0 / epoch}, epoch)
        metrics.tb.add_histogram("alphas/normal", torch.linspace(0, 1, 50), epoch)
    return 0

sys.exit(run_guarded(fill))
"""


@pytest.mark.e2e
def test_a_full_disk_is_one_line_naming_the_event_file_which_stays_readable(tmp_path):
    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))

    proc = _python(FILL_THE_DISK, tmp_path, preexec_fn=file_size_limit)
    out, err = proc.communicate(timeout=120)
    [events_file] = (tmp_path / "tb").iterdir()
    assert proc.returncode == 1
    assert err == (f"error: cannot write {events_file}: File too large; "
                   "make room and rerun the same command\n")
    events, partial = read_events(events_file)
    assert events[0].file_version == "brain.Event:2" and partial < 200
    steps = [e.step for e in events[1:]]
    assert len(steps) > 30 and steps == sorted(steps)
    assert ([v.tag for e in events[1:4] for v in e.summary.value]
            == ["epoch", "loss", "alphas/normal"])
    assert events[2].summary.value[0].simple_value == pytest.approx(1.0)


def test_a_second_writer_in_the_same_second_keeps_the_first_ones_file(tmp_path, monkeypatch):
    """tensorboardX's EventsWriter names its file by the second and opens it with "wb": the
    second writer below would truncate the first one's file. EventsFile takes a new name."""
    from utils.runtime.logging import EventsFile
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    first = EventsFile(tmp_path)
    first.add_scalar("loss", 0.5, 1)
    first.add_text("genotype", "normal=[...]", 1)
    first.close()
    second = EventsFile(tmp_path)
    second.add_histogram("alphas", torch.tensor([0.1, 0.9]), 2)
    second.close()
    name = f"events.out.tfevents.1700000000.{HOST}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.1"]
    tags = [[v.tag for e in read_events(tmp_path / n)[0] for v in e.summary.value]
            for n in (name, f"{name}.1")]
    assert tags == [["loss", "genotype/text_summary"], ["alphas"]]
    # tensorboardX's EventsWriter, same second: one file, the first writer's records gone
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.summary import scalar
    (tmp_path / "tbx").mkdir()
    library = EventsWriter(str(tmp_path / "tbx" / "events"))
    event_type = type(read_events(tmp_path / name)[0][0])
    library.write_event(event_type(step=1, summary=scalar("loss", 0.5)))
    library.close()
    EventsWriter(str(tmp_path / "tbx" / "events")).close()
    [lost] = (tmp_path / "tbx").iterdir()
    assert [e.step for e in read_events(lost)[0]] == [0]  # only the second writer's header
