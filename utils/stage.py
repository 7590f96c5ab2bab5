"""What every stage script does around its loop: detect a finished stage, check that a resumed
run has the configuration it was started with."""
from __future__ import annotations

import argparse
from pathlib import Path

import config
from utils.checkpoint import load_checkpoint


def is_finished(stage_dir: str | Path, output: str) -> bool:
    """True when `<stage_dir>/checkpoint.pt` is marked finished and `output` exists."""
    stage_dir = Path(stage_dir)
    path = stage_dir / "checkpoint.pt"
    if not path.is_file() or not (stage_dir / output).is_file():
        return False
    return bool(load_checkpoint(path).get("finished"))


def check_same_config(state: dict, args: argparse.Namespace, path: str | Path) -> None:
    """Refuse to resume with other options than the run was started with (unless --force)."""
    diffs = config.config_differences(state["config"], config.config_dict(args))
    if diffs and not args.force:
        raise ValueError(f"{path} was written with other options ({'; '.join(diffs)}); rerun "
                         "with the same options, --force to resume anyway, or a new --name")


class NullMetrics:
    """What ranks other than 0 get instead of a MetricsWriter: nothing is written."""

    tb = None

    def write(self, record: dict, step: int) -> None:
        pass

    def truncate_after(self, epoch: int) -> None:
        pass

    def close(self) -> None:
        pass


def silent(message: str) -> None:
    """The log of ranks other than 0."""
