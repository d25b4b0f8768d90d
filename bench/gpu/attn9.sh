#!/bin/bash
# Issue 9 on the GPU machine (device tool `run`, carry .carry): the
# one-token GEMV's row rule (16 rows with a norm folded in and m >= 4224,
# against 4 everywhere: MB_CUDA_GEMV1_R=4) and the decode attention's
# block target (MB_CUDA_ATTN_BLOCKS; fewer blocks, longer chunks), each
# against the default on bench_e2e_device, alternating; the kernel tests
# with the defaults and with long chunks; test_parity_device; the default
# step's kernel timeline; the CPU workers' statistics table.
#   bash bench/gpu/attn9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
dense_tests dense.txt MB_DENSE_TESTS=linear,norm_in,fused,attention,merge,refusals
dense_tests dense.txt MB_CUDA_ATTN_BLOCKS=16 MB_DENSE_TESTS=attention,merge
rm -f "$OUT/dense.txt"
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord"
ab gpu $ARGS -- MB_CUDA_GEMV1_R=4 X=default MB_CUDA_GEMV1_R=4 X=default
ab gpu $ARGS -- MB_CUDA_ATTN_BLOCKS=132 MB_CUDA_ATTN_BLOCKS=66 MB_CUDA_ATTN_BLOCKS=33 X=default \
    MB_CUDA_ATTN_BLOCKS=132 MB_CUDA_ATTN_BLOCKS=66 MB_CUDA_ATTN_BLOCKS=33 X=default
ab gpu --layers 4 --prompt 4096 --gen 64 --no-cpu-coord -- MB_CUDA_ATTN_BLOCKS=132 X=default MB_CUDA_ATTN_BLOCKS=132 X=default
parity attn9
trace attn9 $ARGS --cases gpu
MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 --no-cpu-coord --cases cpu \
    > "$OUT/e2e-cpu-stats.txt" 2>&1
echo "== cpu workers, statistics rc=$?"; sed -n '/^IPC statistics/,/^decode  coordinator/p' "$OUT/e2e-cpu-stats.txt"
echo "total $(( $(date +%s) - t0 )) s"
