"""Images/s and peak memory of one training step at the paper's settings, for each
configuration and speed-flag variant in a fresh process (bench/search_step.py and
bench/augment_step.py pick the configurations).

    python bench/step_bench.py --configs search1,search2,augment --variants base,cl,cl+ckpt,cl+bf16

Each configuration takes its cells, channels, batch size and training settings from its
script's defaults (config.py). search1: the stage-1 supernet, one-level step (forward, backward,
alpha and weight updates). search2: every edge given the separable group (sep_conv_3x3,
sep_conv_5x5, none): the heaviest stage-2 supernet. augment: DARTS_V2 in augment.py's CIFAR
setting, auxiliary head, drop path at its final value. CIFAR-sized inputs. Variants: base
(float32, NCHW), cl (--channels_last), bf16 (--amp bf16), fp16, ckpt (--grad_checkpoint),
compile (--compile), plain (without the CPU fast path of models/fastpath), nodw / nocells
(without its depthwise-backward / cells part), nomalloc (freed memory returned to the system),
combined with '+';
`default` is exactly what the scripts do without speed flags on this machine. Peak memory is
the process's peak RSS on CPU, max allocated on CUDA. Every table names the CPU capability
(torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, ...).
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
sys.path.insert(0, ROOT)
import config as stage_config  # noqa: E402  (the scripts' defaults)


def settings(name: str) -> argparse.Namespace:
    """The resolved defaults of the script a configuration times: search.py --stage search1 /
    search2, or augment.py (CIFAR setting)."""
    if name == "augment":
        return stage_config.parse(stage_config.augment_parser(), stage_config.resolve_augment,
                                  ["--name", "bench"])
    return stage_config.parse(stage_config.search_parser(), stage_config.resolve_search,
                              ["--name", "bench", "--stage", name])


# name -> (cells, channels, batch size)
CONFIGS = {name: (s.num_cells, s.init_channels, s.batch_size)
           for name in ("search1", "search2", "augment") for s in [settings(name)]}
FLAGS = {"base", "cl", "bf16", "fp16", "ckpt", "compile", "plain", "nodw", "nocells", "nomalloc"}


def _fast_parts(parts: set) -> tuple:
    """plain: no fast path; nodw / nocells: without its depthwise / cells part."""
    if "plain" in parts:
        return ()
    return tuple(p for p in ("cells", "depthwise")
                 if f"no{'dw' if p == 'depthwise' else p}" not in parts)


def speed_args(variant: str) -> argparse.Namespace:
    if variant == "default":  # the scripts' own defaults on this machine
        sys.path.insert(0, ROOT)
        import config
        return config.augment_parser().parse_args(["--name", "bench"])  # planned in make_step
    parts = set(variant.split("+"))
    unknown = parts - FLAGS
    if unknown:
        raise ValueError(f"unknown variant part(s) {sorted(unknown)}; "
                         f"use {sorted(FLAGS)} joined by '+'")
    amp = "bf16" if "bf16" in parts else "fp16" if "fp16" in parts else "none"
    return argparse.Namespace(channels_last="cl" in parts, amp=amp, grad_checkpoint="ckpt" in parts,
                              compile="compile" in parts, fast_path=_fast_parts(parts),
                              keep_freed_memory="nomalloc" not in parts,
                              force_amp=True)


def make_step(config: str, cells: int, channels: int, dev, opts: argparse.Namespace):
    """The model, a function doing one training step of `config` on (x, y), and the runtime
    (the speed plan `opts` gives on `dev`)."""
    import torch
    import torch.nn as nn

    import genotypes as gt
    from models.factory import build_final_network, build_supernet, stage_candidates
    from utils.runtime import speed
    from utils.runtime.context import Runtime
    from utils.train.architect import Architect, make_optimizers
    from utils.data.info import dataset_info
    from utils.train.engine import loss_and_logits, optimizer_step

    shape = dataset_info("cifar10").network_shape()
    s = settings(config)
    runtime = Runtime.for_stage(opts, dev, "final" if config == "augment" else "search")
    plan = runtime.speed
    if config == "augment":
        model = speed.prepare(build_final_network(gt.DARTS_V2, **shape, init_channels=channels,
                                                  num_cells=cells, auxiliary=True).to(dev),
                              plan, dev)
        model.drop_path_prob = s.drop_path
        forward = speed.maybe_compile(model, plan)
        opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay)
        criterion = nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            with runtime.autocast():
                loss, _ = loss_and_logits(forward, x, y, criterion, s.aux_weight)
            optimizer_step(loss, [opt], model.parameters(), s.grad_clip, runtime.scaler)
        return model, step, runtime
    if config == "search1":
        candidates = stage_candidates("search1", cells)
    else:
        candidates = gt.uniform_candidates(gt.GROUPS["separable"]["members"], ["normal", "reduce"])
    model = speed.prepare(build_supernet(candidates, **shape, init_channels=channels,
                                         num_cells=cells).to(dev), plan, dev)
    w_opt, a_opt = make_optimizers(model, w_lr=s.w_lr, w_momentum=s.w_momentum,
                                   w_weight_decay=s.w_weight_decay, a_lr=s.alpha_lr,
                                   a_weight_decay=s.alpha_weight_decay)
    architect = Architect(model, w_opt, a_opt, nn.CrossEntropyLoss(), grad_clip=s.grad_clip,
                          forward_model=speed.maybe_compile(model, plan), runtime=runtime)
    return model, architect.step, runtime


def measure(config: str, variant: str, batch_size: int | None, steps: int, device: str,
            warmup: int = 1) -> dict:
    sys.path.insert(0, ROOT)
    import torch

    cells, channels, default_batch = CONFIGS[config]
    batch_size = batch_size or default_batch
    opts = speed_args(variant)
    from utils.runtime.cli import seed_everything
    seed_everything(0)  # as the scripts do: cuDNN autotuning on CUDA
    dev = torch.device(device)
    model, step, runtime = make_step(config, cells, channels, dev, opts)
    x = torch.randn(batch_size, 3, 32, 32, device=dev).to(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    model.train()
    began = time.perf_counter()
    for _ in range(warmup):  # compilation, cuDNN autotuning, allocator growth
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_seconds = time.perf_counter() - began
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": config, "variant": variant, "cells": cells, "channels": channels,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "channels_last": runtime.speed.channels_last, "amp": runtime.speed.amp,
            "batch_size": batch_size, "device": device, "threads": torch.get_num_threads(),
            "images_per_s": round(batch_size * steps / seconds, 2),
            "seconds_per_step": round(seconds / steps, 4), "peak_memory_gb": round(peak / 1e9, 2),
            "warmup_seconds": round(warmup_seconds, 1),
            "seconds_per_cifar10_epoch": round(50000 * seconds / (batch_size * steps), 1),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table, headed by the device and versions they were measured on."""
    if not rows:
        return "no measurements\n"
    r0 = rows[0]
    where = (f"{r0['gpu']}, torch {r0['torch']}, CUDA {r0['cuda']}" if r0.get("gpu")
             else f"CPU {r0['cpu_capability']}, {r0['threads']} threads, torch {r0['torch']}")
    lines = [f"Measured on {where}; CIFAR-sized input, one training step of each stage at its "
             "default settings (bench/step_bench.py).", "",
             "| stage | variant | cells / ch / batch | images/s | s per CIFAR-10 epoch | "
             "peak memory (GB) | warm-up (s) |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['variant']} | {r['cells']} / {r['channels']} / "
                     f"{r['batch_size']} | {r['images_per_s']:.0f} | "
                     f"{r['seconds_per_cifar10_epoch']:.0f} | {r['peak_memory_gb']} | "
                     f"{r['warmup_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, default_configs: str = "search1,search2,augment") -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default=default_configs,
                   help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--variants", default="base,cl",
                   help="comma-separated speed variants, e.g. base,cl,bf16,bf16+cl,ckpt")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the batch size (default: "
                        + ", ".join(f"{name} {batch}"
                                    for name, (_, _, batch) in CONFIGS.items()) + ")")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up steps")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps first (compilation, cuDNN autotuning)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up on a variant after S seconds (counted as a failure)")
    p.add_argument("--rows", default=None, metavar="CONFIG:VARIANT,...",
                   help="measure these rows in this order instead of --configs x --variants")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="end by S seconds: a row is stopped at S, and one with under 20 s left is "
                        "not started; such rows are listed as not measured (not a failure)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON lines")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: config variant
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, args.batch_size, args.steps, args.device, args.warmup)))
        return 0
    if args.rows:
        pairs = [tuple(r.split(":", 1)) if ":" in r else (r, "") for r in args.rows.split(",") if r]
    else:
        pairs = [(c, v) for c in args.configs.split(",") if c
                 for v in args.variants.split(",") if v]
    configs = sorted({c for c, _ in pairs})
    variants = sorted({v for _, v in pairs})
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    for v in variants:
        try:
            speed_args(v)
        except ValueError as err:
            p.error(str(err))
    import torch
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '-')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}", flush=True)
    print(f"{'config':<9} {'variant':<12} {'cells':>5} {'ch':>3} {'batch':>5} {'img/s':>8} "
          f"{'s/step':>8} {'peak GB':>8}  device", flush=True)
    rows, failed, skipped = [], [], []
    began = time.perf_counter()
    for config, variant in pairs:
        left = None if args.deadline is None else args.deadline - (time.perf_counter() - began)
        if left is not None and left < 20:
            skipped.append(f"{config} {variant}")
            continue
        timeout = min(t for t in (args.timeout, left, float("inf")) if t is not None)
        cmd = [sys.executable, os.path.abspath(__file__), "--one", config, variant,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
        if args.batch_size:
            cmd += ["--batch_size", str(args.batch_size)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 timeout=None if timeout == float("inf") else timeout)
        except subprocess.TimeoutExpired:
            if args.timeout is not None and timeout >= args.timeout:
                failed.append(f"{config} {variant} (timed out after {timeout:g} s)")
                print(f"{config} {variant}: timed out after {timeout:g} s", file=sys.stderr)
            else:
                skipped.append(f"{config} {variant}")
            continue
        if out.returncode != 0:
            failed.append(f"{config} {variant}")
            print(f"{config} {variant}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{config:<9} {variant:<12} {r['cells']:>5} {r['channels']:>3} {r['batch_size']:>5} "
              f"{r['images_per_s']:>8} {r['seconds_per_step']:>8} {r['peak_memory_gb']:>8}  "
              f"{r['device']} ({r['threads']} threads)", flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as f:
                f.write(markdown_table(rows))
    if skipped:
        print(f"not measured (--deadline {args.deadline:g} s): {', '.join(skipped)}")
        if args.markdown:
            with open(args.markdown, "a", encoding="utf-8") as f:
                f.write(f"\nNot measured (out of time): {', '.join(skipped)}.\n")
    if failed:
        print(f"error: {len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
