#!/bin/bash
# Issue 9, round 9 on the GPU machine (device tool `run`, carry .carry):
# the kernel tests (the head pass inside the decode attention among the
# fusions), then A/B against the default on bench_e2e_device, alternating:
# MB_CUDA_FUSE_ATTN=1 (the head pass inside the attention's blocks; the
# default when this ran) and MB_CUDA_LOGITS_DIRECT=0 (the logits copied
# after lm_head); then test_parity_device, the default step's kernel
# timeline and the full bench_e2e_device into $OUT.
#   bash bench/gpu/round9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
dense_tests dense_cuda-round9.txt MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,refusals
dense_tests dense-long.txt MB_CUDA_ATTN_BLOCKS=16 MB_DENSE_TESTS=fused,attention
rm -f "$OUT/dense-long.txt"
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord"
ab gpu $ARGS -- MB_CUDA_FUSE_ATTN=1 MB_CUDA_LOGITS_DIRECT=0 X=default MB_CUDA_FUSE_ATTN=1 MB_CUDA_LOGITS_DIRECT=0 X=default
parity round9
trace round9 $ARGS --cases gpu
full_e2e round9
echo "total $(( $(date +%s) - t0 )) s"
