# bench_expert_gpu's quantized backend depth (CUDA only; add MB_WITH_VULKAN=ON
# and --backend vulkan:0 for Vulkan) on the GPU machine, a short budget.
#   bash bench/gpu/qbackend.sh
set -u
export MB_TARGETS=${MB_TARGETS:-"bench_expert_gpu"}
[ -n "${MB_SKIP_BUILD:-}" ] || bash bench/gpu/device_run.sh build 2>&1 | tail -3
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
timeout 120 build-gpu/bench/bench_expert_gpu --models qwen3 --decode 1 --prefill 512 --budget 12 --no-worker \
    --weights bf16,q8_0,q4_k,q6_k ${MB_QB_ARGS:-} --json $OUT/expert_gpu_qbackend.json > $OUT/expert_gpu_qbackend.txt 2>&1
echo "bench_expert_gpu rc=$?"; grep -E "backend|^model|error|bench_expert_gpu:" $OUT/expert_gpu_qbackend.txt | head -30
