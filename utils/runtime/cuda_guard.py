"""Why a machine with an NVIDIA GPU would train on the CPU: the GPU is there (`/dev/nvidia*`,
`nvidia-smi`) but PyTorch cannot use it, most often because the wheel is built for a newer CUDA
than the driver supports (PyPI's default wheels need a recent driver; README, "GPU clusters").
`--device auto` then warns once, `--device cuda` / `--gpu N` stop with the same cause."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import torch

INSTALL_NOTE = ('install a PyTorch wheel built for a CUDA the driver supports (README, '
                '"GPU clusters")')


def nvidia_gpu_present(dev_dir: str = "/dev") -> bool:
    """An NVIDIA device node (`/dev/nvidia0`, ...) or an `nvidia-smi` on PATH."""
    return (bool(glob.glob(os.path.join(dev_dir, "nvidia[0-9]*")))
            or shutil.which("nvidia-smi") is not None)


def driver_info() -> dict:
    """{"driver": version, "cuda": newest CUDA it supports} from `nvidia-smi`'s header (each
    None when unknown), or {"error": its first line} when nvidia-smi fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"driver": None, "cuda": None}
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": f"nvidia-smi did not answer ({type(err).__name__})"}
    text = out.stdout + out.stderr
    if out.returncode != 0:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return {"error": f"nvidia-smi failed: {first[:160]}"}
    driver = re.search(r"Driver Version:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return {"driver": driver and driver.group(1), "cuda": cuda and cuda.group(1)}


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text or ""))[:2]


def unusable_gpu_cause() -> str | None:
    """When an NVIDIA GPU is present but torch.cuda.is_available() is False: the likely cause
    in one line (no CUDA call is made); else None."""
    if torch.cuda.is_available() or not nvidia_gpu_present():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    built = torch.version.cuda
    if built is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA; {INSTALL_NOTE}"
    info = driver_info()
    if "error" in info:
        return f"{info['error']} (the driver is not loaded or not working); PyTorch " \
               f"{torch.__version__} is built for CUDA {built}"
    driver = f"driver {info['driver'] or 'of unknown version'}"
    if info["cuda"] and _version(info["cuda"]) < _version(built):
        return (f"PyTorch {torch.__version__} is built for CUDA {built} but the {driver} supports "
                f"CUDA up to {info['cuda']}; {INSTALL_NOTE}, or update the driver")
    return (f"PyTorch {torch.__version__} (CUDA {built}) cannot initialise CUDA with the {driver}"
            f"{' (CUDA up to ' + info['cuda'] + ')' if info['cuda'] else ''}; {INSTALL_NOTE}")
