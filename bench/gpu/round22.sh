#!/bin/bash
# Issue 9, round 22 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights held in L2 through the local experts by
# eviction priority (MB_CUDA_L2_KEEP=1, written after round 21, never run
# on a GPU): rows alternating with the default (compare step ms as well as
# dense ms: round 21), the kernel timeline with it, test_dense_cuda's
# refusals group (which calls it) and test_parity_device with it.
#   bash bench/gpu/round22.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_L2_KEEP=1 X=default MB_CUDA_L2_KEEP=1
dense_tests dense_cuda-round22.txt MB_DENSE_TESTS=refusals
dense_tests dense_cuda-round22-all.txt X=default
MB_CUDA_L2_KEEP=1 parity round22-keep
trace round22 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
MB_CUDA_L2_KEEP=1 trace round22-keep --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
echo "total $(( $(date +%s) - t0 )) s"
