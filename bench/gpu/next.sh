#!/bin/bash
# The next GPU call (about 7 minutes): one build of every target, then
# issue 8's defaults as they now are, with no knob in the environment
# (bench_expert_gpu's Vulkan backend beside CUDA, Qwen3 and Mixtral; the
# Vulkan-labelled tests, test_vk_knobs included), then issue 9's baseline
# (bench_e2e_device, the gpu case) for the next round's A/B.
#   bash bench/gpu/next.sh
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_WITH_VULKAN=ON
export MB_TARGETS="moe-worker moe-broker test_backend_ops bench_expert_gpu bench_e2e_device test_parity_gguf_workers test_parity_workers_mixed test_parity_workers_vulkan test_spirv_built test_vk_convert test_vk_host_import test_vk_knobs test_vk_quant"
. bench/gpu/preamble.sh
. bench/gpu/vk_ops.sh
echo "=== issue 8, defaults ($(( $(date +%s) - t0 )) s)"
MB_VULKAN_VERBOSE=1 timeout 100 $B/bench/bench_expert_gpu --backend vulkan:0 --models qwen3,mixtral --decode 1 \
    --prefill 4096 --budget 6 --register-host --no-worker --json "$OUT/expert_vk_defaults.json" \
    > "$OUT/expert_vk_defaults.txt" 2>&1
echo "bench rc=$?"
grep -h -m3 "vulkan:0: tiled" "$OUT/expert_vk_defaults.txt"
vk_rows "$OUT/expert_vk_defaults.txt"
(cd $B && timeout 200 ctest -L vulkan -j4 --output-on-failure > "$OUT/ctest_vulkan.txt" 2>&1)
echo "ctest rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "tests passed|\*\*\*Failed|Timeout" "$OUT/ctest_vulkan.txt" | head -10
echo "=== issue 9 baseline ($(( $(date +%s) - t0 )) s)"
timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu \
    > "$OUT/e2e_baseline.txt" 2>&1
echo "e2e rc=$?"
grep -E "^cuda|dense decode" "$OUT/e2e_baseline.txt"
echo "total $(( $(date +%s) - t0 )) s"
