#!/bin/bash
# Issue 9, round 13's last call: the state after the review fixes (the routing with a NaN
# logit, the merge's
# speculative loads reverted, the head pass past head_dim 256, the local
# experts' start mark after a shared expert): test_dense_cuda,
# test_parity_device, one plain bench row.
#   bash bench/gpu/round13b.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
parity round13b
dense_tests dense_cuda-round13b.txt MB_DENSE_TESTS=embed,fused,attention,route,refusals
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- X=default
echo "total $(( $(date +%s) - t0 )) s"
