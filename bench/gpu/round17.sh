#!/bin/bash
# Issue 9, round 17 on the GPU machine (device tool `run`, carry .carry):
# o_proj's weights staged in shared memory while the attention runs
# (MB_CUDA_PRELOAD letter s: the merge launches the staged GEMV early; the
# L2 prefetch of o_proj goes) against the default, rows alternating; round
# 16's layout knobs (never run: its device time was spent); test_dense_cuda
# with s and the knobs' candidates; the kernel timelines of both; the
# parity test with s (the decode attention's own-row re-read included).
#   bash bench/gpu/round17.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_PRELOAD=rhams X=default MB_CUDA_PRELOAD=rhams \
    MB_CUDA_ATTN_HEADS=4 MB_CUDA_L2PF_EACH=2
dense_tests dense_cuda-round17.txt MB_CUDA_PRELOAD=ngrhams MB_CUDA_ATTN_HEADS=4 MB_CUDA_L2PF_EACH=2 \
    MB_DENSE_TESTS=linear,attention,merge
trace round17 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
MB_CUDA_PRELOAD=rhams trace round17-s --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
MB_CUDA_PRELOAD=rhams parity round17-s
echo "total $(( $(date +%s) - t0 )) s"
