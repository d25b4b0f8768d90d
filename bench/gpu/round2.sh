# The session's second GPU cycle (device tool `run`, carry .carry): build,
# the dense kernels' tests and timings, every CUDA- and Vulkan-labelled test
# (the mixed cuda/vulkan/cpu session of issue 8 included, the Vulkan import
# verbose, the CUDA quantized experts), bench_e2e_device (issue 9), the
# Vulkan expert benchmark with the shm import (issue 8) and the CUDA
# backend's quantized experts (issue 13).
#   bash bench/gpu/round2.sh
set -u
bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
ARGS=${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32}
timeout 100 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense.txt 2>&1; echo "dense rc=$?"
grep -E "fusions|^attention|test_dense" $OUT/dense.txt | head -12
(cd $B && MB_VULKAN_VERBOSE=1 timeout 300 ctest -L "cuda|vulkan" -R "${MB_CTEST_R:-.}" -j6 --timeout 280 \
    --output-on-failure \
    > $OUT/ctest_gpu.txt 2>&1; echo "ctest cuda|vulkan rc=$?")
grep -E "tests passed|FAIL|Failed|Not Run|\*\*\*" $OUT/ctest_gpu.txt | tail -14
grep -m3 -E "imported" $OUT/ctest_gpu.txt
(cd $B && timeout 100 ctest -R test_parity_gguf_workers --timeout 95 --output-on-failure > $OUT/ctest_gguf.txt 2>&1; \
    echo "gguf workers (CUDA quantized) rc=$?"; grep -E "tests passed|Failed" $OUT/ctest_gguf.txt)
timeout 120 $B/bench/bench_e2e_device $ARGS --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
timeout 90 $B/bench/bench_expert_gpu --backend vulkan:0 --models qwen3,mixtral --decode 1,4,16 --prefill 4096 \
    --budget 20 --register-host --json $OUT/expert_vulkan.json > $OUT/expert_vulkan.txt 2>&1
echo "vulkan bench rc=$?"; tail -30 $OUT/expert_vulkan.txt
# Issue 13: the CUDA backend's quantized experts (kernel-only cases), bf16 in the same run.
timeout 100 $B/bench/bench_expert_gpu --weights bf16,q8_0,q4_k,q6_k --decode 1,16 --prefill 4096 --no-worker \
    --budget 60 --json $OUT/expert_gpu_quant.json > $OUT/expert_gpu_quant.txt 2>&1
echo "quant bench rc=$?"; grep -iE "q8_0|q4_k|q6_k|bf16|copy" $OUT/expert_gpu_quant.txt | head -40
