# Sourced by the Vulkan GPU scripts (vk_coopmat.sh, cm2_8.sh, cm2_final.sh,
# cm2_down.sh, next.sh), which set OUT, t0 and B first (OPS, the
# test_backend_ops binary, defaults to B's).
#   vk_ops NAME [VAR=VALUE ...]: test_backend_ops vulkan with that
#   environment (and MB_VULKAN_VERBOSE=1), its output appended to
#   $OUT/ops.txt under "== NAME"; prints its status, the GEMM it took, any
#   failed check and the worst-error table.
#   vk_rows FILE [TOKENS]: the backend-depth rows bench_expert_gpu printed
#   (all sizes, or TOKENS only).
OPS=${OPS:-$B/tests/parity/backends/test_backend_ops}
vk_ops() {
    local name=$1 one="$OUT/ops_one.txt"
    shift
    env "$@" MB_VULKAN_VERBOSE=1 timeout 90 "$OPS" vulkan > "$one" 2>&1
    echo "== test_backend_ops vulkan, $name ($*): rc=$? ($(( $(date +%s) - t0 )) s)"
    { echo "== $name ($*)"; cat "$one"; } >> "$OUT/ops.txt"
    grep -m4 -E "vulkan:0: (prefill|tiled)|SKIP|cannot" "$one"
    grep -E "FAIL|CHECK" "$one" | head -8
    grep -A4 "worst normalised error" "$one"
    rm -f "$one"
}
vk_rows() {
    grep -E "^[a-z0-9-]+ +(backend|vulkan-backend) +[a-z0-9_]+ +${2:-[0-9]+} " "$1"
}
