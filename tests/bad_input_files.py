"""The files the bad-input tests give the scripts (tests/test_bad_input.py for bad flags and usage
errors, tests/test_hostile_files.py for crafted and damaged files): a finished tiny run with
hand-made bad files beside it, built once per session for both, and the catalogue of
hostile-file cases, which docs/faults.md counts with test_bad_input.CASES (test_bad_input's
test_table_size and tests/test_docs.py check the count)."""
import json
import os
import pickle
from pathlib import Path

import torch

import augment
import genotypes as gt
import search
from utils.io import genotype_checks as gchecks

TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu"]
NET = ["--num_cells", "3", "--init_channels", "4"]


class Evil:
    """Unpickling this runs `touch <path>`: a pickle carrying code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def build_finished_run(d: Path) -> Path:
    """Runs the three stages in `d`/run and writes the bad files beside it; returns `d` (the
    session fixture `bad_input_run` of tests/conftest.py: built once for test_bad_input.py and
    test_hostile_files.py, neither of which writes into its run/)."""
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


def hostile_cases(d: Path):
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


HOSTILE = hostile_cases(Path("/placeholder"))  # for ids only

# the readers' other expansion vectors and a wrong type, through test.py's reader in one
# process
READER_CASES = [("keybomb.pth.tar", "a dict key that is a tuple"),
                ("claims4096.pth.tar", "_stem.0.out_channels is 24, our stem.0.out_channels 12288"),
                ("expanded.pth.tar", "has 1,000,000,000 elements but its storage only 1"),
                ("inflating.pth.tar", "inflate to 16,777,216 bytes"),
                ("keybomb.pt", "a dict key that is a tuple"),
                ("wrongtype.pt", "network.init_channels: is '4', expected an integer")]

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
