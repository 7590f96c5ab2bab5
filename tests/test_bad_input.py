"""Bad input, script by script: each case gets a one-line message naming the problem, exit code
2 for usage errors and 1 for runtime ones, no traceback (unless --debug), and no file of an
existing run folder overwritten. Hostile and damaged files (pickle bombs, checkpoints lacking a
field or contradicting their own weights, genotype files nested 200,000 deep, not UTF-8, with a
BOM, empty or huge) are each read by a script run as its own process under memory and time
limits."""
import importlib.util
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import augment
import feature
import genotypes as gt
import run_all
import search
import summary
from utils.pickles import unpickler
from tests import authors_format as af
from utils.analysis import derive
from utils.io.checkpoint import FINAL_FORMAT
from utils.io import genotype_checks as gchecks

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stacnas_test_script_bad", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

SCRIPTS = {"search": search.main, "augment": augment.main, "test": test_script.main,
           "feature": feature.main, "run_all": run_all.main, "summary": summary.main,
           "derive": derive.main}
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
    good = gchecks.genotype_to_dict(gt.DARTS_V2)
    bad = {"unknown_op": {**good, "normal": [["sep_conv_9x9", 0]] + good["normal"][1:]},
           "index": {**good, "reduce": good["reduce"][:5] + [["skip_connect", 7]]
                                       + good["reduce"][6:]},
           "nodes": {**good, "normal": good["normal"][:6]}}
    for name, data in bad.items():
        (d / f"genotype_{name}.json").write_text(json.dumps(data))
    (d / "malformed.json").write_text('{"normal": [["sep_conv_3x3", 0],')
    (d / "empty_dir").mkdir()
    _hand_edited(d, json.loads((d / "run" / "search1" / "alphas.json").read_text()))
    torch.save(Evil(d / "pwned"), d / "evil.pt", _use_new_zipfile_serialization=False)
    (d / "evil.pkl").write_bytes(pickle.dumps(Evil(d / "pwned")))
    return d


def _hand_edited(d: Path, alphas: dict) -> None:
    """Hand-edited alphas, groups and genotype files (issue 20, item 9), each in a search1
    folder of its own where search2 reads it: s1_<name>/alphas.json (+ groups.json)."""
    def folder(name, data, groups=None):
        (d / name).mkdir()
        (d / name / "alphas.json").write_text(data if isinstance(data, str) else json.dumps(data))
        if groups is not None:
            (d / name / "groups.json").write_text(json.dumps(groups))
    marked = json.loads(json.dumps(alphas))
    marked["normal"][0][0]["alphas"][2] = 123.25  # sep_conv_3x3's, made the integer 10**400
    folder("s1_huge", json.dumps(marked).replace("123.25", "1" + "0" * 400))
    folder("s1_nodes5", {k: v + [v[-1] + [v[-1][-1]]] for k, v in alphas.items()})
    folder("s1_nodes1", {k: v[:1] for k, v in alphas.items()})
    edited = {**gt.GROUPS, "pooling": {"representative": "avg_pool_3x3",
                                       "members": ["avg_pool_3x3", "max_pool_3x3", "none"]}}
    folder("s1_edited", alphas, edited)
    (d / "groups_zero.json").write_text(json.dumps({"zero": gt.GROUPS["zero"]}))
    (d / "groups_none_only.json").write_text(json.dumps(
        {**gt.GROUPS, "pooling": {"representative": "max_pool_3x3", "members": ["none"]}}))
    cells = gchecks.genotype_to_dict([gt.CellGenotype(gt.DARTS_V2.normal, [2, 3, 4, 5], i == 1)
                                 for i in range(3)])
    (d / "genotype_reductions.json").write_text(json.dumps(cells))


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


# ----------------------------------------------------------------------------- hostile files
# Each case below runs the script as its own process (`python script.py ...`) under a memory
# limit (address space) and a time limit: a file that makes a reader expand without bound
# fails the case instead of the machine. The answer is one line on stderr naming the file.
MEMORY_LIMIT = 6 * 2 ** 30  # importing torch alone maps about 3.5 GB of address space
TIME_LIMIT = 30  # seconds; a case that runs longer is killed and fails
BOUNDED_SECONDS = 20  # what a bomb may take, the interpreter's start included


def _tower(depth: int, make) -> object:
    """`make(x, x)` nested `depth` times: 2^depth leaves, `depth` distinct objects."""
    value = make((), ())
    for _ in range(depth):
        value = make(value, value)
    return value


def _legacy_file(path: Path, main_pickle: bytes) -> None:
    """A legacy torch.save file holding `main_pickle` and no tensors."""
    headers = (unpickler.MAGIC_NUMBER, unpickler.PROTOCOL_VERSION,
               {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}})
    path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in headers) + main_pickle
                     + pickle.dumps([], protocol=2))


def _authors_cnn(extra: bytes = b"") -> bytes:
    """A pickled augment_cnn.AugmentCNN whose _genotypes is the object that `extra` (pickle
    opcodes) leaves on the stack; every other attribute is as the authors' files have it."""
    attrs = {"_input_size": 32, "_channels_in": 3, "_channels_init": 16, "_num_cells": 8,
             "_num_nodes": 4, "_num_classes": 10, "_stem_multiplier": 3, "_auxiliary": False,
             "_aux_pos": 5, "_alpha_share": True}
    body = pickle.dumps(attrs, protocol=2)[2:-1]  # the dict, without PROTO and STOP
    return (b"\x80\x02caugment_cnn\nAugmentCNN\n)\x81" + body
            + pickle.dumps("_genotypes", protocol=2)[2:-1] + extra + b"sb.")


def _with_bom(path: Path, data: bytes) -> Path:
    path.write_bytes(b"\xef\xbb\xbf" + data)
    return path


@pytest.fixture(scope="module")
def hostile(files):
    """Hostile and damaged files beside the finished run of `files`."""
    d = files / "hostile"
    d.mkdir()
    # the bomb: a list holding the same sub-list twice at each of 64 levels
    list_bomb = pickle.dumps(_tower(64, lambda a, b: [a, b]), protocol=2)[2:-1]
    _legacy_file(d / "bomb.pth.tar", _authors_cnn(list_bomb))
    # a dict whose key is a tuple tower: hashing it never ends
    key_bomb = pickle.dumps(_tower(64, lambda a, b: (a, b)), protocol=2)[2:-1]
    _legacy_file(d / "keybomb.pth.tar", _authors_cnn(b"}" + key_bomb + b"K\x01s"))
    # an authors' network claiming 4096 channels, and one whose classifier is a 10^9-element
    # view of one stored number
    model = af.make_authors_model(af.to_nested(gt.DARTS_V2.normal),
                                  af.to_nested(gt.DARTS_V2.reduce), num_cells=3, auxiliary=False)
    model._channels_init = 4096
    af.save_like_authors(model, d / "claims4096.pth.tar")
    model._channels_init = 8
    model._classifier.weight = torch.nn.Parameter(torch.zeros(1).expand(10 ** 9))
    af.save_like_authors(model, d / "expanded.pth.tar")
    # a zip whose one storage (16 MB of zeros) is deflated to a few KB
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2 ** 22)}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(d / "inflating.pth.tar", "w",
                                                         zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    # ours (zip) with a tuple-tower dict key: torch.load itself would hash it forever
    buffer = io.BytesIO()
    torch.save({"format": FINAL_FORMAT}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(d / "keybomb.pt", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-1] + b"}" + key_bomb + b"K\x01s0." if name.endswith(
                "data.pkl") else data)
    # ours: the 1.8 KB file claiming 4096 channels and 30 cells, a bare format, a
    # wrong type, and stage checkpoints damaged for a resume
    final = torch.load(files / "run" / "augment" / "checkpoint.pt", weights_only=True)
    net = final["network"]
    torch.save({**final, "network": {**net, "init_channels": 4096, "num_cells": 30},
                "model": {}}, d / "huge.pt")
    torch.save({"format": FINAL_FORMAT}, d / "bare.pt")
    torch.save({**final, "network": {**net, "init_channels": "4"}}, d / "wrongtype.pt")
    (d / "ra" / "augment").mkdir(parents=True)
    torch.save({k: v for k, v in final.items() if k != "optimizer"} | {"finished": False},
               d / "ra" / "augment" / "checkpoint.pt")
    supernet = torch.load(files / "run" / "search1" / "checkpoint.pt", weights_only=True)
    (d / "rs" / "search1").mkdir(parents=True)
    torch.save({**supernet, "finished": False,  # as `resume` below runs it; its rank's states bad
                "config": {**supernet["config"], "name": "rs", "epochs": 2},
                "rng_ranks": [{**supernet["rng_ranks"][0], "python": "seed"}]},
               d / "rs" / "search1" / "checkpoint.pt")
    torch.save({**supernet, "candidates": {**supernet["candidates"], "normal": "all"}},
               d / "candidates.pt")
    # genotype, alphas and groups files
    good = json.dumps(gchecks.genotype_to_dict(gt.DARTS_V2)).encode()
    (d / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (d / "latin1.json").write_bytes(good.replace(b"sep_conv", b"s\xe9p_conv"))
    _with_bom(d / "bom.json", good)
    (d / "empty.json").write_bytes(b"")
    (d / "huge.json").write_bytes(b" " * (5 * 2 ** 20) + good)
    (d / "folder.json").mkdir()
    (d / "deep.txt").write_text("Genotype(normal=" + "[" * 150 + "]" * 150 + ")")
    alphas = (files / "run" / "search1" / "alphas.json").read_bytes()
    _with_bom(d / "alphas_bom.json", alphas)
    (d / "alphas_latin1.json").write_bytes(alphas + b"\xff")
    (d / "s1").mkdir()
    (d / "s1" / "alphas.json").write_text('{"normal": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return d


def _hostile_cases(d: Path):
    """(id, argv, exit code, fragment of the one stderr line, the file it must name)."""
    net = [*TINY, *NET]
    test = ["test.py", "--name", "t", "--save_dir", str(d / "out"), *TINY, "--checkpoint"]
    def resume(script, name, *extra):
        return [script, "--name", name, "--save_dir", str(d), "--epochs", "2", *net, *extra]
    return [
        ("list-bomb", [*test, str(d / "bomb.pth.tar")], 1, "expand to more than",
         "bomb.pth.tar"),
        ("huge-spec", [*test, str(d / "huge.pt")], 1, "network.init_channels: is 4096",
         "huge.pt"),
        ("bare-format", [*test, str(d / "bare.pt")], 1, "network: missing", "bare.pt"),
        ("augment-resume-missing-key", resume("augment.py", "ra", "--arch", "DARTS_V2"), 1,
         "optimizer: missing", "checkpoint.pt"),
        ("search-resume-wrong-type", resume("search.py", "rs", "--stage", "search1"), 1,
         "rng_ranks[0]: not random-generator states this run can restore",
         "checkpoint.pt"),
        ("feature-bad-candidates", ["feature.py", "--name", "run", "--save_dir", str(d),
                                    "--stage", "search1", *TINY, "--checkpoint",
                                    str(d / "candidates.pt")], 1, "candidates.normal",
         "candidates.pt"),
        ("augment-genotype-deep", ["augment.py", "--name", "g", "--save_dir", str(d / "out"),
                                   *net, "--genotype", str(d / "deep.json")], 1,
         "nested more than", "deep.json"),
        ("search-groups-not-utf8", ["search.py", "--name", "g", "--save_dir", str(d / "out"),
                                    "--stage", "search1", *net, "--groups",
                                    str(d / "latin1.json")], 1, "not UTF-8 text", "latin1.json"),
        ("search2-alphas-deep", ["search.py", "--name", "g", "--save_dir", str(d / "out"),
                                 "--stage", "search2", *net, "--search1_dir", str(d / "s1")], 1,
         "nested more than", "alphas.json"),
        ("summary-genotype-bom", ["summary.py", "--genotype", str(d / "bom.json"),
                                  "--num_cells", "3", "--init_channels", "4"], 0, "", ""),
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIME_LIMIT, preexec_fn=limit_memory)


def _one_line(err: str, name: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert name in lines[0] and "Traceback" not in err, err
    return lines[0]


HOSTILE = _hostile_cases(Path("/placeholder"))  # for ids only


@pytest.mark.parametrize("index", range(len(HOSTILE)), ids=[c[0] for c in HOSTILE])
def test_hostile_file(hostile, index):
    _, argv, code, message, name = _hostile_cases(hostile)[index]
    start = time.monotonic()
    proc = _run(argv)
    assert proc.returncode == code, proc.stderr
    if code:
        assert message in _one_line(proc.stderr, name)
        assert time.monotonic() - start < BOUNDED_SECONDS
    else:
        assert "Traceback" not in proc.stderr and json.loads(proc.stdout)


# the readers' other expansion vectors and a wrong type, through test.py's reader in one
# process
READER_CASES = [("keybomb.pth.tar", "a dict key that is a tuple"),
                ("claims4096.pth.tar", "_stem.0.out_channels is 24, our stem.0.out_channels 12288"),
                ("expanded.pth.tar", "has 1,000,000,000 elements but its storage only 1"),
                ("inflating.pth.tar", "inflate to 16,777,216 bytes"),
                ("keybomb.pt", "a dict key that is a tuple"),
                ("wrongtype.pt", "network.init_channels: is '4', expected an integer")]
_READ_EACH = """
import sys, test
for path in sys.argv[1:]:
    try:
        test.load_network(path)
        print(path, "loaded")
    except RuntimeError as err:
        print(err)
"""


def test_hostile_files_through_the_reader(hostile):
    start = time.monotonic()
    proc = _run(["-c", _READ_EACH, *(str(hostile / f) for f, _ in READER_CASES)])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(READER_CASES), proc.stdout
    for line, (name, message) in zip(lines, READER_CASES):
        assert line.startswith(f"{hostile / name}: ") and message in line, line
    assert time.monotonic() - start < BOUNDED_SECONDS


# genotype_files' command line needs no torch: cheap enough for every kind of bad file
GENOTYPE_FILE_CASES = [
    ("--genotype", "deep.json", 1, "nested more than 16 levels deep"),
    ("--genotype", "latin1.json", 1, "not UTF-8 text (byte 0xe9 at offset"),
    ("--genotype", "bom.json", 0, ""),
    ("--genotype", "empty.json", 1, "empty file"),
    ("--genotype", "huge.json", 1, "larger than 4 MB"),
    ("--genotype", "folder.json", 1, "is a directory"),
    ("--genotype", "deep.txt", 1, "nested more than 16 levels deep"),
    ("--alphas", "alphas_bom.json", 0, ""),
    ("--alphas", "alphas_latin1.json", 1, "not UTF-8 text (byte 0xff"),
]


@pytest.mark.parametrize("flag, name, code, message", GENOTYPE_FILE_CASES,
                         ids=[f"{c[0][2:]}-{c[1]}" for c in GENOTYPE_FILE_CASES])
def test_genotype_file(hostile, flag, name, code, message):
    proc = _run(["-m", "utils.analysis.derive", flag, str(hostile / name)])
    assert proc.returncode == code, proc.stderr
    if code:
        assert message in _one_line(proc.stderr, name)
    else:
        assert not proc.stderr and json.loads(proc.stdout)
