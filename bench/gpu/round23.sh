#!/bin/bash
# Issue 9, round 23 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights asked into L2 while the local experts run
# (MB_CUDA_L2_EXPERTS=N: N us after they start; with MB_CUDA_L2_KEEP=1 at
# evict_last priority), rows alternating with the default (step ms as well
# as dense ms), then the timeline of the best-looking setting.
#   bash bench/gpu/round23.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_L2_EXPERTS=0 MB_CUDA_L2_EXPERTS=12 "MB_CUDA_L2_EXPERTS=0 MB_CUDA_L2_KEEP=1" \
    "MB_CUDA_L2_EXPERTS=12 MB_CUDA_L2_KEEP=1" X=default MB_CUDA_L2_EXPERTS=20 MB_CUDA_L2_EXPERTS=6
MB_CUDA_L2_EXPERTS=12 trace round23-e12 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
echo "total $(( $(date +%s) - t0 )) s"
