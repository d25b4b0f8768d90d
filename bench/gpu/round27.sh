#!/bin/bash
# Issue 9, round 27 (tenth session's third call; device tool `run`, carry
# .carry): the experts' down projection with the combine (moe_gemv.cu)
# with a token's pairs read into shared memory once and all their weight
# loads in flight together, against the one-pair-at-a-time kernel
# (MB_CUDA_DOWN1=1). The CUDA backend's parity (every dtype, the GEMV
# path and the default), test_parity_device, decode rows alternating the
# two and the kernel timeline of each. About 4 minutes
# with a build.
#   bash bench/gpu/round27.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS="moe-worker moe-broker test_parity_device bench_e2e_device test_backend_ops"
. bench/gpu/build9.sh
(cd $B && timeout 150 ctest -j2 -R "^test_backend_ops_cuda(_gemv)?$" --timeout 140 --output-on-failure \
    > "$OUT/backend_ops_cuda-round27.txt" 2>&1; echo "== backend ops cuda rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "tests passed|Failed|CHECK failed" "$OUT/backend_ops_cuda-round27.txt" | head -5
parity round27
row X=default MB_CUDA_DOWN1=1 X=default MB_CUDA_DOWN1=1 | tee "$OUT/rows27.txt"
trace round27 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 | grep -E "== trace|down_combine|gateup"
MB_CUDA_DOWN1=1 trace round27-down1 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 |
    grep -E "== trace|down_combine|gateup"
echo "total $(( $(date +%s) - t0 )) s"
