#!/usr/bin/env bash
# moe-broker against llama.cpp on the same Qwen3-30B-A3B-shaped random GGUF and the
# same CPU, per weight type: writes the BF16 base file (write_qwen3moe_gguf), quantizes
# it with llama-quantize, checks that both engines agree on a prompt's logits and on
# their first greedy tokens, then times a 512-token prefill and 128 decoded tokens in
# both, alternating engines, REPS times each, and writes the medians as JSON and a
# table. Run build_llamacpp.sh and `cmake --build --preset release` first.
#
#   bench/llamacpp/run_compare.sh [TYPE...]     (default: bf16 q8_0 q4_k_m q6_k)
#
# Environment: LLAMA_DIR (/work/llama.cpp-src), DATA_DIR (where the GGUF files go,
# outside the repository; /work/llamacpp-bench-data), MB_BUILD (build/release),
# LAYERS (4), VOCAB (32768), THREADS (2), PROMPT (512), GEN (128), REPS (3),
# CHECK_GEN (8: greedy tokens compared), MB_FLAGS (moe-broker's placement flags:
# "--local-experts 128", every expert in the coordinator process), OUT (stem of the
# result files: bench/results/cpu-llamacpp-compare).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LLAMA_DIR=${LLAMA_DIR:-/work/llama.cpp-src}
LB=$LLAMA_DIR/build/bin
DATA=${DATA_DIR:-/work/llamacpp-bench-data}
MB_BUILD=${MB_BUILD:-$ROOT/build/release}
MB=$MB_BUILD/bin/moe-broker
COMPARE=$MB_BUILD/bench/compare_logits
LAYERS=${LAYERS:-4} VOCAB=${VOCAB:-32768} THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512} GEN=${GEN:-128} REPS=${REPS:-3} CHECK_GEN=${CHECK_GEN:-8}
MB_FLAGS=${MB_FLAGS:---local-experts 128}
OUT=${OUT:-$ROOT/bench/results/cpu-llamacpp-compare}
TYPES=("$@")
[ ${#TYPES[@]} -gt 0 ] || TYPES=(bf16 q8_0 q4_k_m q6_k)

for bin in "$LB/llama-bench" "$LB/llama-quantize" "$LB/write_qwen3moe_gguf" "$LB/dump_logits" "$MB" "$COMPARE"; do
    [ -x "$bin" ] || { echo "missing $bin (build_llamacpp.sh; cmake --build --preset release)" >&2; exit 1; }
done
mkdir -p "$DATA" "$(dirname "$OUT")"
log=$DATA/run_compare.log
: >"$log"

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# The value of "key": number in a one-line JSON object.
jnum() { grep -o "\"$1\": *[-0-9.e+]*" | head -n1 | sed 's/.*: *//'; }

stem=$DATA/qwen3moe-a3b-L$LAYERS-v$VOCAB
base=$stem-bf16.gguf
if [ ! -f "$base" ]; then
    "$LB/write_qwen3moe_gguf" "$base" --layers "$LAYERS" --vocab "$VOCAB" --seed 1 --type bf16
fi
# The prompt both engines read: PROMPT ids uniform in [0, VOCAB-2), fixed seed.
ids=$DATA/prompt-$PROMPT.txt
awk -v n="$PROMPT" -v v="$VOCAB" 'BEGIN {srand(7); for (i = 0; i < n; i++) printf "%d%s", int(rand() * (v - 2)), (i < n - 1 ? "," : "\n")}' >"$ids"

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx512_bf16|avx_vnni|amx_int8)$' | tr '\n' ' ' | sed 's/ $//')
llama_rev=$(git -C "$LLAMA_DIR" rev-parse --short HEAD)
mb_rev=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . ':!bench/results' || echo "+dirty")

rows=()
json_types=()
for t in "${TYPES[@]}"; do
    f=$stem-$t.gguf
    if [ ! -f "$f" ]; then
        T=$(echo "$t" | tr a-z A-Z)
        "$LB/llama-quantize" "$base" "$f" "$T" "$THREADS" >>"$log" 2>&1
    fi
    size=$(stat -c %s "$f")
    echo "== $t: $f ($size bytes)" | tee -a "$log"

    # Agreement: every prompt position's logits, then CHECK_GEN greedy tokens.
    mbl=$DATA/check-$t-moe-broker.safetensors lcl=$DATA/check-$t-llamacpp.safetensors
    mb_gen=$("$MB" run --model "$f" --input-ids "$ids" --gen "$CHECK_GEN" --temperature 0 --threads "$THREADS" \
        $MB_FLAGS --logits-out "$mbl" 2>>"$log" | grep '^generated:' | sed 's/generated: *//')
    lc_gen=$("$LB/dump_logits" "$f" "$ids" "$CHECK_GEN" "$lcl" "$THREADS" 2>>"$log" | sed 's/generated: *//')
    cmp=$("$COMPARE" --label "$t" "$mbl" "$lcl" 2>>"$log" || true)
    rm -f "$mbl" "$lcl"
    echo "   greedy moe-broker: $mb_gen | llama.cpp: $lc_gen" | tee -a "$log"
    echo "   logits: $cmp" | tee -a "$log"
    same=0
    read -r -a a <<<"$mb_gen"
    read -r -a b <<<"$lc_gen"
    while [ $same -lt ${#a[@]} ] && [ $same -lt ${#b[@]} ] && [ "${a[$same]}" = "${b[$same]}" ]; do same=$((same + 1)); done

    # Timing: engines alternate so a noisy neighbour hits both alike.
    mb_pp=() mb_tg=() lc_pp=() lc_tg=() lc_tg0=()
    for r in $(seq 1 "$REPS"); do
        line=$("$MB" run --model "$f" --input-ids "$ids" --gen "$GEN" --temperature 0 --threads "$THREADS" \
            $MB_FLAGS 2>>"$log" | grep '^prefill:')
        echo "   moe-broker #$r: $line" | tee -a "$log"
        mb_pp+=("$(echo "$line" | sed -E 's/.*tokens in [0-9.]+ s \(([0-9.]+) tok\/s\); decode.*/\1/')")
        mb_tg+=("$(echo "$line" | sed -E 's/.*steps in [0-9.]+ s \(([0-9.]+) tok\/s\).*/\1/')")
        # pp at depth 0; tg after a PROMPT-token context, as moe-broker's decode; tg at depth 0.
        out=$("$LB/llama-bench" -m "$f" -mmp 0 -t "$THREADS" -r 1 -o jsonl -p "$PROMPT" -n 0 2>>"$log")
        lc_pp+=("$(echo "$out" | jnum avg_ts)")
        out=$("$LB/llama-bench" -m "$f" -mmp 0 -t "$THREADS" -r 1 -o jsonl -p 0 -n "$GEN" -d "$PROMPT" 2>>"$log")
        lc_tg+=("$(echo "$out" | jnum avg_ts)")
        out=$("$LB/llama-bench" -m "$f" -mmp 0 -t "$THREADS" -r 1 -o jsonl -p 0 -n "$GEN" 2>>"$log")
        lc_tg0+=("$(echo "$out" | jnum avg_ts)")
        echo "   llama.cpp  #$r: pp$PROMPT ${lc_pp[-1]} tok/s; tg$GEN@d$PROMPT ${lc_tg[-1]} tok/s; tg$GEN@d0 ${lc_tg0[-1]} tok/s" | tee -a "$log"
    done
    m_mbpp=$(printf '%s\n' "${mb_pp[@]}" | median) m_mbtg=$(printf '%s\n' "${mb_tg[@]}" | median)
    m_lcpp=$(printf '%s\n' "${lc_pp[@]}" | median) m_lctg=$(printf '%s\n' "${lc_tg[@]}" | median)
    m_lctg0=$(printf '%s\n' "${lc_tg0[@]}" | median)
    rpp=$(awk -v a="$m_mbpp" -v b="$m_lcpp" 'BEGIN {printf "%.2f", a / b}')
    rtg=$(awk -v a="$m_mbtg" -v b="$m_lctg" 'BEGIN {printf "%.2f", a / b}')
    mib=$(awk -v s="$size" 'BEGIN {printf "%.0f", s / 1048576}')
    rows+=("$(printf '| %s | %s | %.1f | %.1f | %s | %.2f | %.2f | %.2f | %s | %s/%s | %s |' "$t" "$mib" \
        "$m_mbpp" "$m_lcpp" "$rpp" "$m_mbtg" "$m_lctg" "$m_lctg0" "$rtg" "$same" "$CHECK_GEN" \
        "$(echo "$cmp" | jnum same_argmax)/$((PROMPT + CHECK_GEN))")")
    arr() { local IFS=,; echo "[$*]"; }
    json_types+=("$(cat <<EOF
    {"type": "$t", "file": "$(basename "$f")", "bytes": $size,
     "moe_broker": {"prefill_tok_s": $m_mbpp, "decode_tok_s": $m_mbtg, "prefill_runs": $(arr "${mb_pp[@]}"), "decode_runs": $(arr "${mb_tg[@]}")},
     "llama_cpp": {"pp_tok_s": $m_lcpp, "tg_at_depth_prompt_tok_s": $m_lctg, "tg_at_depth0_tok_s": $m_lctg0, "pp_runs": $(arr "${lc_pp[@]}"), "tg_at_depth_prompt_runs": $(arr "${lc_tg[@]}"), "tg_at_depth0_runs": $(arr "${lc_tg0[@]}")},
     "ratio_prefill": $rpp, "ratio_decode": $rtg,
     "check": {"greedy_moe_broker": [$(echo "$mb_gen" | sed 's/ /, /g')], "greedy_llama_cpp": [$(echo "$lc_gen" | sed 's/ /, /g')], "greedy_same_prefix": $same, "logits": ${cmp:-null}}}
EOF
)")
done

{
    echo "{"
    echo "  \"machine\": {\"cpu\": \"$cpu\", \"flags\": \"$flags\", \"cores\": $(nproc), \"note\": \"shared 2-core VM, other builds running\"},"
    echo "  \"model\": {\"arch\": \"qwen3moe\", \"layers\": $LAYERS, \"d_model\": 2048, \"heads\": 32, \"kv_heads\": 4, \"head_dim\": 128, \"experts\": 128, \"top_k\": 8, \"expert_ff\": 768, \"vocab\": $VOCAB},"
    echo "  \"run\": {\"threads\": $THREADS, \"prompt\": $PROMPT, \"gen\": $GEN, \"reps\": $REPS, \"llama_cpp\": \"$llama_rev (node-llama-cpp 3.21.1 bundle, GGML_NATIVE=ON)\", \"moe_broker\": \"$mb_rev\", \"moe_broker_flags\": \"--threads $THREADS $MB_FLAGS\"},"
    echo "  \"types\": ["
    n=${#json_types[@]}
    for i in "${!json_types[@]}"; do
        echo "${json_types[$i]}$([ $((i + 1)) -lt "$n" ] && echo ,)"
    done
    echo "  ]"
    echo "}"
} >"$OUT.json"

{
    echo "# moe-broker vs llama.cpp, same GGUF, same CPU: $cpu ($flags), shared $(nproc)-core VM (other builds running)"
    echo "# Qwen3-30B-A3B shape, $LAYERS layers, vocab $VOCAB, random weights; $THREADS threads; prompt $PROMPT ids, then $GEN greedy tokens"
    echo "# llama.cpp $llama_rev (node-llama-cpp 3.21.1 bundle, GGML_NATIVE=ON): llama-bench -mmp 0 -t $THREADS -p $PROMPT (pp), -n $GEN -d $PROMPT (tg after the prompt), -n $GEN (tg@d0)"
    echo "# moe-broker $mb_rev: moe-broker run --model F --input-ids P --gen $GEN --temperature 0 --threads $THREADS $MB_FLAGS"
    echo "# medians of $REPS alternating runs; ratio = moe-broker / llama.cpp; check: equal greedy tokens from the start, positions (prompt + greedy) whose logits have the same argmax"
    echo
    echo "| type | MiB | mb prefill tok/s | llama pp$PROMPT tok/s | prefill ratio | mb decode tok/s | llama tg$GEN@d$PROMPT tok/s | llama tg$GEN@d0 | decode ratio | greedy same | argmax same |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$OUT.txt"
cat "$OUT.txt"
