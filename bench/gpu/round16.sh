#!/bin/bash
# Issue 9, round 16 on the GPU machine (device tool `run`, carry .carry):
# knobs of the decode step's layout: query heads a decode attention block
# takes (MB_CUDA_ATTN_HEADS), o_proj's rows a block (MB_CUDA_GEMV1_RP, removed after round 17),
# the L2 prefetch's spread (MB_CUDA_L2PF_EACH); rows alternating with the
# default; then test_dense_cuda with the candidates all set and
# test_parity_device with the defaults. Written in the sixth session, not
# yet run: its device time was spent.
#   bash bench/gpu/round16.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_ATTN_HEADS=4 MB_CUDA_L2PF_EACH=2 MB_CUDA_GEMV1_R=8 \
    X=default MB_CUDA_ATTN_HEADS=4
CAND="MB_CUDA_ATTN_HEADS=4 MB_CUDA_L2PF_EACH=2"
dense_tests dense_cuda-round16.txt $CAND MB_DENSE_TESTS=linear,attention,merge
trace round16 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
parity round16 # the defaults, with the own rows' re-read through L2 (after round 16)
echo "total $(( $(date +%s) - t0 )) s"
