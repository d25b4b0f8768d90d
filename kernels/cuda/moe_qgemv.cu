// The decode path for quantized weights (moe_gemv.cu's structure, the same
// launches and the same roles): one warp per weight row, each lane one unit
// of 32 or 64 weights at a time (moe_qunit.cuh: up to four 16-byte loads,
// the scales decoded once a unit), the dot product factored per run of 16
// (integer weights times f32 activations, then one scale and one min), the
// activations read in the payload dtype and widened to f32. Gate and up of
// one type go through one loop, so the activations are loaded (and for
// Q4_K summed) once for both; of two types, one loop each.
//   gate/up: h[pos][r] = silu(W_gate[r] . x[token(pos)]) * (W_up[r] . x[token(pos)])
//   down:    y[pos][n] = W_down[n] . h[pos]
//   fused:   out[t][n] = sum_j gate_j * (W_down(j)[n] . h[pos_j])   (j: t's pairs)
#include "kernels/cuda/moe_qunit.cuh"

#define MB_QGEMV_WARPS 8
#define MB_QGEMV_NT 4

template <int QG, int QU, typename P>
__global__ void __launch_bounds__(MB_QGEMV_WARPS * 32)
mb_kcuda_qgateup_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                        const int32_t *__restrict__ expert_slot, const int32_t *__restrict__ expert_off,
                        const int32_t *__restrict__ perm_token, const P *__restrict__ act, float *__restrict__ h,
                        int K, int N, const mb_kcuda_pair *__restrict__ single, int n_single)
{
    const int e = blockIdx.y;
    if (e >= (single ? n_single : scalars[0])) return;
    const int row = blockIdx.x * MB_QGEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const mb_kcuda_expert ex = slots[single ? (int32_t)single[e].slot : expert_slot[e]];
    const mb_qmat m[2] = {mb_qmat_make(QG, ex.gate, N, K), mb_qmat_make(QU, ex.up, N, K)};
    const int p0 = single ? e : expert_off[e], p1 = single ? e + 1 : expert_off[e + 1];

    for (int c0 = p0; c0 < p1; c0 += MB_QGEMV_NT) {
        const int nt = min(MB_QGEMV_NT, p1 - c0);
        const P *xr[MB_QGEMV_NT];
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++)
            xr[i] = act + (single ? (size_t)0 : (size_t)perm_token[c0 + (i < nt ? i : 0)] * K);
        float acc[2][MB_QGEMV_NT] = {};
        if constexpr (QG == QU) {
            mb_qu_row<QG, 2, MB_QGEMV_NT, P>(m, row, K, xr, nt, lane, acc);
        } else {
            mb_qu_row<QG, 1, MB_QGEMV_NT, P>(m, row, K, xr, nt, lane, acc);
            mb_qu_row<QU, 1, MB_QGEMV_NT, P>(m + 1, row, K, xr, nt, lane, acc + 1);
        }
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc[0][i]), b = mb_warp_sum(acc[1][i]);
            if (lane == 0) h[(size_t)(c0 + i) * N + row] = mb_silu(a) * b;
        }
    }
}

template <int Q>
__global__ void __launch_bounds__(MB_QGEMV_WARPS * 32)
mb_kcuda_qdown_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                      const int32_t *__restrict__ expert_slot, const int32_t *__restrict__ expert_off,
                      const float *__restrict__ h, float *__restrict__ y, int K, int N)
{
    const int e = blockIdx.y;
    if (e >= scalars[0]) return;
    const int row = blockIdx.x * MB_QGEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const mb_qmat m = mb_qmat_make(Q, slots[expert_slot[e]].down, N, K);
    const int p0 = expert_off[e], p1 = expert_off[e + 1];
    for (int c0 = p0; c0 < p1; c0 += MB_QGEMV_NT) {
        const int nt = min(MB_QGEMV_NT, p1 - c0);
        const float *xr[MB_QGEMV_NT];
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++)
            xr[i] = h + (size_t)(c0 + (i < nt ? i : 0)) * K;
        float acc[1][MB_QGEMV_NT] = {};
        mb_qu_row<Q, 1, MB_QGEMV_NT, float>(&m, row, K, xr, nt, lane, acc);
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc[0][i]);
            if (lane == 0) y[(size_t)(c0 + i) * N + row] = a;
        }
    }
}

// tok_off NULL: a one-token request of n_single pairs whose h rows are the
// pairs' own indices. The lanes walk the units of all of the token's pairs
// as one list (pair j's units, then pair j + 1's), so that a few short rows
// (Qwen3's d_ff of 768: 12 units) still keep every lane busy; each unit's
// dot is scaled by its pair's gate as it is added.
template <int Q, typename P>
__global__ void __launch_bounds__(MB_QGEMV_WARPS * 32)
mb_kcuda_qdown_combine_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ tok_off,
                              const mb_kcuda_pair *__restrict__ pairs, const int32_t *__restrict__ pair_pos,
                              const float *__restrict__ h, P *__restrict__ out, int K, int N, int n_single)
{
    const int t = blockIdx.y;
    const int row = blockIdx.x * MB_QGEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const int j1 = tok_off ? tok_off[t + 1] : n_single;
    const int n_units = K / mb_qu_traits<Q>::unit;
    int j = tok_off ? tok_off[t] : 0, u = lane;
    while (u >= n_units && j < j1) u -= n_units, j++;
    float total = 0.0f;
    while (j < j1) {
        const mb_kcuda_pair pr = pairs[j];
        const mb_qmat m = mb_qmat_make(Q, slots[pr.slot].down, N, K);
        const float *hr[1] = {h + (size_t)(tok_off ? pair_pos[j] : j) * K};
        // This pair's units of the lane, then on to the pair the next one falls in.
#pragma unroll 2
        for (; u < n_units; u += 32) {
            float acc[1][1] = {};
            mb_qu_dot<Q, 1, 1, float>(&m, row, u, hr, 1, acc);
            total = fmaf(pr.gate, acc[0][0], total);
        }
        while (u >= n_units && j < j1) u -= n_units, j++;
    }
    total = mb_warp_sum(total);
    if (lane == 0) out[(size_t)t * N + row] = mb_from_f32<P>(total);
}

template <int QG, int QU, typename P>
static void mb_qgateup(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, const mb_kcuda_pair *single, int n_single,
                       dim3 grid, cudaStream_t stream)
{
    mb_kcuda_qgateup_kernel<QG, QU, P><<<grid, MB_QGEMV_WARPS * 32, 0, stream>>>(
        p->slots, ws->scalars, ws->expert_slot, ws->expert_off, ws->perm_token, (const P *)p->act, (float *)ws->h,
        (int)p->d_model, (int)p->d_ff, single, n_single);
}

template <int QG, typename P>
static cudaError_t mb_qgateup_up(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, const mb_kcuda_pair *single,
                                 int n_single, dim3 grid, cudaStream_t stream)
{
    switch (p->wdtype_up) {
    case MB_KCUDA_Q8_0: mb_qgateup<QG, MB_KCUDA_Q8_0, P>(ws, p, single, n_single, grid, stream); break;
    case MB_KCUDA_Q4_K: mb_qgateup<QG, MB_KCUDA_Q4_K, P>(ws, p, single, n_single, grid, stream); break;
    case MB_KCUDA_Q6_K: mb_qgateup<QG, MB_KCUDA_Q6_K, P>(ws, p, single, n_single, grid, stream); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

template <typename P>
static cudaError_t mb_qgemv_payload(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused,
                                    cudaStream_t stream)
{
    const mb_kcuda_pair *single = p->n_tokens == 1 && fused ? (const mb_kcuda_pair *)p->pairs : nullptr;
    const int n_single = single ? (int)p->n_pairs : 0;
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    const unsigned ne = mb_kcuda_max_experts(p);
    const dim3 g1((dff + MB_QGEMV_WARPS - 1) / MB_QGEMV_WARPS, single ? (unsigned)n_single : ne);
    cudaError_t e;
    switch (p->wdtype) {
    case MB_KCUDA_Q8_0: e = mb_qgateup_up<MB_KCUDA_Q8_0, P>(ws, p, single, n_single, g1, stream); break;
    case MB_KCUDA_Q4_K: e = mb_qgateup_up<MB_KCUDA_Q4_K, P>(ws, p, single, n_single, g1, stream); break;
    case MB_KCUDA_Q6_K: e = mb_qgateup_up<MB_KCUDA_Q6_K, P>(ws, p, single, n_single, g1, stream); break;
    default: e = cudaErrorInvalidValue;
    }
    if (e != cudaSuccess) return e;
    const float *h = (const float *)ws->h;
    const dim3 blk(MB_QGEMV_WARPS * 32);
    if (fused) {
        const dim3 g2((dm + MB_QGEMV_WARPS - 1) / MB_QGEMV_WARPS, p->n_tokens);
        const mb_kcuda_pair *pairs = (const mb_kcuda_pair *)p->pairs;
        const int32_t *tok_off = single ? nullptr : ws->tok_off;
        P *out = (P *)p->out;
        switch (p->wdtype_down) {
        case MB_KCUDA_Q8_0:
            mb_kcuda_qdown_combine_kernel<MB_KCUDA_Q8_0, P><<<g2, blk, 0, stream>>>(p->slots, tok_off, pairs,
                                                                                  ws->pair_pos, h, out, dff, dm,
                                                                                  n_single);
            break;
        case MB_KCUDA_Q4_K:
            mb_kcuda_qdown_combine_kernel<MB_KCUDA_Q4_K, P><<<g2, blk, 0, stream>>>(p->slots, tok_off, pairs,
                                                                                  ws->pair_pos, h, out, dff, dm,
                                                                                  n_single);
            break;
        case MB_KCUDA_Q6_K:
            mb_kcuda_qdown_combine_kernel<MB_KCUDA_Q6_K, P><<<g2, blk, 0, stream>>>(p->slots, tok_off, pairs,
                                                                                  ws->pair_pos, h, out, dff, dm,
                                                                                  n_single);
            break;
        default: return cudaErrorInvalidValue;
        }
    } else {
        const dim3 g2((dm + MB_QGEMV_WARPS - 1) / MB_QGEMV_WARPS, ne);
        switch (p->wdtype_down) {
        case MB_KCUDA_Q8_0:
            mb_kcuda_qdown_kernel<MB_KCUDA_Q8_0><<<g2, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                       ws->expert_off, h, ws->y, dff, dm);
            break;
        case MB_KCUDA_Q4_K:
            mb_kcuda_qdown_kernel<MB_KCUDA_Q4_K><<<g2, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                       ws->expert_off, h, ws->y, dff, dm);
            break;
        case MB_KCUDA_Q6_K:
            mb_kcuda_qdown_kernel<MB_KCUDA_Q6_K><<<g2, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                       ws->expert_off, h, ws->y, dff, dm);
            break;
        default: return cudaErrorInvalidValue;
        }
    }
    return cudaGetLastError();
}

cudaError_t mb_kcuda_qgemv_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused, cudaStream_t stream)
{
    switch (p->payload) {
    case MB_KCUDA_F32: return mb_qgemv_payload<float>(ws, p, fused, stream);
    case MB_KCUDA_F16: return mb_qgemv_payload<__half>(ws, p, fused, stream);
    case MB_KCUDA_BF16: return mb_qgemv_payload<__nv_bfloat16>(ws, p, fused, stream);
    default: return cudaErrorInvalidValue;
    }
}
