#!/bin/bash
# Issue 9, round 23 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights staged in shared memory by a QKV GEMV
# launched early, while the local experts run (preload letter q:
# MB_CUDA_PRELOAD=rhamsq). Rows alternating with the default (step ms as
# well as dense ms), then test_dense_cuda and test_parity_device with q.
# Short, for a session with little device time left; with more, add rows
# of MB_CUDA_L2_EXPERTS=N (the same weights asked into L2 N us after the
# experts start), a timeline (trace) and the full bench (full_e2e).
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
