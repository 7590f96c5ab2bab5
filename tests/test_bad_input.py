"""Bad input, script by script: each case gets a one-line message naming the problem, exit code
2 for usage errors and 1 for runtime ones, no traceback (unless --debug), and no file of an
existing run folder overwritten."""
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import augment
import feature
import genotypes as gt
import run_all
import search
import summary
from utils import genotype_files as gf

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stacnas_test_script_bad", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

SCRIPTS = {"search": search.main, "augment": augment.main, "test": test_script.main,
           "feature": feature.main, "run_all": run_all.main, "summary": summary.main,
           "genotype_files": gf.main}
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu"]
NET = ["--num_cells", "3", "--init_channels", "4"]


class Evil:
    """Unpickling this runs `touch <path>`: a pickle carrying code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished run (search1, search2, augment) and hand-made bad files beside it."""
    d = tmp_path_factory.mktemp("bad")
    common = ["--name", "run", "--save_dir", str(d), "--epochs", "1", *TINY, *NET]
    assert search.main(["--stage", "search1", *common]) == 0
    assert search.main(["--stage", "search2", *common]) == 0
    assert augment.main(["--arch", "DARTS_V2", *common]) == 0
    good = gt.genotype_to_dict(gt.DARTS_V2)
    bad = {"unknown_op": {**good, "normal": [["sep_conv_9x9", 0]] + good["normal"][1:]},
           "index": {**good, "reduce": good["reduce"][:5] + [["skip_connect", 7]] + good["reduce"][6:]},
           "nodes": {**good, "normal": good["normal"][:6]}}
    for name, data in bad.items():
        (d / f"genotype_{name}.json").write_text(json.dumps(data))
    (d / "malformed.json").write_text('{"normal": [["sep_conv_3x3", 0],')
    (d / "empty_dir").mkdir()
    torch.save(Evil(d / "pwned"), d / "evil.pt", _use_new_zipfile_serialization=False)
    (d / "evil.pkl").write_bytes(pickle.dumps(Evil(d / "pwned")))
    return d


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
        ("search", [*search_base, "--batch_size", "0"], 2, "--batch_size: must be a positive integer"),
        ("search", [*search_base, "--num_cells", "2"], 2, "--num_cells: must be >= 3"),
        ("search", [*search_base, "--train_ratio", "0"], 2, "--train_ratio: must be in (0, 1]"),
        ("search", [*search_base, "--train_ratio", "1.01"], 2, "--train_ratio: must be in (0, 1]"),
        ("search", [*search_base, "--epochs", "three"], 2, "expected an integer"),
        ("search", [*search_base, "--learning_rat", "0.1"], 2, "unrecognized arguments: --learning_rat"),
        ("search", [*search_base, "--num_nodes", "5"], 2, "--num_nodes: only 4 intermediate nodes"),
        ("search", [*search_base, "--alphas_from", "best"], 2, "--alphas_from best needs a held-out split"),
        ("search", [*search_base, "--identity_group", "released"], 2, "--identity_group applies to --stage search2"),
        ("search", [*search_base, *TINY[:-2], *NET, "--gpu", "0"], 1, "--gpu 0: no CUDA device"),
        ("search", [*search_base, "--gpu", "0", "--device", "cpu"], 2, "--gpu 0 asks for CUDA device 0"),
        ("search", [*search_base, *net, "--groups", str(d / "missing.json")], 1, "missing.json: not found"),
        ("search", [*search_base, *net, "--groups", str(d / "malformed.json")], 1, "malformed.json: not JSON"),
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
        ("augment", [*aug_base, "--dataset", "svhn"], 2, "invalid choice: 'svhn'"),
        ("augment", [*aug_base, "--epochs", "-3"], 2, "--epochs: must be a positive integer"),
        ("augment", [*aug_base, "--valid_ratio", "1.5"], 2, "--valid_ratio: must be in (0, 1]"),
        ("augment", [*aug_base, "--stage", "search1"], 2, "augment.py runs --stage augment only"),
        ("augment", [*aug_base, "--train_ratio", "0.8", "--valid_ratio", "0.5"], 2,
         "--train_ratio 0.8 and --valid_ratio 0.5 disagree"),
        ("augment", [*aug_base, "--arch", "AMOEBA"], 2, "invalid choice: 'AMOEBA'"),
        ("augment", [*aug_base, "--genotype", str(d / "missing.json")], 1, "missing.json: not found"),
        ("augment", [*aug_base, "--genotype", str(d / "malformed.json")], 1, "malformed.json: not JSON"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_unknown_op.json")], 1,
         "normal[0]: unknown op 'sep_conv_9x9'"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_index.json")], 1,
         "reduce[5]: input 7 out of range"),
        ("augment", [*aug_base, "--genotype", str(d / "genotype_nodes.json")], 1,
         "normal: 6 entries, expected 8"),
        ("augment", [*aug_base, "--genotype", str(s1 / "alphas.json")], 1, "alphas.json"),
        ("test", [*test_base, "--checkpoint", str(d / "missing.pt")], 1, "missing.pt: checkpoint not found"),
        ("test", [*test_base], 1, "no trained network in"),
        ("test", [*test_base, "--load_model_dir", str(d / "empty_dir")], 1, "looked for augment/models/best.pth.tar"),
        ("test", [*test_base, "--stage", "augment"], 2, "test.py runs --stage test only"),
        ("test", [*test_base, "--checkpoint", str(d / "evil.pt")], 1, "refusing to load"),
        ("test", [*test_base, "--checkpoint", str(d / "evil.pkl")], 1, "evil.pkl"),
        ("test", [*test_base, "--checkpoint", str(s1 / "checkpoint.pt")], 1, "not a trained final network"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"), "--synthetic_classes", "10"], 1,
         "expects 3x8x8 inputs and 4 classes"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"), "--export",
                  str(aug / "checkpoint.pt")], 1, "checkpoint.pt exists"),
        ("test", [*test_base, "--checkpoint", str(aug / "checkpoint.pt"), "--batch_size", "0"], 2,
         "must be a positive integer"),
        ("test", ["--name", "x", "--checkpoint", "c.pt", "--dataset", "imagenet1k"], 2, "invalid choice"),
        ("feature", ["--name", "run", "--save_dir", str(d), "--stage", "search2"], 2, "invalid choice"),
        ("feature", ["--name", "nope", "--save_dir", str(d), "--stage", "search1", *TINY], 1, "nope"),
        ("feature", ["--name", "run", "--save_dir", str(d), "--stage", "search1", "--num_groups", "1"], 2,
         "--num_groups"),
        ("run_all", ["--name", "x", "--seeds", "1,a"], 2, "comma-separated integers"),
        ("run_all", ["--name", "x", "--preset", "fast"], 2, "invalid choice: 'fast'"),
        ("summary", ["--stage", "search1", "--num_cells", "2"], 2, "--num_cells must be >= 3"),
        ("summary", ["--stage", "search2"], 2, "--alphas"),
        ("summary", ["--genotype", str(d / "genotype_unknown_op.json")], 1, "unknown op 'sep_conv_9x9'"),
        ("genotype_files", ["--alphas", str(d / "missing.json")], 1, "missing.json: not found"),
        ("genotype_files", ["--alphas", str(d / "malformed.json")], 1, "not JSON"),
        ("genotype_files", ["--genotype", str(d / "genotype_index.json")], 1, "out of range"),
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
    lines = [l for l in err.splitlines() if l.startswith("error:") or ": error:" in l]
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
    """The README counts these cases; keep them in step."""
    assert len(CASES) == 55
    assert len({c[0] for c in CASES}) == 7
