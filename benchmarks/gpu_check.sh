#!/usr/bin/env bash
# The GPU check of gaa, in under 8 minutes on a machine with one NVIDIA GPU and a CUDA build of torch:
#
#   1. environment: the GPU, torch's CUDA, bfloat16 support, Triton (for --compile);
#   2. install: pip install -e ".[test,bench]" (offline: the package alone, without its extras);
#   3. tests: tests/test_precision.py (the CUDA-marked tests run) and every other CUDA-marked test;
#   4. the GaussianBlock's forward+backward against layer_norm on the GPU (benchmarks/bench_block_gpu.py),
#      eager and compiled, with the peak GPU memory of each;
#   5. training: the bundled sample and GunPoint (bundled with aeon, no download) on the GPU (auto precision;
#      the sample also with --compile) and on the CPU (float32), the GPU's accuracy checked against the CPU's,
#      training samples per second and peak GPU memory printed (benchmarks/gpu_check.py); predict and explain
#      on the GPU through the CLI.
#
# Exits 0 when everything passed, 1 on a failure (the failing step says what), 2 on a bad option.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --no-install     # gaa already installed (pip install -e .)
#   bash benchmarks/gpu_check.sh --no-compile     # skip torch.compile (no Triton, or short of time)
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # no GPU: every step on the CPU with tiny settings (plumbing only)
#
# Environment: PYTHON (default python3), GAA_CHECK_BUDGET_S (default 470, 1800 for a dry run: every step's
# timeout is cut to what is left of it), GAA_CHECK_KEEP=1 keeps the working folder (runs, logs, JSON results).
set -euo pipefail

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY=0
INSTALL=1
COMPILE=1
PY=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-dry-run) DRY=1 ;;
        --no-install) INSTALL=0 ;;
        --no-compile) COMPILE=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "gpu_check.sh: unknown option '$1'; see --help" >&2
            exit 2
            ;;
    esac
    shift
done

# a dry run trains on a CPU that may be small and shared: a budget of its own
if [[ $DRY == 1 ]]; then
    BUDGET=${GAA_CHECK_BUDGET_S:-1800}
else
    BUDGET=${GAA_CHECK_BUDGET_S:-470}
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gaa-gpu-check.XXXXXX")
cleanup() {
    if [[ "${GAA_CHECK_KEEP:-0}" == 1 ]]; then
        echo "gpu_check.sh: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
START=$SECONDS

step() {
    printf '\n== %s (at %d s)\n' "$1" "$((SECONDS - START))"
}

fail() {
    echo "gpu_check.sh: FAIL: $*" >&2
    exit 1
}

# run a step's command under `timeout SECONDS`; a step that runs out of time fails, saying so
timed() {
    local seconds=$1 status=0
    shift
    timeout "$seconds" "$@" || status=$?
    if ((status == 124)); then
        echo "gpu_check.sh: '$*' ran out of time (${seconds} s; the whole check has ${BUDGET} s, GAA_CHECK_BUDGET_S)" >&2
    fi
    return "$status"
}

# seconds a step may take: its own limit (three times it in a dry run, on a CPU), cut to what is left of the
# budget (at least 10)
limit() {
    local want=$1 left=$((BUDGET - (SECONDS - START)))
    if [[ $DRY == 1 ]]; then
        want=$((3 * want))
    fi
    if ((left < 10)); then
        left=10
    fi
    if ((want < left)); then
        echo "$want"
    else
        echo "$left"
    fi
}

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    export CUDA_VISIBLE_DEVICES=""  # the dry run never touches a GPU, even where there is one
else
    DEVICE=cuda
fi

step "environment"
"$PY" -c "import torch" || fail "torch does not import with $PY; install a CUDA build of torch first (or set PYTHON)"
if [[ $DRY == 0 ]]; then
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" ||
        fail "torch.cuda.is_available() is False: no GPU visible, or a CPU-only torch; --cpu-dry-run checks the script without one"
fi
"$PY" - << 'EOF'
import torch
from torch.utils._triton import has_triton

if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); {p.name}, compute capability {p.major}.{p.minor}, "
          f"{p.total_memory / 2**30:.0f} GiB; native bfloat16: {torch.cuda.is_bf16_supported(including_emulation=False)}; "
          f"Triton: {has_triton()}")
else:
    print(f"torch {torch.__version__}; no GPU (dry run)")
EOF

step "install"
if [[ $INSTALL == 1 ]]; then
    if ! timed "$(limit 180)" "$PY" -m pip install -q --no-build-isolation -e ".[test,bench]"; then
        echo "gpu_check.sh: installing with the extras failed (offline?); installing the package alone"
        timed "$(limit 120)" "$PY" -m pip install -q --no-build-isolation --no-deps -e . || fail "pip install -e . failed"
    fi
else
    echo "skipped (--no-install)"
fi
"$PY" -c "import gaa_cli, gaussian_adaptive_attention, pandas, pyarrow, typer, rich, safetensors, pytest" ||
    fail "gaa or one of its requirements does not import; pip install -e '.[test,bench]'"

step "tests"
# exit status 5 = no test selected (every CUDA test elsewhere deselected): not a failure
run_tests() {
    local status=0
    timed "$(limit "$1")" "$PY" -m pytest -q -p no:cacheprovider "${@:2}" || status=$?
    if ((status != 0 && status != 5)); then
        fail "pytest ${*:2} exited $status"
    fi
}
run_tests 180 tests/test_precision.py -m "not slow"
run_tests 120 tests -m cuda --ignore=tests/test_precision.py

step "GaussianBlock against layer_norm, forward+backward"
if [[ $DRY == 1 ]]; then
    BENCH=(--quick --autocast bf16)
else
    BENCH=(--rows model wide features)
    if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_bf16_supported(including_emulation=False) else 1)"; then
        BENCH+=(--autocast bf16)
    else
        BENCH+=(--autocast fp16)
    fi
fi
timed "$(limit 90)" "$PY" benchmarks/bench_block_gpu.py --device "$DEVICE" "${BENCH[@]}" --json "$WORK/block.json" ||
    fail "bench_block_gpu.py failed"
if [[ $DRY == 0 && $COMPILE == 1 ]]; then
    # the compiled block (first compile of each row: tens of seconds)
    timed "$(limit 90)" "$PY" benchmarks/bench_block_gpu.py --device "$DEVICE" --rows model --compile --json "$WORK/block_compiled.json" ||
        fail "bench_block_gpu.py --compile failed"
fi

step "training on the GPU and on the CPU"
CHECK=(--work "$WORK/runs" --json "$WORK/gpu_check.json")
if [[ $DRY == 1 ]]; then
    CHECK+=(--cpu-dry-run)
fi
if [[ $COMPILE == 0 ]]; then
    CHECK+=(--no-compile)
fi
timed "$(limit 330)" "$PY" benchmarks/gpu_check.py "${CHECK[@]}" || fail "benchmarks/gpu_check.py failed (see above)"

echo
echo "gpu_check.sh: PASS in $((SECONDS - START)) s$([[ $DRY == 1 ]] && echo ' (CPU dry run: plumbing only, no GPU figures)')"
