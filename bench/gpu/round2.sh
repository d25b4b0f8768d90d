# The session's second GPU cycle (device tool `run`, carry .carry), most
# important first: build; every CUDA- and Vulkan-labelled test (the mixed
# cuda/vulkan/cpu session of issue 8, the Vulkan import verbose, the CUDA
# quantized experts of issue 13, the GPU coordinator's parity of issue 9);
# bench_e2e_device (issue 9); the CUDA backend's quantized experts (issue
# 13); the Vulkan expert benchmark with the shm import (issue 8); with
# MB_ROUND2_ALL=1 also the GGUF fixtures on a CUDA worker and the dense
# kernels' timings.
#   bash bench/gpu/round2.sh
set -u
bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
ARGS=${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32}
(cd $B && MB_VULKAN_VERBOSE=1 timeout 200 ctest -L "cuda|vulkan" -j8 --timeout 190 --output-on-failure \
    > $OUT/ctest_gpu.txt 2>&1; echo "ctest cuda|vulkan rc=$?")
grep -E "tests passed|FAIL|Failed|Not Run|\*\*\*" $OUT/ctest_gpu.txt | tail -14
grep -m2 -E "imported" $OUT/ctest_gpu.txt
timeout 100 $B/bench/bench_e2e_device $ARGS --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
timeout 70 $B/bench/bench_expert_gpu --weights bf16,q8_0,q4_k,q6_k --decode 1,16 --prefill 4096 --no-worker \
    --budget 30 --json $OUT/expert_gpu_quant.json > $OUT/expert_gpu_quant.txt 2>&1
echo "quant bench rc=$?"; grep -iE "q8_0|q4_k|q6_k|bf16|copy" $OUT/expert_gpu_quant.txt | head -40
timeout 60 $B/bench/bench_expert_gpu --backend vulkan:0 --models qwen3,mixtral --decode 1,4,16 --prefill 4096 \
    --budget 15 --register-host --json $OUT/expert_vulkan.json > $OUT/expert_vulkan.txt 2>&1
echo "vulkan bench rc=$?"; tail -24 $OUT/expert_vulkan.txt
if [ -n "${MB_ROUND2_ALL:-}" ]; then
(cd $B && timeout 80 ctest -R test_parity_gguf_workers --timeout 75 --output-on-failure > $OUT/ctest_gguf.txt 2>&1; \
    echo "gguf workers (CUDA quantized) rc=$?"; grep -E "tests passed|Failed" $OUT/ctest_gguf.txt)
timeout 40 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense.txt 2>&1; echo "dense rc=$?"
grep -E "^attention|^linear bf16 m=  4096" $OUT/dense.txt | head -6
fi
