"""A run's configuration as files hold it: the options as given written as config.json (and
into checkpoints), with what the run did for speed beside them ("speed": the plan its device
gave, e.g. float32 where --amp bf16 was refused), and the options in which a resumed run
differs from the run it resumes."""
from __future__ import annotations

import argparse
from pathlib import Path

from genotypes import NUM_NODES
from utils.io.files import write_json

# Options that may differ when a run is resumed (they do not change its result).
# (paths may change when a run folder moves; stage inputs are checked by content instead)
# (fast_path, keep_freed_memory: config.json of earlier versions; now inside "speed")
RESUME_NEUTRAL = {"device", "gpu", "channels_last", "speed", "fast_path", "keep_freed_memory",
                  "num_workers", "print_freq", "force", "debug", "data_dir", "save_dir",
                  "run_dir", "stage_dir", "search1_dir", "genotype", "resume", "no_download"}
# Options added after runs were made: a config.json without them ran with these values.
LATER_OPTIONS = {"num_nodes": NUM_NODES, "label_smooth": 0.0, "cutout": 0, "auto_aug": False,
                 "power_lr": False, "alphas_from": "auto", "identity_group": "single"}


def config_dict(args: argparse.Namespace) -> dict:
    """JSON-ready copy of the configuration (the options after the parser's checks)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items())}


def save_config(args: argparse.Namespace, path: str | Path, speed: dict | None = None) -> None:
    """config.json, strict JSON (the parsers refuse non-finite numbers; were one to pass, it
    would be written as null rather than as JSON's missing NaN); `speed`: the run's speed
    plan (utils.runtime.speed.SpeedPlan.as_dict)."""
    write_json(path, {**config_dict(args), **({"speed": speed} if speed is not None else {})})


def config_differences(saved: dict, current: dict) -> list[str]:
    """Options whose values differ between a run folder's config and this command."""
    saved = {**LATER_OPTIONS, **saved}
    keys = (set(saved) | set(current)) - RESUME_NEUTRAL
    return [f"--{k}: {saved.get(k)!r} -> {current.get(k, LATER_OPTIONS.get(k))!r}"
            for k in sorted(keys) if saved.get(k) != current.get(k, LATER_OPTIONS.get(k))]
