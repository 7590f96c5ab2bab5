"""Hand-edited and auxiliary JSON (issue 20, items 9 and 10) and out-of-range size and seed
flags (item 12), each given to the script that reads it, run as its own process under a time
limit: one `error:` line naming the file and the field (or the flag), exit 1 (2 for a flag),
no traceback, nothing created or overwritten. The readers' finer cases run in-process below
(tests/test_bad_input.py and tests/test_hostile_files.py hold the catalogue of bad-input
cases)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genotypes as gt
from utils.io import genotype_files as gf
from utils.analysis import alpha_inputs, alpha_runs
from utils.analysis import summary as sm
from utils.io.checkpoint import FINAL_FORMAT, SEARCH_FORMAT
from utils.io.files import BadFile
from utils.analysis.plots import plot_alpha_history, read_alpha_history

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds a process may take; no test may hang
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", "--device", "cpu",
        "--num_cells", "3", "--init_channels", "4", "--epochs", "1"]
HUGE = "1" + "0" * 400  # the integer 10**400: valid JSON, no float


def _run(argv: list, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python <script or -m module> ...` in `cwd`, one thread, killed after TIMEOUT."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = [str(ROOT / argv[0])] if str(argv[0]).endswith(".py") else [str(argv[0])]
    return subprocess.run([sys.executable, *script, *map(str, argv[1:])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def _error_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The one error line of a failed process, checked: exit `code`, no traceback, every
    fragment in it."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _stage1_alphas() -> dict:
    """Stage-1 alphas as search1 writes them: sep_conv_3x3 strongest on every edge."""
    cands = gt.uniform_candidates(gt.STAGE1_PRIMITIVES, ["normal", "reduce"])
    return {k: [[{"ops": ops, "alphas": [float(op == "sep_conv_3x3") for op in ops]}
                 for ops in node] for node in nodes] for k, nodes in cands.items()}


def _with_huge_alpha() -> str:
    """alphas.json text whose normal node 0 edge 0 sep_conv_3x3 alpha is 10**400."""
    alphas = _stage1_alphas()
    alphas["normal"][0][0]["alphas"][2] = 123.25
    return json.dumps(alphas).replace("123.25", HUGE)


def _edited(change) -> str:
    alphas = _stage1_alphas()
    change(alphas)
    return json.dumps(alphas)


# ----------------------------------------------------------------------------- item 9: alphas
ALPHAS_CASES = {
    "huge-int": (_with_huge_alpha(), "normal node 0 edge 0: alpha of 'sep_conv_3x3' is 1000"),
    "one-node": (_edited(lambda a: [v.__delitem__(slice(1, None)) for v in a.values()]),
                 "normal: 1 intermediate node(s), expected 4"),
    "five-nodes": (_edited(lambda a: [v.append(v[-1] + [v[-1][-1]]) for v in a.values()]),
                   "normal: 5 intermediate node(s), expected 4"),
    "bool-alpha": (_edited(lambda a: a["reduce"][1][2]["alphas"].__setitem__(0, True)),
                   "reduce node 1 edge 2: alpha of 'max_pool_3x3' is True"),
    "op-not-a-name": (_edited(lambda a: a["normal"][3][0]["ops"].__setitem__(1, ["skip"])),
                      "normal node 3 edge 0: unknown op ['skip']"),
    "only-none": (_edited(lambda a: a["normal"][0].__setitem__(1, {"ops": ["none"],
                                                                   "alphas": [0.0]})),
                  "normal node 0: 1 edge(s) with an op other than 'none'"),
    "one-cell": (json.dumps({"cell_0": _stage1_alphas()["normal"]}),
                 "per-cell alpha sets of 1 cells; a network has 3..100 cells"),
}


@pytest.mark.parametrize("name", ALPHAS_CASES)
@pytest.mark.e2e
def test_genotype_files_cli_refuses_hand_edited_alphas(tmp_path, name):
    text, message = ALPHAS_CASES[name]
    path = tmp_path / "alphas.json"
    path.write_text(text)
    proc = _run(["-m", "utils.analysis.derive", "--alphas", path])
    _error_line(proc, 1, f"error: {path}: ", message)
    assert path.read_text() == text and not proc.stdout


def _search1_by_hand(folder: Path, alphas: str, groups: dict | None = None) -> Path:
    """A search1 folder of files put there by hand (search2 takes them as they are)."""
    folder.mkdir(parents=True)
    (folder / "alphas.json").write_text(alphas)
    if groups is not None:
        (folder / "groups.json").write_text(json.dumps(groups))
    return folder


EDITED_GROUPS = {**gt.GROUPS, "dilated": {"representative": "dil_conv_5x5",
                                          "members": ["dil_conv_3x3", "dil_conv_5x5", "none"]}}


@pytest.mark.parametrize("alphas, groups, file, message", [
    (_with_huge_alpha(), None, "alphas.json", "alpha of 'sep_conv_3x3' is 1000"),
    (json.dumps(_stage1_alphas()), EDITED_GROUPS, "groups.json",
     "representatives ['max_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'dil_conv_5x5', 'none'] "
     "are not the ops search1 searched"),
], ids=["huge-alpha", "edited-groups"])
@pytest.mark.e2e
def test_search2_names_the_hand_edited_file(tmp_path, alphas, groups, file, message):
    s1 = _search1_by_hand(tmp_path / "s1", alphas, groups)
    before = {p.name: p.read_bytes() for p in s1.iterdir()}
    proc = _run(["search.py", "--stage", "search2", "--name", "r", "--save_dir", tmp_path,
                 "--search1_dir", s1, *TINY])
    _error_line(proc, 1, f"error: {s1 / file}: ", message)
    assert {p.name: p.read_bytes() for p in s1.iterdir()} == before
    assert not (tmp_path / "r" / "search2" / "checkpoint.pt").exists()


@pytest.mark.e2e
def test_search1_refuses_groups_that_cannot_work(tmp_path):
    """Refused when read, naming the groups file (not after an epoch, naming the alphas)."""
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"zero": gt.GROUPS["zero"]}))
    message = "only the zero group ('none')"
    proc = _run(["search.py", "--stage", "search1", "--name", "r", "--save_dir", tmp_path,
                 "--groups", path, *TINY])
    _error_line(proc, 1, f"error: {path}: ", message)
    assert not (tmp_path / "r" / "search1" / "checkpoint.pt").exists()


@pytest.mark.e2e
def test_summary_script_names_the_alphas_file(tmp_path):
    path = tmp_path / "alphas.json"
    path.write_text(_with_huge_alpha())
    proc = _run(["summary.py", "--stage", "search2", "--alphas", path, "--num_cells", "3",
                 "--init_channels", "4"])
    _error_line(proc, 1, f"error: {path}: normal node 0 edge 0", "expected a finite number")


# ----------------------------------------------------------------------------- item 12: flags
@pytest.mark.parametrize("argv, message", [
    (["search.py", "--stage", "search1", "--seed", "4294967296"],
     "--seed: must be at most 2,147,483,647 (seed + process rank must stay below 2**32)"),
    (["run_all.py", "--seeds", "2,4294967296"], "seeds must be at most 2,147,483,647"),
    (["summary.py", "--arch", "DARTS_V2", "--init_channels", "30000"],
     "--init_channels: must be at most 2,048"),
], ids=["search-seed", "run_all-seeds", "summary-channels"])
@pytest.mark.e2e
def test_out_of_range_flags_are_usage_errors_that_create_nothing(tmp_path, argv, message):
    save = [] if argv[0] == "summary.py" else ["--name", "r", "--save_dir", tmp_path / "runs"]
    proc = _run([*argv, *save], cwd=tmp_path)
    _error_line(proc, 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_summary_counts_a_large_network_without_allocating_it(capsys):
    """summary.py builds on the meta device: the largest network the flags allow is counted
    (no 'cannot allocate memory' traceback), and sizes match a real build's."""
    from summary import main
    assert main(["--arch", "DARTS_V2", "--init_channels", "2048", "--num_cells", "3"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert big["init_channels"] == 2048 and big["params"] > 3 * 10 ** 8  # 1.3 GB in float32


# ----------------------------------------------------------------------------- item 10: summary
def _finished_run(save_dir: Path) -> Path:
    """<save_dir>/x/seed_2 as run_all's smoke preset leaves it, stages marked finished (tiny
    stand-in checkpoints): run_all skips every stage and writes the summary."""
    seed = save_dir / "x" / "seed_2"
    for stage in ("search1", "search2", "augment", "test"):
        (seed / stage).mkdir(parents=True)
    for stage in ("search1", "search2"):
        torch.save({"format": SEARCH_FORMAT, "finished": True, "config": {}},
                   seed / stage / "checkpoint.pt")
        gf.save_genotype(gt.DARTS_V2, seed / stage / "genotype.json")
    torch.save({"format": FINAL_FORMAT, "finished": True, "config": {}},
               seed / "augment" / "checkpoint.pt")
    (seed / "augment" / "results.json").write_text(json.dumps({"test_top1": 50.0}))
    (seed / "test" / "results.json").write_text(json.dumps({"test_top1": 51.0, "test_top5": 90}))
    (seed / "timings.json").write_text(json.dumps({"search1": 1.5, "search2": 2.0}))
    (seed / "search1" / "metrics.jsonl").write_text('{"epoch": 1, "top1": 40.0}\n')
    return seed


def _run_all(save_dir: Path) -> subprocess.CompletedProcess:
    return _run(["run_all.py", "--name", "x", "--save_dir", save_dir, "--preset", "smoke",
                 "--device", "cpu", "--num_workers", "0"], cwd=save_dir)


@pytest.mark.parametrize("file, content, message", [
    ("test/results.json", '{"test_top1": "fifty"}', 'test_top1 is "fifty", expected a number'),
    ("search1/metrics.jsonl", '{"epoch": 1, "top1": 4\n{"epoch": 2, "top1": 5}\n', "line 1"),
], ids=["accuracy-string", "metrics-bad-line"])
@pytest.mark.e2e
def test_run_all_summary_names_a_damaged_file(tmp_path, file, content, message):
    seed = _finished_run(tmp_path)
    (seed / file).write_text(content)
    proc = _run_all(tmp_path)
    _error_line(proc, 1, f"error: {seed / file}: ", message)
    assert (seed / file).read_text() == content
    assert not (tmp_path / "x" / "summary.json").exists()


@pytest.mark.e2e
def test_run_all_summary_skips_a_partial_last_metrics_line(tmp_path):
    """What a full disk or a kill leaves during an append is no error: the line is skipped."""
    seed = _finished_run(tmp_path)
    (seed / "search1" / "metrics.jsonl").write_text('{"epoch": 1, "top1": 40.0}\n{"epoch": 2, "to')
    proc = _run_all(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["seeds"][0]["test_top1"] == 51


@pytest.mark.parametrize("file, data, message", [
    ("augment/results.json", {"test_top1": 10 ** 400}, "test_top1 is 1000"),
    ("augment/results.json", {"macs": True}, "macs is true, expected a number or null"),
    ("search1/metrics.jsonl", [{"top1": 1.0}], "record 1: epoch is null, expected an integer"),
    ("search1/metrics.jsonl", [{"epoch": 1, "valid_top1": "x"}], 'record 1: valid_top1 is "x"'),
    ("timings.json", {"search1": None}, "search1 is null, expected a number"),
    ("timings.json", [1, 2], "holds a list, expected stage times"),
    ("../alpha_efficiency/seed_2/alpha_efficiency.json", {"correlations": []},
     "correlations is [], expected an object"),
    ("../alpha_efficiency/seed_2/alpha_efficiency.json",
     {"correlations": {"s": {"pooled": {"n": 3, "softmax_alpha": {"pearson": {"r": "x"}}}}}},
     'correlations.s.pooled.softmax_alpha.pearson: r is "x"'),
])
def test_summary_checks_every_field_it_reads(tmp_path, file, data, message):
    seed = _finished_run(tmp_path)
    path = Path(os.path.normpath(seed / file))
    path.parent.mkdir(parents=True, exist_ok=True)
    if file.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        path.write_text(json.dumps(data))
    with pytest.raises(BadFile) as info:
        sm.write_summary(tmp_path / "x", ["seed_2"])
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- item 10: others
def _search_by_hand(folder: Path, config_text: str) -> Path:
    folder.mkdir(parents=True)
    gf.save_alphas(_stage1_alphas(), folder / "alphas.json")
    gf.save_genotype(gt.DARTS_V2, folder / "genotype.json")
    (folder / "config.json").write_text(config_text)
    return folder


@pytest.mark.e2e
def test_alpha_efficiency_names_a_config_that_is_a_list(tmp_path):
    search = _search_by_hand(tmp_path / "exp" / "search2", "[1, 2]")
    proc = _run(["alpha_efficiency.py", "--search_dir", search, "--device", "cpu"], cwd=tmp_path)
    _error_line(proc, 1, f"error: {search / 'config.json'}: holds a list",
                "restore it, or rerun that search")
    assert not (tmp_path / "exp" / "alpha_efficiency").exists()


@pytest.mark.parametrize("content, message", [
    (b'{"dataset": "synthetic"', "not JSON"),
    (b'{"dataset": "s\xe9"}', "not UTF-8"),
    (b'{"synthetic_samples": ' + HUGE.encode() + b"}", "synthetic_samples is 1000"),
    (b'{"synthetic_shape": "3,8,8"}', "synthetic_shape is \"3,8,8\": expected [channels, size]"),
    (b'{"synthetic_classes": 0}', "synthetic_classes is 0: must be a positive integer"),
    (b'{"dataset": 10}', "dataset is 10: expected one of"),
    (b'{"data_dir": ["d"]}', 'data_dir is ["d"]: expected a string'),
])
def test_alpha_efficiency_checks_the_search_config(tmp_path, content, message):
    search = _search_by_hand(tmp_path / "search2", "")
    (search / "config.json").write_bytes(content)
    with pytest.raises(BadFile) as info:
        alpha_inputs.read_search(search, "s")
    assert str(info.value).startswith(f"{search / 'config.json'}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    ('{"test_top1": "high"}', 'test_top1 is "high", expected a number or null'),
    ('{"test_top1": 1, "wall_seconds": "1 min"}', 'wall_seconds is "1 min"'),
    ('["test_top1", 1]', "holds a list"),
])
def test_alpha_efficiency_checks_a_runs_results(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(BadFile) as info:
        alpha_inputs.read_results(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "delete that run's folder" in str(info.value)
    assert alpha_runs.result_text({"test_top1": None, "best_valid_top1": None}) == \
        "held-out top-1 -, test - (- s)"


def test_alpha_history_files_are_checked(tmp_path):
    files = []
    for epoch, change in enumerate([lambda a: None, lambda a: None,
                                    lambda a: a["normal"][0].pop(), lambda a: a.pop("reduce")]):
        alphas = _stage1_alphas()
        change(alphas)
        files.append(tmp_path / f"epoch_{epoch + 1:03d}.json")
        files[-1].write_text(json.dumps(alphas))
    assert len(read_alpha_history(files[:2])) == 2
    for bad in files[2:]:
        with pytest.raises(BadFile, match=f"{bad}: its sets, edges or ops differ"):
            read_alpha_history([files[0], bad])
    files[2].write_text(_with_huge_alpha())
    with pytest.raises(BadFile, match=r"normal node 0 edge 0: alphas .* not all finite"):
        plot_alpha_history([files[0], files[2]], tmp_path)
    files[3].write_text('{"normal": 1}')
    with pytest.raises(BadFile, match="not alphas"):
        read_alpha_history([files[3]])
    assert not list(tmp_path.glob("*.png"))


def test_summary_reads_nan_results_as_missing(tmp_path):
    """A diverged run's NaN (a hand-written NaN, or an older test.py's) is reported as
    missing, and summary.json stays strict JSON."""
    seed = _finished_run(tmp_path)
    (seed / "test" / "results.json").write_text('{"test_top1": NaN, "test_top5": Infinity}')
    (seed / "augment" / "results.json").write_text('{"test_top1": NaN}')
    (seed / "timings.json").write_text('{"search1": NaN, "search2": 2.0}')
    _, data = sm.write_summary(tmp_path / "x", ["seed_2"])
    assert data["seeds"][0]["test_top1"] is None and data["seeds"][0]["search_seconds"] is None

    def strict(name):
        raise AssertionError(f"{name} in summary.json")
    json.loads((tmp_path / "x" / "summary.json").read_text(), parse_constant=strict)


def test_parser_bounds_agree_with_the_checkpoint_checks():
    """A value the parsers accept is one a checkpoint may hold, and the largest seed plus any
    process rank still seeds every generator."""
    import argparse

    from utils.io.checkpoint_shapes import RANGES
    from utils.runtime import flags
    from utils.runtime.cli import seed_everything
    assert RANGES["init_channels"] == (1, flags.MAX_CHANNELS)
    assert RANGES["num_cells"] == (gt.MIN_CELLS, gt.MAX_CELLS)
    assert RANGES["input_size"] == (flags.MIN_SIZE, flags.MAX_SIZE)
    assert (RANGES["in_channels"][1], RANGES["num_classes"][1]) == (flags.MAX_IN_CHANNELS,
                                                                  flags.MAX_CLASSES)
    assert flags.seed(str(flags.MAX_SEED)) == flags.MAX_SEED
    assert flags.seed_list(f"0,{flags.MAX_SEED}") == [0, flags.MAX_SEED]
    for parse in (flags.seed, flags.seed_list):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 2,147,483,647"):
            parse(str(flags.MAX_SEED + 1))
    seed_everything(flags.MAX_SEED + 2 ** 20 + 1)  # seed + rank + 1 of a large job
