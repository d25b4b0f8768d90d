#!/bin/bash
# Issue 12's mixed rig, one command on the GPU machine (after
# bench/gpu/device_run.sh build): writes a Qwen3-30B-A3B-shaped and a
# Mixtral-8x7B-shaped checkpoint (random bf16), then per model runs the
# coordinator on cuda:0 with every expert on that card (the reference), with
# expert workers spread over the other devices (placement weighted by free
# memory, then --replicas 2), compares their logits, times prefill (two
# prompt lengths) and decode with the per-backend statistics, and kills the
# first worker with SIGKILL mid-decode to check that the run ends with the
# same tokens. Results: $OUT (default /tmp/mb-out), JSON and text, and a
# summary table on stdout.
#   bash bench/gpu/mixed_rig.sh [--layers N] [--mixtral-layers N] [--gen N]
#                               [--models "qwen3 mixtral"] [--ckpt DIR]
# Devices: two GPUs or more: workers cuda:1, vulkan on the second card and
# cpu; one GPU: workers cuda:0, vulkan on the same card (two cuda:0 workers
# without a Vulkan device) and cpu.
# MB_RIG_DRY=cpu runs the same flow on this host without a GPU: small
# shapes, a coordinator on the CPU, three CPU workers standing in for the
# devices (build/dev by default; MB_BUILD names another build folder).
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/mb-out}
DRY=${MB_RIG_DRY:-}
if [ -n "$DRY" ] && [ "$DRY" != cpu ]; then
    echo "mixed_rig: MB_RIG_DRY='$DRY' (valid: cpu, or unset for the GPU rig)" >&2
    exit 2
fi

qwen_layers=""
mixtral_layers=""
gen=""
models="qwen3 mixtral"
ckpt_root=${MB_RIG_CKPT:-/tmp/mb-ckpt}
while [ $# -gt 0 ]; do
    case "$1" in
        --layers) qwen_layers=$2; shift 2 ;;
        --mixtral-layers) mixtral_layers=$2; shift 2 ;;
        --gen) gen=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --ckpt) ckpt_root=$2; shift 2 ;;
        *) echo "mixed_rig: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done

if [ "$DRY" = cpu ]; then
    B=${MB_BUILD:-build/dev}
    qwen_shape=small-qwen3; mixtral_shape=small-mixtral
    qwen_layers=${qwen_layers:-2}; mixtral_layers=${mixtral_layers:-2}
    gen=${gen:-64}; prompt_short=128; prompt_long=384
    exit_ms=50 # from the last decode step to the coordinator's exit
else
    B=${MB_BUILD:-build-gpu}
    qwen_shape=qwen3-30b; mixtral_shape=mixtral-8x7b
    # About 1.2 GiB of experts a Qwen3 layer and 2.7 GiB a Mixtral layer:
    # both checkpoints and their copies on the cards fit one H100 and the
    # machine's 64 GiB disk, and the whole rig fits the 10-minute limit.
    qwen_layers=${qwen_layers:-8}; mixtral_layers=${mixtral_layers:-3}
    gen=${gen:-128}; prompt_short=512; prompt_long=4096
    exit_ms=500
    export LD_LIBRARY_PATH=$ROOT/.carry/lib:$ROOT/.carry/dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PATH=/usr/local/cuda/bin:$PATH
fi
BROKER=$B/bin/moe-broker
WORKER=$B/bin/moe-worker
WRITE=$B/bench/write_checkpoint
COMPARE=$B/bench/compare_logits
for f in "$BROKER" "$WORKER" "$WRITE" "$COMPARE"; do
    if [ ! -x "$f" ]; then
        echo "mixed_rig: $f is missing: build first (cmake --build $B --target moe-broker moe-worker" \
            "write_checkpoint compare_logits)" >&2
        exit 1
    fi
done
mkdir -p "$OUT" "$ckpt_root"

# ---- devices ---------------------------------------------------------------
n_gpu=0
if [ -z "$DRY" ]; then
    if ! command -v nvidia-smi > /dev/null; then
        echo "mixed_rig: no nvidia-smi: no GPU here (MB_RIG_DRY=cpu runs the CPU dry run)" >&2
        exit 1
    fi
    n_gpu=$(nvidia-smi -L | grep -c '^GPU' || true)
    if [ "$n_gpu" -lt 1 ]; then
        echo "mixed_rig: nvidia-smi lists no GPU" >&2
        exit 1
    fi
fi
"$WORKER" --list-devices > "$OUT/devices.txt" 2>&1 || true
[ -z "$DRY" ] && nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv >> "$OUT/devices.txt" 2>&1

# Free memory in MiB: of GPU $1 (halved when two workers share it), and of
# the host (MemAvailable). Placement weights are these numbers, so each
# worker's share of the experts follows its device's free memory.
gpu_free_mib() { nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i "$1" | tr -d ' '; }
host_free_mib() { awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo; }

dev_args=()
rig=""
if [ "$DRY" = cpu ]; then
    rig="cpu dry run: coordinator on the CPU, three CPU workers standing in for cuda:1, vulkan and cpu"
    workers=(cpu,threads=1 cpu,threads=1 cpu,threads=1)
    kill_backend=cpu
elif [ "$n_gpu" -ge 2 ]; then
    dev_args=(--device cuda:0)
    # The second card's Vulkan index: Vulkan lists devices in its own order
    # (llvmpipe included); take the second NVIDIA one unless told.
    vk=${MB_RIG_VULKAN:-$(grep '^vulkan:' "$OUT/devices.txt" | grep -i nvidia | sed -n 2p | sed 's/^vulkan:\([0-9]*\).*/\1/')}
    g1=$(( $(gpu_free_mib 1) / 2 ))
    if [ -n "$vk" ]; then
        workers=("cuda:1,weight=$g1" "vulkan:$vk,weight=$g1" "cpu,weight=$(host_free_mib)")
        rig="$n_gpu GPUs: coordinator cuda:0; workers cuda:1, vulkan:$vk (second card), cpu"
    else
        workers=("cuda:1,weight=$((g1 * 2))" "cpu,weight=$(host_free_mib)")
        rig="$n_gpu GPUs: coordinator cuda:0; workers cuda:1, cpu (no Vulkan device listed: see devices.txt)"
    fi
    kill_backend=cuda:1
else
    dev_args=(--device cuda:0)
    g0=$(( $(gpu_free_mib 0) / 3 )) # the coordinator's share stays free
    # The card's own Vulkan driver stands in for the second card's.
    vk=${MB_RIG_VULKAN:-$(grep '^vulkan:' "$OUT/devices.txt" | grep -i nvidia | sed -n 1p | sed 's/^vulkan:\([0-9]*\).*/\1/')}
    if [ -n "$vk" ]; then
        workers=("cuda:0,weight=$g0" "vulkan:$vk,weight=$g0" "cpu,weight=$(host_free_mib)")
        rig="1 GPU (fallback): coordinator cuda:0; workers cuda:0, vulkan:$vk (the same card), cpu"
    else
        workers=("cuda:0,weight=$g0" "cuda:0,weight=$g0" "cpu,weight=$(host_free_mib)")
        rig="1 GPU (fallback): coordinator cuda:0; workers cuda:0, cuda:0 (two on one card), cpu"
    fi
    kill_backend=cuda:0
fi
worker_args=()
for w in "${workers[@]}"; do worker_args+=(--worker "$w"); done
echo "mixed_rig: $rig" | tee "$OUT/rig.txt"
printf 'workers: %s\n' "${workers[*]}" | tee -a "$OUT/rig.txt"

# ---- helpers ---------------------------------------------------------------
# Deterministic token ids (Park-Miller), N of them below VOCAB, to FILE.
write_ids() {
    awk -v n="$1" -v v="$2" 'BEGIN { s = 12345; for (i = 0; i < n; i++) { s = (s * 16807) % 2147483647;
        printf "%d%s", s % v, (i + 1 < n ? "," : "\n") } }' > "$3"
}

# run_broker NAME ARGS...: one `moe-broker run` of the current model with
# greedy sampling and statistics; its output in $OUT/$model-NAME.txt, its
# statistics in .stats.json. Returns the run's status.
run_broker() {
    local name=$model-$1
    shift
    local rc=0 t0
    t0=$(date +%s%N)
    "$BROKER" run --model "$ck" --temperature 0 --stats --stats-json "$OUT/$name.stats.json" "$@" \
        > "$OUT/$name.txt" 2>&1 || rc=$?
    echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$OUT/$name.wall_ms"
    if [ "$rc" -ne 0 ]; then
        echo "mixed_rig: $name failed (exit $rc); the end of $OUT/$name.txt:" >&2
        tail -4 "$OUT/$name.txt" >&2
    fi
    return "$rc"
}

# One JSON object per run for the summary: throughput from the run's
# timing line, decode IPC from its statistics table (crit ipc: the IPC on
# the critical path, each dispatch's wall time less its slowest worker's
# compute, over the decode step time; ipc/step: the summed IPC time over
# the decode step time; coord ipc: the coordinator's own share of it).
summarize_run() {
    local name=$model-$1 f=$OUT/$model-$1.txt status=$2
    awk -v name="$name" -v status="$status" '
        /^prefill: [0-9]+ tokens in/ { pt = $2; ptps = substr($7, 2); dt = $10; dtps = substr($15, 2) }
        /^decode +[0-9]+ +[0-9]+ +[0-9.]+ / { crit = $7; crit_share = $8; ipc = $9; ratio = $10; coord = $11 }
        /^generated:/ { sub(/^generated: */, ""); gen = $0 }
        END {
            printf "{\"run\":\"%s\",\"status\":\"%s\",\"prefill_tokens\":%s,\"prefill_tok_s\":%s,", name, status,
                   pt == "" ? "null" : pt, ptps == "" ? "null" : ptps
            printf "\"decode_steps\":%s,\"decode_tok_s\":%s,\"decode_crit_ipc_ms\":%s,\"decode_crit_ipc_share\":\"%s\",",
                   dt == "" ? "null" : dt, dtps == "" ? "null" : dtps, crit == "" ? "null" : crit, crit_share
            printf "\"decode_ipc_ms\":%s,\"decode_ipc_per_step\":\"%s\",", ipc == "" ? "null" : ipc, ratio
            printf "\"decode_coord_ipc\":\"%s\",\"generated\":\"%s\"}\n", coord, gen
        }' "$f" >> "$OUT/runs.jsonl"
}

# ---- the runs --------------------------------------------------------------
: > "$OUT/runs.jsonl"
: > "$OUT/parity.jsonl"
: > "$OUT/failover.jsonl"
for model in $models; do
    case "$model" in
        qwen3) shape=$qwen_shape; layers=$qwen_layers ;;
        mixtral) shape=$mixtral_shape; layers=$mixtral_layers ;;
        *) echo "mixed_rig: unknown model '$model' (qwen3, mixtral)" >&2; exit 2 ;;
    esac
    ck=$ckpt_root/$shape-$layers
    if [ ! -f "$ck/model.safetensors" ]; then
        start=$(date +%s)
        rm -rf "$ck"
        "$WRITE" --shape "$shape" --layers "$layers" "$ck" | tee "$OUT/$model-checkpoint.txt"
        echo "checkpoint written in $(( $(date +%s) - start )) s" | tee -a "$OUT/$model-checkpoint.txt"
    fi
    vocab=$(sed -n 's/.*"vocab_size": *\([0-9]*\).*/\1/p' "$ck/config.json")
    n_exp=$(sed -n 's/.*"num_\(local_\)\{0,1\}experts": *\([0-9]*\).*/\2/p' "$ck/config.json")
    for p in "$prompt_short" "$prompt_long"; do write_ids "$p" "$vocab" "$OUT/ids-$p.txt"; done
    short=(--input-ids "$OUT/ids-$prompt_short.txt" --gen "$gen")
    long=(--input-ids "$OUT/ids-$prompt_long.txt" --gen "$gen")

    # Every expert on the coordinator's device: the reference, and the
    # one-card figures (where the model fits on the card).
    st=ok; run_broker onecard "${dev_args[@]}" --local-experts "$n_exp" "${short[@]}" \
        --logits-out "$OUT/$model-onecard.logits.safetensors" || st=failed
    summarize_run onecard "$st"
    st=ok; run_broker onecard-long "${dev_args[@]}" --local-experts "$n_exp" "${long[@]}" || st=failed
    summarize_run onecard-long "$st"

    for cfg in mixed replicas2; do
        extra=()
        [ "$cfg" = replicas2 ] && extra=(--replicas 2)
        st=ok; run_broker "$cfg" "${dev_args[@]}" "${worker_args[@]}" "${extra[@]}" "${short[@]}" \
            --logits-out "$OUT/$model-$cfg.logits.safetensors" || st=failed
        summarize_run "$cfg" "$st"
        if [ "$st" = ok ] && [ -f "$OUT/$model-onecard.logits.safetensors" ]; then
            # bf16 weights, f32 payloads: the workers' kernels differ from the
            # coordinator's only in summation order.
            "$COMPARE" --tol 1e-2 --label "$model $cfg vs onecard" "$OUT/$model-$cfg.logits.safetensors" \
                "$OUT/$model-onecard.logits.safetensors" >> "$OUT/parity.jsonl" || true
        fi
        st=ok; run_broker "$cfg-long" "${dev_args[@]}" "${worker_args[@]}" "${extra[@]}" "${long[@]}" || st=failed
        summarize_run "$cfg-long" "$st"

        # SIGKILL the first $kill_backend worker mid-decode; the run must end
        # as the undisturbed one did. --step-timing is block-buffered (it
        # shows nothing until the run ends), so the moment comes from the
        # undisturbed run: its wall time less half its decode time and a
        # guess at the exit; the loss event's step says where it landed.
        [ -f "$OUT/$model-$cfg.logits.safetensors" ] || continue
        name=$model-$cfg-kill
        wall_ms=$(cat "$OUT/$model-$cfg.wall_ms")
        dec_ms=$(awk '/^prefill: [0-9]+ tokens in/ { printf "%d", $13 * 1000 }' "$OUT/$model-$cfg.txt")
        # Prefill steps are 0 .. n_pre-1, decode steps n_pre .. n_pre+gen-1.
        n_pre=$(( (prompt_short + 511) / 512 ))
        for frac in 50 25 75; do
            kill_ms=$(( wall_ms - ${dec_ms:-0} * (100 - frac) / 100 - exit_ms ))
            "$BROKER" run --model "$ck" --temperature 0 --stats --stats-json "$OUT/$name.stats.json" \
                "${dev_args[@]}" "${worker_args[@]}" "${extra[@]}" "${short[@]}" \
                --logits-out "$OUT/$name.logits.safetensors" > "$OUT/$name.txt" 2>&1 &
            cpid=$!
            sleep "$(awk -v ms="$kill_ms" 'BEGIN { printf "%.3f", (ms > 0 ? ms : 0) / 1000 }')"
            victim=$(ps -o pid=,args= --ppid "$cpid" | awk -v b="$kill_backend" \
                '{ for (i = 2; i < NF; i++) if ($i == "--backend" && $(i + 1) == b) { print $1; exit } }')
            [ -n "$victim" ] && { kill -9 "$victim" 2> /dev/null || true; }
            rc=0; wait "$cpid" || rc=$?
            lost_step=$(awk '/worker_lost/ { for (i = 1; i < NF; i++) if ($i == "step") { print $(i + 1); exit } }' \
                "$OUT/$name.txt")
            if [ -n "$lost_step" ] && [ "$lost_step" -ge "$n_pre" ] && [ "$lost_step" -lt $(( n_pre + gen )) ]; then
                break
            fi
            echo "mixed_rig: $name: the kill at ${kill_ms} ms landed at step '${lost_step}', not mid-decode;" \
                "trying again" >&2
        done
        mid_decode=false
        [ -n "$lost_step" ] && [ "$lost_step" -ge "$n_pre" ] && [ "$lost_step" -lt $(( n_pre + gen )) ] &&
            mid_decode=true
        same_tokens=false
        a=$(grep '^generated:' "$OUT/$model-$cfg.txt" || true)
        b=$(grep '^generated:' "$OUT/$name.txt" || true)
        [ -n "$a" ] && [ "$a" = "$b" ] && same_tokens=true
        cmp=$("$COMPARE" --tol 0 --label "$name vs $cfg" "$OUT/$name.logits.safetensors" \
            "$OUT/$model-$cfg.logits.safetensors" 2> /dev/null || true)
        event=$(grep -m1 'worker_lost' "$OUT/$name.txt" | sed 's/^ *//; s/  */ /g; s/"/\\"/g' || true)
        printf '{"run":"%s","victim_pid":"%s","killed_at_ms":%s,"lost_at_step":"%s","decode_steps":"%s-%s",' \
            "$name" "$victim" "$kill_ms" "$lost_step" "$n_pre" "$(( n_pre + gen - 1 ))" >> "$OUT/failover.jsonl"
        printf '"mid_decode":%s,"exit":%s,"same_tokens":%s,"logits":%s,"event":"%s"}\n' "$mid_decode" "$rc" \
            "$same_tokens" "${cmp:-null}" \
            "$event" >> "$OUT/failover.jsonl"
        summarize_run "$cfg-kill" "$([ "$rc" -eq 0 ] && echo ok || echo failed)"
    done
done

# ---- summary ---------------------------------------------------------------
{
    printf '{"rig":"%s","workers":"%s","dry":"%s",\n"runs":[\n' "$rig" "${workers[*]}" "$DRY"
    sed '$!s/$/,/' "$OUT/runs.jsonl"
    printf '],\n"parity":[\n'
    sed '$!s/$/,/' "$OUT/parity.jsonl"
    printf '],\n"failover":[\n'
    sed '$!s/$/,/' "$OUT/failover.jsonl"
    printf ']}\n'
} > "$OUT/mixed_rig.json"
{
    echo "$rig"
    printf '%-26s %-7s %8s %11s %7s %10s %9s %9s\n' run status prefill "prefill/s" decode "decode/s" ipc/step \
        "coord ipc"
    sed 's/[{}"]//g' "$OUT/runs.jsonl" | awk -F, '{
        for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
        printf "%-26s %-7s %8s %11s %7s %10s %9s %9s\n", v["run"], v["status"], v["prefill_tokens"],
               v["prefill_tok_s"], v["decode_steps"], v["decode_tok_s"], v["decode_ipc_per_step"], v["decode_coord_ipc"] }'
    echo
    echo "parity (logits against every expert on one device):"
    sed 's/[{}"]//g; s/,/  /g' "$OUT/parity.jsonl"
    echo
    echo "failover (kill -9 of the first $kill_backend worker mid-decode):"
    sed 's/[{}"]//g; s/,/  /g' "$OUT/failover.jsonl"
} | tee "$OUT/mixed_rig.txt"
