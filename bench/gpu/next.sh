#!/bin/bash
# The next GPU call for both open issues at once (machine starts, not
# device time, are what the sessions ran short of): one build of every
# target both need (CUDA, and Vulkan with the cm2 shaders), then issue 8's
# most wanted part (cm2_final.sh first: the bf16 form's parity and its
# bench beside CUDA), then issue 9's round 7 (fuse9b.sh, one alternation
# of each A/B), then the rest of issue 8's (the f16-decode form's parity,
# the 256-row tiles) while the call's time lasts. About 9 minutes; a call
# cut short keeps what ran first.
#   bash bench/gpu/next.sh
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
mkdir -p "$OUT"
t0=$(date +%s)
export MB_WITH_VULKAN=ON
export MB_TARGETS="moe-worker moe-broker test_backend_ops bench_expert_gpu test_dense_cuda test_parity_device bench_e2e_device"
timeout 260 bash bench/gpu/device_run.sh build 2>&1 | tail -2
head -3 "$OUT/device.txt" 2>/dev/null
export MB_SKIP_BUILD=1
echo "=== issue 8, first ($(( $(date +%s) - t0 )) s)"
MB_CM2_PART=first timeout 200 bash bench/gpu/cm2_final.sh
echo "=== issue 9 ($(( $(date +%s) - t0 )) s)"
MB_FUSE9B_QUICK=1 timeout 220 bash bench/gpu/fuse9b.sh
echo "=== issue 8, rest ($(( $(date +%s) - t0 )) s)"
MB_CM2_PART=rest MB_CM2_TILES=${MB_CM2_TILES:-"256x64x64 256x128x32"} timeout 150 bash bench/gpu/cm2_final.sh
echo "total $(( $(date +%s) - t0 )) s"
