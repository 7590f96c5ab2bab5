"""The StacNAS README's commands, pasted as written: only /path/to/... is replaced by temporary
folders, the released model by a file in the authors' format, CIFAR-10 by a small copy in its
real python-pickle format (so nothing is downloaded), and a few overrides are appended to keep
them small (later flags win). Each runs as its own process, as a user would run it."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import config
import genotypes as gt
from utils.io.genotype_files import load_groups
from tests.authors_format import make_authors_model, save_like_authors, to_nested
from tests.fakes import make_cifar10
from utils.io import genotype_files as gf

ROOT = Path(__file__).resolve().parents[1]

# The StacNAS README, verbatim (search2's line is search1's with --stage and --num_cells changed,
# as the README says).
AUTHORS_COMMANDS = {
    "test": ("python test.py --name job_name --dataset cifar10 --data_dir /path/to/dataset/ "
             """--save_dir /path/to/results/ \\
    --seed 1 --stage test --batch_size 96 --load_model_dir "models/cifar10.pth.tar\""""),
    "search1": ("python search.py --name job_name --dataset cifar10 --train_ratio 1.0 "
                """--data_dir /path/to/dataset/ \\
    --save_dir /path/to/results/ --seed 1 --stage search1 --batch_size 64 --init_channels 16 \\
    --num_cells 14 --grad_clip 3 --aux_weight 0.0 --epochs 80 --alpha_share"""),
    "search2": ("python search.py --name job_name --dataset cifar10 --train_ratio 1.0 "
                """--data_dir /path/to/dataset/ \\
    --save_dir /path/to/results/ --seed 1 --stage search2 --batch_size 64 --init_channels 16 \\
    --num_cells 20 --grad_clip 3 --aux_weight 0.0 --epochs 80 --alpha_share"""),
    "augment": ("python augment.py --name job_name --dataset cifar10 --train_ratio 1.0 "
                """--data_dir /path/to/dataset/ \\
    --save_dir /path/to/results/ --seed 3 --stage augment --batch_size 96 --init_channels 36 \\
    --num_cells 20 --grad_clip 5 --aux_weight 0.4 --epochs 600 --alpha_share"""),
    "feature": ("python feature.py --name job_name --dataset cifar10 "
                """--data_dir /path/to/dataset/ \\
    --save_dir /path/to/results/ --seed 1 --stage search1 --batch_size 64"""),
    "run_all": "python run_all.py",
}
CPU = ["--device", "cpu", "--num_workers", "0"]
SMALL = {
    "search1": ["--epochs", "1", "--num_cells", "3", "--init_channels", "4", "--batch_size", "8",
                *CPU],
    "search2": ["--epochs", "1", "--num_cells", "3", "--init_channels", "4", "--batch_size", "8",
                *CPU],
    "feature": ["--batch_size", "8", "--num_samples", "8", *CPU],
    "augment": ["--epochs", "1", "--num_cells", "3", "--init_channels", "4", "--batch_size", "8",
                *CPU],
    "test": ["--batch_size", "8", *CPU],
    "run_all": ["--search1_epochs", "1", "--search2_epochs", "1", "--augment_epochs", "1",
                "--search1_cells", "3", "--search2_cells", "3", "--augment_cells", "3",
                "--search_channels", "4", "--augment_channels", "4", "--search_batch_size", "8",
                "--augment_batch_size", "8", *CPU],
}


def command(stage: str, dataset: Path, results: Path) -> list[str]:
    text = AUTHORS_COMMANDS[stage].replace("/path/to/dataset/", f"{dataset}/")
    text = text.replace("/path/to/results/", f"{results}/")
    argv = shlex.split(text.replace("\\\n", " "))  # as the shell reads it: continuations, quotes
    assert argv[0] == "python"
    return [sys.executable, str(ROOT / argv[1]), *argv[2:], *SMALL[stage]]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the dataset, the results and the authors' released model file."""
    d = tmp_path_factory.mktemp("authors")
    make_cifar10(d / "dataset", per_batch=6, test=8)
    (d / "models").mkdir()
    g = gt.STACNAS_C10
    model = make_authors_model(to_nested(g.normal), to_nested(g.reduce), channels_init=4,
                               num_cells=3)
    save_like_authors(model, d / "models" / "cifar10.pth.tar")
    return d


@pytest.fixture(scope="module")
def pipeline(workdir):
    """search1 -> search2 -> feature -> augment, each from its README command."""
    outputs = {}
    for stage in ("search1", "search2", "feature", "augment"):
        outputs[stage] = run(command(stage, workdir / "dataset", workdir / "results"), workdir)
    return workdir / "results" / "job_name", outputs


@pytest.mark.e2e
def test_search_commands(pipeline):
    run_dir, _ = pipeline
    for stage in ("search1", "search2"):
        saved = json.loads((run_dir / stage / "config.json").read_text())
        # the authors' values arrived under our names; the appended overrides won
        assert saved["grad_clip"] == 3.0 and saved["aux_weight"] == 0.0 and saved["alpha_share"]
        assert saved["train_ratio"] == 1.0 and saved["seed"] == 1 and saved["num_cells"] == 3
        gf.load_genotype(run_dir / stage / "genotype.json")
        selection = json.loads((run_dir / stage / "selection.json").read_text())
        assert selection["alphas_epoch"] == 1 and selection["rule"] == "last epoch"


@pytest.mark.e2e
def test_feature_command(pipeline):
    """The authors' defaults: their statistic and transform, their stage-1 supernet's ops, the
    first training images in dataset order, and search1's model (the last one: the README's
    search1 has --train_ratio 1.0, no held-out split, which one line says)."""
    run_dir, outputs = pipeline
    out = run_dir / "search1" / "feature"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statistic"] == "position" and summary["transform"] == "train"
    assert summary["samples"] == "first" and summary["model"] == "best"
    assert summary["checkpoint"] == str(run_dir / "search1" / "checkpoint.pt")
    said = [line for line in outputs["feature"].stdout.splitlines() if "held-out" in line]
    assert len(said) == 1 and "no held-out split (--train_ratio 1.0)" in said[0]
    assert (summary["num_images"] == 8
            and set(summary["ops"]) == set(gt.STAGE1_PRIMITIVES) - {"none"})
    load_groups(out / "groups.json")  # a valid groups file for search.py --groups


@pytest.mark.e2e
def test_augment_command(pipeline):
    run_dir, _ = pipeline
    saved = json.loads((run_dir / "augment" / "config.json").read_text())
    assert saved["aux_weight"] == 0.4 and saved["grad_clip"] == 5.0 and saved["seed"] == 3
    assert saved["valid_ratio"] is None  # --train_ratio 1.0: no held-out split
    assert "stage" not in saved and "alpha_share" not in saved  # accepted, nothing to configure
    results = json.loads((run_dir / "augment" / "results.json").read_text())
    assert 0 <= results["test_top1"] <= 100


@pytest.mark.e2e
def test_test_command_on_the_authors_file(workdir):
    done = run(command("test", workdir / "dataset", workdir / "results"), workdir)
    results = json.loads((workdir / "results" / "job_name" / "test" / "results.json").read_text())
    assert results["source"] == "authors" and results["images"] == 8
    assert results["checkpoint"] == "models/cifar10.pth.tar"
    params = results["params_millions"] * 1e6
    assert results["params_authors_unit"] == pytest.approx(params / 2 ** 20, abs=1e-4)
    assert "in the authors' unit (parameters / 2^20" in done.stdout


@pytest.mark.e2e
def test_test_command_without_a_model_evaluates_the_runs_own(pipeline):
    run_dir, _ = pipeline
    argv = command("test", run_dir.parents[1] / "dataset", run_dir.parent)
    cut = argv.index("--load_model_dir")
    run([*argv[:cut], *argv[cut + 2:]], run_dir.parents[1])
    results = json.loads((run_dir / "test" / "results.json").read_text())
    assert results["checkpoint"] == str(run_dir / "augment" / "checkpoint.pt")
    assert results["source"] == "ours"


@pytest.mark.e2e
def test_run_all_without_arguments(workdir):
    folder = workdir / "run_all"
    folder.mkdir()
    (folder / "data").symlink_to(workdir / "dataset")
    done = run(command("run_all", workdir / "dataset", workdir / "results"), folder)
    out = folder / "runs" / "stacnas_cifar10"
    assert f"writing into {out}" in done.stdout
    assert (out / "seed_2" / "test" / "results.json").is_file()
    assert (out / "summary.md").is_file()


@pytest.mark.e2e
def test_run_all_dry_run_prints_the_paper_pipeline(tmp_path):
    done = run([sys.executable, str(ROOT / "run_all.py"), "--dry_run"], tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[run_all] seed")]
    assert [line.split()[3] for line in lines] == ["search1:", "search2:", "augment:", "test:"]
    assert all("--dataset cifar10" in line for line in lines)
    assert "--epochs" not in done.stdout  # the paper's epochs: the scripts' defaults
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("parser, authors, ours", [
    (config.search_parser, "--learning_rate 0.1", ("w_lr", 0.1)),
    (config.search_parser, "--learning_rate_min 0.01", ("w_lr_min", 0.01)),
    (config.search_parser, "--momentum 0.8", ("w_momentum", 0.8)),
    (config.search_parser, "--weight_decay 0.001", ("w_weight_decay", 0.001)),
    (config.search_parser, "--alpha_learning_rate 0.002", ("alpha_lr", 0.002)),
    (config.search_parser, "--alpha_weight_decay 0.01", ("alpha_weight_decay", 0.01)),
    (config.search_parser, "--report_freq 7", ("print_freq", 7)),
    (config.search_parser, "--report_freq 50.0", ("print_freq", 50)),
    (config.search_parser, "--gpu 0,1", ("gpu", 0)),
    (config.search_parser, "--gpu all", ("gpu", 0)),
    (config.search_parser, "--cutout_length 8", ("cutout", 8)),
    (config.search_parser, "--power_lr", ("power_lr", True)),
    (config.search_parser, "--auto_aug", ("auto_aug", True)),
    (config.search_parser, "--label_smooth 0.1", ("label_smooth", 0.1)),
    (config.search_parser, "--num_nodes 4", ("num_nodes", 4)),
    (config.search_parser, "--dataset CIFAR10", ("dataset", "cifar10")),
    (config.augment_parser, "--learning_rate 0.1", ("lr", 0.1)),
    (config.augment_parser, "--learning_rate_min 0.01", ("lr_min", 0.01)),
    (config.augment_parser, "--drop_path_prob 0.3", ("drop_path", 0.3)),
    (config.augment_parser, "--cutout_length 8", ("cutout", 8)),
    (config.augment_parser, "--train_ratio 0.8", ("valid_ratio", 0.2)),
    (config.augment_parser, "--report_freq 7", ("print_freq", 7)),
    (config.augment_parser, "--report_freq 50.0", ("print_freq", 50)),
    (config.augment_parser, "--gpu 1,0", ("gpu", 1)),
    (config.test_parser, "--gpu all", ("gpu", 0)),
    (config.test_parser, "--report_freq 50.0", ("print_freq", 50)),
    (config.augment_parser, "--dataset Fashionmnist", ("dataset", "fashionmnist")),
    (config.test_parser, "--load_model_dir m.pth.tar", ("checkpoint", "m.pth.tar")),
    (config.test_parser, "--stage test", ("stage", "test")),
])
def test_authors_flag_names(parser, authors, ours):
    """Each of the authors' names sets the option ours names, with their meaning."""
    resolve = {config.search_parser: config.resolve_search,
               config.augment_parser: config.resolve_augment,
               config.test_parser: config.resolve_test}[parser]
    stage = ["--stage", "search1"] if parser is config.search_parser else []
    args = config.parse(parser(), resolve, ["--name", "x", *stage, *shlex.split(authors)])
    assert getattr(args, ours[0]) == pytest.approx(ours[1]) if isinstance(ours[1], float) \
        else getattr(args, ours[0]) == ours[1]


def test_help_shows_both_spellings(capsys):
    with pytest.raises(SystemExit):
        config.augment_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for pair in ("--lr LR, --learning_rate LR",
                 "--drop_path DROP_PATH, --drop_path_prob DROP_PATH",
                 "--cutout CUTOUT, --cutout_length CUTOUT",
                 "--print_freq PRINT_FREQ, --report_freq"):
        assert pair in out
