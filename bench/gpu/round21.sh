#!/bin/bash
# Issue 9, round 21 on the GPU machine (device tool `run`, carry .carry):
# the router in one cluster of 8 blocks, its logits gathered in the first
# block's shared memory (MB_CUDA_ROUTE_CLUSTER=1) instead of a fence, a
# counter and a read from L2 by the last block; rows alternating with the
# default, test_dense_cuda's router groups and test_parity_device with it.
#   bash bench/gpu/round21.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
for s in X=default MB_CUDA_ROUTE_CLUSTER=1 X=default MB_CUDA_ROUTE_CLUSTER=1; do
    row "$s"
done
dense_tests dense_cuda-round21.txt MB_CUDA_ROUTE_CLUSTER=1 MB_DENSE_TESTS=norm_in,route,fused
MB_CUDA_ROUTE_CLUSTER=1 parity round21-cluster
# (the timeline: MB_CUDA_ROUTE_CLUSTER=1 trace round21-cluster --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu)
echo "total $(( $(date +%s) - t0 )) s"
