#!/bin/bash
# Issue 9, round 27 (written in the tenth session; the eleventh's GPU
# machine never started, so not yet run; device tool `run`, carry .carry):
# the experts' down projection with the combine (moe_gemv.cu) with a
# token's pairs read into shared memory once and all their weight loads in
# flight together (MB_CUDA_DOWN8=1, off by default) against the default
# one pair at a time, then whether CPU workers sleep between a GPU
# coordinator's layers. In order (a call cut short keeps the first):
# the CUDA backend's parity with it on (every dtype), decode rows
# alternating the two, the GPU coordinator with two CPU workers at the
# default ring spin and at 20 ms (statistics table, MB_SHM_STATS wait
# counts), the expert kernel alone at Qwen3's top 8 and Mixtral's top 2
# with and without it, test_parity_device with it on, and the kernel
# timeline of each. About 6 minutes with a build; R27_LIMIT (seconds
# after the build starts, default 420) skips what would not fit. If it
# wins on step ms (and does not lose at top 2), make it the default and
# drop the old kernel and the knob.
#   bash bench/gpu/round27.sh      (MB_SKIP_BUILD=1 on a warm machine)
set -u
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/mb-out}
export MB_TARGETS="moe-worker moe-broker test_parity_device bench_e2e_device test_backend_ops bench_expert_gpu"
. bench/gpu/build9.sh
# Under the seconds given (since the build started), the next step runs.
# R27_LIMIT (default 420): the seconds the call may take after its start.
L=${R27_LIMIT:-420}
under() { [ $(( $(date +%s) - t0 )) -lt "$1" ] || { echo "== skipped past $1 s: $2"; false; }; }
(cd $B && timeout 100 ctest -R "^test_backend_ops_cuda_down8$" --timeout 90 --output-on-failure \
    > "$OUT/backend_ops_cuda-round27.txt" 2>&1; echo "== backend ops cuda rc=$? ($(( $(date +%s) - t0 )) s)")
grep -E "tests passed|Failed|CHECK failed" "$OUT/backend_ops_cuda-round27.txt" | head -5
row X=default MB_CUDA_DOWN8=1 X=default MB_CUDA_DOWN8=1 | tee "$OUT/rows27.txt"
# Where the IPC time of the GPU coordinator with two CPU workers goes (the
# statistics table per backend, and each side's receive waits by length,
# MB_SHM_STATS): with the default 1 ms ring spin, then with workers that
# spin 20 ms (do they sleep between layers?). A CPU worker's thread pool
# spins as long as its ring (twelfth session). The row's "crit share" is
# the critical path's (each dispatch's wall less its slowest worker's
# compute), "sum share" the figure summed over workers, as before.
for sp in default 20000; do
    under $((L - 70)) "ipc $sp" || break
    a=(); [ $sp = default ] || a=(--shm-spin $sp)
    MB_SHM_STATS=1 MB_BENCH_STATS=1 timeout 90 $B/bench/bench_e2e_device --layers 4 --prompt 256 --gen 32 \
        --no-cpu-coord --cases cpu "${a[@]}" > "$OUT/ipc27-$sp.txt" 2>&1
    echo "== ipc spin $sp rc=$? $(grep -E '^cuda ' "$OUT/ipc27-$sp.txt")"
    grep -E "shm stats" "$OUT/ipc27-$sp.txt" | cut -c1-200
done
# The kernel alone at Qwen3's top-8 and Mixtral's top-2 (one and four tokens).
for v in 0 1; do
    under $((L - 60)) "expert $v" || break
    echo "== expert kernel MB_CUDA_DOWN8=$v"
    MB_CUDA_DOWN8=$v timeout 60 $B/bench/bench_expert_gpu --models qwen3,mixtral --decode 1,4 --prefill 512 \
        --no-worker --budget 12 2>&1 | grep -E "decode .* gemv +gemv"
done | tee "$OUT/expert27.txt"
under $((L - 20)) parity && MB_CUDA_DOWN8=1 parity round27-down8
under $((L - 30)) trace && trace round27 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 | grep -E "== trace|down_combine|gateup"
under $L trace-down8 && MB_CUDA_DOWN8=1 trace round27-down8 --layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu 2>&1 |
    grep -E "== trace|down_combine|gateup"
echo "total $(( $(date +%s) - t0 )) s"
