#!/bin/bash
# Issue 9, round 19 on the GPU machine (device tool `run`, carry .carry):
# with o_proj staged (preload s, the default since round 17) the old
# fusions again (the head pass in the QKV GEMV, the merge in the
# attention's last blocks, also with fewer chunks), the QKV weights
# before the wait, a wider attention grid, rows alternating with the default; then the full bench.
#   bash bench/gpu/round19.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_FUSE_QKV=1 MB_CUDA_FUSE_MERGE=1 "MB_CUDA_FUSE_MERGE=1 MB_CUDA_ATTN_BLOCKS=64" \
    "MB_CUDA_FUSE_MERGE=1 MB_CUDA_ATTN_BLOCKS=128" X=default MB_CUDA_PRELOAD=nrhams \
    MB_CUDA_ATTN_BLOCKS=396 "MB_CUDA_FUSE_QKV=1 MB_CUDA_FUSE_MERGE=1"
full_e2e round19
echo "total $(( $(date +%s) - t0 )) s"
