"""Hostile and damaged files (pickle bombs, checkpoints lacking a field or contradicting their
own weights, genotype files nested 200,000 deep, not UTF-8, with a BOM, empty or huge), each
read by a script run as its own process under memory and time limits: one line on stderr naming
the file, exit code 1, within a bounded time. The files lie beside the finished run of
tests/bad_input_files.py, which also holds the catalogue of cases (docs/faults.md counts it)."""
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

import genotypes as gt
from tests import authors_format as af
from tests.bad_input_files import (GENOTYPE_FILE_CASES, HOSTILE, READER_CASES, hostile_cases)
from utils.io import genotype_checks as gchecks
from utils.io.checkpoint import FINAL_FORMAT
from utils.pickles import unpickler

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]

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
def hostile(bad_input_run):
    """Hostile and damaged files beside the finished run of the `bad_input_run` fixture."""
    files = bad_input_run
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


@pytest.mark.parametrize("index", range(len(HOSTILE)), ids=[c[0] for c in HOSTILE])
def test_hostile_file(hostile, index):
    _, argv, code, message, name = hostile_cases(hostile)[index]
    start = time.monotonic()
    proc = _run(argv)
    assert proc.returncode == code, proc.stderr
    if code:
        assert message in _one_line(proc.stderr, name)
        assert time.monotonic() - start < BOUNDED_SECONDS
    else:
        assert "Traceback" not in proc.stderr and json.loads(proc.stdout)


# READER_CASES (tests/bad_input_files.py): the readers' other expansion vectors and a wrong
# type, through test.py's reader in one process
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


# GENOTYPE_FILE_CASES: genotype_files' command line needs no torch, cheap enough for every
# kind of bad file
@pytest.mark.parametrize("flag, name, code, message", GENOTYPE_FILE_CASES,
                         ids=[f"{c[0][2:]}-{c[1]}" for c in GENOTYPE_FILE_CASES])
def test_genotype_file(hostile, flag, name, code, message):
    proc = _run(["-m", "utils.analysis.derive", flag, str(hostile / name)])
    assert proc.returncode == code, proc.stderr
    if code:
        assert message in _one_line(proc.stderr, name)
    else:
        assert not proc.stderr and json.loads(proc.stdout)
