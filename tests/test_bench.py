"""bench/step_bench.py: a failing variant is a failing run (exit 1), rows become a table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e  # real processes throughout (pytest.ini: the two tiers)

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, str(ROOT / "bench" / "step_bench.py")]


def test_a_failing_variant_fails_the_run(tmp_path):
    if torch.cuda.is_available():
        return  # the failure below needs a machine without CUDA
    proc = subprocess.run([*BENCH, "--configs", "augment", "--variants", "base", "--device", "cuda",
                           "--steps", "1", "--json", str(tmp_path / "rows.jsonl")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1
    assert "error: 1 variant(s) failed: augment base" in proc.stderr
    assert not (tmp_path / "rows.jsonl").exists()


def test_rows_and_markdown(tmp_path):
    proc = subprocess.run([*BENCH, "--configs", "augment", "--variants", "base",
                           "--batch_size", "2", "--steps", "1",
                           "--json", str(tmp_path / "rows.jsonl"),
                           "--markdown", str(tmp_path / "table.md")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    assert row["config"] == "augment" and row["cells"] == 20 and row["channels"] == 36
    assert row["images_per_s"] > 0 and row["torch"] == torch.__version__
    assert row["seconds_per_cifar10_epoch"] == round(50000 / row["images_per_s"], 1) or \
        abs(row["seconds_per_cifar10_epoch"] * row["images_per_s"] - 50000) < 0.01 * 50000
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("Measured on CPU") and "| augment | base | 20 / 36 / 2 |" in table
