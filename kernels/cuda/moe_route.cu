// The routing bookkeeping of one request in one kernel (one block): token
// pair offsets, a counting sort of the pairs by expert slot, each expert's
// first grouped row and the grouped GEMMs' tile schedule. The per-slot
// counters are the only memory that must start at zero; the kernel zeroes
// the ones it used before it ends, so nothing is cleared between requests.
// Within an expert, rows come in the order the counters' atomics hand out:
// the order may differ between runs, and nothing downstream depends on it.
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/moe_internal.cuh"

#define MB_ROUTE_THREADS 1024

typedef cub::BlockScan<int, MB_ROUTE_THREADS> mb_route_scan;

__global__ void __launch_bounds__(MB_ROUTE_THREADS)
mb_kcuda_route_kernel(int32_t *__restrict__ slot_cnt, int32_t *__restrict__ slot_eidx, int32_t *__restrict__ scalars,
                      int32_t *__restrict__ tok_off, int32_t *__restrict__ expert_slot,
                      int32_t *__restrict__ expert_off, int32_t *__restrict__ pair_pos,
                      int32_t *__restrict__ perm_token, mb_kcuda_tile *__restrict__ tiles,
                      const uint16_t *__restrict__ counts, const mb_kcuda_pair *__restrict__ pairs, int n_tokens,
                      int n_pairs, const int32_t *__restrict__ plan, int n_plan)
{
    __shared__ typename mb_route_scan::TempStorage scan_tmp;
    __shared__ int s_carry, s_carry2, s_active;
    const int tid = threadIdx.x;
    if (tid == 0) {
        s_carry = 0;
        s_active = 0;
    }
    __syncthreads();

    // 1. tok_off: exclusive scan of the pair counts, 1024 tokens at a time.
    for (int base = 0; base < n_tokens; base += MB_ROUTE_THREADS) {
        const int t = base + tid;
        int c = t < n_tokens ? (int)counts[t] : 0, ex, total;
        mb_route_scan(scan_tmp).ExclusiveSum(c, ex, total);
        if (t < n_tokens) tok_off[t] = s_carry + ex;
        __syncthreads();
        if (tid == 0) s_carry += total;
        __syncthreads();
    }
    if (tid == 0) tok_off[n_tokens] = s_carry;
    __syncthreads();

    // 2. Count pairs per slot; the first pair of a slot makes it an expert,
    // unless the host planned the experts (ascending slots), which then
    // take their indices from the plan. pair_pos holds each pair's rank
    // within its slot for now.
    if (plan) {
        for (int e = tid; e < n_plan; e += MB_ROUTE_THREADS) {
            expert_slot[e] = plan[e];
            slot_eidx[plan[e]] = e;
        }
        if (tid == 0) s_active = n_plan;
    }
    for (int t = tid; t < n_tokens; t += MB_ROUTE_THREADS) {
        const int j1 = tok_off[t + 1];
        for (int j = tok_off[t]; j < j1; j++) {
            const uint32_t slot = pairs[j].slot;
            const int r = atomicAdd(&slot_cnt[slot], 1);
            if (r == 0 && !plan) {
                const int e = atomicAdd(&s_active, 1);
                expert_slot[e] = (int32_t)slot;
                slot_eidx[slot] = e;
            }
            pair_pos[j] = r;
        }
    }
    __syncthreads();
    const int n_active = s_active;

    // 3. Expert offsets and tile offsets: scans over the active experts.
    if (tid == 0) {
        s_carry = 0;
        s_carry2 = 0;
    }
    __syncthreads();
    for (int base = 0; base < n_active; base += MB_ROUTE_THREADS) {
        const int e = base + tid;
        const int cnt = e < n_active ? slot_cnt[expert_slot[e]] : 0;
        const int nt = (cnt + MB_KCUDA_GEMM_BM - 1) / MB_KCUDA_GEMM_BM;
        int ex, total, ex2, total2;
        mb_route_scan(scan_tmp).ExclusiveSum(cnt, ex, total);
        __syncthreads();
        mb_route_scan(scan_tmp).ExclusiveSum(nt, ex2, total2);
        if (e < n_active) {
            const int off = s_carry + ex, toff = s_carry2 + ex2;
            expert_off[e] = off;
            for (int k = 0; k < nt; k++)
                tiles[toff + k] = mb_kcuda_tile{e, k * MB_KCUDA_GEMM_BM};
        }
        __syncthreads();
        if (tid == 0) {
            s_carry += total;
            s_carry2 += total2;
        }
        __syncthreads();
    }
    if (tid == 0) {
        expert_off[n_active] = s_carry;
        scalars[0] = n_active;
        scalars[1] = s_carry2;
    }
    __syncthreads();

    // 4. Each pair's grouped row, and the token of each row.
    for (int t = tid; t < n_tokens; t += MB_ROUTE_THREADS) {
        const int j1 = tok_off[t + 1];
        for (int j = tok_off[t]; j < j1; j++) {
            const int pos = expert_off[slot_eidx[pairs[j].slot]] + pair_pos[j];
            pair_pos[j] = pos;
            perm_token[pos] = t;
        }
    }
    __syncthreads();

    // 5. Leave the counters at zero for the next request.
    for (int e = tid; e < n_active; e += MB_ROUTE_THREADS)
        slot_cnt[expert_slot[e]] = 0;
}

cudaError_t mb_kcuda_route_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, cudaStream_t stream)
{
    mb_kcuda_route_kernel<<<1, MB_ROUTE_THREADS, 0, stream>>>(
        ws->slot_cnt, ws->slot_eidx, ws->scalars, ws->tok_off, ws->expert_slot, ws->expert_off, ws->pair_pos,
        ws->perm_token, ws->tiles, p->pair_counts, (const mb_kcuda_pair *)p->pairs, (int)p->n_tokens,
        (int)p->n_pairs, p->plan_experts ? p->plan_dev : nullptr, (int)p->plan_experts);
    return cudaGetLastError();
}
