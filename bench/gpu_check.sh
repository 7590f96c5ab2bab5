#!/usr/bin/env bash
# The GPU acceptance check: every CUDA and NCCL path of the project on one GPU, then the speed
# table (README, "GPU clusters"). One command; exit 0 when every check passed, 1 otherwise.
#
#   bench/gpu_check.sh                 # all parts (at most GPU_CHECK_BUDGET s, default 480)
#   bench/gpu_check.sh ddp resume      # only these parts
#
# Parts: smoke (run_all.py --preset smoke: search1 -> search2 -> augment -> test), darts (the
# DARTS baseline, bilevel, --unrolled, also under bf16, and the hypergradient's precision),
# ddp (torchrun --nproc_per_node 1 with NCCL: search, augment with --sync_bn, test), amp (bf16
# and fp16, channels_last), compile (--compile, with --grad_checkpoint), resume (SIGTERM
# mid-epoch, then the same command resumes: plain fp16 augment and torchrun search), analysis
# (alpha_efficiency.py and feature.py on the smoke run), speed (bench/step_bench.py on
# CIFAR-sized input: defaults, NCHW float32, channels_last, bf16, compile).
#
# Needs PyTorch with CUDA, torchvision, numpy, scipy, scikit-learn and matplotlib. On a machine
# without network, tensorboardX and the graphviz Python package travel as wheels: on a machine
# with network, `pip download --no-deps tensorboardX graphviz -d .whl` in the repository, copy
# .whl/ along; this script installs them from $WHEELS (default .whl) into a private folder.
# Writes to $OUT (default /tmp/gpu_check): summary.md (each check, its result and seconds, the
# GPU and versions, the speed table), checks.txt (each check as it ends), failures.txt (the
# end of each failed check's log, as it fails), speed.jsonl, speed.md, logs.tar.gz.
# GPU_CHECK_DEVICE=cpu rehearses the functional parts on a CPU (gloo, no --sync_bn): for
# checking this script itself before GPU time is spent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
RUNS=$WORK/runs
mkdir -p "$OUT" "$WORK/logs" "$WORK/status" "$RUNS"
rm -f "$OUT/checks.txt" "$OUT/failures.txt"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PARTS=${*:-smoke darts ddp amp compile resume analysis speed}
want() { [[ " $PARTS " == *" $1 "* ]]; }
began=$(date +%s)

if ! $PY -c "import tensorboardX, graphviz" 2>/dev/null; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl \
      || { echo "error: installing the wheels in $WHEELS failed"; exit 1; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: tensorboardX / graphviz (Python) missing and no wheels in $WHEELS (see the header)"
    exit 1
  fi
fi
$PY - "$DEVICE" <<'PY' | tee "$WORK/device.txt" || { echo "error: no usable CUDA GPU"; exit 1; }
import sys, torch
if sys.argv[1] == "cpu":
    print(f"CPU rehearsal ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}")
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit(1)
print(f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
PY

TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1"
# CIFAR-shaped synthetic data, tiny networks: seconds per stage.
DATA=(--dataset synthetic --synthetic_shape 3,32,32 --synthetic_samples 128 --synthetic_classes 10
      --device "$DEVICE" --num_workers 2 --print_freq 4)
SYNC_BN=(); [ "$DEVICE" = cuda ] && SYNC_BN=(--sync_bn)
TINY=("${DATA[@]}" --num_cells 5 --init_channels 8 --batch_size 32 --epochs 2)

# check NAME FUNCTION: run FUNCTION with its output in logs/NAME.log; record PASS/FAIL.
check() {
  local name=$1 t0=$SECONDS rc
  shift
  ( set -e; "$@" ) >"$WORK/logs/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then echo "PASS $((SECONDS - t0))" >"$WORK/status/$name"
  else
    echo "FAIL $((SECONDS - t0)) (exit $rc)" >"$WORK/status/$name"
    { echo "---- $name: the last lines of its log ----"; tail -n 40 "$WORK/logs/$name.log"; } \
      >>"$OUT/failures.txt"
  fi
  echo "[gpu_check] $name: $(cat "$WORK/status/$name")" | tee -a "$OUT/checks.txt"
}

expect() {  # expect PYTHON_CONDITION MESSAGE: fail the check unless the condition holds
  $PY -c "import json, sys, torch; from pathlib import Path; R = Path('$RUNS'); sys.exit(0 if ($1) else 1)" \
    || { echo "expectation failed: $2"; return 1; }
}

smoke() {
  $PY run_all.py --preset smoke --name smoke --save_dir "$RUNS" --device "$DEVICE"
  expect "'$DEVICE' in json.loads((R/'smoke/seed_2/augment/results.json').read_text())['device']" "augment ran on $DEVICE"
  expect "json.loads((R/'smoke/seed_2/augment/results.json').read_text())['macs'] > 0" "multiply-adds counted on CUDA"
  expect "json.loads((R/'smoke/seed_2/test/results.json').read_text())['test_top1'] >= 0" "test results written"
}

darts() {
  $PY search.py --stage darts --unrolled --name darts "${TINY[@]}" --save_dir "$RUNS"
  $PY search.py --stage darts --unrolled --amp bf16 --name darts_bf16 "${TINY[@]}" --save_dir "$RUNS"
  $PY search.py --stage search1 --optimization bilevel --train_ratio 0.5 --name bilevel \
      "${TINY[@]}" --save_dir "$RUNS"
  $PY bench/hypergrad_check.py --device "$DEVICE"
}

ddp() {
  $TORCHRUN search.py --stage search1 --name ddp "${TINY[@]}" --save_dir "$RUNS"
  expect "'alpha_rank_divergence' in json.loads((R/'ddp/search1/metrics.jsonl').read_text().splitlines()[0])" \
    "a one-process torchrun joined the NCCL process group"
  $TORCHRUN search.py --stage search2 --name ddp "${TINY[@]}" --save_dir "$RUNS"
  $TORCHRUN augment.py --name ddp --genotype "$RUNS/ddp/search2/genotype.json" "${SYNC_BN[@]}" \
      --valid_ratio 0.25 "${TINY[@]}" --save_dir "$RUNS"
  $TORCHRUN test.py --name ddp --checkpoint "$RUNS/ddp/augment/best.pt" "${DATA[@]}" --save_dir "$RUNS"
}

amp() {
  $PY search.py --stage search1 --amp bf16 --channels_last --name bf16 "${TINY[@]}" --save_dir "$RUNS"
  $PY search.py --stage search1 --amp fp16 --name fp16 "${TINY[@]}" --save_dir "$RUNS"
  $PY augment.py --arch DARTS_V2 --amp fp16 --channels_last --name fp16 "${TINY[@]}" --save_dir "$RUNS"
  $PY augment.py --arch STACNAS_C10 --amp bf16 --name bf16 "${TINY[@]}" --save_dir "$RUNS"
  $PY test.py --name bf16 --amp bf16 --checkpoint "$RUNS/bf16/augment/checkpoint.pt" "${DATA[@]}" --save_dir "$RUNS"
}

compiled() {
  $PY search.py --stage search1 --compile --grad_checkpoint --name compiled "${TINY[@]}" \
      --num_cells 3 --save_dir "$RUNS"
  $PY augment.py --arch DARTS_V2 --compile --grad_checkpoint --name compiled "${TINY[@]}" \
      --num_cells 3 --save_dir "$RUNS"
}

# interrupt NAME STEP CMD...: start CMD in its own process group, SIGTERM the group once the
# stage log shows STEP, expect a mid-epoch checkpoint, then rerun CMD: it must resume and finish.
interrupt() {
  local name=$1 step=$2 stage_log pid rc
  shift 2
  stage_log=$1; shift
  setsid "$@" >"$WORK/logs/$name.first.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do
    grep -q "step $step/" "$stage_log" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM -- -$pid 2>/dev/null
  rc=0; wait $pid || rc=$?
  echo "first run stopped with exit code $rc"
  cat "$WORK/logs/$name.first.log"
  grep -q "stopped by SIGTERM" "$stage_log" || { echo "no 'stopped by SIGTERM' in $stage_log"; return 1; }
  "$@"
  grep -q "resuming from .*, step" "$stage_log" || { echo "no mid-epoch resume in $stage_log"; return 1; }
}

resume() {
  local big=(--dataset synthetic --synthetic_shape 3,32,32 --synthetic_samples 3200 --synthetic_classes 10
             --device "$DEVICE" --num_workers 2 --print_freq 10 --num_cells 5 --init_channels 8 --batch_size 16
             --epochs 1 --save_dir "$RUNS")
  interrupt augment 60 "$RUNS/resume/augment/log.txt" \
    $PY augment.py --arch DARTS_V2 --amp fp16 --name resume "${big[@]}"
  expect "json.loads((R/'resume/augment/results.json').read_text())['test_top1'] >= 0" "resumed augment finished"
  interrupt search 60 "$RUNS/resume/search1/log.txt" \
    $TORCHRUN search.py --stage search1 --name resume "${big[@]}"
  expect "(R/'resume/search1/genotype.json').is_file()" "resumed torchrun search finished"
}

analysis() {
  $PY alpha_efficiency.py --search_dir "$RUNS/smoke/seed_2/search2" --edges 0 --epochs 1 \
      --num_cells 3 --init_channels 4 --batch_size 16 --device "$DEVICE" --num_workers 2
  expect "(R/'smoke/seed_2/alpha_efficiency_stacnas/alpha_efficiency.json').is_file()" "alpha_efficiency.json written"
  $PY feature.py --name seed_2 --save_dir "$RUNS/smoke" --stage search1 --num_samples 32 \
      --dataset synthetic --synthetic_shape 3,8,8 --synthetic_samples 32 --synthetic_classes 4 \
      --device "$DEVICE" --num_workers 2
  expect "(R/'smoke/seed_2/search1/feature/groups.json').is_file()" "feature.py wrote groups.json"
}

smoke_then_analysis() {
  check smoke smoke
  grep -q PASS "$WORK/status/smoke" && check analysis analysis
}

# The functional checks run side by side (seconds of GPU work each), analysis after smoke.
want smoke && smoke_then_analysis &
for part in darts ddp amp resume; do
  want $part && check $part $part &
done
want compile && check compile compiled &
wait

if want speed && [ "$DEVICE" = cuda ]; then
  # CIFAR-sized input at the paper's settings (search1 14 cells / 16 ch / batch 64, search2 20
  # cells, augment DARTS_V2 20 cells / 36 ch / batch 96); one process per row, nothing beside
  # it. On CUDA the defaults are NCHW float32, so `default` is also the float32 NCHW baseline.
  # Rows in order of importance, all ended within the time budget (GPU_CHECK_BUDGET s for the
  # whole script, default 480); rows out of time are listed as not measured.
  left=$(( ${GPU_CHECK_BUDGET:-480} - ($(date +%s) - began) - 15 ))
  rm -f "$OUT/speed.jsonl"
  check speed env OMP_NUM_THREADS=8 $PY bench/step_bench.py --device cuda --steps 20 --warmup 3 \
      --rows search1:default,search2:default,augment:default,search1:bf16,search2:bf16,augment:bf16,augment:compile,search1:cl,search2:cl,augment:cl,search1:compile,search2:compile \
      --timeout 240 --deadline $(( left > 0 ? left : 0 )) --json "$OUT/speed.jsonl" --markdown "$OUT/speed.md"
  cat "$WORK/logs/speed.log"
fi

{
  echo "# GPU acceptance check"
  echo
  echo "$(cat "$WORK/device.txt"); $(date -u +%Y-%m-%dT%H:%MZ); $(( $(date +%s) - began )) s in all"
  echo
  echo "| check | result | seconds |"
  echo "|---|---|---:|"
  for f in "$WORK"/status/*; do
    read -r result secs rest <"$f"
    echo "| $(basename "$f") | $result ${rest:-} | $secs |"
  done
  if [ -f "$OUT/speed.md" ]; then echo; cat "$OUT/speed.md"; fi
} >"$OUT/summary.md"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs status
failed=$(grep -l FAIL "$WORK"/status/* 2>/dev/null | xargs -r -n1 basename)
for name in $failed; do
  echo "---- $name (last lines of its log) ----"
  tail -n 25 "$WORK/logs/$name.log"
done
cat "$OUT/summary.md"
[ -z "$failed" ]
