#!/bin/bash
# Issue 8's prefill on VK_NV_cooperative_matrix2 (moe_gemm_cm2), one command
# on the GPU machine (the device tool's `run`, carrying .carry with
# .carry/dev/cm2 from bench/gpu/make-glslang.sh): builds with Vulkan and the
# cm2 shader; the every-case parity test with moe_gemm_cm2 required (and
# again with every case forced through the tiled path); bench_expert_gpu's
# Vulkan backend depth with cm2 and with the portable tiles beside the CUDA
# backend (1 and 4096 tokens, Qwen3-30B-A3B and Mixtral-8x7B experts); the
# mixed session (a cuda:0, a vulkan:0 and a CPU worker, a third of the
# experts each) against transformers' logits and its statistics table.
#   bash bench/gpu/cm2_8.sh   (MB_SKIP_BUILD=1 on a warm machine;
#   MB_CM2_QUICK=1: parity and the benchmark only; MB_CM2_WITH9=1 also
#   builds issue 9's targets and runs its device parity and two timings of
#   bench_e2e_device)
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mb-out}
mkdir -p "$OUT"
t0=$(date +%s)
export MB_WITH_VULKAN=ON
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_backend_ops bench_expert_gpu test_parity_workers_mixed"}
[ -n "${MB_CM2_WITH9:-}" ] && MB_TARGETS="$MB_TARGETS test_dense_cuda test_parity_device bench_e2e_device"
[ -n "${MB_SKIP_BUILD:-}" ] || timeout 300 bash bench/gpu/device_run.sh build 2>&1 | tail -3
grep -m1 "cooperative_matrix2 GEMM" build-gpu/CMakeCache.txt "$OUT/build.log" 2>/dev/null
grep -q "build rc=0" "$OUT/build.log" 2>/dev/null && rm -f "$OUT/build.log"
rm -f "$OUT/device.txt"
B=build-gpu
. bench/gpu/vk_ops.sh
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
BENCH=$B/bench/bench_expert_gpu
[ -x "$OPS" ] && [ -x "$BENCH" ] || { echo "build failed"; exit 1; }

vk_ops cm2 MB_VULKAN_COOPMAT=2
vk_ops cm2_gemm MB_VULKAN_COOPMAT=2 MB_VULKAN_PATH=gemm

for cm in 2 0; do
    MB_VULKAN_COOPMAT=$cm MB_VULKAN_VERBOSE=1 timeout 150 "$BENCH" --backend vulkan:0 --models qwen3,mixtral \
        --decode 1 --prefill 4096 --budget 12 --register-host --no-worker --json "$OUT/expert_vk_cm$cm.json" \
        > "$OUT/expert_vk_cm$cm.txt" 2>&1
    echo "== bench_expert_gpu vulkan, MB_VULKAN_COOPMAT=$cm: rc=$? ($(( $(date +%s) - t0 )) s)"
done
echo "== backend depth: model, backend, weights, tokens, runs, median us, p90, compute us, ..., x CUDA"
for cm in 2 0; do
    echo "-- MB_VULKAN_COOPMAT=$cm"
    vk_rows "$OUT/expert_vk_cm$cm.txt"
done
grep -h -m2 "vulkan:0: tiled" "$OUT"/expert_vk_cm*.txt
if [ -n "${MB_CM2_QUICK:-}" ]; then
    [ -n "${MB_CM2_TILES:-}" ] || exit 0
else

# The mixed session: parity on every fixture (ctest), then one run on the
# Qwen3-MoE fixture with the statistics table.
(cd $B && timeout 150 ctest -R test_parity_workers_mixed --timeout 140 --output-on-failure > "$OUT/mixed.txt" 2>&1;
    echo "== test_parity_workers_mixed rc=$?")
grep -E "tests passed|Failed|max" "$OUT/mixed.txt" | head -6
MB_VULKAN_VERBOSE=1 timeout 60 $B/bin/moe-broker run --model tests/data/qwen3moe-a --worker cuda:0 --worker vulkan:0 \
    --worker cpu --prompt-len 200 --gen 32 --stats > "$OUT/mixed_run.txt" 2>&1
echo "== moe-broker run, 3 workers: rc=$?"
cat "$OUT/mixed_run.txt" >> "$OUT/mixed.txt"
grep -vE "^loading|^generating" "$OUT/mixed_run.txt" | tail -30
rm -f "$OUT/mixed_run.txt"

if [ -n "${MB_CM2_WITH9:-}" ]; then # issue 9: device parity, then bench_e2e_device twice
    (cd $B && timeout 100 ctest -j2 -R "test_parity_device|test_dense_cuda$" --timeout 90 --output-on-failure \
        > "$OUT/ab9.txt" 2>&1; echo "== issue 9 ctest rc=$?")
    grep -E "tests passed|Failed|Passed" "$OUT/ab9.txt" | head -4
    for i in 1 2; do
        timeout 30 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 48 --no-cpu-coord --cases gpu \
            > "$OUT/ab.txt" 2>&1
        echo "== bench_e2e_device $i rc=$?"; grep -E "^device copy|^cuda |^dense" "$OUT/ab.txt"
        cat "$OUT/ab.txt" >> "$OUT/ab9.txt"
    done
    rm -f "$OUT/ab.txt"
fi

fi # MB_CM2_QUICK

# Other cm2 tiles (BMxBNxBK), 4096 tokens only.
for tile in ${MB_CM2_TILES:-64x128x32 128x128x128}; do
    MB_VULKAN_COOPMAT=2 MB_VULKAN_CM2_TILE=$tile timeout 100 "$BENCH" --backend vulkan:0 --models qwen3,mixtral \
        --decode 1 --prefill 4096 --budget 8 --register-host --no-worker > "$OUT/tile.txt" 2>&1
    echo "== cm2 tile $tile: rc=$? ($(( $(date +%s) - t0 )) s)"
    vk_rows "$OUT/tile.txt" 4096
done
rm -f "$OUT/tile.txt"

echo "total $(( $(date +%s) - t0 )) s"
