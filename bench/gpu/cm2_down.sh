#!/bin/bash
# Issue 8: where the Vulkan backend's prefill time goes (MB_VULKAN_PROFILE:
# each dispatch timed on the device) and the gate/up and down tiles chosen
# apart (MB_VULKAN_CM2_TILE, MB_VULKAN_CM2_DOWN) with the workgroup's size
# (MB_VULKAN_CM2_THREADS), Mixtral at 4096 tokens
# beside the CUDA backend; then the fastest pair's parity (every case
# through the tiled path), its bench three times (Mixtral) and once
# (Qwen3), and the Vulkan-labelled tests with the defaults. About 8 minutes.
#   bash bench/gpu/cm2_down.sh   (MB_SWEEP="TILE:DOWN[:THREADS[:KSPEC]] ...";
#   MB_SKIP_BUILD=1 on a machine that built already)
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mb-out}
export MB_WITH_VULKAN=ON MB_TARGETS="moe-worker moe-broker test_backend_ops bench_expert_gpu test_parity_gguf_workers test_parity_workers_mixed test_parity_workers_vulkan test_spirv_built test_vk_convert test_vk_host_import test_vk_knobs test_vk_quant"
. bench/gpu/preamble.sh
. bench/gpu/vk_ops.sh
# bench FILE MODELS [VAR=VALUE ...]: bench_expert_gpu's backend depth,
# Vulkan beside CUDA, into FILE.
bench() {
    local f=$1 models=$2
    shift 2
    env "$@" MB_VULKAN_COOPMAT=2 MB_VULKAN_VERBOSE=1 timeout ${BT:-80} $B/bench/bench_expert_gpu --backend vulkan:0 \
        --models "$models" --decode 1 --prefill 4096 --budget 6 --register-host --no-worker > "$f" 2>&1
}
# A profile row's mean of dispatch INDEX (2: gate/up, 3: down) when it
# ran a cm2 GEMM.
mean() { awk -v i="$2" '$1 == i && $2 ~ /^moe_gemm_cm2/ { m = $4 } END { print m }' "$1"; }
sweep="$OUT/sweep.txt"
: > "$sweep"
echo "=== sweep ($(( $(date +%s) - t0 )) s)"
for pair in ${MB_SWEEP:-128x128x64:128x64 128x128x64:256x64 128x128x32:256x32 128x64x64:128x128 128x128x128:256x128 64x128x64:256x64 64x256x64:128x128}; do
    IFS=: read -r tile down thr ks <<< "$pair"
    thr=${thr:-256}
    BT=45 bench "$OUT/s.txt" mixtral MB_VULKAN_PROFILE=1 MB_VULKAN_CM2_TILE=$tile MB_VULKAN_CM2_DOWN=$down \
        MB_VULKAN_CM2_THREADS=$thr MB_VULKAN_CM2_KSPEC=${ks:-0}
    rc=$?
    [ "${ks:-0}" = 1 ] && thr=${thr}k
    row=$(vk_rows "$OUT/s.txt" 4096 | grep vulkan-backend)
    echo "$tile $down $thr rc=$rc gateup_us=$(mean "$OUT/s.txt" 2) down_us=$(mean "$OUT/s.txt" 3) | $row" | tee -a "$sweep"
    grep -q "cm2 workgroup configuration" "$OUT/configs.txt" 2>/dev/null ||
        grep "cm2 workgroup configuration" "$OUT/s.txt" > "$OUT/configs.txt"
    { echo "== $tile $down $thr"; grep -E "cannot|refus|error" "$OUT/s.txt" | head -3; sed -n '/profile:/,/^[^ ]/p' "$OUT/s.txt"; } >> "$OUT/sweep_profiles.txt"
done
rm -f "$OUT/s.txt"
sort -u "$OUT/configs.txt" 2>/dev/null | head -20
# The fastest gate/up tile, then the fastest down among runs with its BM
# and workgroup.
read -r best_g best_t <<< "$(awk '$4 == "rc=0" { split($5, g, "="); if (g[2] != "" && (b == "" || g[2] + 0 < b)) { b = g[2] + 0; t = $1 " " $3 } } END { print t }' "$sweep")"
bm=${best_g%%x*}
best_d=$(awk -v bm="$bm" -v th="${best_t:-256}" '$4 == "rc=0" && index($1, bm "x") == 1 && $3 == th { split($6, d, "="); if (d[2] != "" && (b == "" || d[2] + 0 < b)) { b = d[2] + 0; t = $2 } } END { print t }' "$sweep")
best_g=${best_g:-128x128x64} best_d=${best_d:-128x64} best_t=${best_t:-256}
pick="MB_VULKAN_CM2_TILE=$best_g MB_VULKAN_CM2_DOWN=$best_d MB_VULKAN_CM2_THREADS=${best_t%k}"
[ "${best_t%k}" != "$best_t" ] && pick="$pick MB_VULKAN_CM2_KSPEC=1"
echo "=== pick: $pick ($(( $(date +%s) - t0 )) s)"
vk_ops "pick" MB_VULKAN_COOPMAT=2 $pick MB_VULKAN_PATH=gemm
for i in $(seq ${MB_PICK_RUNS:-3}); do
    bench "$OUT/expert_vk_pick$i.txt" mixtral $pick
    echo "== pick, Mixtral run $i: rc=$? ($(( $(date +%s) - t0 )) s)"
    vk_rows "$OUT/expert_vk_pick$i.txt"
done
bench "$OUT/expert_vk_pick_qwen3.txt" qwen3 $pick
echo "== pick, Qwen3: rc=$? ($(( $(date +%s) - t0 )) s)"
vk_rows "$OUT/expert_vk_pick_qwen3.txt"
echo "=== Vulkan-labelled tests ${MB_CTEST_R:-} ($(( $(date +%s) - t0 )) s)"
(cd $B && timeout 150 ctest -L vulkan ${MB_CTEST_R:+-R "$MB_CTEST_R"} -j4 --output-on-failure > "$OUT/ctest_vulkan.txt" 2>&1)
echo "ctest rc=$?"
grep -E "tests passed|Failed|\*\*\*Failed|Skipped" "$OUT/ctest_vulkan.txt" | head -20
echo "total $(( $(date +%s) - t0 )) s"
