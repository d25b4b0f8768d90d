# Issue 9's local experts from the coordinator's buffers, on the GPU machine
# (device tool `run`, carry .carry): build, every CUDA-labelled test (the
# GPU coordinator's parity with the three ways of running its local
# experts included), then bench_e2e_device with the experts computed from
# the buffers (default), through the dispatcher (MB_CUDA_LOCAL_DIRECT=0)
# and from the buffers for decode only, and the per-operation decode
# profile of the default.
#   bash bench/gpu/local9.sh
set -u
bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
ARGS=${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32}
(cd $B && timeout 150 ctest -R test_parity_device --timeout 140 --output-on-failure > $OUT/ctest_parity_device.txt 2>&1;
    echo "parity_device rc=$?")
grep -E "experts on its GPU|Failed|FAIL|tests passed" $OUT/ctest_parity_device.txt | head -20
timeout 150 $B/bench/bench_e2e_device $ARGS --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc|local experts" $OUT/e2e_device.txt
for way in 0 decode; do
    MB_CUDA_LOCAL_DIRECT=$way timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord \
        --json $OUT/e2e_device_local_$way.json > $OUT/e2e_device_local_$way.txt 2>&1
    echo "e2e MB_CUDA_LOCAL_DIRECT=$way rc=$?"; grep -E "^coord|^cuda |^dense" $OUT/e2e_device_local_$way.txt
done
MB_CUDA_PROFILE=1 timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord > $OUT/profile_local.txt 2>&1
echo "profile rc=$?"; grep -A16 "cuda decode profile" $OUT/profile_local.txt | head -36
(cd $B && timeout 200 ctest -L cuda -j4 --timeout 190 -E test_parity_device > $OUT/ctest_cuda.txt 2>&1;
    echo "ctest cuda rc=$?")
grep -E "tests passed|FAIL|Failed" $OUT/ctest_cuda.txt | tail -12
