#!/bin/bash
# Issue 9, round 11 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV prefetch moved out of the routed tokens' wait (it
# is launched after their copy and never waited for) and, with the
# experts on the GPU, tried with MB_CUDA_L2_PREFETCH=2 (the experts' GEMVs
# now load with evict-first); test_parity_device; the full bench.
# MB_CUDA_L2_PREFETCH=2 and the evict-first loads were removed after this
# call (no gain); =2 now means the default.
#   bash bench/gpu/round11.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_parity_device bench_e2e_device"}
. bench/gpu/build9.sh
ab gpu --layers 4 --prompt 1024 --gen 64 --no-cpu-coord -- MB_CUDA_L2_PREFETCH=2 X=default MB_CUDA_L2_PREFETCH=2 X=default
ab cpu --layers 4 --prompt 256 --gen 32 --no-cpu-coord -- MB_CUDA_L2_PREFETCH=0 X=default
parity round11
full_e2e round11
echo "total $(( $(date +%s) - t0 )) s"
