#!/bin/bash
# Issue 9, the one-token GEMV's rows a block (MB_CUDA_GEMV1_R) on the GPU
# machine (device tool `run`, carry .carry): the kernel tests with each
# setting, the decode step's projections with weights streamed from memory
# (test_dense_cuda --bench, cold rows), the whole-step graph's kernel
# timeline (bench/tools/ktrace.c), and the A/B on bench_e2e_device.
#   bash bench/gpu/gemv9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker test_dense_cuda bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
KT=$B/bench/libmb_ktrace.so
[ -f "$KT" ] || { KT=$PWD/.carry/ktrace/libmb_ktrace.so; export LD_LIBRARY_PATH=$PWD/.carry/ktrace:$LD_LIBRARY_PATH; }
RS=${MB_GEMV9_RS:-"4 8 16"}
for r in $RS; do
    MB_CUDA_GEMV1_R=$r MB_DENSE_TESTS=linear,norm_in,fused,refusals timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda \
        > "$OUT/dense-r$r.txt" 2>&1
    echo "== R=$r tests rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "FAIL|fusions|norm folded|test_dense_cuda:" "$OUT/dense-r$r.txt" | head -4
    MB_CUDA_GEMV1_R=$r MB_DENSE_TESTS=none MB_BENCH_COLD_ONLY=1 timeout 60 $B/tests/unit/cuda_dense/test_dense_cuda --bench \
        2>&1 | grep -E "^device copy|cold"
done
rm -f "$OUT"/dense-r*.txt
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
CUDA_INJECTION64_PATH=$KT MB_KTRACE_OUT=$OUT/kt-gpu.csv timeout 120 $B/bench/bench_e2e_device $ARGS > "$OUT/e2e-trace.txt" 2>&1
echo "== trace rc=$?"; grep -E "^cuda " "$OUT/e2e-trace.txt"
python3 bench/tools/ktrace_steps.py "$OUT/kt-gpu.csv" --steps 32 > "$OUT/kt-gpu.txt" 2>&1
head -16 "$OUT/kt-gpu.txt"; sed -n '/^by operation/,$p' "$OUT/kt-gpu.txt"
gzip -f "$OUT/kt-gpu.csv"
for r in $RS $RS; do
    MB_CUDA_GEMV1_R=$r timeout 60 $B/bench/bench_e2e_device $ARGS > "$OUT/ab.txt" 2>&1
    echo "== R=$r rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
rm -f "$OUT/ab.txt" "$OUT/e2e-trace.txt"
echo "total $(( $(date +%s) - t0 )) s"
