#!/bin/bash
# Issue 9, round 9 on the GPU machine (device tool `run`, carry .carry):
# the kernel tests (the head pass inside the decode attention among the
# fusions), then A/B against the default on bench_e2e_device, alternating:
# MB_CUDA_FUSE_ATTN=0 (the head pass as its own kernel) and
# MB_CUDA_LOGITS_DIRECT=0 (the logits copied after lm_head); then
# test_parity_device, the default step's kernel timeline and the full
# bench_e2e_device (every case, both coordinators) into $OUT.
#   bash bench/gpu/round9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
KT=$B/bench/libmb_ktrace.so
for v in "MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,refusals" "MB_CUDA_ATTN_BLOCKS=16 MB_DENSE_TESTS=fused,attention"; do
    env $v timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda > "$OUT/dense.txt" 2>&1
    echo "== $v rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "FAIL|fusions|attention|test_dense_cuda:" "$OUT/dense.txt" | head -6
done
mv "$OUT/dense.txt" "$OUT/dense_cuda-round9.txt"
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
for v in MB_CUDA_FUSE_ATTN=0 MB_CUDA_LOGITS_DIRECT=0 X=default MB_CUDA_FUSE_ATTN=0 MB_CUDA_LOGITS_DIRECT=0 X=default; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS > "$OUT/ab.txt" 2>&1
    echo "== $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
done
rm -f "$OUT/ab.txt"
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > "$OUT/parity_device-round9.txt" 2>&1;
    echo "== parity_device rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device-round9.txt" | head -5
CUDA_INJECTION64_PATH=$KT MB_KTRACE_OUT=$OUT/kt-gpu.csv timeout 120 $B/bench/bench_e2e_device $ARGS > "$OUT/e2e-trace.txt" 2>&1
echo "== trace rc=$?"
python3 bench/tools/ktrace_steps.py "$OUT/kt-gpu.csv" --steps 32 > "$OUT/ktrace-round9.txt" 2>&1
head -12 "$OUT/ktrace-round9.txt"; sed -n '/^by operation/,$p' "$OUT/ktrace-round9.txt"
rm -f "$OUT/kt-gpu.csv" "$OUT/e2e-trace.txt"
timeout 240 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json "$OUT/e2e_device-round9.json" \
    > "$OUT/e2e_device-round9.txt" 2>&1
echo "== full e2e rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" "$OUT/e2e_device-round9.txt"
echo "total $(( $(date +%s) - t0 )) s"
