# Issue 9, round 6, the shortest useful call (a few minutes of device time
# left): build, the dense kernel tests, the device parity test, and the
# L2 prefetch's A/B (MB_CUDA_PREFETCH) on bench_e2e_device.
#   bash bench/gpu/last9.sh
set -u
export MB_WITH_VULKAN=OFF MB_TARGETS="moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device"
bash bench/gpu/device_run.sh build 2>&1 | tail -1
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
(cd $B && timeout 100 ctest -j2 -R "test_parity_device|test_dense_cuda$" --timeout 90 --output-on-failure > $OUT/ctest_device.txt 2>&1;
    echo "ctest rc=$?")
grep -E "tests passed|Failed|Passed|norm folded|attention" $OUT/ctest_device.txt | head -8
for v in 1 0 1 0; do
    MB_CUDA_PREFETCH=$v timeout 30 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 48 --no-cpu-coord --cases gpu > $OUT/ab.txt 2>&1
    echo "== MB_CUDA_PREFETCH=$v rc=$?"; grep -E "^cuda |^dense" $OUT/ab.txt
done
rm -f $OUT/ab.txt $OUT/build.log $OUT/device.txt
