"""run_all.py's plan: the settings of each preset, and per method and seed the stage commands,
every input file passed explicitly.

StacNAS (the paper): search1 -> search2 -> augment -> test, in <save_dir>/<name>/seed_<k>/.
DARTS (the baseline the paper compares with): darts -> augment -> test, in
<save_dir>/<name>/darts/seed_<k>/. Both see the same data, seeds and search budget (images,
epochs, cells, channels, batch size, alpha learning rate): only the method differs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.analysis import features
from utils.analysis.summary import SEARCHES, seed_folder
from utils.io.files import read_json
from utils.runtime.gpus import first_gpu
from utils.train.stage import is_finished

METHODS = ("stacnas", "darts")

# Settings per preset; None = the stage script's own default (the paper's settings, config.py).
# search_extra: flags of every search stage (StacNAS's and DARTS's alike).
# alpha_efficiency: the stand-alone trainings of alpha_efficiency.py (README "Alpha efficiency").
PRESETS = {
    "paper": dict(dataset="cifar10", subset=None, search1_epochs=None, search2_epochs=None,
                  darts_epochs=None, augment_epochs=None, search_batch_size=None,
                  augment_batch_size=None, search1_cells=None, search2_cells=None,
                  darts_cells=None, augment_cells=None, search_channels=None,
                  augment_channels=None, extra=[], search_extra=[],
                  alpha_efficiency=dict(epochs=50, num_cells=8, init_channels=16, batch_size=96,
                                        subset=None, edges=None)),
    # Fashion-MNIST on 2 CPU cores in about 11 minutes (README, measured), far above chance.
    "quick": dict(dataset="fashionmnist", subset=2000, search1_epochs=5, search2_epochs=5,
                  darts_epochs=5, augment_epochs=5, search_batch_size=64, augment_batch_size=64,
                  search1_cells=5, search2_cells=5, darts_cells=5, augment_cells=8,
                  search_channels=8, augment_channels=16, augment_subset=5000, extra=[],
                  search_extra=[],
                  alpha_efficiency=dict(epochs=2, num_cells=5, init_channels=8, batch_size=64,
                                        subset=2000, edges="0,1,2,3")),
    # Seconds, on synthetic data: for tests.
    "smoke": dict(dataset="synthetic", subset=None, search1_epochs=1, search2_epochs=1,
                  darts_epochs=1, augment_epochs=1, search_batch_size=16, augment_batch_size=16,
                  search1_cells=3, search2_cells=3, darts_cells=3, augment_cells=3,
                  search_channels=4, augment_channels=4,
                  extra=["--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
                         "--synthetic_classes", "4"], search_extra=[],
                  alpha_efficiency=dict(epochs=1, num_cells=3, init_channels=4, batch_size=16,
                                        subset=None, edges="0")),
}
OVERRIDES = ("search1_epochs", "search2_epochs", "darts_epochs", "augment_epochs",
             "search_batch_size", "augment_batch_size", "search1_cells", "search2_cells",
             "darts_cells", "augment_cells", "search_channels", "augment_channels")
# run_all's flags that size every stage at once; a per-stage flag (OVERRIDES,
# AE_OVERRIDES) still wins over them: --epochs 3 --augment_epochs 10.
COMMON = ("epochs", "num_cells", "init_channels", "batch_size")
# The alpha-efficiency trainings' settings (the preset's alpha_efficiency entry), one flag each.
AE_OVERRIDES = {"alpha_efficiency_epochs": "epochs", "alpha_efficiency_cells": "num_cells",
                "alpha_efficiency_channels": "init_channels",
                "alpha_efficiency_batch_size": "batch_size",
                "alpha_efficiency_subset": "subset", "alpha_efficiency_edges": "edges"}


def common_key(flag: str) -> str | None:
    """The COMMON flag (or subset) a per-stage flag falls back to: `search1_cells` ->
    num_cells, `augment_batch_size` -> batch_size, `alpha_efficiency_subset` -> subset;
    None for one with no common flag (alpha_efficiency_edges)."""
    if flag in AE_OVERRIDES:
        key = AE_OVERRIDES[flag]
        return key if key in (*COMMON, "subset") else None
    for ending, key in (("epochs", "epochs"), ("batch_size", "batch_size"),
                        ("cells", "num_cells"), ("channels", "init_channels")):
        if flag.endswith(ending):
            return key
    return None


def stage_value(args: argparse.Namespace, flag: str, preset_value=None):
    """The value a stage gets for per-stage setting `flag`: that flag when given, else the
    common flag it falls back to (common_key) when given, else `preset_value` (None: the stage
    script's own default)."""
    for key in (flag, common_key(flag)):
        value = getattr(args, key, None) if key else None
        if value is not None:
            return value
    return preset_value


def method_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    return seed_folder(Path(args.save_dir) / args.name, method, f"seed_{seed}")


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _common(args: argparse.Namespace, dataset: str, extra: list[str]) -> list[str]:
    """Data, device and logging flags every stage script takes: run_all's --gpu N (one GPU,
    the first one named: utils.runtime.gpus.select_gpu) and --print_freq reach every stage."""
    return ["--dataset", dataset, "--data_dir", args.data_dir, "--device", args.device,
            *_opt("--gpu", first_gpu(getattr(args, "gpu", None))),
            *_opt("--print_freq", getattr(args, "print_freq", None)),
            *_opt("--num_workers", getattr(args, "num_workers", None)), *extra,
            *(["--no-download"] if args.no_download else [])]


def speed_flags(args: argparse.Namespace, training: bool = True) -> list[str]:
    """run_all's --amp / --channels_last (every stage that runs a network) and --compile
    (the training stages)."""
    cl = getattr(args, "channels_last", None)
    return [*_opt("--amp", getattr(args, "amp", None)),
            *([] if cl is None else ["--channels_last" if cl else "--no-channels_last"]),
            *(["--compile"] if training and getattr(args, "compile", False) else [])]


def stage_commands(args: argparse.Namespace, seed: int,
                   method: str = "stacnas") -> list[tuple[str, list[str]]]:
    """(stage, argv) per stage of one seed of one method."""
    preset = PRESETS[args.preset]
    pick = {k: stage_value(args, k, preset.get(k)) for k in OVERRIDES}
    dataset = args.dataset or preset["dataset"]
    seed_dir = method_dir(args, method, seed)
    common = ["--name", seed_dir.name, "--save_dir", str(seed_dir.parent), "--seed", str(seed),
              *_common(args, dataset, preset["extra"])]
    subset = args.subset or preset.get("subset")
    search = [*common, *_opt("--subset", subset), *_opt("--batch_size", pick["search_batch_size"]),
              *_opt("--init_channels", pick["search_channels"]), *preset["search_extra"],
              *speed_flags(args)]
    if method == "stacnas":  # DARTS keeps its own bilevel scheme on a 50/50 split
        search += [*_opt("--optimization", args.optimization),
                   *_opt("--train_ratio", args.train_ratio)]
    if not args.alpha_share:
        search.append("--no-alpha_share")
    if method == "stacnas":
        searches = [
            ("search1", ["search.py", "--stage", "search1", *search,
                         *_opt("--num_cells", pick["search1_cells"]),
                         *_opt("--epochs", pick["search1_epochs"])]),
            ("search2", ["search.py", "--stage", "search2", *search,
                         "--search1_dir", str(seed_dir / "search1"),
                         *_opt("--num_cells", pick["search2_cells"]),
                         *_opt("--epochs", pick["search2_epochs"])])]
    else:
        searches = [("darts", ["search.py", "--stage", "darts", *search,
                               *_opt("--num_cells", pick["darts_cells"]),
                               *_opt("--epochs", pick["darts_epochs"])])]
    final_search = SEARCHES[method][-1]
    commands = [
        *searches,
        ("augment", ["augment.py", *common,
                     "--genotype", str(seed_dir / final_search / "genotype.json"),
                     *_opt("--subset",
                           preset.get("augment_subset") if args.subset is None else subset),
                     *_opt("--batch_size", pick["augment_batch_size"]),
                     *_opt("--num_cells", pick["augment_cells"]),
                     *_opt("--init_channels", pick["augment_channels"]),
                     *_opt("--epochs", pick["augment_epochs"]), *speed_flags(args)]),
        ("test", ["test.py", *common, "--checkpoint", str(seed_dir / "augment" / "checkpoint.pt"),
                  *speed_flags(args, training=False)]),
    ]
    if args.feature and method == "stacnas":
        commands.append(("feature", ["feature.py", *common, "--stage", "search1",
                                     *_opt("--subset", subset)]))
    return commands


def alpha_efficiency_dir(args: argparse.Namespace, seed: int) -> Path:
    return seed_folder(Path(args.save_dir) / args.name, "alpha_efficiency", f"seed_{seed}")


def alpha_efficiency_command(args: argparse.Namespace, seed: int, methods: list[str]) -> list[str]:
    """alpha_efficiency.py on the final search of each method of one seed (side by side), at
    the preset's scale unless run_all's flags set it (stage_value: --alpha_efficiency_epochs,
    else --epochs, else the preset's)."""
    preset = PRESETS[args.preset]
    ae = {key: stage_value(args, flag, preset["alpha_efficiency"][key])
          for flag, key in AE_OVERRIDES.items()}
    dirs = [str(method_dir(args, m, seed) / SEARCHES[m][-1]) for m in methods]
    return ["alpha_efficiency.py", "--search_dir", *dirs, "--labels", ",".join(methods),
            "--out", str(alpha_efficiency_dir(args, seed)), "--seeds", str(seed),
            *_common(args, args.dataset or preset["dataset"], preset["extra"]),
            *_opt("--epochs", ae["epochs"]), *_opt("--num_cells", ae["num_cells"]),
            *_opt("--init_channels", ae["init_channels"]), *_opt("--batch_size", ae["batch_size"]),
            *_opt("--subset", ae["subset"]), *_opt("--edges", ae["edges"]), *speed_flags(args)]


def stage_done(seed_dir: Path, stage: str) -> bool:
    """True when `stage` of a seed is finished, judged by the marker the stage writes last, so
    that an interrupted stage is never taken as done (it is rerun and resumes):
    search1/search2/darts and augment: checkpoint.pt marked finished, saved after every other
    output (genotype.json / results.json required too); test: results.json, its only output,
    written atomically, of the training now in augment/ (its run id); feature: groups.json,
    written last (utils.analysis.features.is_finished); alpha_efficiency: alpha_efficiency.json,
    written after its CSV and figure."""
    if stage in ("search1", "search2", "darts"):
        return is_finished(seed_dir / stage, "genotype.json")
    if stage == "augment":
        return is_finished(seed_dir / stage, "results.json")
    if stage == "feature":
        return features.is_finished(seed_dir / "search1" / "feature")
    if stage == "test":
        return _tested_this_training(seed_dir)
    return (seed_dir / "alpha_efficiency.json").is_file()


def _tested_this_training(seed_dir: Path) -> bool:
    """test/results.json is there and names the training run whose augment/results.json is
    there (both carry augment's run id), so that a test of a network an `augment.py --force`
    has since replaced is not taken as done. Files of older versions, without run ids, count
    when present."""
    tested = seed_dir / "test" / "results.json"
    trained = seed_dir / "augment" / "results.json"
    if not tested.is_file():
        return False
    if not trained.is_file():
        return True
    runs = [read_json(f, what="a results file").get("run") for f in (tested, trained)]
    return None in runs or runs[0] == runs[1]
