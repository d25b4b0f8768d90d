#!/bin/bash
# Issue 9, round 25 on the GPU machine (device tool `run`, carry .carry):
# MB_CUDA_OROUTE=1's second form (o_proj and the router in one kernel; the
# router's weights held in registers before the wait, the partials summed
# expert by expert with sixteen float4 loads in flight, xn as float4),
# after round 24's first form lost 0.046 ms of dense decode, and round
# 23's MB_CUDA_L2_EXPERTS=8, never yet run. Rows alternating with the
# default, then test_dense_cuda's oroute group and
# test_parity_device_oroute, and test_parity_device with the defaults
# (round 23 refactored the GEMV body, on the default path; the ninth
# session ran test_parity_device only with q and oroute on). About 5
# minutes with a build.
#   bash bench/gpu/round25.sh      (MB_SKIP_BUILD=1 on a warm machine)
# A record since the tenth session: both knobs lost on the H100 and went
# (bench/notes/coordinator-gpu-rounds.md, round 25 measured).
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_OROUTE=1 MB_CUDA_L2_EXPERTS=8 X=default MB_CUDA_OROUTE=1 \
    MB_CUDA_L2_EXPERTS=8 | tee "$OUT/rows25.txt"
dense_tests dense_cuda-round25-or.txt MB_CUDA_OROUTE=1 MB_DENSE_TESTS=oroute,stamp
(cd $B && timeout 170 ctest -R "^test_parity_device_oroute$" --timeout 160 --output-on-failure \
    > "$OUT/parity_device-round25-or.txt" 2>&1; echo "== parity_device_oroute rc=$?")
grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device-round25-or.txt" | head -5
# The tenth session's change: the routed rows reach the host in the
# payload dtype (mb_fwd_cuda_set_wire); its kernel cases, then the parity
# with CPU workers in every payload dtype, then the IPC share's row with
# the statistics (pack ms now a copy of encoded rows).
dense_tests dense_cuda-round25-wire.txt MB_DENSE_TESTS=fused,norm_in,refusals
parity round25-default
for w in 1 0; do
    MB_CUDA_WIRE=$w MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 \
        --no-cpu-coord --cases cpu --payload bf16 > "$OUT/e2e_device-round25-cpu-stats-wire$w.txt" 2>&1
    echo "== cpu stats bf16 MB_CUDA_WIRE=$w rc=$?"
    grep -E "decode|prefill|^cuda|ipc share" "$OUT/e2e_device-round25-cpu-stats-wire$w.txt" | head -12
done
echo "total $(( $(date +%s) - t0 )) s"
