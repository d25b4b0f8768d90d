#!/bin/bash
# Issue 8's cooperative-matrix prefill on the GPU machine, in one command
# (the device tool's `run`, carrying .carry), under 6 minutes: builds
# test_backend_ops and bench_expert_gpu with Vulkan; runs the Vulkan parity
# test with MB_VULKAN_COOPMAT=1 (moe_gemm_coopmat required; again with every
# case forced through the tiled path) and =0 (the portable f32 tiles); then
# bench_expert_gpu's Vulkan backend depth with cooperative matrices on and
# off (qwen3 and mixtral, 1, 512 and 4096 tokens), and prints a summary.
# Logs go to $OUT.
#   bash bench/gpu/vk_coopmat.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mb-out}
mkdir -p "$OUT"
t0=$(date +%s)
[ -n "${MB_SKIP_BUILD:-}" ] || MB_WITH_VULKAN=ON MB_TARGETS="test_backend_ops bench_expert_gpu" timeout 200 bash bench/gpu/device_run.sh build 2>&1 |
    tail -4
B=build-gpu
. bench/gpu/vk_ops.sh
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
BENCH=$B/bench/bench_expert_gpu
[ -x "$OPS" ] && [ -x "$BENCH" ] || { echo "build failed: see $OUT/build.log"; exit 1; }

# Parity: the worst normalised error per (weight, payload) dtype pair, the
# path the backend took, any failed check (all in $OUT/ops.txt).
vk_ops coopmat MB_VULKAN_COOPMAT=1
vk_ops coopmat_gemm MB_VULKAN_COOPMAT=1 MB_VULKAN_PATH=gemm
vk_ops portable MB_VULKAN_COOPMAT=0

# Benchmarks: the Vulkan backend beside the CUDA backend (xN cuda is
# CUDA's backend time over Vulkan's), coopmat first.
for cm in 1 0; do
    MB_VULKAN_COOPMAT=$cm MB_VULKAN_VERBOSE=1 timeout 100 "$BENCH" --backend vulkan:0 --models qwen3,mixtral \
        --decode 1 --prefill 512,4096 --budget 15 --register-host --no-worker --json "$OUT/expert_vk_cm$cm.json" \
        > "$OUT/expert_vk_cm$cm.txt" 2>&1
    echo "== bench_expert_gpu vulkan, MB_VULKAN_COOPMAT=$cm: rc=$? ($(( $(date +%s) - t0 )) s)"
done
echo "== summary: backend depth, median us (compute us), Vulkan throughput relative to the CUDA backend"
for cm in 1 0; do
    grep -E "^[a-z0-9-]+ +(backend|vulkan-backend) " "$OUT/expert_vk_cm$cm.txt" |
        awk -v cm=$cm '$2 == "vulkan-backend" { printf "coopmat=%s %-14s %5s tok %10s us (%s) %s %s\n", cm, $1, $3, $5, $7, $10, $11 }
                       $2 == "backend" && cm == 1 { printf "cuda      %-14s %5s tok %10s us (%s)\n", $1, $3, $5, $7 }'
done
grep -h -m2 "vulkan:0: tiled" "$OUT"/expert_vk_cm*.txt
echo "total $(( $(date +%s) - t0 )) s"
