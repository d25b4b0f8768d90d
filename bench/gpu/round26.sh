#!/bin/bash
# Issue 9, the tenth session's second call (device tool `run`, carry
# .carry): after MB_CUDA_OROUTE and MB_CUDA_L2_EXPERTS went (round 25), the
# default path's tests on the H100 (test_dense_cuda whole, its run without
# the loads before the PDL wait, test_parity_device), then two decode rows
# beside round 25's (no change expected: the default kernels' arithmetic
# did not change) and the half case with bf16 payloads, the routed rows in
# the wire's dtype against MB_CUDA_WIRE=0. About 4 minutes with a build.
#   bash bench/gpu/round26.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
dense_tests dense_cuda-round26.txt X=default
dense_tests dense_cuda-round26-preload-off.txt MB_CUDA_PRELOAD=0 \
    MB_DENSE_TESTS=linear,norm_in,route,fused,attention,merge,stamp
parity round26
row X=default X=default | tee "$OUT/rows26.txt"
ab half --layers 4 --prompt 256 --gen 32 --no-cpu-coord --payload bf16 -- MB_CUDA_WIRE=0 X=default \
    MB_CUDA_WIRE=0 X=default | tee "$OUT/half26-wire.txt"
echo "total $(( $(date +%s) - t0 )) s"
