#!/bin/bash
# Issue 9, round 14 on the GPU machine (device tool `run`, carry .carry):
# loads issued before a kernel's wait for the one before it (PDL), of
# what no kernel of the step writes (MB_CUDA_PRELOAD letters: n QKV's and
# lm_head's first weights, g o_proj's, r the router's, h the head
# pass's position and tables, a the attention's first key/value tile, m
# the merge's position). test_parity_device (again with the preloads off
# if it fails), test_dense_cuda, the bench row with each preload alone and
# all, the timeline with PDL on.
#   bash bench/gpu/round14.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
parity round14
if grep -q "Failed\|CHECK failed" "$OUT/parity_device-round14.txt"; then
    MB_CUDA_PRELOAD=0 parity round14-nopre
fi
dense_tests dense_cuda-round14.txt MB_DENSE_TESTS=embed,linear,norm_in,fused,attention,merge,route,refusals
MB_CUDA_PRELOAD=0 dense_tests dense_cuda-round14-nopre.txt MB_DENSE_TESTS=linear,fused,attention,merge,route
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- MB_CUDA_PRELOAD=0 X=default \
    MB_CUDA_PRELOAD=0 X=default MB_CUDA_PRELOAD=n MB_CUDA_PRELOAD=g MB_CUDA_PRELOAD=r \
    MB_CUDA_PRELOAD=h MB_CUDA_PRELOAD=a MB_CUDA_PRELOAD=m MB_CUDA_PRELOAD=rham
trace pdl14 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
echo "total $(( $(date +%s) - t0 )) s"
