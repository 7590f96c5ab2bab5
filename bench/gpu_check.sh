#!/usr/bin/env bash
# One short GPU check for a CUDA machine (README, "Speed, memory and multiple GPUs"): the step
# benchmarks on CUDA with and without bf16 + channels_last, then a 200-step CIFAR-shaped
# synthetic search1 for seconds per epoch. Writes its tables under ${OUT:-/tmp/gpu_check}.
# About 5 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  $PY -m pip install -q -r requirements.txt
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY bench/step_bench.py --device cuda --steps 10 --configs search1,search2,augment \
    --variants base,cl,bf16+cl,bf16+cl+ckpt --json "$OUT/steps.jsonl" | tee "$OUT/steps.txt"
# 200 steps of search1 at the paper's settings on CIFAR-shaped synthetic data (12,800 images)
$PY search.py --stage search1 --name gpu_search1 --save_dir "$OUT/runs" --dataset synthetic \
    --synthetic_shape 3,32,32 --synthetic_samples 12800 --epochs 1 --device cuda --amp bf16 \
    --num_workers 4 --print_freq 50 --force | tail -n 5 | tee "$OUT/search1.txt"
$PY - "$OUT" <<'PY'
import json, sys
r = json.loads(open(f"{sys.argv[1]}/runs/gpu_search1/search1/metrics.jsonl").readline())
per_epoch = r["seconds"] * 50000 / 12800  # CIFAR-10's 50,000 training images
print(f"search1, 200 steps: {r['images_per_s']:.0f} images/s -> {per_epoch:.0f} s per CIFAR-10 epoch")
PY
