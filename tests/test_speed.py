"""Speed defaults follow the hardware: channels_last where it was measured faster, bf16
autocast refused on CPUs without native bf16 unless forced."""
import argparse

import pytest
import torch

import config
from utils.runtime import speed

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("capability, network, amp, parts, keep", [
    ("AVX2", "search", "none", ("cells",), False), ("AVX2", "final", "none", (), False),
    ("AVX2", "final", "bf16", ("depthwise",), False),
    ("AVX512", "search", "none", ("cells", "depthwise"), True),
    ("AMX", "final", "none", ("cells", "depthwise"), True),
])
def test_speed_defaults_per_cpu_class(monkeypatch, capability, network, amp, parts, keep):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    args = argparse.Namespace(channels_last=None, amp=amp)
    plan = speed.plan(args, CPU, network)
    assert plan.channels_last is True and plan.fast_path == parts and plan.keep_freed_memory is keep
    assert args == argparse.Namespace(channels_last=None, amp=amp)  # the flags stay as given
    assert speed.channels_last_default(CUDA, network) is False  # NCHW on GPUs (docs/speed.md)
    assert speed.fast_path_default(CUDA, network, amp) == ()


def test_an_explicit_channels_last_flag_wins(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    args = argparse.Namespace(channels_last=False, amp="none")
    assert speed.plan(args, CPU, "final").channels_last is False


@pytest.mark.parametrize("native, force, expected", [(False, False, "none"), (False, True, "bf16"),
                                                     (True, False, "bf16")])
def test_bf16_needs_native_support_or_force(monkeypatch, native, force, expected):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: native)
    lines = []
    args = argparse.Namespace(channels_last=False, amp="bf16", force_amp=force)
    assert speed.plan(args, CPU, "search", lines.append).amp == expected
    assert args.amp == "bf16"
    assert len(lines) == (1 if expected == "none" else 0)


@pytest.mark.parametrize("major, force, expected", [(7, False, "none"), (7, True, "bf16"),
                                                    (8, False, "bf16"), (9, False, "bf16")])
def test_bf16_on_gpus_without_native_support(monkeypatch, major, force, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16: refused with one warning line unless forced."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU sm_{major}0")
    lines = []
    args = argparse.Namespace(channels_last=None, amp="bf16", force_amp=force)
    plan = speed.plan(args, CUDA, "final", lines.append)
    assert plan.amp == expected and plan.channels_last is False and plan.fast_path == ()
    assert len(lines) == (1 if expected == "none" else 0)
    assert all("no native bf16" in line and f"sm_{major}0" in line for line in lines)


@pytest.mark.parametrize("version, refused", [("2.4.1+cu121", True), ("2.8.0", True),
                                              ("2.9.1", True), ("2.10.0+cu128", False),
                                              ("2.11.0+cu130", False), ("2.14.1", False),
                                              ("3.0.0a0+git1234", False)])
def test_compile_with_grad_checkpoint_refused_where_pytorch_gets_it_wrong(monkeypatch, capsys,
                                                                         version, refused):
    """PyTorch 2.4.1 and 2.8.0 update batch-norm statistics again in a compiled network's
    recomputation (measured: tests/test_gpu_models.py there): the pair is a usage error on
    them, and accepted from 2.10 on (measured there too). Either flag alone is always accepted."""
    monkeypatch.setattr(torch, "__version__", version)
    argv = ["--stage", "search1", "--name", "x", "--dataset", "synthetic", "--compile",
            "--grad_checkpoint"]
    if refused:
        with pytest.raises(SystemExit) as exit_:
            _parse(argv)
        assert exit_.value.code == 2
        assert "--compile with --grad_checkpoint needs PyTorch >= 2.10" in capsys.readouterr().err
    else:
        assert _parse(argv).compile
    assert _parse(argv[:-1]).compile  # --compile alone


def _parse(argv):
    return config.parse(config.search_parser(), config.resolve_search, argv)
