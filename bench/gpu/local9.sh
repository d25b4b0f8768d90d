# Issue 9's local experts from the coordinator's buffers, on the GPU machine
# (device tool `run`, carry .carry): build, the GPU coordinator's parity
# (the three ways of running its local experts included), bench_e2e_device
# with the experts computed from the buffers (default; CPU coordinator in
# the same run) and through the dispatcher (MB_CUDA_LOCAL_DIRECT=0), and
# the per-operation decode profile of the default. MB_LOCAL9_CUDA=1 adds
# every other CUDA-labelled test.
#   bash bench/gpu/local9.sh
set -u
[ -n "${MB_SKIP_BUILD:-}" ] || bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
ARGS=${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32}
(cd $B && timeout 150 ctest -R test_parity_device --timeout 140 --output-on-failure > $OUT/ctest_parity_device.txt 2>&1;
    echo "parity_device rc=$?")
grep -E "experts on its GPU|CHECK failed|tests passed" $OUT/ctest_parity_device.txt | head -20
timeout 150 $B/bench/bench_e2e_device $ARGS --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc|local experts" $OUT/e2e_device.txt
MB_CUDA_LOCAL_DIRECT=0 timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord \
    --json $OUT/e2e_device_local0.json > $OUT/e2e_device_local0.txt 2>&1
echo "e2e MB_CUDA_LOCAL_DIRECT=0 rc=$?"; grep -E "^coord|^cuda |^dense" $OUT/e2e_device_local0.txt
MB_CUDA_PROFILE=1 timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord > $OUT/profile_local.txt 2>&1
echo "profile rc=$?"; grep -m1 -A14 "cuda decode profile" $OUT/profile_local.txt
if [ -n "${MB_LOCAL9_CUDA:-}" ]; then
    (cd $B && timeout 200 ctest -L cuda -j4 --timeout 190 -E test_parity_device > $OUT/ctest_cuda.txt 2>&1;
        echo "ctest cuda rc=$?")
    grep -E "tests passed|FAIL|Failed" $OUT/ctest_cuda.txt | tail -12
fi
