#!/bin/bash
# Issue 9, round 18 on the GPU machine (device tool `run`, carry .carry):
# the decode step's hand-offs by device counters instead of PDL's grid
# wait (MB_CUDA_HANDOFF letters: a head pass -> attention, m attention ->
# merge, o merge -> o_proj, r o_proj -> router), all of them against the
# default, rows alternating, then each alone; test_dense_cuda's handoff
# group (and the groups whose kernels changed) with them; the kernel
# timeline; the parity test with all of them.
#   bash bench/gpu/round18.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
dense_tests dense_cuda-round18.txt MB_DENSE_TESTS=handoff,linear,attention,merge,route,fused
for s in X=default MB_CUDA_HANDOFF=amor X=default MB_CUDA_HANDOFF=amor MB_CUDA_HANDOFF=a \
    MB_CUDA_HANDOFF=m MB_CUDA_HANDOFF=o MB_CUDA_HANDOFF=r; do
    row "$s"
done
MB_CUDA_HANDOFF=amor trace round18-amor --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
MB_CUDA_HANDOFF=amor parity round18-amor
echo "total $(( $(date +%s) - t0 )) s"
