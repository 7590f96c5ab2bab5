"""Images/s and peak memory of one training step at the paper's settings, each configuration
in a fresh process (bench/search_step.py and bench/augment_step.py pick the configurations).

    python bench/step_bench.py --configs search1,search2,augment

search1: 14-cell supernet, one-level step (forward, backward, alpha and weight updates), batch
64, 16 channels. search2: 20 cells, every edge given the separable group (sep_conv_3x3,
sep_conv_5x5, none): the heaviest stage-2 supernet. augment: DARTS_V2, 20 cells, 36 channels,
batch 96, auxiliary head (weight 0.4), drop path 0.2. CIFAR-sized inputs. Peak memory is the
process's peak RSS on CPU, max allocated on CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (cells, channels, batch size)
CONFIGS = {"search1": (14, 16, 64), "search2": (20, 16, 64), "augment": (20, 36, 96)}


def make_step(config: str, cells: int, channels: int, dev):
    """The model and a function doing one training step of `config` on (x, y)."""
    import torch
    import torch.nn as nn

    import genotypes as gt
    from models.factory import build_final_network, build_supernet, stage_candidates
    from utils.architect import Architect, make_optimizers
    from utils.data import DatasetInfo
    from utils.engine import loss_and_logits

    info = DatasetInfo(3, 32, 10)
    if config == "augment":
        model = build_final_network(gt.DARTS_V2, info, channels, cells, auxiliary=True).to(dev)
        model.drop_path_prob = 0.2
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        criterion = nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_and_logits(model, x, y, criterion, 0.4)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        return model, step
    if config == "search1":
        candidates = stage_candidates("search1", cells)
    else:
        candidates = gt.uniform_candidates(gt.GROUPS["separable"]["members"], ["normal", "reduce"])
    model = build_supernet(candidates, info, channels, cells).to(dev)
    w_opt, a_opt = make_optimizers(model)
    architect = Architect(model, w_opt, a_opt, nn.CrossEntropyLoss(), grad_clip=3.0)
    return model, architect.step


def measure(config: str, batch_size: int, steps: int, device: str) -> dict:
    sys.path.insert(0, ROOT)
    import torch

    cells, channels, default_batch = CONFIGS[config]
    batch_size = batch_size or default_batch
    torch.manual_seed(0)
    dev = torch.device(device)
    model, step = make_step(config, cells, channels, dev)
    x = torch.randn(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    model.train()
    step(x, y)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": config, "cells": cells, "channels": channels, "batch_size": batch_size,
            "device": device, "threads": torch.get_num_threads(),
            "images_per_s": round(batch_size * steps / seconds, 2),
            "seconds_per_step": round(seconds / steps, 3), "peak_memory_gb": round(peak / 1e9, 2)}


def main(argv: list[str] | None = None, default_configs: str = "search1,search2,augment") -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default=default_configs,
                   help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the batch size (default: 64 search, 96 augment)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.steps, args.device)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    print(f"{'config':<9} {'cells':>5} {'ch':>3} {'batch':>5} {'img/s':>8} {'s/step':>8} {'peak GB':>8}  device")
    for config in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", config, "--steps",
               str(args.steps), "--device", args.device]
        if args.batch_size:
            cmd += ["--batch_size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{config}: failed\n{out.stderr}", file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{config:<9} {r['cells']:>5} {r['channels']:>3} {r['batch_size']:>5} {r['images_per_s']:>8} "
              f"{r['seconds_per_step']:>8} {r['peak_memory_gb']:>8}  {r['device']} "
              f"({r['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
