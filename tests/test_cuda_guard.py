"""A GPU machine never trains on the CPU without a word: an NVIDIA GPU that PyTorch cannot use
(a wheel for a newer CUDA than the driver, a CPU-only build, a failing driver) is named."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.runtime import cuda_guard
from utils.runtime import logging as ulog

ROOT = Path(__file__).resolve().parents[1]
HEADER = """+-----------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |
|-------------------------------+----------------------+----------------------+
"""


def fake_nvidia_smi(folder: Path, text: str = HEADER, code: int = 0) -> str:
    """A folder with an `nvidia-smi` printing `text`; returns a PATH starting with it."""
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\nexit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(ulog, "_warned_unusable_gpu", False)


def test_no_gpu_no_word(no_cuda, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(cuda_guard, "nvidia_gpu_present", lambda dev_dir="/dev": False)
    assert cuda_guard.unusable_gpu_cause() is None
    assert ulog.resolve_device("auto").type == "cpu"
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        ulog.resolve_device("cuda")


@pytest.mark.e2e
def test_driver_older_than_wheel(no_cuda, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path))
    assert cuda_guard.driver_info() == {"driver": "535.104.05", "cuda": "12.2"}
    cause = cuda_guard.unusable_gpu_cause()
    assert "built for CUDA 13.0" in cause and "driver 535.104.05" in cause and "12.2" in cause
    assert "GPU clusters" in cause
    assert ulog.resolve_device("auto").type == "cpu"
    ulog.resolve_device("auto")
    err = capsys.readouterr().err
    assert err.count("warning: an NVIDIA GPU is present but PyTorch cannot use it") == 1  # once
    assert err.count("\n") == 1 and "training on the CPU" in err
    for name, flag in (("cuda", "--device cuda"), ("cuda:1", "--gpu 1")):
        with pytest.raises(RuntimeError, match=f"^{flag}: an NVIDIA GPU is present.*CUDA 13.0"):
            ulog.resolve_device(name)


@pytest.mark.e2e
def test_other_causes(no_cuda, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it "
                                               "couldn't communicate with the NVIDIA driver.\n", 9))
    assert "nvidia-smi failed: NVIDIA-SMI has failed" in cuda_guard.unusable_gpu_cause()
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, HEADER.replace("12.2", "13.1")))
    cause = cuda_guard.unusable_gpu_cause()  # the driver is new enough: something else
    assert "cannot initialise CUDA" in cause and "13.1" in cause
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built without CUDA" in cuda_guard.unusable_gpu_cause()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "hides every GPU" in cuda_guard.unusable_gpu_cause()


def test_device_nodes_count_as_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not cuda_guard.nvidia_gpu_present(str(tmp_path))
    (tmp_path / "nvidiactl").touch()
    assert not cuda_guard.nvidia_gpu_present(str(tmp_path))
    (tmp_path / "nvidia0").touch()
    assert cuda_guard.nvidia_gpu_present(str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unusable")
@pytest.mark.e2e
def test_script_stops_with_the_cause(tmp_path):
    env = dict(os.environ, PATH=fake_nvidia_smi(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "search.py"), "--stage", "search1", "--name",
                           "g", "--save_dir", str(tmp_path / "runs"), "--dataset", "synthetic",
                           "--device", "cuda"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: an NVIDIA GPU is present")
    assert "GPU clusters" in lines[0]
