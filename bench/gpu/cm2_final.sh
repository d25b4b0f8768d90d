#!/bin/bash
# Issue 8, the short cm2 call (about 4 minutes): builds with Vulkan and the
# cm2 shaders; the every-case parity test with every case forced through
# moe_gemm_cm2 at the measured-fastest tile (128x128x64), bf16 weights on
# bf16 matrices (MB_VULKAN_CM2_BF16=1, moe_gemm_cm2_bf16) and through the
# f16 decode (0); bench_expert_gpu's Vulkan backend depth beside the CUDA
# backend (the f16-decode form's bench only with MB_CM2_F16DEC=1). When
# both pass, they can become the defaults (backends/vulkan/vk_backend.c).
#   bash bench/gpu/cm2_final.sh   (MB_CM2_SHORT=1: the default form only,
#   about 2.5 minutes; MB_CM2_TILES="256x64x64 128x128x128": more tiles
#   for the bf16 form, Mixtral at 4096 tokens, about 25 s each;
#   MB_SKIP_BUILD=1 on a machine that built already; MB_CM2_PART=first:
#   the bf16 form's parity and bench only, rest: the others only)
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mb-out}
export MB_WITH_VULKAN=ON MB_TARGETS="moe-worker test_backend_ops bench_expert_gpu"
. bench/gpu/preamble.sh
. bench/gpu/vk_ops.sh
# The most wanted first: a call cut short by the device's time limit still
# brings back the bf16 form's parity and timing.
ops_form() { vk_ops "cm2_bf16_$1" MB_VULKAN_COOPMAT=2 MB_VULKAN_CM2_BF16=$1 MB_VULKAN_CM2_TILE=128x128x64 MB_VULKAN_PATH=gemm; }
part=${MB_CM2_PART:-all}
[ "$part" = rest ] || ops_form 1
r() { # name models, then environment assignments
    local name=$1 models=$2; shift 2
    env "$@" MB_VULKAN_COOPMAT=2 MB_VULKAN_CM2_TILE=128x128x64 MB_VULKAN_VERBOSE=1 timeout 80 $B/bench/bench_expert_gpu --backend vulkan:0 \
        --models "$models" --decode 1 --prefill 4096 --budget 8 --register-host --no-worker \
        --json "$OUT/expert_vk_$name.json" > "$OUT/expert_vk_$name.txt" 2>&1
    echo "== bench $name ($*): rc=$? ($(( $(date +%s) - t0 )) s)"
    grep -h -m2 "vulkan:0: tiled" "$OUT/expert_vk_$name.txt"
    vk_rows "$OUT/expert_vk_$name.txt"
}
[ "$part" = rest ] || r cm2bf16 "${MB_CM2_MODELS:-qwen3,mixtral}" MB_VULKAN_CM2_BF16=1
[ "$part" = first ] && { echo "total $(( $(date +%s) - t0 )) s"; exit 0; }
[ -n "${MB_CM2_SHORT:-}" ] || ops_form 0
[ -n "${MB_CM2_F16DEC:-}" ] && r cm2f16dec mixtral MB_VULKAN_CM2_BF16=0
# Other tiles for the bf16 form, Mixtral only (MB_CM2_TILES="BMxBNxBK ...").
for t in ${MB_CM2_TILES:-}; do
    MB_VULKAN_COOPMAT=2 MB_VULKAN_CM2_BF16=1 MB_VULKAN_CM2_TILE=$t timeout 60 $B/bench/bench_expert_gpu \
        --backend vulkan:0 --models mixtral --decode 1 --prefill 4096 --budget 6 --register-host --no-worker \
        > "$OUT/tile.txt" 2>&1
    echo "== bf16 tile $t: rc=$?"
    vk_rows "$OUT/tile.txt" 4096
done
rm -f "$OUT/tile.txt"
echo "total $(( $(date +%s) - t0 )) s"
