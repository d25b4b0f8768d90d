# Issue 9, round 5, on the GPU machine (device tool `run`, carry .carry):
# the decode step's RMSNorms folded into the one-token GEMVs that read them
# (MB_CUDA_FUSE_NORM) measured against their own kernels in the same run,
# alternating; the in-graph profile; the full bench_e2e_device; and issue
# 8's quantized backend depth (CUDA and Vulkan) from the same build. The
# same tree has attention decode v5 (queries loaded at once, float4 merge)
# and the local flush as one kernel (mb_kcuda_drain).
#   bash bench/gpu/norm9.sh     (MB_SKIP_BUILD=1 on a warm machine; MB_NORM9_NO_VK=1 skips Vulkan)
set -u
if [ -n "${MB_NORM9_NO_VK:-}" ]; then export MB_WITH_VULKAN=OFF; else export MB_WITH_VULKAN=ON; fi
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device bench_expert_gpu"}
[ -n "${MB_SKIP_BUILD:-}" ] || bash bench/gpu/device_run.sh build 2>&1 | tail -3
grep -q "build rc=0" $OUT/build.log 2>/dev/null && rm -f $OUT/build.log
cat $OUT/device.txt 2>/dev/null && rm -f $OUT/device.txt
echo "profilers: $(ls /usr/local/cuda/bin 2>/dev/null | grep -E '^(ncu|nsys|compute-sanitizer)$' | tr '\n' ' ')"
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense_cuda.txt 2>&1
echo "test_dense_cuda rc=$?"; grep -E "FAIL|failed|norm folded|fusions" $OUT/dense_cuda.txt | head -8
grep -E "^linear bf16|^attention|^device copy" $OUT/dense_cuda.txt | head -12
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > $OUT/ctest_parity_device.txt 2>&1;
    echo "parity_device rc=$?")
grep -E "CHECK failed|tests passed|Failed" $OUT/ctest_parity_device.txt | head -10
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
for v in 1 0 1 0 1; do
    MB_CUDA_FUSE_NORM=$v timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/ab.txt 2>&1
    echo "== MB_CUDA_FUSE_NORM=$v rc=$?"; grep -E "^cuda |^dense" $OUT/ab.txt
done
rm -f $OUT/ab.txt
MB_CUDA_PROFILE=graph timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/profile_graph.txt 2>&1
echo "== profile graph rc=$?"; grep -A16 "cuda decode profile" $OUT/profile_graph.txt | head -17
timeout 200 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
if [ -z "${MB_NORM9_NO_VK:-}" ]; then
    MB_QB_ARGS="--backend vulkan:0" MB_SKIP_BUILD=1 bash bench/gpu/qbackend.sh
fi
