#!/bin/bash
# Issue 9, round 10 on the GPU machine (device tool `run`, carry .carry):
# the kernel tests, then A/B against the new defaults on bench_e2e_device
# (alternating): MB_CUDA_L2_PREFETCH=0 (no prefetch of o_proj's and the
# router's weights beside the attention, nor of the next layer's QKV
# during the host's wait) and, with CPU workers, MB_DISPATCH_POLL_SPIN_US=0
# (the dispatcher blocks on the oldest link in 50 us slices); then test_parity_device, the default step's
# kernel timeline, the CPU-workers case's statistics, and the full
# bench_e2e_device (every case, both coordinators) into $OUT.
#   bash bench/gpu/round10.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
KT=$B/bench/libmb_ktrace.so
MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,route,refusals timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda \
    > "$OUT/dense_cuda-round10.txt" 2>&1
echo "== dense tests rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|fusions|attention|route|test_dense_cuda:" "$OUT/dense_cuda-round10.txt" | head -8
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord"
for v in MB_CUDA_L2_PREFETCH=0 X=default MB_CUDA_L2_PREFETCH=0 X=default; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS --cases gpu > "$OUT/ab.txt" 2>&1
    echo "== gpu $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
for v in MB_CUDA_L2_PREFETCH=0 MB_DISPATCH_POLL_SPIN_US=0 X=default MB_CUDA_L2_PREFETCH=0 MB_DISPATCH_POLL_SPIN_US=0 X=default; do
    env $v timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu > "$OUT/ab.txt" 2>&1
    echo "== cpu $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
rm -f "$OUT/ab.txt"
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > "$OUT/parity_device-round10.txt" 2>&1;
    echo "== parity_device rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device-round10.txt" | head -5
CUDA_INJECTION64_PATH=$KT MB_KTRACE_OUT=$OUT/kt-gpu.csv timeout 120 $B/bench/bench_e2e_device $ARGS --cases gpu \
    > "$OUT/e2e-trace.txt" 2>&1
echo "== trace rc=$?"
python3 bench/tools/ktrace_steps.py "$OUT/kt-gpu.csv" --steps 32 > "$OUT/ktrace-round10.txt" 2>&1
head -12 "$OUT/ktrace-round10.txt"; sed -n '/^by operation/,$p' "$OUT/ktrace-round10.txt"
rm -f "$OUT/kt-gpu.csv" "$OUT/e2e-trace.txt"
MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu \
    > "$OUT/e2e-cpu-stats-round10.txt" 2>&1
echo "== cpu workers, statistics rc=$?"; sed -n '/^IPC statistics/,/^decode  coordinator/p' "$OUT/e2e-cpu-stats-round10.txt"
timeout 240 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json "$OUT/e2e_device-round10.json" \
    > "$OUT/e2e_device-round10.txt" 2>&1
echo "== full e2e rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" "$OUT/e2e_device-round10.txt"
echo "total $(( $(date +%s) - t0 )) s"
