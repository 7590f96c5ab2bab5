"""Tests for the files of genotypes.py's objects (utils/io/genotype_files.py and
utils/io/genotype_checks.py): genotype repr and JSON round trips, the one-line messages for
malformed genotype, alphas and groups files, search2's check of search1's alphas against its
groups file; and the tools that write or read them: cell plots (utils/analysis/plots.py) and the
`python -m utils.analysis.derive` CLI. Search space and derivation rules: test_genotypes.py.
Pure CPU, no torch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import genotypes as G
from utils.io import genotype_files as GF
from utils.analysis import derive, plots
from utils.io import genotype_checks as gchecks
from utils.train import groups as tgroups
from tests.genotype_alphas import edge, hand_made_cell, uniform_alphas

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- repr / JSON
def test_repr_round_trip_including_range():
    text = GF.format_genotype(G.DARTS_V2)
    assert text.startswith("Genotype(normal=[")
    assert GF.parse_genotype_repr(text) == G.DARTS_V2
    ranged = text.replace("[2, 3, 4, 5]", "range(2, 6)")
    assert "range(2, 6)" in ranged
    assert GF.parse_genotype_repr(ranged) == G.DARTS_V2


def test_repr_parsing_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    text = GF.format_genotype(G.DARTS_V1).replace(
        "normal_concat=[2, 3, 4, 5]", f"normal_concat=__import__('os').mkdir({str(marker)!r})")
    with pytest.raises(G.GenotypeError, match="normal_concat: not a literal"):
        GF.parse_genotype_repr(text)
    assert not marker.exists()


def per_cell_genotype(num_cells=5):
    red = G.reduction_cells(num_cells)
    return [G.CellGenotype(list(G.STACNAS_C10.reduce if i in red else G.DARTS_V2.normal),
                           [2, 3, 4, 5], i in red) for i in range(num_cells)]


@pytest.mark.parametrize("genotype", [G.STACNAS_C10, per_cell_genotype()],
                         ids=["shared", "per-cell"])
def test_json_and_repr_file_round_trip(tmp_path, genotype):
    path = tmp_path / "genotype.json"
    GF.save_genotype(genotype, path)
    assert GF.load_genotype(path) == genotype
    assert json.loads(path.read_text()) == gchecks.genotype_to_dict(genotype)
    assert [p.name for p in tmp_path.iterdir()] == ["genotype.json"]  # no temp file left
    txt = tmp_path / "genotype.txt"
    txt.write_text(GF.format_genotype(genotype))
    assert GF.load_genotype(txt) == genotype


def test_per_cell_dict_shape():
    d = gchecks.genotype_to_dict(per_cell_genotype(3))
    assert [c["cell"] for c in d] == [0, 1, 2]
    assert [c["reduction"] for c in d] == [False, True, True]
    assert d[0]["ops"][0] == ["sep_conv_3x3", 0]


def _with(entry, index, value):
    d = gchecks.genotype_to_dict(G.DARTS_V2)
    d[entry][index] = value
    return json.dumps(d)


def _without(key):
    d = gchecks.genotype_to_dict(G.DARTS_V2)
    del d[key]
    return json.dumps(d)


@pytest.mark.parametrize("content, expected", [
    (_with("normal", 3, ["sep_conv_9x9", 1]), "normal[3]: unknown op 'sep_conv_9x9' (known: none"),
    (_with("reduce", 5, ["max_pool_3x3", 7]),
     "reduce[5]: input 7 out of range for node 2 (allowed 0..3)"),
    (json.dumps({**gchecks.genotype_to_dict(G.DARTS_V2), "normal": [["sep_conv_3x3", 0]] * 6}),
     "normal: 6 entries, expected 8 (2 per node x 4 nodes)"),
    ("{'normal': [", "not JSON"),
    (_without("reduce_concat"), "missing key 'reduce_concat'"),
    (_with("normal", 0, ["none", 0]), "normal[0]: op 'none' is not allowed"),
    (_with("normal", 1, ["sep_conv_3x3", "1"]), "normal[1]: expected [op, input]"),
    (_with("normal_concat", 0, 7), "normal_concat: expected a list of distinct node indices"),
    ("[1, 2]", "cell[0]: expected an object"),
], ids=["unknown-op", "input-range", "entry-count", "not-json", "missing-key", "none-op",
        "wrong-type", "concat", "bad-cell-list"])
def test_malformed_genotype_files_are_rejected(tmp_path, content, expected):
    path = tmp_path / "genotype.json"
    path.write_text(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(G.GenotypeError) as info:
        GF.load_genotype(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message
    assert path.read_text() == content and path.stat().st_mtime_ns == before


def test_missing_genotype_file(tmp_path):
    with pytest.raises(G.GenotypeError, match="nope.json: not found"):
        GF.load_genotype(tmp_path / "nope.json")


def test_validate_genotype_rejects_other_objects():
    with pytest.raises(G.GenotypeError, match="expected a Genotype"):
        gchecks.validate_genotype(tuple(G.DARTS_V2))
    with pytest.raises(G.GenotypeError, match=r"cell\[0\].reduction"):
        gchecks.validate_genotype([G.CellGenotype(G.DARTS_V2.normal, [2, 3, 4, 5], "no")])


# ----------------------------------------------------------------------------- alphas files
def test_alphas_round_trip(tmp_path):
    alphas = {"normal": hand_made_cell(), "reduce": hand_made_cell(G.STAGE1_PRIMITIVES)}
    path = tmp_path / "alphas.json"
    GF.save_alphas(alphas, path)
    assert GF.load_alphas(path) == alphas
    assert G.is_shared(alphas)
    per_cell = uniform_alphas(["cell_0", "cell_1", "cell_2"], ["sep_conv_3x3", "none"])
    GF.save_alphas(per_cell, path)
    assert GF.load_alphas(path) == per_cell and not G.is_shared(per_cell)


def _alphas_json(mutate):
    alphas = uniform_alphas(["normal", "reduce"], G.STAGE1_PRIMITIVES)
    mutate(alphas)
    return json.dumps(alphas)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a non-empty object"),
    (_alphas_json(lambda a: a.update(foo=a["normal"])), "unknown alpha set 'foo'"),
    (_alphas_json(lambda a: a.update(cell_0=a["normal"])), "mixes shared"),
    (_alphas_json(lambda a: a.pop("reduce")), "expected ['normal', 'reduce']"),
    (_alphas_json(lambda a: a["reduce"][2].pop()), "reduce node 2: 3 edges, expected 4"),
    (_alphas_json(lambda a: a["normal"][1][2]["alphas"].pop()),
     "normal node 1 edge 2: 5 ops but 4 alphas"),
    (_alphas_json(lambda a: a["normal"][0][1]["ops"].__setitem__(0, "conv_9x9")),
     "normal node 0 edge 1: unknown op 'conv_9x9'"),
    (_alphas_json(lambda a: a["normal"][3][4]["alphas"].__setitem__(1, "big")),
     "normal node 3 edge 4: alpha of 'skip_connect' is 'big'"),
    (_alphas_json(lambda a: a["reduce"][1][0]["ops"].__setitem__(0, "sep_conv_3x3")),
     "reduce node 1 edge 0: op 'sep_conv_3x3' listed 2 times"),
    (_alphas_json(lambda a: a["reduce"][1][0]["ops"].__setitem__(3, "skip_connect")),
     "reduce node 1 edge 0: 'skip_connect' listed 2 times in ['max_pool_3x3', 'skip_connect', "
     "'sep_conv_3x3', 'skip_connect', 'none']; it may appear at most twice, the two copies side "
     "by side"),
], ids=["not-json", "not-dict", "unknown-key", "mixed", "missing-set", "edge-count", "length",
        "unknown-op", "non-numeric", "duplicate-op", "skip-apart"])
def test_malformed_alphas_are_rejected(tmp_path, content, expected):
    path = tmp_path / "alphas.json"
    path.write_text(content)
    with pytest.raises(G.GenotypeError) as info:
        GF.load_alphas(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_save_alphas_validates_before_writing(tmp_path):
    path = tmp_path / "alphas.json"
    with pytest.raises(G.GenotypeError, match="alphas.json: unknown alpha set"):
        GF.save_alphas({"bogus": []}, path)
    assert not path.exists()


# ----------------------------------------------------------------------------- groups
def test_groups_round_trip(tmp_path):
    path = tmp_path / "groups.json"
    custom = {"conv": {"representative": "sep_conv_3x3",
                       "members": ["sep_conv_5x5", "sep_conv_3x3"]},
              "pool": {"representative": "max_pool_3x3", "members": ["max_pool_3x3", "none"]}}
    for groups in (G.GROUPS, custom):
        path.write_text(json.dumps(groups))
        assert GF.load_groups(path) == groups
    assert G.stage1_primitives(GF.load_groups(path)) == ["sep_conv_3x3", "max_pool_3x3"]


@pytest.mark.parametrize("groups, expected", [
    ({"a": {"representative": "sep_conv_3x3", "members": ["sep_conv_5x5"]}}, "a: representative"),
    ({"a": {"representative": "sep_conv_3x3", "members": ["sep_conv_3x3", "conv_2x2"]}},
     "a: unknown op 'conv_2x2'"),
    ({"a": {"representative": "sep_conv_3x3"}}, "a: missing key 'members'"),
    ({"a": {"representative": "none", "members": ["none", "none"]}}, "distinct"),
    ({"a": {"representative": "sep_conv_3x3", "members": ["sep_conv_3x3", "sep_conv_3x3"]}},
     "a: members must be distinct: op 'sep_conv_3x3' listed 2 times"),
    ({"a": {"representative": "skip_connect", "members": ["skip_connect", "none", "skip_connect"]}},
     "side by side"),
    ({"a": {"representative": "none", "members": ["none"]},
      "b": {"representative": "none", "members": ["none"]}}, "b: representative 'none' already"),
    ([], "expected a non-empty object"),
    # groups that cannot work (issue 20, item 9): refused when read, naming the groups file
    ({"zero": {"representative": "none", "members": ["none"]}}, "only the zero group"),
    ({"a": {"representative": "max_pool_3x3", "members": ["none"]}},
     "a: members ['none'] hold no real op"),
    ({"a": {"representative": "none", "members": ["none", "skip_connect"]},
      "b": {"representative": "sep_conv_3x3", "members": ["sep_conv_3x3"]}},
     "a: representative 'none' with members ['none', 'skip_connect']: stage 1 never chooses"),
    ({"a": {"representative": ["sep_conv_3x3"], "members": ["sep_conv_3x3"]}}, "unknown op"),
])
def test_bad_groups_rejected(tmp_path, groups, expected):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(groups))
    with pytest.raises(G.GenotypeError) as info:
        GF.load_groups(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def _stage1_alphas(ops=G.STAGE1_PRIMITIVES):
    return {k: [[edge(ops, sep_conv_3x3=1.0) for _ in range(i + 2)] for i in range(G.NUM_NODES)]
            for k in ("normal", "reduce")}


def test_stage1_alphas_match_their_groups(tmp_path):
    """search2's check of search1's alphas against its groups.json: a match passes; an edited
    groups file is blamed when the alphas search one op list everywhere (search1's), the
    alphas otherwise (stage-2 or DARTS alphas)."""
    alphas, groups = _stage1_alphas(), tmp_path / "groups.json"
    GF.check_stage1_alphas(alphas, "a.json", groups)  # no groups.json: the paper's groups
    GF.save_groups(tgroups.released_groups(), groups)
    GF.check_stage1_alphas(alphas, "a.json", groups)  # same representatives
    edited = {name: dict(g) for name, g in G.GROUPS.items() if name != "dilated"}
    GF.save_groups(edited, groups)
    with pytest.raises(G.GenotypeError, match=rf"^{groups}: representatives .* are not the ops "
                                              r"search1 searched .* every edge of a.json"):
        GF.check_stage1_alphas(alphas, "a.json", groups)
    darts = _stage1_alphas(G.PRIMITIVES)
    with pytest.raises(G.GenotypeError, match=r"^d.json: these look like stage-2 \(or DARTS\) "
                                              r"alphas: op 'avg_pool_3x3' .*the paper's groups"):
        GF.check_stage1_alphas(darts, "d.json", tmp_path / "missing.json")
    GF.save_groups(G.GROUPS, groups)
    stage2 = _stage1_alphas()
    stage2["normal"][1][0] = edge(["sep_conv_3x3", "sep_conv_5x5", "none"])
    with pytest.raises(G.GenotypeError, match=r"^s.json: these look like stage-2 .*normal node 1 "
                                              "edge 0"):
        GF.check_stage1_alphas(stage2, "s.json", groups)


def test_alphas_and_genotypes_are_checked_field_by_field(tmp_path):
    path = tmp_path / "alphas.json"
    alphas = _stage1_alphas()
    alphas["reduce"][0][1]["alphas"][0] = float("nan")
    path.write_text(json.dumps(alphas))
    with pytest.raises(G.GenotypeError, match="reduce node 0 edge 1: alpha of 'max_pool_3x3' is "
                                              "nan, expected a finite number"):
        GF.load_alphas(path)
    cells = per_cell_genotype(3)
    for changed, match in (
            (cells + [cells[0]] * 98, r"per-cell genotype of 101 cells; a network has 3..100"),
            (cells[:2], "per-cell genotype of 2 cells"),
            ([cells[0]._replace(reduction=True)] + cells[1:], r"cell\[0\].reduction: is true")):
        with pytest.raises(G.GenotypeError, match=match):
            gchecks.validate_genotype(changed)
    d = gchecks.genotype_to_dict(cells)
    d[1]["cell"] = True
    with pytest.raises(G.GenotypeError, match=r"cell\[1\].cell: is True, expected 1"):
        gchecks.genotype_from_dict(d)


# ----------------------------------------------------------------------------- plots
@pytest.mark.e2e
def test_plot_with_dot(tmp_path):
    import shutil
    if shutil.which("dot") is None:
        pytest.skip("graphviz 'dot' is not installed")
    pytest.importorskip("graphviz")
    path = plots.plot_cell(G.DARTS_V2.normal, [2, 3, 4, 5], tmp_path / "normal", caption="normal")
    assert path == str(tmp_path / "normal.png")
    assert Path(path).read_bytes()[:8] == PNG_MAGIC
    written = plots.plot_genotype(per_cell_genotype(3), tmp_path / "cells", prefix="ep1_")
    assert [Path(p).name for p in written] == ["ep1_cell_0.png", "ep1_cell_1.png", "ep1_cell_2.png"]
    assert all(Path(p).read_bytes()[:8] == PNG_MAGIC for p in written)


def test_plot_without_dot_warns_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.setattr(plots.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="graphviz 'dot' not found; skipping cell plot .*normal"):
        assert plots.plot_cell(G.DARTS_V2.normal, [2, 3, 4, 5], tmp_path / "normal") is None
    with pytest.warns(UserWarning, match="install the Debian/Ubuntu package 'graphviz'"):
        assert plots.plot_genotype(G.DARTS_V2, tmp_path / "plots") == []
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI
def test_cli_derives_from_alphas(tmp_path, capsys):
    alphas = {"normal": hand_made_cell(), "reduce": hand_made_cell()}
    path = tmp_path / "alphas.json"
    GF.save_alphas(alphas, path)
    assert derive.main(["--alphas", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == gchecks.genotype_to_dict(G.derive_genotype(alphas))


@pytest.mark.e2e
def test_cli_checks_genotype_file_as_module(tmp_path):
    path = tmp_path / "genotype.txt"
    path.write_text(GF.format_genotype(G.STACNAS_C10))
    proc = subprocess.run([sys.executable, "-m", "utils.analysis.derive", "--genotype", str(path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == gchecks.genotype_to_dict(G.STACNAS_C10)


def test_cli_errors(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert derive.main(["--alphas", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {missing}: not found\n"
    for argv in (["--alphas", "a.json", "--genotype", "g.json"], ["--alpha", "a.json"], []):
        with pytest.raises(SystemExit) as info:
            derive.main(argv)
        assert info.value.code == 2
