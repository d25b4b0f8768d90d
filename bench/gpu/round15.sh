#!/bin/bash
# Issue 9, round 15 on the GPU machine (device tool `run`, carry .carry):
# with round 14's preloads on, the fusions that lost before them again
# (the head pass inside the attention, the merge inside it, both), and
# the decode attention's block target (chunks of 64 and 32 positions);
# then the full bench. A/B rows alternate with the default.
#   bash bench/gpu/round15.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_FUSE_ATTN=1 MB_CUDA_FUSE_MERGE=1 "MB_CUDA_FUSE_ATTN=1 MB_CUDA_FUSE_MERGE=1" \
    X=default MB_CUDA_ATTN_BLOCKS=132 MB_CUDA_ATTN_BLOCKS=64 MB_CUDA_FUSE_ATTN=1 X=default
full_e2e round15
echo "total $(( $(date +%s) - t0 )) s"
