"""Script wiring shared by every entry point: seeding, and turning errors into one line."""
from __future__ import annotations

import random
import sys
import traceback
from typing import Callable

import numpy as np
import torch

from genotypes import GenotypeError
from utils.checkpoint import CheckpointError
from utils.files import report_file_size_limit
from utils.signals import Stopped

# Errors a user can cause and fix: answered with one line and exit code 1.
USER_ERRORS = (GenotypeError, CheckpointError, FileNotFoundError, PermissionError,
               ValueError, RuntimeError, FloatingPointError, OSError)


def run_guarded(fn: Callable[[], int], debug: bool = False) -> int:
    """Call `fn`; a user-fixable error prints `error: <message>` (traceback with --debug), exit 1;
    a stop by SIGTERM / SIGINT (utils.signals.StopNow) prints one line, exit 128 + signal."""
    report_file_size_limit()
    try:
        return fn()
    except Stopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
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
