set -u
export MB_TARGETS="moe-broker moe-worker test_dense_cuda test_parity_device bench_e2e_device"
bash bench/gpu/device_run.sh build 2>&1 | tail -5
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
export MB_TEST_DATA=$PWD/tests/data
timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda > $OUT/dense.txt 2>&1; echo "dense rc=$?"; tail -40 $OUT/dense.txt
timeout 60 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense_bench.txt 2>&1; echo "dense bench rc=$?"; tail -25 $OUT/dense_bench.txt
(cd $B && timeout 200 ctest -R test_parity_device --output-on-failure > $OUT/parity_device.txt 2>&1; echo "parity rc=$?"); grep -E "vs |FAIL|CHECK|rc=|error" $OUT/parity_device.txt | head -40
timeout 200 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1; echo "e2e rc=$?"; grep -v "^loading\|^case\|^\r" $OUT/e2e_device.txt | tail -25
