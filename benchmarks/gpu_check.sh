#!/usr/bin/env bash
# The GPU check: one command for a GPU machine without network, under 6 minutes.
#
#   1. the GPU tests            pytest -m gpu (CuPy kernels vs Numba/reference, torch CUDA path)
#   2. the compile gate         every CUDA source x dtype instantiation, sm_80 and sm_90
#   3. the GPU benchmarks       benchmarks/compare_gpu.py (tables: copy, JAX, accelerated-scan)
#
# Run from anywhere in the checkout: bash benchmarks/gpu_check.sh
# The project runs from the checkout (no install); the peers come from .gpu-peers/ if present
# (benchmarks/gpu_peers_setup.sh unpacks them there). With OUT set, everything printed is also
# written to $OUT/gpu_check.log and the tables to $OUT/compare_gpu.txt.
# Exit status: 0 if every step passed, else 1 (each step runs even if an earlier one failed).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$root/.gpu-peers" ]; then
    export PYTHONPATH="$root/.gpu-peers:$PYTHONPATH"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX would otherwise take 75% of the GPU memory
export PYTHONDONTWRITEBYTECODE=1
py=${PYTHON:-python3}

status=0
step() {  # step <name> <seconds> <command...>
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout --signal=INT --kill-after=10 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ]; then
        echo "=== $name: TIMED OUT after ${limit}s"
    fi
    echo "=== $name: exit $rc in $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || status=1
}

main() {
echo "=== gpu_check on $(hostname) at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi unavailable)"
"$py" - <<'PY'
import importlib
for m in ("numpy", "torch", "cupy", "jax", "triton", "numba"):
    try:
        print(f"{m} {importlib.import_module(m).__version__}")
    except Exception as exc:
        print(f"{m}: {type(exc).__name__}: {exc}")
import ssmcore.dispatch as d
ok = d.gpu_available()
print("ssmcore sees a GPU:", ok)
if not ok:
    print("WARNING: no CUDA device: the GPU tests will skip and the benchmarks cannot run")
PY

# Budgets add up to 5.9 minutes: tests 170 s, gate 65 s (every source x 2 archs; lfilter.cu compiles
# in about twice scan.cu's NVRTC time, measured on a CPU machine: +15 s estimated), benchmarks 120 s.
# pytest-xdist is on the GPU image: 8 workers share the one GPU (the Numba references get 2 threads each).
xdist=()
if "$py" -c "import xdist" 2>/dev/null; then xdist=(-n 8); export NUMBA_NUM_THREADS=2; fi
step "GPU tests" 170 "$py" -m pytest -m gpu -q -rfEs -p no:cacheprovider "${xdist[@]}" tests
step "compile gate" 65 "$py" -m ssmcore.backends.cupy.compile_gate
step "GPU benchmarks" 120 "$py" benchmarks/compare_gpu.py   # tables also to $OUT/compare_gpu.txt

echo
if [ "$status" -eq 0 ]; then echo "=== gpu_check: all steps passed"; else echo "=== gpu_check: FAILED (see above)"; fi
return "$status"
}

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
