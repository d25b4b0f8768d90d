#!/bin/bash
# Issue 9, round 10 on the GPU machine (device tool `run`, carry .carry):
# the kernel tests, then A/B against the defaults on bench_e2e_device
# (alternating): MB_CUDA_L2_PREFETCH=0 (no prefetch of o_proj's and the
# router's weights beside the attention, nor of the next layer's QKV
# during the host's wait) and, with CPU workers, MB_DISPATCH_POLL_SPIN_US=0
# (the dispatcher blocks on the oldest link in 50 us slices); then
# test_parity_device, the default step's kernel timeline, the CPU workers'
# statistics table and the full bench_e2e_device into $OUT.
#   bash bench/gpu/round10.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
dense_tests dense_cuda-round10.txt MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,route,refusals
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- MB_CUDA_L2_PREFETCH=0 X=default MB_CUDA_L2_PREFETCH=0 X=default
ab cpu --layers 4 --prompt 256 --gen 32 --no-cpu-coord -- MB_CUDA_L2_PREFETCH=0 MB_DISPATCH_POLL_SPIN_US=0 X=default \
    MB_CUDA_L2_PREFETCH=0 MB_DISPATCH_POLL_SPIN_US=0 X=default
parity round10
trace round10 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu \
    > "$OUT/e2e-cpu-stats-round10.txt" 2>&1
echo "== cpu workers, statistics rc=$?"; sed -n '/^IPC statistics/,/^decode  coordinator/p' "$OUT/e2e-cpu-stats-round10.txt"
full_e2e round10
echo "total $(( $(date +%s) - t0 )) s"
