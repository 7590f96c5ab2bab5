"""What run_all.py says about its stages (README, "The pipeline: run_all.py"; docs/faults.md):
how a stage ended (its exit status as a shell reports it, and a failure line naming where its
error is), a stop signal that reached run_all (Interrupted), and the stage times it records in
each seed's timings.json.
"""
from __future__ import annotations

import math
import signal
from pathlib import Path

from utils.io.files import BadFile, read_json


class Interrupted(Exception):
    """A stop signal reached run_all: `where` says at which moment and what to do."""

    def __init__(self, signum: int, where: str):
        super().__init__(where)
        self.signum, self.where = signum, where

    @property
    def line(self) -> str:
        return f"[run_all] stopped by {signal.Signals(self.signum).name} {self.where}"


def how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def failure_text(seed_dir: Path, stage: str, code: int) -> str:
    """How a stage ended and where its error is: the stage's log, whose last line is the
    error (utils.runtime.cli.run_guarded writes it there as well as on stderr); for a stage that
    keeps no log (test.py) or stopped before opening it, the error line printed above."""
    ended = "was " + how_it_ended(code) if code < 0 else f"failed with exit code {code}"
    log = seed_dir / {"feature": "search1/feature", "alpha_efficiency": "."}.get(stage, stage) \
        / "log.txt"
    if code < 0:  # killed: no error line was written anywhere
        return f"{ended}; its log up to then: {log if log.is_file() else 'none written'}"
    if stage == "alpha_efficiency":
        return (f"{ended}; its error is the line above (each training's log: "
                f"{seed_dir}/<search>/<run>/seed_<k>/augment.log)")
    if stage == "test":
        return f"{ended}; its error is the line above (test.py keeps no log)"
    if log.is_file():
        return f"{ended}; its error is on the line above and at the end of its log: {log}"
    return f"{ended} before opening its log; its error is the line above"


def read_timings(path: Path) -> dict:
    """The stage times run_all recorded in `path` ({} when absent); anything but an object of
    non-negative finite numbers is a BadFile naming the file."""
    if not path.is_file():
        return {}
    fix = "remove it (it holds only the stage times the summary shows) and rerun"
    timings = read_json(path, dict, what="run_all's stage times", fix=fix)
    for stage, seconds in timings.items():
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds < 0):
            raise BadFile(f"{path}: {stage!r} is {str(seconds)[:40]!r}, not a number of "
                          f"seconds; {fix}")
    return timings
