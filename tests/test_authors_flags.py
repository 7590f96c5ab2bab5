"""The authors' `--gpu` and `--report_freq` forms in every script, as docs/authors.md's flag table
says ("all"): `--gpu 0,1` / `--gpu all` mean the first listed GPU (all: GPU 0) with one line
saying that torchrun uses several, `--report_freq 50.0` is 50; run_all.py and
alpha_efficiency.py take both and pass them on to every stage they start. Without CUDA, --gpu
stays one error line, also from the scripts that start others, before anything is created."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alpha_efficiency
import config
import feature
import run_all
from utils.analysis import alpha_runs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--num_cells", "3", "--init_channels", "4", "--batch_size",
        "16", "--epochs", "1", "--num_workers", "0"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")

# (parser, resolve, the flags each needs besides --name)
PARSERS = {
    "search.py": (config.search_parser, config.resolve_search, ["--stage", "search1"]),
    "augment.py": (config.augment_parser, config.resolve_augment, []),
    "test.py": (config.test_parser, config.resolve_test, []),
    "feature.py": (feature.feature_parser, feature.resolve_feature, ["--stage", "search1"]),
}


def script(name: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python <name> argv` as its own process, with a time limit."""
    return subprocess.run([sys.executable, str(ROOT / name), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def parse(name: str, *argv: str):
    parser, resolve, needed = PARSERS[name]
    return config.parse(parser(), resolve, ["--name", "x", *needed, *argv])


@pytest.fixture
def cuda(monkeypatch):
    """A machine with 3 usable GPUs, as far as the parser can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize("name", list(PARSERS))
@pytest.mark.parametrize("text, first", [("1", 1), ("0,1", 0), ("2,0,1", 2), ("all", 0),
                                         ("ALL", 0), (" 1 , 3 ", 1)])
def test_gpu_forms_mean_the_first_listed(name, text, first, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse(name, "--gpu", text)
    assert args.gpu == first and type(args.gpu) is int  # plain int: config.json, checkpoints
    assert args.device == f"cuda:{first}"


def test_a_list_prints_one_note_naming_torchrun(cuda, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse("search.py", "--gpu", "0,1")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("note: --gpu 0,1: search.py runs on one GPU, GPU 0")
    assert "torchrun --standalone --nproc_per_node 2 search.py" in err[0]
    assert "run_all.py --gpus 2" in err[0]
    parse("augment.py", "--gpu", "all")  # all: as many as the machine has
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--gpu all: augment.py runs on one GPU, GPU 0" in err[0]
    assert "--nproc_per_node 3 augment.py" in err[0]
    parse("test.py", "--gpu", "2")  # one GPU named: nothing to say
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each process has its own GPU
    parse("search.py", "--gpu", "0,1")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "0,0"], "names a GPU twice"),
    (["--gpu", "0,"], "a list such as 0,1, or all"),
    (["--gpu", "-1"], "a list such as 0,1, or all"),
    (["--gpu", "some"], "a list such as 0,1, or all"),
    (["--gpu", "9" * 20], "at most 2,147,483,647"),
    (["--gpu", "0,1", "--device", "cpu"], "--gpu 0,1 asks for CUDA device 0 but --device cpu"),
    (["--report_freq", "50.5"], "must be a whole number of steps, got 50.5"),
    (["--report_freq", "0.0"], "must be a positive integer"),
    (["--report_freq", "nan"], "whole number"),
])
def test_bad_forms_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        parse("search.py", *argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("name", list(PARSERS))
def test_report_freq_as_the_authors_float(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse(name, "--report_freq", "50.0").print_freq == 50
    assert parse(name, "--print_freq", "7").print_freq == 7


@NO_CUDA
@pytest.mark.e2e
def test_gpu_list_without_cuda_is_one_error_line(tmp_path):
    """The authors' form on a machine without CUDA: the existing one line, nothing created."""
    done = script("search.py", "--stage", "search1", "--name", "g", "--save_dir", str(tmp_path),
                  "--gpu", "0,1", "--report_freq", "50.0", *TINY, cwd=tmp_path)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert err[0].startswith("error: --gpu 0: ") and "CUDA" in err[0]
    assert not (tmp_path / "g").exists()


@pytest.mark.e2e
def test_run_all_passes_gpu_and_report_freq_to_every_stage(tmp_path):
    done = script("run_all.py", "--name", "r", "--save_dir", str(tmp_path), "--preset", "smoke",
                  "--dry_run", "--feature", "--alpha_efficiency", "--method", "both",
                  "--gpu", "1,0", "--report_freq", "50.0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stages = [line for line in done.stdout.splitlines() if line.startswith("[run_all] ")
              and ".py " in line]
    names = {line.split(": ", 1)[0].split()[-1] for line in stages}
    assert names == {"search1", "search2", "darts", "augment", "test", "feature",
                     "alpha_efficiency"}
    for line in stages:
        assert " --gpu 1 " in line and " --print_freq 50 " in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "0", "--gpus", "2"], "--gpu 0 runs each stage on one GPU, --gpus 2 on 2 GPUs"),
    (["--gpu", "all", "--device", "cpu"], "--device cpu was given"),
    (["--report_freq", "12.5"], "whole number"),
])
def test_run_all_bad_gpu_forms(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--name", "x", "--save_dir", str(tmp_path), "--preset", "smoke",
                      "--dry_run", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_run_all_note_says_gpus(cuda, tmp_path, capsys):
    assert run_all.main(["--name", "n", "--save_dir", str(tmp_path), "--preset", "smoke",
                         "--dry_run", "--gpu", "0,1,2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: --gpu 0,1,2: run_all.py runs on one GPU, GPU 0 (the first listed, as "
                   "the authors' code does); run_all.py --gpus 3 runs every stage on 3 GPUs "
                   "(torchrun)"]


@NO_CUDA
@pytest.mark.parametrize("name, argv", [
    ("run_all.py", ["--name", "r", "--preset", "smoke"]),
    ("alpha_efficiency.py", ["--search_dir", "missing", "--out", "ae"]),
])
@pytest.mark.e2e
def test_scripts_that_start_others_check_the_gpu_first(name, argv, tmp_path):
    """One error line before any stage or training run starts (not a failed stage), and
    nothing created."""
    done = script(name, *argv, "--save_dir" if name == "run_all.py" else "--data_dir",
                  str(tmp_path / "out"), "--gpu", "all", cwd=tmp_path)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert err[0].startswith("error: --gpu 0: ") and "CUDA" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_alpha_efficiency_passes_them_to_each_training_run(tmp_path):
    args = config.parse(alpha_efficiency.build_parser(), alpha_efficiency.resolve,
                        ["--search_dir", str(tmp_path), "--gpu", "1,0", "--report_freq", "50.0"],
                        pass_gpu_on=True)
    assert args.gpu == 1 and args.device == "auto" and args.print_freq == 50
    cmd = alpha_runs.augment_command(args, {"dataset": "synthetic"}, {"seed": 2},
                                           tmp_path / "g.json", tmp_path)
    assert cmd[cmd.index("--gpu") + 1] == "1" and cmd[cmd.index("--print_freq") + 1] == "50"
    assert cmd[cmd.index("--device") + 1] == "auto"  # augment.py's --gpu 1 makes it cuda:1
    augment_args = config.parse(config.augment_parser(), config.resolve_augment,
                                ["--name", "x", "--save_dir", str(tmp_path),
                                 *cmd[cmd.index("--gpu"):cmd.index("--gpu") + 4]])
    assert augment_args.device == "cuda:1" and augment_args.print_freq == 50


@pytest.mark.parametrize("main", [run_all.main, alpha_efficiency.main, feature.main])
def test_help_explains_the_forms(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--gpu N|N,M,...|all" in text and "a list such as 0,1 or" in text
    assert "--print_freq PRINT_FREQ, --report_freq PRINT_FREQ" in text
    assert "50.0 is 50" in text
    if main is run_all.main:
        assert "--gpu with --gpus above 1 is an error" in text
