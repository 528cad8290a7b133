#!/usr/bin/env bash
# The GPU check of issue 12 in one command (at most 8 minutes on one H200): the CUDA-only tests, the step bench,
# the distillation bench (ViT-B-32, fp32 and bf16 teachers) and the PRDC bench on CUDA. Each part writes its output
# to its own file under the output folder and has its own time limit, so one slow part cannot eat the others' time.
#
#   bash bench/gpu_check.sh                 # outputs under $OUT (the device machine's result folder), else ./gpu_check
#   bash bench/gpu_check.sh results/h200    # outputs under that folder
#   bash bench/gpu_check.sh --dry-run DIR   # the same commands on CPU at toy sizes (checks the script, not the GPU)
#
# The step bench compares with the reference implementation when $GENKD_REFERENCE names a copy of
# data-efficient-gans/DiffAugment-biggan-cifar (never part of this repository; see bench/bench_step.py).
set -u
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
reference=()
if [ -n "${GENKD_REFERENCE:-}" ]; then reference=(--reference "$GENKD_REFERENCE"); fi

if [ "$dry_run" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
  device=cpu
  tests=(tests/test_prdc.py -k "gpu or paths")
  step=(--width 4 --repeats 1 --warmup 1)
  distill=(--teacher tiny-vit --iters 1 --rounds 1 --projectors linear --batch-size 8)
  prdc=(--size 600 --large 2000 --dim 256)
  limit() { echo 300; }
else
  device=cuda
  if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device visible: run on a GPU machine, or use --dry-run to check the script on CPU" >&2
    exit 2
  fi
  export GENKD_TEST_INDUCTOR=1  # the inductor-compiled step test (CPU runs skip it: minutes of C++ builds)
  tests=(tests/test_prdc.py tests/test_speed.py tests/test_teachers.py)
  step=(--width 64 --repeats 5 --warmup 3 --compile --bf16
        --settings "eager fp32,channels_last + fused_adam,compile + channels_last + fused_adam")
  distill=(--teacher ViT-B-32 --iters 10 --rounds 3 --resolution 112 --every 2)
  prdc=(--size 10000 --large 50000)
  limit() { echo "$1"; }
fi

status=0
run() {  # run NAME SECONDS COMMAND...: output to $out/NAME.txt, a line per part in $out/summary.txt
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  { echo "\$ $*"; uptime; } >"$out/$name.txt"
  timeout "$seconds" "$@" >>"$out/$name.txt" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || status=1
  echo "$name: exit $rc after $((SECONDS - start)) s (limit $seconds s)" | tee -a "$out/summary.txt"
}

: >"$out/summary.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >"$out/device.txt"
run tests "$(limit 100)" python -m pytest -q -rs "${tests[@]}"
run bench_step "$(limit 200)" python bench/bench_step.py --device "$device" "${step[@]}" "${reference[@]}"
run bench_distill "$(limit 80)" python bench/bench_distill.py --device "$device" --dtypes fp32,bf16 "${distill[@]}"
run bench_prdc "$(limit 90)" python bench/bench_prdc.py --device "$device" "${prdc[@]}"
exit "$status"
