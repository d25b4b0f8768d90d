#!/bin/bash
# A record of what ran: preload letter q went after round 24 (the step did
# not improve), so MB_CUDA_PRELOAD=rhamsq now runs as the default rhams.
# Issue 9, rounds 23 and 24 on the GPU machine in one call (device tool
# `run`, carry .carry), both unmeasured so far and off by default:
#   q      MB_CUDA_PRELOAD=rhamsq: the next layer's QKV weights staged in
#          shared memory while the local experts' down kernel runs
#   or     MB_CUDA_OROUTE=1: o_proj and the router in one kernel
#          (mb_kcuda_oproj_router)
# Rows alternating with the default (dense ms and step ms), then
# test_dense_cuda's groups that cover them with each setting, and
# test_parity_device with both on. Then, while the call has time left,
# the timeline (under 300 s spent) and the full bench (under 340 s) with
# the setting whose rows beat the default's on both figures, or the
# default. About 9.5 minutes with a build; the device allows 10 a call.
#   bash bench/gpu/round24.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
. bench/gpu/build9.sh
Q=MB_CUDA_PRELOAD=rhamsq
O=MB_CUDA_OROUTE=1
QO="MB_CUDA_PRELOAD=rhamsq MB_CUDA_OROUTE=1"
row X=default "$Q" "$O" "$QO" X=default "$Q" "$O" "$QO" | tee "$OUT/rows24.txt"
dense_tests dense_cuda-round24-or.txt "$O" MB_DENSE_TESTS=oroute,norm_in,stamp
dense_tests dense_cuda-round24-q.txt "$Q" MB_DENSE_TESTS=linear,norm_in,fused,refusals,oroute
MB_CUDA_PRELOAD=rhamsq MB_CUDA_OROUTE=1 parity round24-qo
# a row's columns: == SETTING rc=0 cuda gpu prefill decode step dense expert crit-ipc crit-share ipc-sum sum-share
best=$(awk '/^== .* rc=/ {
        s = $0; sub(/^== /, "", s); sub(/ rc=.*/, "", s)
        if ($0 !~ / rc=0 cuda /) { bad[s] = 1; next }
        st[s] += $(NF-6); de[s] += $(NF-5); n[s]++ }
    END { b = "X=default"; bs = st[b] / n[b]; bd = de[b] / n[b]
        for (s in n) if (!(s in bad) && st[s] / n[s] < bs && de[s] / n[s] < bd) {
            b = s; bs = st[s] / n[s]; bd = de[s] / n[s] }
        print b }' "$OUT/rows24.txt")
echo "== best on both figures: $best"
for kv in $best; do export "$kv"; done # what follows runs with the best setting
if [ $(( $(date +%s) - t0 )) -lt 300 ]; then
    trace round24-best --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu
fi
if [ $(( $(date +%s) - t0 )) -lt 340 ]; then full_e2e round24; fi
echo "total $(( $(date +%s) - t0 )) s"
