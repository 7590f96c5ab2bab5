"""Script wiring shared by every entry point: the command-line parser whose usage errors are
one line, seeding, and turning errors into one line (on stderr and in the run's log)."""
from __future__ import annotations

import argparse
import random
import sys
import traceback
from collections.abc import Callable

import numpy as np
import torch

from genotypes import GenotypeError
from utils.io.checkpoint import CheckpointError
from utils.io.files import report_file_size_limit
from utils.runtime.logging import note_in_logs, opened_logs
from utils.runtime.signals import Stopped

# Errors a user can cause and fix: answered with one line and exit code 1.
USER_ERRORS = (GenotypeError, CheckpointError, FileNotFoundError, PermissionError,
               ValueError, RuntimeError, FloatingPointError, OSError)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, except that a usage error is one line on stderr, `<prog>: error:
    <message> (see --help)`, exit 2, instead of the whole usage block first (README: "bad input
    gets one line"). --help is unchanged."""

    def error(self, message: str):
        text = " ".join(str(message).split())  # one line, whatever the message holds
        self.exit(2, f"{self.prog}: error: {text} (see --help)\n")


def run_guarded(fn: Callable[[], int], debug: bool = False) -> int:
    """Call `fn`; a user-fixable error prints `error: <message>` (traceback with --debug), exit 1;
    a stop by SIGTERM / SIGINT / SIGHUP (utils.runtime.signals.StopNow) prints one line, exit 128 +
    signal. Either line is also appended to every log.txt this process opened
    (utils.runtime.logging.note_in_logs), so that the log a failed stage leaves says why it
    ended."""
    report_file_size_limit()
    logs_before = len(opened_logs())
    try:
        return fn()
    except Stopped as stop:
        print(stop, file=sys.stderr)
        note_in_logs(str(stop), opened_logs()[logs_before:])
        return stop.exit_code
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        note_in_logs(f"error: {message}", opened_logs()[logs_before:])
        return 1


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
