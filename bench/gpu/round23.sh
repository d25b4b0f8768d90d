#!/bin/bash
# Issue 9, round 23 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights read while the local experts run, two ways:
# asked into L2 (MB_CUDA_L2_EXPERTS=N: N us after they start; with
# MB_CUDA_L2_KEEP=1 at evict_last priority), or staged in shared memory by
# a QKV GEMV launched early (preload letter q: MB_CUDA_PRELOAD=rhamsq).
# Rows alternating with the default (step ms as well as dense ms), then
# test_dense_cuda and test_parity_device with q. (No L2 rows, timeline or
# full bench: the session's device time ran short.)
#   bash bench/gpu/round23.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
Q=MB_CUDA_PRELOAD=rhamsq
row X=default $Q X=default $Q
dense_tests dense_cuda-round23-q.txt $Q MB_DENSE_TESTS=linear,norm_in,fused
MB_CUDA_PRELOAD=rhamsq parity round23-q
echo "total $(( $(date +%s) - t0 )) s"
