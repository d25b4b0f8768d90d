#!/bin/bash
# Issue 9, round 7 on the GPU machine (device tool `run`, carry .carry),
# about 6 minutes. Two knobs, off by default (measured on the H100 in the
# third session of 2026-12-07: neither gains; bench/notes/coordinator-gpu.md):
# the QKV + head-pass fusion (MB_CUDA_FUSE_QKV=1, mb_kcuda_qkv_rope_store)
# and the decode attention's merge in its last blocks (MB_CUDA_FUSE_MERGE=1,
# mb_kcuda_attn_shape.merge_done). (A third, eight rows a SIMT GEMV block,
# MB_CUDA_GEMV_ROWS=8, measured no faster and was removed.)
# test_dense_cuda (fused, merge, refusals), test_parity_device with both
# and with none, an A/B of the decode step for each knob, alternating, and
# the in-graph profile with both (broker/device/forward_cuda.c fuse_qkv
# and fuse_merge).
#   bash bench/gpu/fuse9b.sh   (MB_SKIP_BUILD=1 on a warm machine;
#   MB_FUSE9B_QUICK=1: one alternation of each A/B instead of two)
set -u
OUT=${OUT:-/tmp/mb-out}
mkdir -p "$OUT"
. bench/gpu/build9.sh
MB_DENSE_TESTS=fused,merge,refusals timeout 120 $B/tests/unit/cuda_dense/test_dense_cuda > $OUT/dense_cuda.txt 2>&1
echo "test_dense_cuda (fused, merge, refusals) rc=$?"; grep -E "FAIL|failed|fusions|attention" $OUT/dense_cuda.txt | head -8
ALL="MB_CUDA_FUSE_QKV=1 MB_CUDA_FUSE_MERGE=1"
for v in "$ALL" "MB_CUDA_FUSE_QKV=0"; do
    (cd $B && env $v timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure \
        > $OUT/ctest_parity_device.txt 2>&1; echo "parity_device ($v) rc=$?")
    grep -E "CHECK failed|tests passed|Failed" $OUT/ctest_parity_device.txt | head -6
    cat $OUT/ctest_parity_device.txt >> $OUT/ctest_parity_device_all.txt
done
rm -f $OUT/ctest_parity_device.txt
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
AB=("MB_CUDA_FUSE_QKV=1" "MB_CUDA_FUSE_QKV=0" "MB_CUDA_FUSE_MERGE=1" "MB_CUDA_FUSE_MERGE=0"
    "$ALL" "MB_CUDA_FUSE_QKV=0")
[ -n "${MB_FUSE9B_QUICK:-}" ] || AB+=("${AB[@]}")
for v in "${AB[@]}"; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/ab.txt 2>&1
    echo "== $v rc=$?"; grep -E "^cuda |^dense" $OUT/ab.txt
done
rm -f $OUT/ab.txt
env $ALL MB_CUDA_PROFILE=graph timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/profile_graph.txt 2>&1
echo "== profile graph ($ALL) rc=$?"; grep -A16 "cuda decode profile" $OUT/profile_graph.txt | head -17
