"""Bad flags and usage errors, script by script: each case gets a one-line message naming the
problem, exit code 2 for usage errors and 1 for runtime ones, no traceback (unless --debug),
and no file of an existing run folder overwritten. The cases (bad flag values, unknown datasets
and stages, missing and malformed JSON, hand-edited alphas, groups and genotypes, checkpoints of
another shape or stage, pickles carrying code, a dataset that cannot be downloaded, --gpu
without CUDA) call each script's main in this process, beside the finished run of
tests/bad_input_files.py. Hostile and damaged files, each read by a script run as its own
process under memory and time limits, are in tests/test_hostile_files.py."""
from pathlib import Path

import pytest

import augment
import feature
import run_all
import search
import summary
from tests.bad_input_files import (GENOTYPE_FILE_CASES, HOSTILE, NET, READER_CASES, TINY)
from utils.analysis import derive
from tests.scripts import load_test_py

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
test_script = load_test_py()

SCRIPTS = {"search": search.main, "augment": augment.main, "test": test_script.main,
           "feature": feature.main, "run_all": run_all.main, "summary": summary.main,
           "derive": derive.main}


@pytest.fixture(scope="module")
def files(bad_input_run):
    """A finished run (search1, search2, augment) and hand-made bad files beside it."""
    return bad_input_run


def _cases(d):
    run = d / "run"
    s1, s2, aug = run / "search1", run / "search2", run / "augment"
    net = [*TINY, *NET]
    search_base = ["--name", "x", "--save_dir", str(d), "--stage", "search1"]
    aug_base = ["--name", "x", "--save_dir", str(d), *net]
    test_base = ["--name", "x", "--save_dir", str(d), *TINY]
    return [
        # (script, argv, exit code, message fragment)
        ("search", [*search_base, "--dataset", "cifar11"], 2, "invalid choice: 'cifar11'"),
        ("search", ["--name", "x", "--stage", "search3"], 2, "invalid choice: 'search3'"),
        ("search", [*search_base, "--epochs", "0"], 2, "--epochs: must be a positive integer"),
        ("search", [*search_base, "--batch_size", "0"], 2,
         "--batch_size: must be a positive integer"),
        ("search", [*search_base, "--num_cells", "2"], 2, "--num_cells: must be >= 3"),
        ("search", [*search_base, "--train_ratio", "0"], 2, "--train_ratio: must be in (0, 1]"),
        ("search", [*search_base, "--train_ratio", "1.01"], 2, "--train_ratio: must be in (0, 1]"),
        ("search", [*search_base, "--epochs", "three"], 2, "expected an integer"),
        ("search", [*search_base, "--learning_rat", "0.1"], 2,
         "unrecognized arguments: --learning_rat"),
        ("search", [*search_base, "--num_nodes", "5"], 2, "--num_nodes: only 4 intermediate nodes"),
        ("search", [*search_base, "--alphas_from", "best"], 2,
         "--alphas_from best needs a held-out split"),
        ("search", [*search_base, "--identity_group", "released"], 2,
         "--identity_group applies to --stage search2"),
        ("search", [*search_base, *TINY[:-2], *NET, "--gpu", "0"], 1, "--gpu 0: no CUDA device"),
        ("search", [*search_base, "--gpu", "0", "--device", "cpu"], 2,
         "--gpu 0 asks for CUDA device 0"),
        ("search", [*search_base, *net, "--groups", str(d / "missing.json")], 1,
         "missing.json: not found"),
        ("search", [*search_base, *net, "--groups", str(d / "malformed.json")], 1,
         "malformed.json: not JSON"),
        ("search", [*search_base, "--dataset", "cifar10", "--data_dir", str(d / "empty_dir"),
                    "--no-download"], 1, "cifar10 not found"),
        ("search", [*search_base, "--dataset", "CIFAR100", "--data_dir", str(d / "empty_dir")], 1,
         "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
        ("search", ["--name", "x", "--save_dir", str(d), "--stage", "search2", *net,
                    "--search1_dir", str(d / "empty_dir")], 1, "alphas.json: not found"),
        ("search", ["--name", "x", "--save_dir", str(d), "--stage", "search2", *net,
                    "--search1_dir", str(s2)], 1, "look like stage-2 (or DARTS) alphas"),
        ("search", [*search_base, *net, "--resume", str(d / "missing.pt")], 1,
         "missing.pt: checkpoint not found"),
        # out-of-range values: refused by the parser, nothing created (issue 20, item 12)
        ("search", [*search_base, "--seed", "4294967296"], 2,
         "--seed: must be at most 2,147,483,647"),
        ("search", [*search_base, "--num_cells", "101"], 2, "--num_cells: must be at most 100"),
        ("search", [*search_base, "--init_channels", "30000"], 2,
         "--init_channels: must be at most 2,048"),
        ("search", [*search_base, "--w_lr", "1e400"], 2,
         "--learning_rate: must be a finite number"),
        ("search", [*search_base, *net, "--synthetic_shape", "3,1024,1024", "--synthetic_samples",
                    "10000"], 2, "the synthetic dataset"),
        # hand-edited alphas and groups (issue 20, item 9)
        *[("search", ["--name", "x", "--save_dir", str(d), "--stage", "search2", *net,
                      "--search1_dir", str(d / folder)], 1, message)
          for folder, message in (("s1_huge", "alpha of 'sep_conv_3x3' is 1000"),
                                  ("s1_nodes5", "normal: 5 intermediate node(s), expected 4"),
                                  ("s1_nodes1", "normal: 1 intermediate node(s), expected 4"),
                                  ("s1_edited", "groups.json: representatives ['avg_pool_3x3'"))],
        ("search", [*search_base, *net, "--groups", str(d / "groups_zero.json")], 1,
         "groups_zero.json: only the zero group"),
        ("search", [*search_base, *net, "--groups", str(d / "groups_none_only.json")], 1,
         "groups_none_only.json: pooling: members ['none'] hold no real op"),
        ("augment", [*aug_base, "--dataset", "svhn"], 2, "invalid choice: 'svhn'"),
        ("augment", [*aug_base, "--epochs", "-3"], 2, "--epochs: must be a positive integer"),
        ("augment", [*aug_base, "--valid_ratio", "1.5"], 2, "--valid_ratio: must be in (0, 1]"),
        ("augment", [*aug_base, "--stage", "search1"], 2, "augment.py runs --stage augment only"),
        ("augment", [*aug_base, "--train_ratio", "0.8", "--valid_ratio", "0.5"], 2,
         "--train_ratio 0.8 and --valid_ratio 0.5 disagree"),
        ("augment", [*aug_base, "--arch", "AMOEBA"], 2, "invalid choice: 'AMOEBA'"),
        ("augment", [*aug_base, "--genotype", str(d / "missing.json")], 1,
         "missing.json: not found"),
        ("augment", [*aug_base, "--genotype", str(d / "malformed.json")], 1,
         "malformed.json: not JSON"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_unknown_op.json")], 1,
         "normal[0]: unknown op 'sep_conv_9x9'"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_index.json")], 1,
         "reduce[5]: input 7 out of range"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_nodes.json")], 1,
         "normal: 6 entries, expected 8"),
        ("augment", [*aug_base, "--genotype", str(s1 / "alphas.json")], 1, "alphas.json"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_reductions.json")], 1,
         "cell[2].reduction: is false, but a 3-cell network reduces at cells [1, 2] only"),
        ("augment", [*aug_base, "--epochs", "10000000"], 2,
         "--epochs: must be at most 1,000,000"),
        ("augment", [*aug_base, "--num_workers", "100000"], 2,
         "--num_workers: must be at most 256"),
        ("test", [*test_base, "--checkpoint", str(d / "missing.pt")], 1,
         "missing.pt: checkpoint not found"),
        ("test", [*test_base], 1, "no trained network in"),
        ("test", [*test_base, "--load_model_dir", str(d / "empty_dir")], 1,
         "looked for augment/models/best.pth.tar"),
        ("test", [*test_base, "--stage", "augment"], 2, "test.py runs --stage test only"),
        ("test", [*test_base, "--checkpoint", str(d / "evil.pt")], 1, "refusing to load"),
        ("test", [*test_base, "--checkpoint", str(d / "evil.pkl")], 1, "evil.pkl"),
        ("test", [*test_base, "--checkpoint", str(s1 / "checkpoint.pt")], 1,
         "not a trained final network"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"),
                  "--synthetic_classes", "10"], 1,
         "expects 3x8x8 inputs and 4 classes"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"), "--export",
                  str(aug / "checkpoint.pt")], 1, "checkpoint.pt exists"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"), "--batch_size", "0"], 2,
         "must be a positive integer"),
        ("test", ["--name", "x", "--checkpoint", "c.pt", "--dataset", "imagenet1k"], 2,
         "invalid choice"),
        ("test", [*test_base, "--batch_size", "100000000"], 2,
         "--batch_size: must be at most 65,536"),
        ("test", [*test_base, "--synthetic_shape", "3,8192,8192"], 2,
         "at most 64 channels and 4096 pixels"),
        ("feature", ["--name", "run", "--save_dir", str(d), "--stage", "search2"], 2,
         "invalid choice"),
        ("feature", ["--name", "nope", "--save_dir", str(d), "--stage", "search1", *TINY], 1,
         "nope"),
        ("feature", ["--name", "run", "--save_dir", str(d), "--stage", "search1",
                     "--num_groups", "1"], 2,
         "--num_groups"),
        ("run_all", ["--name", "x", "--seeds", "1,a"], 2, "comma-separated integers"),
        ("run_all", ["--name", "x", "--preset", "fast"], 2, "invalid choice: 'fast'"),
        ("run_all", ["--name", "x", "--seeds", "1,4294967296"], 2, "seeds must be at most"),
        ("run_all", ["--name", "x", "--augment_channels", "30000"], 2,
         "--augment_channels: must be at most 2,048"),
        ("summary", ["--stage", "search1", "--num_cells", "2"], 2, "--num_cells: must be >= 3"),
        ("summary", ["--arch", "DARTS_V2", "--init_channels", "30000"], 2,
         "--init_channels: must be at most 2,048"),
        ("summary", ["--stage", "search2", "--alphas", str(d / "s1_huge" / "alphas.json")], 1,
         "expected a finite number"),
        ("summary", ["--stage", "search2", "--alphas", str(s2 / "alphas.json")], 1,
         "look like stage-2 (or DARTS) alphas"),
        ("summary", ["--stage", "search2"], 2, "--alphas"),
        ("summary", ["--genotype", str(d / "genotype_unknown_op.json")], 1,
         "unknown op 'sep_conv_9x9'"),
        ("derive", ["--alphas", str(d / "missing.json")], 1, "missing.json: not found"),
        ("derive", ["--alphas", str(d / "malformed.json")], 1, "not JSON"),
        ("derive", ["--genotype", str(d / "genotype_index.json")], 1, "out of range"),
        ("derive", ["--alphas", str(d / "s1_huge" / "alphas.json")], 1,
         "normal node 0 edge 0: alpha of 'sep_conv_3x3' is 1000"),
        ("derive", ["--alphas", str(d / "s1_nodes1" / "alphas.json")], 1,
         "1 intermediate node(s), expected 4"),
    ]


CASES = _cases(Path("/placeholder"))  # for ids only; the fixture's paths are used below


def _snapshot(d: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (d / "run").rglob("*") if p.is_file()}


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{c[0]}-{c[3][:30]}" for c in CASES])
def test_bad_input(files, capsys, index):
    script, argv, code, message = _cases(files)[index]
    before = _snapshot(files)
    capsys.readouterr()
    try:
        got = SCRIPTS[script](argv)
    except SystemExit as exc:
        got = exc.code
    out, err = capsys.readouterr()
    assert got == code, err
    assert message in err, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err
    assert _snapshot(files) == before, "a file of the existing run was touched"
    assert not (files / "pwned").exists()


def test_debug_shows_the_traceback(files, capsys):
    argv = ["--name", "x", "--save_dir", str(files), *TINY, *NET,
            "--genotype", str(files / "malformed.json"), "--debug"]
    assert augment.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "malformed.json: not JSON" in err


def test_table_size():
    """docs/faults.md counts these cases (tests/test_docs.py checks it); keep them in step."""
    assert len(CASES) == 78
    assert len({c[0] for c in CASES}) == 7
    assert (len(HOSTILE), len(READER_CASES), len(GENOTYPE_FILE_CASES)) == (10, 6, 9)

