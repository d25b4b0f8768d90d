# Issue 9's fused decode path on the GPU machine (device tool `run`, carry
# .carry): build, the dense kernels' tests (fusions included), every
# CUDA-labelled test, then bench_e2e_device with the fusions on and off
# (MB_CUDA_FUSE=0), with the shm rings' spin at 30 us (--shm-spin), and the
# per-operation decode profile of both (MB_CUDA_PROFILE=1).
#   bash bench/gpu/fuse9.sh
set -u
bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
ARGS=${MB_DEVICE_ARGS:---layers 4 --prompt 1024 --gen 32}
timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense.txt 2>&1; echo "dense rc=$?"
grep -E "worst|fusions|attention|test_dense" $OUT/dense.txt | head -20
(cd $B && timeout 300 ctest -L cuda -j4 --timeout 240 --output-on-failure > $OUT/ctest_cuda.txt 2>&1; echo "ctest cuda rc=$?")
grep -E "tests passed|FAIL|Failed" $OUT/ctest_cuda.txt | tail -12
grep -E "vs " $B/Testing/Temporary/LastTest.log 2>/dev/null | head -0
timeout 150 $B/bench/bench_e2e_device $ARGS --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
MB_CUDA_FUSE=0 timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord --json $OUT/e2e_device_unfused.json \
    > $OUT/e2e_device_unfused.txt 2>&1
echo "e2e unfused rc=$?"; grep -E "^coord|^cuda |^dense|^ipc" $OUT/e2e_device_unfused.txt
# The IPC share with the CPU coordinator's 30 us shm spin (the GPU coordinator's default is 1000 us).
timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord --shm-spin 30 --json $OUT/e2e_device_spin30.json \
    > $OUT/e2e_device_spin30.txt 2>&1
echo "e2e spin 30 rc=$?"; grep -E "^coord|^cuda |^dense|^ipc" $OUT/e2e_device_spin30.txt
for f in 1 0; do
    MB_CUDA_FUSE=$f MB_CUDA_PROFILE=1 timeout 100 $B/bench/bench_e2e_device $ARGS --no-cpu-coord \
        > $OUT/profile_fuse$f.txt 2>&1
    echo "profile fuse=$f rc=$?"; grep -A22 "cuda decode profile" $OUT/profile_fuse$f.txt | head -24
done
