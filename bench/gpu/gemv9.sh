#!/bin/bash
# Issue 9, the one-token GEMV's rows a block (MB_CUDA_GEMV1_R) on the GPU
# machine (device tool `run`, carry .carry): the kernel tests with each
# setting, the decode step's projections with weights streamed from memory
# (test_dense_cuda --bench, cold rows), the whole-step graph's kernel
# timeline, and the A/B on bench_e2e_device.
#   bash bench/gpu/gemv9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker test_dense_cuda bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
RS=${MB_GEMV9_RS:-"4 8 16"}
for r in $RS; do
    dense_tests dense-r$r.txt MB_CUDA_GEMV1_R=$r MB_DENSE_TESTS=linear,norm_in,fused,refusals
    MB_CUDA_GEMV1_R=$r MB_DENSE_TESTS=none MB_BENCH_COLD_ONLY=1 timeout 60 $B/tests/unit/cuda_dense/test_dense_cuda --bench \
        2>&1 | grep -E "^device copy|cold"
done
rm -f "$OUT"/dense-r*.txt
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord"
trace gpu $ARGS --cases gpu
ab gpu $ARGS -- $(for r in $RS $RS; do echo MB_CUDA_GEMV1_R=$r; done)
echo "total $(( $(date +%s) - t0 )) s"
