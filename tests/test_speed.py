"""Speed defaults follow the hardware: channels_last where it was measured faster, bf16
autocast refused on CPUs without native bf16 unless forced."""
import argparse

import pytest
import torch

from utils import speed

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("capability, network, expected", [
    ("AVX2", "search", True), ("AVX2", "final", False),
    ("AVX512", "search", True), ("AVX512", "final", True), ("AMX", "final", True),
])
def test_channels_last_default_per_cpu_class(monkeypatch, capability, network, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    args = argparse.Namespace(channels_last=None, amp="none")
    speed.resolve(args, CPU, network)
    assert args.channels_last is expected
    assert speed.channels_last_default(CUDA, network) is True


def test_an_explicit_channels_last_flag_wins(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    args = argparse.Namespace(channels_last=True, amp="none")
    speed.resolve(args, CPU, "final")
    assert args.channels_last is True


@pytest.mark.parametrize("native, force, expected", [(False, False, "none"), (False, True, "bf16"),
                                                     (True, False, "bf16")])
def test_bf16_needs_native_support_or_force(monkeypatch, native, force, expected):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: native)
    lines = []
    args = argparse.Namespace(channels_last=False, amp="bf16", force_amp=force)
    speed.resolve(args, CPU, "search", lines.append)
    assert args.amp == expected
    assert len(lines) == (1 if expected == "none" else 0)
