#!/bin/bash
# Issue 9, round 11 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV prefetch moved out of the routed tokens' wait (it
# is launched after their copy and never waited for) and, with the
# experts on the GPU, tried with MB_CUDA_L2_PREFETCH=2 (the experts' GEMVs
# now load with evict-first); test_parity_device; the full bench.
#   bash bench/gpu/round11.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_parity_device bench_e2e_device"}
. bench/gpu/build9.sh
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord"
for v in MB_CUDA_L2_PREFETCH=2 X=default MB_CUDA_L2_PREFETCH=2 X=default; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS --cases gpu > "$OUT/ab.txt" 2>&1
    echo "== gpu $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
for v in MB_CUDA_L2_PREFETCH=0 X=default; do
    env $v timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu > "$OUT/ab.txt" 2>&1
    echo "== cpu $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
rm -f "$OUT/ab.txt"
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > "$OUT/parity_device-round11.txt" 2>&1;
    echo "== parity_device rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device-round11.txt" | head -5
timeout 150 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json "$OUT/e2e_device-round11.json" \
    > "$OUT/e2e_device-round11.txt" 2>&1
echo "== full e2e rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" "$OUT/e2e_device-round11.txt"
echo "total $(( $(date +%s) - t0 )) s"
