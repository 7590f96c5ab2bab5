"""python summary.py: the published figures and the golden supernet sizes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import genotypes as gt
from summary import main
from utils.io import genotype_files as gf

ROOT = Path(__file__).resolve().parents[1]


def _summary(capsys, *argv):
    assert main(list(argv)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_darts_v2_cifar10_figures(capsys):
    out = _summary(capsys, "--arch", "DARTS_V2", "--dataset", "cifar10", "--init_channels", "36",
                   "--num_cells", "20", "--auxiliary")
    assert out["params_without_aux"] == 3_351_502
    assert round(out["params_without_aux"] / 1e6, 2) == 3.35
    assert out["params"] > out["params_without_aux"]  # the auxiliary head is counted in params
    assert 450e6 < out["macs"] < 600e6


def test_darts_v2_imagenet_figures(capsys):
    out = _summary(capsys, "--arch", "DARTS_V2", "--dataset", "imagenet")
    assert (out["init_channels"], out["num_cells"]) == (48, 14)
    assert round(out["params_without_aux"] / 1e6, 1) == 4.7
    assert out["macs"] < 600e6  # mobile setting


def test_supernet_golden_counts(capsys):
    darts = _summary(capsys, "--stage", "darts", "--dataset", "cifar10")
    assert darts["weights"] == 1_930_618  # DARTS's train_search prints 1.930618 MB
    assert darts["alphas"] == 2 * 14 * 8
    s1 = _summary(capsys, "--stage", "search1", "--dataset", "cifar10")
    assert (s1["num_cells"], s1["init_channels"]) == (14, 16)
    assert s1["weights"] == 1_550_266 and s1["alphas"] == 2 * 14 * 5
    assert s1["params"] == s1["weights"] + s1["alphas"]
    per_cell = _summary(capsys, "--stage", "search1", "--no-alpha_share")
    assert per_cell["alphas"] == 14 * 14 * 5 and per_cell["weights"] == s1["weights"]


def test_search2_from_alphas_file(capsys, tmp_path):
    # every edge activates the separable group: the heaviest stage-2 supernet
    cands = gt.uniform_candidates(gt.STAGE1_PRIMITIVES, ["normal", "reduce"])
    alphas = {k: [[{"ops": ops, "alphas": [float(o == "sep_conv_3x3") for o in ops]}
                   for ops in node] for node in nodes]
              for k, nodes in cands.items()}
    path = tmp_path / "alphas.json"
    gf.save_alphas(alphas, path)
    out = _summary(capsys, "--stage", "search2", "--alphas", str(path))
    assert out["num_cells"] == 20 and out["alphas"] == 2 * 14 * 3


def test_genotype_file_and_errors(capsys, tmp_path):
    path = tmp_path / "g.json"
    gf.save_genotype(gt.DARTS_V2, path)
    from_file = _summary(capsys, "--genotype", str(path))
    named = _summary(capsys, "--arch", "DARTS_V2")
    assert from_file["params"] == named["params"]
    assert main(["--genotype", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--stage", "search2"])
    assert exc.value.code == 2
    assert "--alphas" in capsys.readouterr().err


@pytest.mark.e2e
def test_runs_as_script():
    proc = subprocess.run([sys.executable, str(ROOT / "summary.py"), "--arch", "STACNAS_C10",
                           "--num_cells", "5", "--init_channels", "8"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["num_cells"] == 5


def test_stacnas_cifar100_matches_the_authors_release(capsys):
    """The CIFAR-100 cells read off the authors' figures, at 36 channels / 20 cells with the
    auxiliary head, come to the size the authors' README gives their CIFAR-100 model: "4.36M",
    parameters / 2^20 (a check of the reading of the figures)."""
    out = _summary(capsys, "--arch", "STACNAS_C100", "--dataset", "cifar100", "--auxiliary")
    assert (out["init_channels"], out["num_cells"]) == (36, 20)
    assert (out["params"], out["params_without_aux"]) == (4_579_572, 4_033_936)
    assert round(out["params"] / 2 ** 20, 2) in (4.36, 4.37)  # 4.367
    assert out["macs"] == 611_493_120


def test_stacnas_imagenet_mobile_size(capsys):
    out = _summary(capsys, "--arch", "STACNAS_IMAGENET", "--dataset", "imagenet")
    assert (out["init_channels"], out["num_cells"]) == (48, 14)
    assert out["params_without_aux"] == 5_715_040
    assert out["macs"] == 615_825_408  # above the mobile setting's 600M: all separable convs
