# Issue 9's cycle on the GPU machine (device tool `run`, carry .carry):
# build, the dense kernels' test and timings, every CUDA-labelled test
# (the coordinator-on-GPU parity test verbose), then bench_e2e_device.
#   bash bench/gpu/dev9.sh
set -u
bash bench/gpu/device_run.sh build 2>&1 | tail -5
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda > $OUT/dense.txt 2>&1; echo "dense rc=$?"; tail -16 $OUT/dense.txt
if [ -z "${MB_SKIP_DENSE_BENCH:-}" ]; then
    timeout 60 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense_bench.txt 2>&1; echo "dense bench rc=$?"
fi
(cd $B && timeout 400 ctest -L cuda -E test_parity_device -j4 --timeout 300 --output-on-failure > $OUT/ctest_cuda.txt 2>&1; echo "ctest cuda rc=$?")
grep -E "Test +#|tests passed|FAIL" $OUT/ctest_cuda.txt | tail -30
(cd $B && timeout 200 ctest -R test_parity_device -V --timeout 180 > $OUT/parity_device.txt 2>&1; echo "parity_device rc=$?")
grep -E "vs |ok|CHECK" $OUT/parity_device.txt | head -60
if [ -z "${MB_SKIP_E2E:-}" ]; then
    timeout 200 $B/bench/bench_e2e_device ${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32} --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
    echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
    # The same GPU-coordinator cases with decode launched directly (no CUDA graphs).
    MB_CUDA_GRAPHS=0 timeout 120 $B/bench/bench_e2e_device ${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32} \
        --no-cpu-coord --json $OUT/e2e_device_nographs.json > $OUT/e2e_device_nographs.txt 2>&1
    echo "e2e no graphs rc=$?"; grep -E "^coord|^cuda |^dense|^ipc" $OUT/e2e_device_nographs.txt
fi
