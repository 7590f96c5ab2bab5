"""What a newcomer met following the README (issue 22), each pinned: usage errors in one line,
run_all's common size flags and alpha-efficiency scale, outputs never silently replaced
(a summary per --method, an alpha-efficiency --out per set of searches, a finished analysis
never overwritten by another), no ignored flag, --synthetic_shape's help and error alike, the
summary titled by its method, a failed stage's error in the log run_all points to, --sync_bn on
the CPU under torchrun, one epoch numbering, one parameter-count format, one demo time, and
examples pointing at folders a command makes."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import alpha_efficiency
import augment
import config
import feature
import genotypes as gt
import run_all
import search
import summary
from utils.analysis import alpha_efficiency as ae
from utils.analysis import alpha_report
from utils.io import genotype_files as gf
from utils.runtime import flags
from utils.runtime.logging import params_text
from utils.train.stage import progress_text
from utils.analysis.summary import write_summary
from tests.scripts import load_test_py

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--num_cells", "3", "--init_channels", "4",
        "--batch_size", "16", "--epochs", "1", "--device", "cpu", "--num_workers", "0"]
SMOKE = ["--preset", "smoke", "--device", "cpu", "--num_workers", "0"]


def _run(argv: list, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`python <argv>` in the project folder, one thread, killed after `timeout`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- usage errors
TEST_SCRIPT = load_test_py()


def _test_main(argv):
    return TEST_SCRIPT.main(argv)


USAGE_CASES = {
    "search.py": (search.main, ["--stage", "search1", "--name", "x", "--epochs", "0"]),
    "augment.py": (augment.main, ["--name", "x", "--no_such_flag"]),
    "test.py": (_test_main, ["--name", "x", "--batch_size", "-1"]),
    "feature.py": (feature.main, ["--name", "x", "--stage", "search3"]),
    "run_all.py": (run_all.main, ["--preset", "fast"]),
    "alpha_efficiency.py": (alpha_efficiency.main, ["--search_dir", "d", "--edges", "9"]),
    "summary.py": (summary.main, ["--arch", "NOPE"]),
}


@pytest.mark.parametrize("script", list(USAGE_CASES))
def test_a_usage_error_is_one_line_not_the_usage_block(script, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, argv = USAGE_CASES[script]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"{script}: error: ") and err.endswith(" (see --help)\n"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_a_usage_error_of_a_real_process_is_one_line(tmp_path):
    proc = _run(["search.py", "--stage", "search1", "--name", "x", "--save_dir", tmp_path,
                 "--synthetic_shape", "3,8,16"])
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.splitlines() == [
        f"search.py: error: argument --synthetic_shape: expected {flags.SHAPE_RULE}; got "
        "'3,8,16' (see --help)"]
    assert list(tmp_path.iterdir()) == []


def test_synthetic_shape_help_and_error_say_the_same(capsys):
    """Only square images work: --help says so, and every refused value gets that same text."""
    help_text = " ".join(config.search_parser().format_help().split())
    assert f"synthetic dataset: {flags.SHAPE_RULE}" in help_text
    assert "square images (H = W" in flags.SHAPE_RULE
    assert flags.shape("3,8,8") == (3, 8) and flags.shape("1,4096,4096") == (1, 4096)
    for bad in ("3,8,16", "3,4,4", "0,8,8", "65,8,8", "3,8192,8192", "3,8", "a,b,c"):
        with pytest.raises(SystemExit):
            config.search_parser().parse_args(["--stage", "search1", "--name", "x",
                                                "--synthetic_shape", bad])
        assert f"expected {flags.SHAPE_RULE}; got {bad!r}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- no ignored flags
def test_feature_offers_no_resume_and_test_says_what_subset_and_force_do(capsys):
    """feature.py measures anew (it never resumed): --resume is not offered. test.py's --subset
    and --force say what they do there (test images; --export)."""
    assert "--resume" not in feature.feature_parser().format_help()
    with pytest.raises(SystemExit) as exit_:
        feature.main(["--name", "x", "--stage", "darts", "--resume", "c.pt"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --resume c.pt" in capsys.readouterr().err
    actions = {a.dest: a for a in config.test_parser()._actions}
    assert "test images" in actions["subset"].help and "--export" in actions["force"].help
    assert "resume" not in actions


def test_test_progress_lines_follow_print_freq(capsys):
    """test.py's --print_freq (the authors' --report_freq) means something: a progress line
    every N batches and after the last."""
    batches = list(TEST_SCRIPT.Progress(list(range(5)), 2))
    assert batches == [0, 1, 2, 3, 4]
    assert capsys.readouterr().out.splitlines() == ["test: batch 2/5", "test: batch 4/5",
                                                     "test: batch 5/5"]


# ----------------------------------------------------------------------------- run_all's sizes
def _dry_run(tmp_path, capsys, *argv) -> dict:
    """run_all --dry_run: {stage: its command line} of seed 2."""
    assert run_all.main(["--name", "d", "--save_dir", str(tmp_path), "--dry_run", *SMOKE,
                         *argv]) == 0
    out = capsys.readouterr().out
    return {line.split(": ", 1)[0].split()[-1]: line.split(": ", 1)[1]
            for line in out.splitlines() if line.startswith("[run_all] seed 2 ")}


def _flag(command: str, flag: str) -> str | None:
    found = re.search(rf" {flag} (\S+)", command)
    return found.group(1) if found else None


def test_common_size_flags_reach_every_stage_and_per_stage_flags_win(tmp_path, capsys):
    stages = _dry_run(tmp_path, capsys, "--epochs", "2", "--num_cells", "4", "--init_channels",
                      "6", "--batch_size", "8", "--subset", "20", "--augment_epochs", "5",
                      "--alpha_efficiency", "--feature")
    for stage in ("search1", "search2", "augment", "alpha_efficiency"):
        assert _flag(stages[stage], "--num_cells") == "4", stage
        assert _flag(stages[stage], "--init_channels") == "6", stage
        assert _flag(stages[stage], "--batch_size") == "8", stage
        assert _flag(stages[stage], "--epochs") == ("5" if stage == "augment" else "2"), stage
    # --subset: every stage that reads training images, augment included (its help says so)
    for stage in ("search1", "search2", "augment", "feature", "alpha_efficiency"):
        assert _flag(stages[stage], "--subset") == "20", stage
    help_text = " ".join(run_all.build_parser().format_help().split())
    assert "use only the first N training images in every stage: search, augment" in help_text


def test_alpha_efficiency_scale_under_run_all_can_be_set(tmp_path, capsys):
    preset = run_all.PRESETS["smoke"]["alpha_efficiency"]
    stages = _dry_run(tmp_path, capsys, "--alpha_efficiency")
    assert _flag(stages["alpha_efficiency"], "--epochs") == str(preset["epochs"])
    stages = _dry_run(tmp_path, capsys, "--alpha_efficiency", "--epochs", "3",
                      "--alpha_efficiency_epochs", "4", "--alpha_efficiency_cells", "5",
                      "--alpha_efficiency_channels", "6", "--alpha_efficiency_batch_size", "7",
                      "--alpha_efficiency_subset", "30", "--alpha_efficiency_edges", "normal:1,3")
    command = stages["alpha_efficiency"]
    assert [_flag(command, f) for f in ("--epochs", "--num_cells", "--init_channels",
                                        "--batch_size", "--subset", "--edges")] == \
        ["4", "5", "6", "7", "30", "normal:1,3"]
    assert _flag(stages["augment"], "--epochs") == "3"
    with pytest.raises(SystemExit):
        run_all.main(["--alpha_efficiency_edges", "9", "--dry_run"])
    assert "edge 9 out of range" in capsys.readouterr().err


# ----------------------------------------------------------------------------- summaries
def _finished_seed(d: Path, search_stage: str, top1: float) -> None:
    """A seed folder as a finished pipeline leaves what the summary reads."""
    (d / search_stage).mkdir(parents=True)
    (d / "test").mkdir()
    gf.save_genotype(gt.DARTS_V2, d / search_stage / "genotype.json")
    (d / "test" / "results.json").write_text(json.dumps({"test_top1": top1, "test_top5": 99.0}))


def test_each_method_keeps_its_own_summary_titled_by_it(tmp_path):
    for seed in (1, 2):
        _finished_seed(tmp_path / f"seed_{seed}", "search2", 90.0)
        _finished_seed(tmp_path / "darts" / f"seed_{seed}", "darts", 80.0)
    both, _ = write_summary(tmp_path, [1, 2], ("stacnas", "darts"))
    kept = both.read_text()
    darts, data = write_summary(tmp_path, [1, 2], ("darts",))
    stacnas, _ = write_summary(tmp_path, [1, 2], ("stacnas",))
    assert [p.name for p in (both, darts, stacnas)] == ["summary_both.md", "summary_darts.md",
                                                        "summary.md"]
    assert both.read_text() == kept and "## StacNAS against DARTS" in kept  # not replaced
    assert kept.startswith("# StacNAS and DARTS pipelines\n")
    assert darts.read_text().startswith("# DARTS baseline summary\n")
    assert stacnas.read_text().startswith("# StacNAS pipeline summary\n")
    assert "StacNAS" not in darts.read_text().split("\n", 1)[0]
    assert data["title"] == "DARTS baseline summary"
    assert json.loads((tmp_path / "summary_darts.json").read_text())["methods"].keys() == {"darts"}


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    """<tmp>/n/: seeds 1 and 2 of both methods finished (every stage taken as done)."""
    for seed in (1, 2):
        _finished_seed(tmp_path / "n" / f"seed_{seed}", "search2", 90.0)
        _finished_seed(tmp_path / "n" / "darts" / f"seed_{seed}", "darts", 80.0)
    monkeypatch.setattr(run_all.plan, "stage_done", lambda seed_dir, stage: True)
    return tmp_path


def test_run_all_darts_after_both_keeps_the_comparison(finished_run, capsys):
    """The issue's case: `--method darts` after `--method both` on the same --name."""
    argv = ["--name", "n", "--save_dir", str(finished_run), *SMOKE]
    assert run_all.main([*argv, "--seeds", "1,2", "--method", "both"]) == 0
    comparison = (finished_run / "n" / "summary_both.md").read_bytes()
    assert run_all.main([*argv, "--seeds", "1,2", "--method", "darts"]) == 0
    out = capsys.readouterr().out
    assert f"[run_all] summary: {finished_run / 'n' / 'summary_darts.md'}" in out
    assert (finished_run / "n" / "summary_both.md").read_bytes() == comparison
    # fewer seeds than the summary of that method covered: said in one line
    assert run_all.main([*argv, "--seeds", "2", "--method", "darts"]) == 0
    out = capsys.readouterr().out
    assert "[run_all] note: summary_darts.md covered seed_1, seed_2, now seed_2" in out


# ----------------------------------------------------------------------------- alpha efficiency
def _ae_args(*argv) -> object:
    return config.parse(alpha_efficiency.build_parser(), alpha_efficiency.resolve, list(argv))


def test_alpha_efficiency_default_out_is_one_per_set_of_searches(tmp_path):
    """The README's two examples (stacnas and darts side by side; stacnas alone) write to two
    folders, not one."""
    s2 = tmp_path / "cmp" / "seed_1" / "search2"
    darts = tmp_path / "cmp" / "darts" / "seed_1" / "darts"
    pair = _ae_args("--search_dir", str(s2), str(darts), "--edges", "0,3")
    alone = _ae_args("--search_dir", str(s2), "--edges", "normal:0,reduce:2", "--subset", "5000")
    assert pair.out == s2.parent / "alpha_efficiency_stacnas+darts"
    assert alone.out == s2.parent / "alpha_efficiency_stacnas"


def _plan(search_dir: Path, label: str, edges: str) -> tuple:
    """A plan as alpha_efficiency.run makes it, for a search folder that need not exist."""
    space = gt.uniform_candidates(gt.PRIMITIVES, ["normal", "reduce"])
    alphas = {k: [[{"ops": ops, "alphas": [0.0] * len(ops)} for ops in node] for node in nodes]
              for k, nodes in space.items()}
    genotype = gt.derive_genotype(alphas)
    search = {"label": label, "dir": search_dir, "stage": "darts",
              "config": {"dataset": "synthetic"}}
    return (search, *ae.plan(alphas, genotype, ae.parse_edges(edges)))


def test_a_finished_analysis_is_never_replaced_by_another(tmp_path):
    out = tmp_path / "ae"
    first = _ae_args("--search_dir", str(tmp_path / "s"), "--edges", "0", "--out", str(out))
    plans = [_plan(tmp_path / "s", "darts", "0")]
    out.mkdir()
    alpha_efficiency.check_out(first, plans)  # nothing there yet
    saved = {"searches": [alpha_report.search_record(first, *p) for p in plans],
             "seeds": first.seeds}
    (out / "alpha_efficiency.json").write_text(json.dumps(saved))
    alpha_efficiency.check_out(first, plans)  # the same analysis again: a rerun goes on
    for argv, edges, what in ((["--edges", "1"], "1", "searches, edges or training options"),
                              (["--edges", "0", "--subset", "9"], "0", "searches"),
                              (["--edges", "0", "--seeds", "3"], "0", "seeds")):
        other = _ae_args("--search_dir", str(tmp_path / "s"), "--out", str(out), *argv)
        with pytest.raises(ValueError) as err:
            alpha_efficiency.check_out(other, [_plan(tmp_path / "s", "darts", edges)])
        message = str(err.value)
        assert message.startswith(f"{out / 'alpha_efficiency.json'}: a finished analysis of "
                                  f"other {what}") and "pass another --out" in message
        assert "\n" not in message


# ----------------------------------------------------------------------------- errors in the log
@pytest.mark.e2e
def test_a_failed_stage_leaves_its_error_in_the_log_run_all_names(tmp_path, capfd,
                                                                 monkeypatch):
    """run_all points to the stage's log.txt: the stage's one error line is there too (the
    last line), not only on stderr; the folder holds more than `.lock` and an empty log."""
    seed = tmp_path / "f" / "seed_2"
    (seed / "search2").mkdir(parents=True)
    (seed / "search2" / "genotype.json").write_text('{"normal": [["sep_conv_3x3", 0]')
    monkeypatch.setattr(run_all.plan, "stage_done",
                        lambda seed_dir, stage: stage in ("search1", "search2"))
    assert run_all.main(["--name", "f", "--save_dir", str(tmp_path), *SMOKE]) == 1
    err = capfd.readouterr().err  # the stage's own line comes from its process
    log = seed / "augment" / "log.txt"
    assert (f"[run_all] stage augment (seed 2) failed with exit code 1; its error is on the "
            f"line above and at the end of its log: {log}") in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(seed / "search2" / "genotype.json") in errors[0]
    assert log.read_text().splitlines()[-1].endswith(f" {errors[0]}")


@pytest.mark.e2e
def test_a_script_error_is_the_last_line_of_its_log(tmp_path):
    """A stage started by hand: the same, as a real process (augment.py, a genotype file that
    is not JSON)."""
    bad = tmp_path / "g.json"
    bad.write_text("{")
    proc = _run(["augment.py", "--name", "r", "--save_dir", tmp_path, "--genotype", bad, *TINY])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {bad}")
    log = tmp_path / "r" / "augment" / "log.txt"
    assert log.read_text().splitlines()[-1].endswith(f" {line}")


# ----------------------------------------------------------------------------- --sync_bn
@pytest.mark.e2e
def test_sync_bn_on_cpu_under_torchrun_is_a_note_not_a_traceback(tmp_path):
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                 ROOT / "augment.py", "--name", "s", "--save_dir", tmp_path, "--arch", "DARTS_V2",
                 "--sync_bn", *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "--sync_bn" in line]
    assert len(notes) == 1 and "note: --sync_bn has no effect on cpu" in notes[0]
    assert (tmp_path / "s" / "augment" / "results.json").is_file()


# ----------------------------------------------------------------------------- one way to count
def test_epochs_are_counted_from_1_in_every_message():
    """The stop message, the resume message and the checks of an unfinished stage all say
    where a checkpoint stands the same way: `done` epochs finished, `step` steps of the next."""
    assert progress_text(2, 5, 50) == "in epoch 3 of 50, after step 5"  # stopped mid-epoch 3
    assert progress_text(2, 0, 50) == "after epoch 2 of 50"
    assert progress_text(0, 0, 50) == "before epoch 1 of 50"
    assert progress_text(0, 3) == "in epoch 1, after step 3"


def test_parameter_counts_have_one_format():
    assert [params_text(n) for n in (6610, 6600, 66123, 3349834, 12345678, 0)] == \
        ["0.00661", "0.00660", "0.0661", "3.35", "12.3", "0"]
    assert params_text(3349834, 2 ** 20) == "3.19"


@pytest.mark.e2e
def test_augment_and_test_print_the_same_parameter_count(tmp_path, capsys):
    """augment's first line, its last and test.py's all give the count as params_text does."""
    assert augment.main(["--name", "p", "--save_dir", str(tmp_path), "--arch", "DARTS_V2",
                         *TINY]) == 0
    results = json.loads((tmp_path / "p" / "augment" / "results.json").read_text())
    text = f"{params_text(round(results['params_millions'] * 1e6))}M parameters without"
    log = (tmp_path / "p" / "augment" / "log.txt").read_text()
    assert log.count(text) == 2, log  # at the start and at the end
    capsys.readouterr()
    assert _test_main(["--name", "p", "--save_dir", str(tmp_path), "--print_freq", "1",
                       *TINY[:8], "--device", "cpu", "--num_workers", "0"]) == 0
    out = capsys.readouterr().out
    assert text in out and "test: batch 1/1" in out


# ----------------------------------------------------------------------------- docs
def test_the_demo_time_is_one_figure():
    """The Makefile, run_all.py's --help and the preset's note give the quick demo's time as
    the README measured it."""
    makefile = (ROOT / "Makefile").read_text()
    (demo,) = re.findall(r"make demo .*\(~(\d+) min", makefile)
    help_text = " ".join(run_all.build_parser().format_help().split())
    assert f"quick: Fashion-MNIST in ~{demo} min on 2 CPU cores" in help_text
    assert f"~{demo} min on 2 cores" in run_all.__doc__
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"make demo .*~{demo} min", readme), "README's make demo line"


def test_alpha_efficiency_examples_name_folders_run_all_makes(tmp_path, capsys, monkeypatch):
    """Every runs/... folder alpha_efficiency.py's examples name is one the run_all command
    shown with them writes (its dry run's stage commands name it)."""
    named = set(re.findall(r"runs/([\w/]+/(?:search2|darts))(?=\s)", alpha_efficiency.__doc__))
    assert named == {"cmp/seed_1/search2", "cmp/darts/seed_1/darts"}
    (command,) = [line.split("python ", 1)[1].split("#")[0].split()
                  for line in alpha_efficiency.__doc__.splitlines() if "run_all.py" in line]
    monkeypatch.chdir(tmp_path)
    assert run_all.main([*command[1:], "--dry_run"]) == 0
    out = capsys.readouterr().out
    for folder in named:
        assert f"{tmp_path / 'runs' / folder}/genotype.json" in out, folder
