#!/bin/bash
# A record of what ran: preload letter q went after round 24 (the step did
# not improve), so MB_CUDA_PRELOAD=rhamsq now runs as the default rhams.
# Issue 9, round 23 on the GPU machine (device tool `run`, carry .carry):
# the next layer's QKV weights staged in shared memory by a QKV GEMV
# launched early, while the local experts run (preload letter q:
# MB_CUDA_PRELOAD=rhamsq), and the cheaper L2 form (MB_CUDA_L2_EXPERTS=N:
# the same weights asked into L2 N us after the experts start). Rows
# alternating with the default (step ms as well as dense ms), then
# test_dense_cuda and test_parity_device with q; unless SHORT=1 (about 4
# minutes instead of 9), the L2 rows, q's timeline, and the full bench
# with q where its rows beat the default's on both figures.
#   bash bench/gpu/round23.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
Q=MB_CUDA_PRELOAD=rhamsq
row X=default $Q X=default $Q | tee "$OUT/rows23.txt"
dense_tests dense_cuda-round23-q.txt $Q MB_DENSE_TESTS=linear,norm_in,fused,refusals
MB_CUDA_PRELOAD=rhamsq parity round23-q
if [ "${SHORT:-0}" != 1 ]; then
    row MB_CUDA_L2_EXPERTS=0 MB_CUDA_L2_EXPERTS=8 MB_CUDA_L2_EXPERTS=14
    MB_CUDA_PRELOAD=rhamsq trace round23-q --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
    # a row's columns: == SETTING rc=0 cuda gpu prefill decode step dense expert crit-ipc crit-share ipc-sum sum-share
    win=$(awk '/^== X=default rc=/ {ds+=$(NF-6); dd+=$(NF-5); n++}
        /^== MB_CUDA_PRELOAD=rhamsq rc=/ {qs+=$(NF-6); qd+=$(NF-5); m++}
        END {print (n && m && qs/m < ds/n && qd/m < dd/n) ? "q" : "default"}' "$OUT/rows23.txt")
    echo "== full bench with: $win"
    if [ "$win" = q ]; then MB_CUDA_PRELOAD=rhamsq full_e2e round23-q; else full_e2e round23; fi
fi
echo "total $(( $(date +%s) - t0 )) s"
