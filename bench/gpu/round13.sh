#!/bin/bash
# Issue 9, round 13 on the GPU machine (device tool `run`, carry .carry):
# the embedding's loads all at once (16-byte chunks), the head pass on a
# shared copy of its row with the norm's weights and the rotation rows
# asked into L1 meanwhile, the router's lanes writing the local pairs from
# their own choices, the attention merge's loads in one memory trip;
# test_dense_cuda, the plain bench (and the local pairs
# by their own launch once), the timeline with PDL off (each kernel's own
# time, against round 12's), test_parity_device.
#   bash bench/gpu/round13.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
dense_tests dense_cuda-round13.txt MB_DENSE_TESTS=embed,norm_in,fused,attention,merge,route,refusals
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- X=default MB_CUDA_ROUTE_PAIRS=0 X=default
MB_CUDA_PDL=0 trace nopdl13 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
parity round13
echo "total $(( $(date +%s) - t0 )) s"
