#!/bin/bash
# Issue 9 on the GPU machine (device tool `run`, carry .carry): the decode
# step's kernel timeline through CUPTI (bench/tools/ktrace.c), what each
# kernel of the replayed step takes on the device and the gaps between
# them, with every expert on the coordinator's GPU (whole-step graph, and
# per-layer graphs) and with two CPU workers; then the plain bench.
#   bash bench/gpu/trace9.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS=${MB_TARGETS:-"moe-worker bench_e2e_device mb_ktrace"}
. bench/gpu/build9.sh
ARGS="--layers 4 --prompt 1024 --no-cpu-coord"
trace gpu $ARGS --gen 48 --cases gpu
MB_CUDA_STEP_GRAPH=0 trace gpu-layergraphs $ARGS --gen 48 --cases gpu
trace cpu $ARGS --gen 16 --cases cpu
ab gpu $ARGS --gen 64 -- X=default
echo "total $(( $(date +%s) - t0 )) s"
