"""Images/s and peak memory of one search training step (one-level: forward, backward, alpha
and weight updates) at the paper's settings, each configuration in a fresh process.

    python bench/search_step.py                       # search1 (14 cells) and search2 (20 cells)
    python bench/search_step.py --configs search1 --steps 5 --batch_size 32

search2 gives every edge the separable group (sep_conv_3x3, sep_conv_5x5, none): the heaviest
stage-2 supernet. Peak memory is the process's peak RSS on CPU, max allocated on CUDA.
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
CONFIGS = {"search1": 14, "search2": 20}


def measure(config: str, batch_size: int, channels: int, steps: int, device: str) -> dict:
    sys.path.insert(0, ROOT)
    import torch
    import torch.nn as nn

    import genotypes as gt
    from models.factory import build_supernet, stage_candidates
    from utils.architect import Architect, make_optimizers
    from utils.data import DatasetInfo

    cells = CONFIGS[config]
    if config == "search1":
        candidates = stage_candidates("search1", cells)
    else:
        candidates = gt.uniform_candidates(gt.GROUPS["separable"]["members"], ["normal", "reduce"])
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_supernet(candidates, DatasetInfo(3, 32, 10), channels, cells).to(dev)
    w_opt, a_opt = make_optimizers(model)
    architect = Architect(model, w_opt, a_opt, nn.CrossEntropyLoss(), grad_clip=3.0)
    x = torch.randn(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    model.train()
    architect.step(x, y)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        architect.step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": config, "cells": cells, "channels": channels, "batch_size": batch_size,
            "device": device, "threads": torch.get_num_threads(),
            "images_per_s": round(batch_size * steps / seconds, 2),
            "seconds_per_step": round(seconds / steps, 3), "peak_memory_gb": round(peak / 1e9, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default="search1,search2", help="comma-separated: search1, search2")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--init_channels", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.init_channels, args.steps, args.device)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    print(f"{'config':<9} {'cells':>5} {'batch':>5} {'img/s':>8} {'s/step':>8} {'peak GB':>8}  device")
    for config in configs:
        out = subprocess.run([sys.executable, __file__, "--one", config, "--batch_size",
                              str(args.batch_size), "--init_channels", str(args.init_channels),
                              "--steps", str(args.steps), "--device", args.device],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{config}: failed\n{out.stderr}", file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{config:<9} {r['cells']:>5} {r['batch_size']:>5} {r['images_per_s']:>8} "
              f"{r['seconds_per_step']:>8} {r['peak_memory_gb']:>8}  {r['device']} "
              f"({r['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
