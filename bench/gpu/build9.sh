# Sourced by issue 9's GPU scripts, after OUT is set: bench/gpu/preamble.sh
# with the coordinator's targets (MB_TARGETS) and no Vulkan, then the steps
# the scripts share, as functions:
#   dense_tests FILE [VAR=VALUE...]  test_dense_cuda (MB_DENSE_TESTS picks
#                                    groups) into $OUT/FILE, its summary lines
#   ab CASE ARGS -- SETTING...       bench_e2e_device ARGS --cases CASE once
#                                    per setting (VAR=VALUE, or X=default),
#                                    a row each
#   row SETTING...                   a row of the decode A/B (case gpu,
#                                    4 layers, prompt 1024, gen 64) per
#                                    setting ("VAR=1 VAR2=2", or X=default)
#   parity TAG                       ctest test_parity_device into
#                                    $OUT/parity_device-TAG.txt
#   trace TAG ARGS                   the decode step's kernel timeline
#                                    (bench/tools/ktrace.c) of bench_e2e_device
#                                    ARGS into $OUT/ktrace-TAG.txt, summarised
#   full_e2e TAG                     every case, both coordinators, into
#                                    $OUT/e2e_device-TAG.{txt,json}
export MB_WITH_VULKAN=OFF
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device"}
. bench/gpu/preamble.sh

dense_tests() {
    local f=$1; shift
    env "$@" timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda > "$OUT/$f" 2>&1
    echo "== dense tests $* rc=$? ($(( $(date +%s) - t0 )) s)"
    grep -E "FAIL|fusions|norm folded|attention|route|test_dense_cuda:" "$OUT/$f" | head -8
}

ab() {
    local c=$1 args=()
    shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
    shift
    local v
    for v in "$@"; do
        env "$v" timeout 90 $B/bench/bench_e2e_device "${args[@]}" --cases "$c" > "$OUT/ab.txt" 2>&1
        echo "== $c $v rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
    done
    rm -f "$OUT/ab.txt"
}

row() {
    local s
    for s in "$@"; do
        env $s timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 64 \
            --no-cpu-coord --cases gpu > "$OUT/ab.txt" 2>&1
        echo "== $s rc=$? $(grep -E '^cuda ' "$OUT/ab.txt")"
    done
    rm -f "$OUT/ab.txt"
}

parity() {
    (cd $B && timeout 170 ctest -R "^test_parity_device$" --timeout 160 --output-on-failure \
        > "$OUT/parity_device-$1.txt" 2>&1; echo "== parity_device rc=$? ($(( $(date +%s) - t0 )) s)")
    grep -E "CHECK failed|tests passed|Failed" "$OUT/parity_device-$1.txt" | head -5
}

trace() {
    local tag=$1 kt=$B/bench/libmb_ktrace.so
    shift
    if [ ! -f "$kt" ]; then # the machine's toolkit lacks CUPTI: the copy built here, with its libcupti
        kt=$PWD/.carry/ktrace/libmb_ktrace.so
        export LD_LIBRARY_PATH=$PWD/.carry/ktrace:$LD_LIBRARY_PATH
    fi
    rm -f "$OUT/kt.csv"
    CUDA_INJECTION64_PATH=$kt MB_KTRACE_OUT=$OUT/kt.csv timeout 120 $B/bench/bench_e2e_device "$@" \
        > "$OUT/e2e-trace.txt" 2>&1
    echo "== trace $tag rc=$? $(grep -E '^cuda ' "$OUT/e2e-trace.txt")"
    python3 bench/tools/ktrace_steps.py "$OUT/kt.csv" --steps 32 > "$OUT/ktrace-$tag.txt" 2>&1
    head -14 "$OUT/ktrace-$tag.txt"
    sed -n '/^by operation/,$p' "$OUT/ktrace-$tag.txt"
    rm -f "$OUT/kt.csv" "$OUT/e2e-trace.txt"
}

full_e2e() {
    timeout 240 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json "$OUT/e2e_device-$1.json" \
        > "$OUT/e2e_device-$1.txt" 2>&1
    echo "== full e2e rc=$? ($(( $(date +%s) - t0 )) s)"
    grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" "$OUT/e2e_device-$1.txt"
}
