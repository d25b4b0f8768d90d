#!/bin/bash
# Issue 9 on the GPU machine (device tool `run`, carry .carry): the decode
# step's kernel timeline through CUPTI (bench/tools/ktrace.c), what each
# kernel of the replayed step takes on the device and the gaps between
# them, with every expert on the coordinator's GPU and with two CPU
# workers; then the plain bench for the step's time without the tracer.
#   bash bench/gpu/trace9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
KT=$B/bench/libmb_ktrace.so
if [ ! -f "$KT" ]; then # the machine's toolkit lacks CUPTI: the copy built here, with its libcupti
    KT=$PWD/.carry/ktrace/libmb_ktrace.so
    export LD_LIBRARY_PATH=$PWD/.carry/ktrace:$LD_LIBRARY_PATH
fi
echo "tracer: $KT"
ARGS="--layers 4 --prompt 1024 --no-cpu-coord"
trace() { # name, then bench_e2e_device's arguments
    local n=$1; shift
    rm -f "$OUT/kt-$n.csv"
    CUDA_INJECTION64_PATH=$KT MB_KTRACE_OUT=$OUT/kt-$n.csv timeout 120 $B/bench/bench_e2e_device "$@" \
        > "$OUT/e2e-$n.txt" 2>&1
    echo "== $n rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "^cuda |^dense|ktrace" "$OUT/e2e-$n.txt"
    python3 bench/tools/ktrace_steps.py "$OUT/kt-$n.csv" --steps 24 --json "$OUT/kt-$n.json" \
        > "$OUT/kt-$n.txt" 2>&1
    cat "$OUT/kt-$n.txt" | head -${MB_TRACE_LINES:-120}
    gzip -f "$OUT/kt-$n.csv"
}
trace gpu $ARGS --gen 48 --cases gpu
MB_CUDA_STEP_GRAPH=0 trace gpu-layergraphs $ARGS --gen 48 --cases gpu
MB_TRACE_LINES=60 trace cpu $ARGS --gen 16 --cases cpu
timeout 60 $B/bench/bench_e2e_device $ARGS --gen 64 --cases gpu > "$OUT/e2e-plain.txt" 2>&1
echo "== plain rc=$?"; grep -E "^cuda |^dense" "$OUT/e2e-plain.txt"
echo "total $(( $(date +%s) - t0 )) s"
