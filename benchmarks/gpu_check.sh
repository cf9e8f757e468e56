#!/usr/bin/env bash
# One-shot GPU check, sized to finish in under 8 minutes on one H100/H200:
#   1. the CUDA-marked tests (pytest -m cuda), at most TEST_BUDGET_S seconds;
#   2. the linear-logprobs benchmark on the GPU, at most BENCH_BUDGET_S seconds.
# Logs (and the benchmark's CSV/markdown) go under ${OUT:-benchmarks/out}. Both steps always run;
# the exit status is non-zero if either failed or ran out of time (124 = timed out).
#
# Usage: bash benchmarks/gpu_check.sh [extra benchmark args...]
#   env: OUT (output folder), PYTHON (interpreter, default python),
#        TEST_BUDGET_S (default 210), BENCH_BUDGET_S (default 210)
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/out}"
PYTHON="${PYTHON:-python}"
TEST_BUDGET_S="${TEST_BUDGET_S:-210}"
BENCH_BUDGET_S="${BENCH_BUDGET_S:-210}"
mkdir -p "$OUT_DIR"

# The kernels must really compile for the GPU, not run in the interpreter.
unset TRITON_INTERPRET

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi unavailable"
    "$PYTHON" - <<'EOF'
import torch, triton
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}")
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} >"$OUT_DIR/gpu_env.txt" 2>&1
cat "$OUT_DIR/gpu_env.txt"

echo "== pytest -m cuda (budget ${TEST_BUDGET_S}s) -> $OUT_DIR/gpu_tests.log"
start=$SECONDS
timeout --signal=INT --kill-after=15 "$TEST_BUDGET_S" \
    "$PYTHON" -m pytest -m cuda tests -q -rs --durations=15 \
    --junitxml="$OUT_DIR/gpu_tests.xml" >"$OUT_DIR/gpu_tests.log" 2>&1
test_rc=$?
echo "pytest exit $test_rc after $((SECONDS - start))s"
tail -n 25 "$OUT_DIR/gpu_tests.log"

echo "== benchmark (budget ${BENCH_BUDGET_S}s) -> $OUT_DIR/gpu_bench.log"
start=$SECONDS
timeout --signal=INT --kill-after=15 "$BENCH_BUDGET_S" \
    "$PYTHON" benchmarks/bench_linear_logprobs.py --device cuda --out "$OUT_DIR" "$@" \
    >"$OUT_DIR/gpu_bench.log" 2>&1
bench_rc=$?
echo "benchmark exit $bench_rc after $((SECONDS - start))s"
tail -n 40 "$OUT_DIR/gpu_bench.log"

echo "== summary: tests rc=$test_rc, benchmark rc=$bench_rc (124 = out of time)" | tee "$OUT_DIR/gpu_summary.txt"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
