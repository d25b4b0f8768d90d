# Issue 9's dense decode on the GPU machine (device tool `run`, carry .carry):
# programmatic dependent launch for the dense kernels (MB_CUDA_PDL) and one
# graph for a whole local decode step (MB_CUDA_STEP_GRAPH), each measured
# against its absence in the same run, then the in-graph profile
# (MB_CUDA_PROFILE=graph) and the full bench_e2e_device.
#   bash bench/gpu/pdl9.sh            (MB_SKIP_BUILD=1 on a warm machine)
set -u
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device"}
[ -n "${MB_SKIP_BUILD:-}" ] || bash bench/gpu/device_run.sh build 2>&1 | tail -3
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda --bench > $OUT/dense_cuda.txt 2>&1
echo "test_dense_cuda rc=$?"; grep -E "FAIL|failed|stamp" $OUT/dense_cuda.txt | head -5; grep -E "^linear bf16|^attention|^device copy" $OUT/dense_cuda.txt
(cd $B && timeout 150 ctest -R test_parity_device --timeout 140 --output-on-failure > $OUT/ctest_parity_device.txt 2>&1;
    echo "parity_device rc=$?")
grep -E "CHECK failed|tests passed|Failed" $OUT/ctest_parity_device.txt | head -10
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
ab=("MB_CUDA_PDL=1" "MB_CUDA_PDL=0" "MB_CUDA_STEP_GRAPH=0" "MB_CUDA_PDL=0 MB_CUDA_STEP_GRAPH=0" "MB_CUDA_PDL=1")
[ -n "${MB_PDL9_QUICK:-}" ] && ab=("MB_CUDA_PDL=1" "MB_CUDA_PDL=0") # MB_PDL9_QUICK=1: PDL on and off, one profile
[ -n "${MB_PDL9_VERIFY:-}" ] && ab=("MB_CUDA_PDL=1") # MB_PDL9_VERIFY=1: tests, one run, one profile
for v in "${ab[@]}"; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/ab.txt 2>&1
    echo "== $v rc=$?"; grep -E "^cuda |^dense" $OUT/ab.txt
done
prof=("MB_CUDA_PDL=1" "MB_CUDA_PDL=0")
[ -n "${MB_PDL9_QUICK:-}" ] && prof=("MB_CUDA_PDL=1")
for v in "${prof[@]}"; do
    env $v MB_CUDA_PROFILE=graph timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/profile_graph.txt 2>&1
    echo "== profile graph $v rc=$?"; grep -A16 "cuda decode profile" $OUT/profile_graph.txt | head -17
    mv $OUT/profile_graph.txt "$OUT/profile_graph_$(echo $v | tr -c 'A-Za-z0-9\n' _).txt"
done
[ -n "${MB_PDL9_VERIFY:-}" ] && exit 0
timeout 200 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
rm -f $OUT/ab.txt
