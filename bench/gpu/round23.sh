#!/bin/bash
# Issue 9, round 23 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights read while the local experts run, two ways:
# asked into L2 (MB_CUDA_L2_EXPERTS=N: N us after they start; with
# MB_CUDA_L2_KEEP=1 at evict_last priority), or staged in shared memory by
# a QKV GEMV launched early (preload letter q: MB_CUDA_PRELOAD=rhamsq).
# Rows alternating with the default (step ms as well as dense ms), then
# test_dense_cuda and test_parity_device with q, the gpu case's JSON;
# no timeline and no full bench: the session's device time ran short.
#   bash bench/gpu/round23.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
Q=MB_CUDA_PRELOAD=rhamsq
row X=default $Q X=default $Q MB_CUDA_L2_EXPERTS=12
dense_tests dense_cuda-round23-q.txt $Q MB_DENSE_TESTS=linear,norm_in,fused,refusals
MB_CUDA_PRELOAD=rhamsq parity round23-q
MB_CUDA_PRELOAD=rhamsq timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 64 --no-cpu-coord \
    --cases gpu --json "$OUT/e2e_device-round23-q-gpu.json" > "$OUT/e2e_device-round23-q-gpu.txt" 2>&1
grep -E "^device copy|^cuda |^dense" "$OUT/e2e_device-round23-q-gpu.txt"
echo "total $(( $(date +%s) - t0 )) s"
