#!/bin/bash
# Issue 9, round 12 on the GPU machine (device tool `run`, carry .carry):
# the review commits of round 11 checked (test_dense_cuda, test_parity_device);
# the one-token GEMVs asking L2 for their weights before they wait for the
# kernel before them (MB_CUDA_PREWAIT=0: not) and the step's first kernel
# reading its token and position from mapped memory (MB_CUDA_TOKEN_DIRECT=0:
# the copies) and the router's last block writing the local experts' pairs
# and start mark (MB_CUDA_ROUTE_PAIRS=0: their own launches), alternating;
# the dispatcher's poll of one busy link as well
# as several, 20 ms by default with the GPU coordinator, against blocking
# at once (CPU workers, alternating); the decode step's kernel timeline
# with PDL off, where every kernel's device time is its own.
#   bash bench/gpu/round12.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
dense_tests dense_cuda-round12.txt MB_DENSE_TESTS=embed,linear,norm_in,fused,attention,merge,route,refusals
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- X=default MB_CUDA_PREWAIT=0 \
    MB_CUDA_TOKEN_DIRECT=0 MB_CUDA_ROUTE_PAIRS=0 X=default MB_CUDA_PREWAIT=0 MB_CUDA_TOKEN_DIRECT=0 \
    MB_CUDA_ROUTE_PAIRS=0
ab cpu --layers 4 --prompt 256 --gen 32 --no-cpu-coord -- MB_DISPATCH_POLL_SPIN_US=0 X=default \
    MB_DISPATCH_POLL_SPIN_US=0 X=default
parity round12
MB_CUDA_PDL=0 trace nopdl --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
echo "total $(( $(date +%s) - t0 )) s"
