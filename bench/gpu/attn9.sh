#!/bin/bash
# Issue 9 on the GPU machine (device tool `run`, carry .carry): the
# one-token GEMV's row rule (16 rows with a norm folded in and m >= 4224,
# against 4 everywhere: MB_CUDA_GEMV1_R=4) and the decode attention's
# block target (MB_CUDA_ATTN_BLOCKS; fewer blocks, longer chunks, whose
# tiles now load while the previous one is computed), each against the
# default on bench_e2e_device, alternating; the kernel tests with the
# defaults and with long chunks; test_parity_device; the default step's
# kernel timeline.
#   bash bench/gpu/attn9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
KT=$B/bench/libmb_ktrace.so
for v in "MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,refusals" "MB_CUDA_ATTN_BLOCKS=16 MB_DENSE_TESTS=attention,merge"; do
    env $v timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda > "$OUT/dense.txt" 2>&1
    echo "== $v rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "FAIL|fusions|attention|test_dense_cuda:" "$OUT/dense.txt" | head -6
done
rm -f "$OUT/dense.txt"
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
ab() {
    for v in "$@"; do
        env $v timeout 60 $B/bench/bench_e2e_device $ARGS > "$OUT/ab.txt" 2>&1
        echo "== $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
    done
}
ab MB_CUDA_GEMV1_R=4 X=default MB_CUDA_GEMV1_R=4 X=default
ab MB_CUDA_ATTN_BLOCKS=132 MB_CUDA_ATTN_BLOCKS=66 MB_CUDA_ATTN_BLOCKS=33 X=default MB_CUDA_ATTN_BLOCKS=132 MB_CUDA_ATTN_BLOCKS=66 MB_CUDA_ATTN_BLOCKS=33 X=default
ARGS="--layers 4 --prompt 4096 --gen 64 --no-cpu-coord --cases gpu"
ab MB_CUDA_ATTN_BLOCKS=132 X=default MB_CUDA_ATTN_BLOCKS=132 X=default
rm -f "$OUT/ab.txt"
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > "$OUT/parity_device.txt" 2>&1;
    echo "== parity_device rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device.txt" | head -5
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
CUDA_INJECTION64_PATH=$KT MB_KTRACE_OUT=$OUT/kt-gpu.csv timeout 120 $B/bench/bench_e2e_device $ARGS > "$OUT/e2e-trace.txt" 2>&1
echo "== trace rc=$?"
python3 bench/tools/ktrace_steps.py "$OUT/kt-gpu.csv" --steps 32 > "$OUT/kt-gpu.txt" 2>&1
head -14 "$OUT/kt-gpu.txt"; sed -n '/^by operation/,$p' "$OUT/kt-gpu.txt"
rm -f "$OUT/kt-gpu.csv" "$OUT/e2e-trace.txt"
echo "total $(( $(date +%s) - t0 )) s"
MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu \
    > "$OUT/e2e-cpu-stats.txt" 2>&1
echo "== cpu workers, statistics rc=$?"; grep -v "^generating\|^loading" "$OUT/e2e-cpu-stats.txt" | head -40
rm -f "$OUT/e2e-cpu-stats.txt"
