#!/bin/bash
# Issue 9, round 27 (tenth session's third call; device tool `run`, carry
# .carry): the experts' down projection with the combine (moe_gemv.cu)
# with a token's pairs read into shared memory once and all their weight
# loads in flight together, against the one-pair-at-a-time kernel
# (MB_CUDA_DOWN1=1). The CUDA backend's parity (every dtype), decode rows
# alternating the two, test_parity_device, and the kernel timeline of
# each (in that order: the device time left may cut the end). About 4 minutes
# with a build.
#   bash bench/gpu/round27.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS="moe-worker moe-broker test_parity_device bench_e2e_device test_backend_ops"
. bench/gpu/build9.sh
(cd $B && timeout 100 ctest -R "^test_backend_ops_cuda$" --timeout 90 --output-on-failure \
    > "$OUT/backend_ops_cuda-round27.txt" 2>&1; echo "== backend ops cuda rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "tests passed|Failed|CHECK failed" "$OUT/backend_ops_cuda-round27.txt" | head -5
row X=default MB_CUDA_DOWN1=1 X=default MB_CUDA_DOWN1=1 | tee "$OUT/rows27.txt"
parity round27
trace round27 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 | grep -E "== trace|down_combine|gateup"
MB_CUDA_DOWN1=1 trace round27-down1 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 |
    grep -E "== trace|down_combine|gateup"
echo "total $(( $(date +%s) - t0 )) s"
