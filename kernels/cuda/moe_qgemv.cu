// The decode path for quantized weights (moe_gemv.cu's structure, the same
// launches and the same roles): one warp per weight row, each lane a run
// of 16 weights at a time (two 16-byte loads and a couple of scale loads,
// the scales once per run), dequantized in registers exactly as the CPU
// does and multiplied in f32 with activations read in the payload dtype.
// Gate and up of a row go through one loop even when their types differ
// (a run covers the same 16 columns in any type), so the activations are
// loaded once for both.
//   gate/up: h[pos][r] = silu(W_gate[r] . x[token(pos)]) * (W_up[r] . x[token(pos)])
//   down:    y[pos][n] = W_down[n] . h[pos]
//   fused:   out[t][n] = sum_j gate_j * (W_down(j)[n] . h[pos_j])   (j: t's pairs)
#include "kernels/cuda/moe_quant.cuh"

#define MB_QGEMV_WARPS 8
#define MB_QGEMV_NT 4
#define MB_QGEMV_RUN 16

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
    const mb_qmat mg = mb_qmat_make(QG, ex.gate, N, K), mu = mb_qmat_make(QU, ex.up, N, K);
    const int p0 = single ? e : expert_off[e], p1 = single ? e + 1 : expert_off[e + 1];

    for (int c0 = p0; c0 < p1; c0 += MB_QGEMV_NT) {
        const int nt = min(MB_QGEMV_NT, p1 - c0);
        const P *xr[MB_QGEMV_NT];
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++)
            xr[i] = act + (single ? (size_t)0 : (size_t)perm_token[c0 + (i < nt ? i : 0)] * K);
        float acc_a[MB_QGEMV_NT] = {}, acc_b[MB_QGEMV_NT] = {};
#pragma unroll 2
        for (int k = lane * MB_QGEMV_RUN; k < K; k += 32 * MB_QGEMV_RUN) {
            const mb_qraw ra = mb_qload<QG>(mg, row, k), rb = mb_qload<QU>(mu, row, k);
            float wa[MB_QGEMV_RUN], wb[MB_QGEMV_RUN];
            mb_qdeq<QG>(ra, wa);
            mb_qdeq<QU>(rb, wb);
#pragma unroll
            for (int i = 0; i < MB_QGEMV_NT; i++) {
                if (i >= nt) break;
                float x[MB_QGEMV_RUN];
                mb_load16<P>(xr[i] + k, x);
#pragma unroll
                for (int v = 0; v < MB_QGEMV_RUN; v++) {
                    acc_a[i] += wa[v] * x[v];
                    acc_b[i] += wb[v] * x[v];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc_a[i]), b = mb_warp_sum(acc_b[i]);
            if (lane == 0) h[(size_t)(c0 + i) * N + row] = mb_silu(a) * b;
        }
    }
}

// acc += W[row] . hr over the lane's runs (hr: f32 [K]).
template <int Q>
__device__ __forceinline__ float mb_qdot_f32(const mb_qmat &m, int row, int K, const float *__restrict__ hr, int lane)
{
    float acc = 0.0f;
#pragma unroll 2
    for (int k = lane * MB_QGEMV_RUN; k < K; k += 32 * MB_QGEMV_RUN) {
        float w[MB_QGEMV_RUN], x[MB_QGEMV_RUN];
        mb_qdeq<Q>(mb_qload<Q>(m, row, k), w);
        mb_load16<float>(hr + k, x);
#pragma unroll
        for (int v = 0; v < MB_QGEMV_RUN; v++)
            acc += w[v] * x[v];
    }
    return acc;
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
        float acc[MB_QGEMV_NT] = {};
#pragma unroll 2
        for (int k = lane * MB_QGEMV_RUN; k < K; k += 32 * MB_QGEMV_RUN) {
            float w[MB_QGEMV_RUN];
            mb_qdeq<Q>(mb_qload<Q>(m, row, k), w);
#pragma unroll
            for (int i = 0; i < MB_QGEMV_NT; i++) {
                if (i >= nt) break;
                float x[MB_QGEMV_RUN];
                mb_load16<float>(h + (size_t)(c0 + i) * K + k, x);
#pragma unroll
                for (int v = 0; v < MB_QGEMV_RUN; v++)
                    acc[i] += w[v] * x[v];
            }
        }
#pragma unroll
        for (int i = 0; i < MB_QGEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc[i]);
            if (lane == 0) y[(size_t)(c0 + i) * N + row] = a;
        }
    }
}

// tok_off NULL: a one-token request of n_single pairs whose h rows are the
// pairs' own indices.
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
    const int j0 = tok_off ? tok_off[t] : 0, j1 = tok_off ? tok_off[t + 1] : n_single;
    float total = 0.0f;
    for (int j = j0; j < j1; j++) {
        const mb_kcuda_pair pr = pairs[j];
        const mb_qmat m = mb_qmat_make(Q, slots[pr.slot].down, N, K);
        const float *hr = h + (size_t)(tok_off ? pair_pos[j] : j) * K;
        total += pr.gate * mb_warp_sum(mb_qdot_f32<Q>(m, row, K, hr, lane));
    }
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
