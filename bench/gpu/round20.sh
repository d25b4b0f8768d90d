#!/bin/bash
# Issue 9, round 20 on the GPU machine (device tool `run`, carry .carry):
# eight rows a block for the one-token GEMVs with a norm (QKV, lm_head:
# both chunks a thread in flight at once, where sixteen rows take two
# trips), rows alternating with the default; then the coordinator's CUDA
# tests as ctest runs them (test_dense_cuda in its four settings,
# test_parity_device) on this session's final code.
#   bash bench/gpu/round20.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
row X=default MB_CUDA_GEMV1_R=8 X=default MB_CUDA_GEMV1_R=8
(cd $B && timeout 330 ctest -R "test_dense_cuda|test_parity_device" --timeout 300 --output-on-failure \
    > "$OUT/ctest-cuda-round20.txt" 2>&1; echo "== ctest rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "Test +#|tests passed|Failed" "$OUT/ctest-cuda-round20.txt" | head -12
echo "total $(( $(date +%s) - t0 )) s"
