"""The files alpha_efficiency.py reads (StacNAS README, "alpha efficiency"), checked: a finished
search stage folder (alphas.json, genotype.json, config.json, its checkpoint marked finished)
and a finished training run's results.json. Every error is one line that names the file and
says the fix.

The options of a search's config.json are judged by the search parser's own types
(utils.runtime.flags).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from genotypes import GenotypeError, is_shared
from utils.analysis.summary import RESULT_FIELDS, check_numbers
from utils.data.info import DATASETS
from utils.io.files import BadFile, read_json
from utils.io.genotype_files import load_alphas, load_genotype
from utils.runtime import flags
from utils.train.stage import is_finished

FIX = ("finish that search first (rerun its search.py command: it resumes) or pass another "
       "--search_dir")
CONFIG_FIX = "restore it, or rerun that search (search.py --force)"
RUN_FIX = "delete that run's folder to train it again"
# The options of a search's config.json the analysis reads; synthetic_shape and the integer
# ones are judged by the search parser's types (OPTION_TYPES), each from its command-line text.
CONFIG_READ = ("dataset", "data_dir", "synthetic_shape", "synthetic_classes", "synthetic_samples",
               "stage")

OPTION_TYPES = {"synthetic_shape": flags.shape, "synthetic_classes": flags.synthetic_classes,
                "synthetic_samples": flags.synthetic_samples}


def read_search(path: Path, label: str) -> dict:
    """A finished search stage folder: its alphas, genotype and config; errors say the fix."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; pass a search stage folder such as "
                                "runs/cmp/seed_2/search2")
    files = {name: path / f"{name}.json" for name in ("alphas", "genotype", "config")}
    try:
        alphas = load_alphas(files["alphas"])
        if not is_shared(alphas):
            raise GenotypeError(f"{files['alphas']}: per-cell alphas (a --no-alpha_share search); "
                                "alpha efficiency compares shared normal/reduce alphas: search "
                                "with --alpha_share (the default)")
        genotype = load_genotype(files["genotype"])
    except GenotypeError as err:
        fix = FIX if "not found" in str(err) else CONFIG_FIX
        raise GenotypeError(f"{err}; {fix}") from None
    if not files["config"].is_file():
        raise FileNotFoundError(f"{files['config']}: not found; {FIX}")
    cfg = read_search_config(files["config"])
    if not is_finished(path, "genotype.json"):
        raise RuntimeError(f"{path / 'checkpoint.pt'}: the search is not finished (no checkpoint "
                           f"marked finished); {FIX}")
    return {"label": label, "dir": path, "alphas": alphas, "genotype": genotype, "config": cfg,
            "stage": cfg.get("stage", path.name)}


def config_problem(key: str, value) -> str | None:
    """Why `value` cannot be option `key` of a search's config.json (None: it can), judged by
    the search parser's own types (OPTION_TYPES)."""
    if key in ("data_dir", "stage"):
        return None if isinstance(value, str) else "expected a string"
    if key == "dataset":
        ok = isinstance(value, str) and value.lower() in DATASETS
        return None if ok else f"expected one of {', '.join(DATASETS)}"
    if key == "synthetic_shape":
        if not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return "expected [channels, size]"
        text = f"{value[0]},{value[1]},{value[1]}"
    else:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        text = str(value)
    try:
        OPTION_TYPES[key](text)
    except argparse.ArgumentTypeError as err:
        return str(err)
    return None


def read_search_config(path: Path) -> dict:
    """A search's config.json: an object whose options the analysis reads (CONFIG_READ) are
    absent, null or what the search's parser accepts; BadFile naming the file and the option
    otherwise."""
    cfg = read_json(path, what="the search's options (config.json)", fix=CONFIG_FIX)
    for key in CONFIG_READ:
        problem = None if cfg.get(key) is None else config_problem(key, cfg[key])
        if problem:
            raise BadFile(f"{path}: {key} is {json.dumps(cfg[key])[:40]}: {problem}; "
                          + CONFIG_FIX + (f", or pass --{key} here" if key != "stage" else ""))
    return cfg


def read_results(path: Path) -> dict:
    """A finished run's results.json: an object whose numbers (RESULT_FIELDS) are numbers or
    null; BadFile naming the file and the field otherwise."""
    return check_numbers(read_json(path, what="augment.py's results (results.json)", fix=RUN_FIX),
                         (*RESULT_FIELDS, "wall_seconds"), str(path), fix=RUN_FIX)
