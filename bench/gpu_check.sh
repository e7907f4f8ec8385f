#!/usr/bin/env bash
# One-shot GPU check for the H200 device machine (python3 with torch 2.11+cu130, nvcc 13, no
# internet). Builds the extension in place for sm_90a, prints the build's op table, runs the CUDA
# tests, runs compute-sanitizer memcheck over one small case of each op, runs every GPU benchmark,
# and writes logs and JSON into the results folder (argument 1, or $DOMINO_GPU_RESULTS, or
# ./gpu-results). Designed to finish in under 8 minutes; every step is time-boxed and a failing
# step does not stop the later ones (the summary at the end says what failed).
#
#   bash bench/gpu_check.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${DOMINO_GPU_RESULTS:-gpu-results}}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
PY="${PYTHON:-python3}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export DOMINO_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" NVCC_THREADS=4 PYTHONUNBUFFERED=1
export DOMINO_BENCH_RESULTS="$RESULTS"
status=()
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name" | tee -a "$LOG"
  timeout "$secs" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
  status+=("$name rc=$rc")
}

step "nvidia-smi" 20 nvidia-smi
step "build (sm_90a)" 240 "$PY" setup.py build_ext --inplace
step "info" 60 "$PY" -m domino_kernels.info
step "pytest (CUDA tests)" 200 "$PY" -m pytest -q -x tests -k cuda -p no:cacheprovider
if command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck" 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" bench/gpu_smoke.py
else
  step "gpu smoke (no compute-sanitizer)" 120 "$PY" bench/gpu_smoke.py
fi
for bench in bench/bench_*.py; do
  mod="bench.$(basename "$bench" .py)"
  step "$mod --device cuda" 120 "$PY" -m "$mod" --device cuda
done
echo "=== summary" | tee -a "$LOG"
printf '%s\n' "${status[@]}" | tee -a "$LOG"
