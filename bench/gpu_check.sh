#!/usr/bin/env bash
# The one prepared check for a machine with a GPU
# (about 4 minutes), every step logged to $OUT/gpu_check.log and a summary at the end.
#
#   device run, from the repository root:  PYTHONUNBUFFERED=1 bash bench/gpu_check.sh
#   a dry run here, on CPU, tiny sizes:    PYTHON=.venv/bin/python DEVICE=cpu SIZE=small \
#                                              bash bench/gpu_check.sh
#   (tests/test_bench_smoke.py runs that dry run, without the test steps CI runs anyway)
#
# The device image has python3 with torch (CUDA), numpy, scipy, h5py, safetensors, typer, rich,
# pytest and hypothesis, and nothing can be installed there: ncinspect runs from this checkout
# (PYTHONPATH), not from an install. Steps:
#   1. the device accumulators of `extract --stats-only` against the host passes, on the GPU
#      (tests/analysis/test_device.py with NCINSPECT_TEST_DEVICE);
#   2. the whole test suite on that machine (`--device auto` picks the GPU there);
#   3. extraction throughput against the bare forward loop on the GPU: fp32, bf16 autocast, and
#      --stats-only (statistics accumulated on the device);
#   4. bench_report's report timings (parts a and d) on that machine's CPU cores.
# A failing step is recorded and the next one runs; the exit status is the number of failures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: >"$LOG"

if [ "$SIZE" = small ]; then
    EXTRACT=(--n 4096 --in-dim 64 --width 256 --batch-size 512 --repeats 1)
    REPORT=(--quick)
else
    # 2^18 rows, ~20 M multiply-adds each: the forward pass is a fraction of a second on an
    # H100/H200 in fp32, so the store writes (512 MiB of features per run) are what is measured
    EXTRACT=(--n 262144 --in-dim 256 --width 4096 --batch-size 4096 --repeats 3)
    REPORT=(--parts a,d --repeats 3)
fi

failures=0
summary=()
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, note pass/fail and seconds
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        summary+=("ok     ${took}s  $name")
    else
        summary+=("FAILED ${took}s  $name (exit $rc)")
        failures=$((failures + 1))
    fi
}

step "machine" 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version \
--format=csv 2>/dev/null || echo 'no nvidia-smi'; nproc; \
$PY -c 'import sys, torch, numpy, scipy, h5py; print(sys.version.split()[0], \"torch\", \
torch.__version__, \"numpy\", numpy.__version__, \"scipy\", scipy.__version__, \"h5py\", \
h5py.__version__); print(\"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else \"\")'"
if [ "$SIZE" != small ]; then
    step "device accumulators vs host passes ($DEVICE)" 120 \
        env NCINSPECT_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider \
        tests/analysis/test_device.py
    step "test suite" 240 "$PY" -m pytest -q -p no:cacheprovider
fi
for variant in "" "--precision bf16" "--stats-only"; do
    # shellcheck disable=SC2086  # $variant is zero or more words on purpose
    step "extract vs bare loop ($DEVICE${variant:+ $variant})" 120 \
        "$PY" -m bench.bench_extract --device "$DEVICE" "${EXTRACT[@]}" $variant
done
step "report bench (CPU)" 240 "$PY" -m bench.bench_report "${REPORT[@]}"

{
    echo
    echo "Summary ($(date -u +%FT%TZ), device $DEVICE, size $SIZE)"
    printf '%s\n' "${summary[@]}"
    grep -E "^(N=|bare forward|run_extract|overhead|report \(a\)|regression \(d\))" "$LOG" || true
} | tee -a "$LOG"
exit "$failures"
