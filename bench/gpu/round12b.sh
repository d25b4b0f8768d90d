#!/bin/bash
# Issue 9, round 12's last call: the state after round 12 (MB_CUDA_PREWAIT and
# MB_CUDA_TOKEN_DIRECT removed, the router writing the local pairs kept):
# test_dense_cuda, test_parity_device, and the plain bench twice.
#   bash bench/gpu/round12b.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
dense_tests dense_cuda-round12b.txt MB_DENSE_TESTS=embed,linear,norm_in,fused,route,refusals
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- X=default MB_CUDA_ROUTE_PAIRS=0 X=default
parity round12b
echo "total $(( $(date +%s) - t0 )) s"
