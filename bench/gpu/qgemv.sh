# Issue 13's quantized decode GEMV (moe_qgemv.cu, moe_qunit.cuh) on the GPU
# machine, one command (device tool `run`, carry .carry), under 3 minutes:
# builds only test_backend_ops, test_quant_cuda_kernels and
# bench_expert_gpu; the CUDA backend's quantized groups and the kernel test
# (every path, every type mix); then the expert benchmark at 1 token and
# 512, whose GEMV rows it prints (the rest is in $OUT/expert_gpu_qgemv.txt).
#   bash bench/gpu/qgemv.sh
set -u
MB_TARGETS="test_backend_ops test_quant_cuda_kernels bench_expert_gpu" bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
MB_BACKEND_OPS_ONLY=quant timeout 60 $B/tests/parity/backends/test_backend_ops cuda > $OUT/backend_ops_quant.txt 2>&1
echo "test_backend_ops cuda (quant) rc=$?"; grep -cE " ok$" $OUT/backend_ops_quant.txt; grep -E "FAIL|CHECK" $OUT/backend_ops_quant.txt | head
timeout 60 $B/tests/unit/cuda_quant/test_quant_cuda_kernels > $OUT/quant_kernels.txt 2>&1
echo "test_quant_cuda_kernels rc=$?"; grep " gemv " $OUT/quant_kernels.txt | sort -g -k12 | tail -3; grep -E "FAIL|CHECK" $OUT/quant_kernels.txt | head
timeout 50 $B/bench/bench_expert_gpu --weights bf16,q8_0,q4_k,q6_k --decode 1 --prefill 512 --no-worker --budget 10 \
    --json $OUT/expert_gpu_qgemv.json > $OUT/expert_gpu_qgemv.txt 2>&1
echo "bench rc=$?"; grep -E "^device|ceilings: D2D|^model  |decode .* gemv " $OUT/expert_gpu_qgemv.txt | uniq
