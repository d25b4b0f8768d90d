// The decode path. For each expert with pairs, every gate/up weight row is
// read once and dotted with all of that expert's tokens (NT at a time), so a
// routed expert's weights stream from memory once per request whatever its
// token count; activations are read in the payload dtype as they arrived.
// The down projection then runs either per expert (writing each pair's row
// for the combine kernel) or, for requests of a few tokens, per token with
// the combine fused in: a warp dots one output row of every expert the token
// was routed to and adds them gate-weighted in request order. One warp per
// weight row, 16-byte loads, f32 math.
//   gate/up: h[pos][r] = silu(W_gate[r] . x[token(pos)]) * (W_up[r] . x[token(pos)])
//   down:    y[pos][n] = W_down[n] . h[pos]
//   fused:   out[t][n] = sum_j gate_j * (W_down(j)[n] . h[pos_j])   (j: t's pairs)
#include <cstdlib>

#include "kernels/cuda/moe_internal.cuh"

#define MB_GEMV_WARPS 8
#define MB_GEMV_NT 4

// h for one expert's rows: weights W, activations P read in place. VEC: the
// row length and starts allow 16-byte weight loads (and matching x loads).
template <typename W, typename P, bool VEC>
__global__ void __launch_bounds__(MB_GEMV_WARPS * 32)
mb_kcuda_gateup_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                       const int32_t *__restrict__ expert_slot, const int32_t *__restrict__ expert_off,
                       const int32_t *__restrict__ perm_token, const P *__restrict__ act, float *__restrict__ h,
                       int K, int N, const mb_kcuda_pair *__restrict__ single, int n_single)
{
    // single: a one-token request, planned by nobody: block y serves pair
    // y (its own expert; a repeated slot is computed twice, still right),
    // writing h row y.
    const int e = blockIdx.y;
    if (e >= (single ? n_single : scalars[0])) return;
    const int row = blockIdx.x * MB_GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const mb_kcuda_expert ex = slots[single ? (int32_t)single[e].slot : expert_slot[e]];
    const W *wa = (const W *)ex.gate + (size_t)row * K;
    const W *wb = (const W *)ex.up + (size_t)row * K;
    const int p0 = single ? e : expert_off[e], p1 = single ? e + 1 : expert_off[e + 1];
    constexpr int V = VEC ? mb_vec16<W>::n : 1;

    for (int c0 = p0; c0 < p1; c0 += MB_GEMV_NT) {
        const int nt = min(MB_GEMV_NT, p1 - c0);
        const P *xr[MB_GEMV_NT];
#pragma unroll
        for (int i = 0; i < MB_GEMV_NT; i++)
            xr[i] = act + (single ? (size_t)0 : (size_t)perm_token[c0 + (i < nt ? i : 0)] * K);
        float acc_a[MB_GEMV_NT] = {}, acc_b[MB_GEMV_NT] = {};
#pragma unroll 4
        for (int k = lane * V; k < K; k += 32 * V) {
            float fa[V], fb[V];
            mb_loadv<W, V, VEC>(wa + k, fa);
            mb_loadv<W, V, VEC>(wb + k, fb);
#pragma unroll
            for (int i = 0; i < MB_GEMV_NT; i++) {
                if (i >= nt) break;
                float x[V];
                mb_loadv<P, V, VEC>(xr[i] + k, x);
#pragma unroll
                for (int v = 0; v < V; v++) {
                    acc_a[i] += fa[v] * x[v];
                    acc_b[i] += fb[v] * x[v];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < MB_GEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc_a[i]), b = mb_warp_sum(acc_b[i]);
            if (lane == 0) h[(size_t)(c0 + i) * N + row] = mb_silu(a) * b;
        }
    }
}

// y[pos][n] for one expert's rows.
template <typename W, bool VEC>
__global__ void __launch_bounds__(MB_GEMV_WARPS * 32)
mb_kcuda_down_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                     const int32_t *__restrict__ expert_slot, const int32_t *__restrict__ expert_off,
                     const float *__restrict__ h, float *__restrict__ y, int K, int N)
{
    const int e = blockIdx.y;
    if (e >= scalars[0]) return;
    const int row = blockIdx.x * MB_GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const W *wa = (const W *)slots[expert_slot[e]].down + (size_t)row * K;
    const int p0 = expert_off[e], p1 = expert_off[e + 1];
    constexpr int V = VEC ? mb_vec16<W>::n : 1;
    for (int c0 = p0; c0 < p1; c0 += MB_GEMV_NT) {
        const int nt = min(MB_GEMV_NT, p1 - c0);
        float acc[MB_GEMV_NT] = {};
#pragma unroll 4
        for (int k = lane * V; k < K; k += 32 * V) {
            float fa[V];
            mb_loadv<W, V, VEC>(wa + k, fa);
#pragma unroll
            for (int i = 0; i < MB_GEMV_NT; i++) {
                if (i >= nt) break;
                float x[V];
                mb_loadv<float, V, VEC>(h + (size_t)(c0 + i) * K + k, x);
#pragma unroll
                for (int v = 0; v < V; v++)
                    acc[i] += fa[v] * x[v];
            }
        }
#pragma unroll
        for (int i = 0; i < MB_GEMV_NT; i++) {
            if (i >= nt) break;
            const float a = mb_warp_sum(acc[i]);
            if (lane == 0) y[(size_t)(c0 + i) * N + row] = a;
        }
    }
}

// One warp's row of the down projection over NJ pairs (expert rows w,
// h rows hr, gates g), all their loads issued each step; each pair's dot
// summed over the warp on its own and added gate-weighted in order.
template <typename W, bool VEC, int NJ>
__device__ __forceinline__ float mb_down_pairs(const W *const *w, const float *const *hr,
                                               const float *g, int row, int K, int lane,
                                               float total)
{
    constexpr int V = VEC ? mb_vec16<W>::n : 1;
    // Loads in flight a step: NJ pairs' own, times the unrolling, which
    // keeps few pairs (Mixtral's two) at the one-pair kernel's four.
    constexpr int U = NJ >= 4 ? 1 : 4 / NJ;
    float acc[NJ] = {};
#pragma unroll(U)
    for (int k = lane * V; k < K; k += 32 * V) {
#pragma unroll
        for (int i = 0; i < NJ; i++) {
            float fa[V], x[V];
            mb_loadv<W, V, VEC>(w[i] + (size_t)row * K + k, fa);
            mb_loadv<float, V, VEC>(hr[i] + k, x);
#pragma unroll
            for (int v = 0; v < V; v++)
                acc[i] += fa[v] * x[v];
        }
    }
#pragma unroll
    for (int i = 0; i < NJ; i++)
        total += g[i] * mb_warp_sum(acc[i]);
    return total;
}

// out[t][n] with the combine fused: token t's pairs in request order.
// tok_off NULL: a one-token request of n_single pairs whose h rows are the
// pairs' own indices.
template <typename W, typename P, bool VEC>
__global__ void __launch_bounds__(MB_GEMV_WARPS * 32)
    mb_kcuda_down_combine_kernel(const mb_kcuda_expert *__restrict__ slots,
                                 const int32_t *__restrict__ tok_off,
                                 const mb_kcuda_pair *__restrict__ pairs,
                                 const int32_t *__restrict__ pair_pos, const float *__restrict__ h,
                                 P *__restrict__ out, int K, int N, int n_single)
{
    const int t = blockIdx.y;
    const int row = blockIdx.x * MB_GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const int j0 = tok_off ? tok_off[t] : 0, j1 = tok_off ? tok_off[t + 1] : n_single;
    float total = 0.0f;
    for (int j = j0; j < j1; j++) {
        const mb_kcuda_pair pr = pairs[j];
        const W *wa = (const W *)slots[pr.slot].down;
        const float *hr = h + (size_t)(tok_off ? pair_pos[j] : j) * K;
        total = mb_down_pairs<W, VEC, 1>(&wa, &hr, &pr.gate, row, K, lane, total);
    }
    if (lane == 0) out[(size_t)t * N + row] = mb_from_f32<P>(total);
}

// The same with a token's pairs taken together (MB_CUDA_DOWN8=1; round
// 27, not yet run on a GPU, so off by default): the block reads the pairs
// (each expert's down matrix, h row and gate) into shared memory once,
// MB_DOWN_PJ at a time, so that a warp has the weight loads of all of them
// in flight together instead of one pair's pointer chain and loads after
// another's. Both kernels sum through mb_down_pairs: the same f32
// operations in the same order.
#define MB_DOWN_PJ 8

// mb_down_pairs for a chunk of nj pairs (1..NJ): its instantiation for
// that count, picked without a run-time bound inside the loads.
template <typename W, bool VEC, int NJ = MB_DOWN_PJ>
__device__ __forceinline__ float mb_down_chunk(int nj, const W *const *w, const float *const *hr,
                                               const float *g, int row, int K, int lane,
                                               float total)
{
    if constexpr (NJ > 1)
        if (nj < NJ) return mb_down_chunk<W, VEC, NJ - 1>(nj, w, hr, g, row, K, lane, total);
    return mb_down_pairs<W, VEC, NJ>(w, hr, g, row, K, lane, total);
}

template <typename W, typename P, bool VEC>
__global__ void __launch_bounds__(MB_GEMV_WARPS * 32)
    mb_kcuda_down_combine8_kernel(const mb_kcuda_expert *__restrict__ slots,
                                  const int32_t *__restrict__ tok_off,
                                  const mb_kcuda_pair *__restrict__ pairs,
                                  const int32_t *__restrict__ pair_pos, const float *__restrict__ h,
                                  P *__restrict__ out, int K, int N, int n_single)
{
    __shared__ const W *s_w[MB_DOWN_PJ];
    __shared__ const float *s_h[MB_DOWN_PJ];
    __shared__ float s_g[MB_DOWN_PJ];
    const int t = blockIdx.y;
    const int row = blockIdx.x * MB_GEMV_WARPS + (threadIdx.x >> 5);
    const bool live = row < N; // warps past N still meet the block's barriers
    const int lane = threadIdx.x & 31;
    const int j0 = tok_off ? tok_off[t] : 0, j1 = tok_off ? tok_off[t + 1] : n_single;
    float total = 0.0f;
    for (int jb = j0; jb < j1; jb += MB_DOWN_PJ) {
        const int nj = min(MB_DOWN_PJ, j1 - jb);
        if ((int)threadIdx.x < nj) {
            const int j = jb + (int)threadIdx.x;
            const mb_kcuda_pair pr = pairs[j];
            s_w[threadIdx.x] = (const W *)slots[pr.slot].down;
            s_h[threadIdx.x] = h + (size_t)(tok_off ? pair_pos[j] : j) * K;
            s_g[threadIdx.x] = pr.gate;
        }
        __syncthreads();
        if (live) {
            const W *w[MB_DOWN_PJ];
            const float *hr[MB_DOWN_PJ];
            float g[MB_DOWN_PJ];
#pragma unroll
            for (int i = 0; i < MB_DOWN_PJ; i++)
                if (i < nj) w[i] = s_w[i], hr[i] = s_h[i], g[i] = s_g[i];
            total = mb_down_chunk<W, VEC>(nj, w, hr, g, row, K, lane, total);
        }
        __syncthreads(); // every warp has read this chunk's pairs
    }
    if (live && lane == 0) out[(size_t)t * N + row] = mb_from_f32<P>(total);
}

template <typename W, typename P>
static cudaError_t mb_gemv_typed(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused,
                                 cudaStream_t stream)
{
    // One token: no routing kernel ran (fused is set); pairs drive both kernels.
    const mb_kcuda_pair *single = p->n_tokens == 1 && fused ? (const mb_kcuda_pair *)p->pairs : nullptr;
    const int n_single = single ? (int)p->n_pairs : 0;
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    constexpr int V = mb_vec16<W>::n;
    const bool vec_in = dm % V == 0, vec_ff = dff % V == 0;
    const unsigned ne = mb_kcuda_max_experts(p);
    const P *act = (const P *)p->act;
    float *h = (float *)ws->h;
    const dim3 blk(MB_GEMV_WARPS * 32);
    const dim3 g1((dff + MB_GEMV_WARPS - 1) / MB_GEMV_WARPS, single ? (unsigned)n_single : ne);
    if (vec_in)
        mb_kcuda_gateup_kernel<W, P, true><<<g1, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                   ws->expert_off, ws->perm_token, act, h, dm, dff,
                                                                   single, n_single);
    else
        mb_kcuda_gateup_kernel<W, P, false><<<g1, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                    ws->expert_off, ws->perm_token, act, h, dm, dff,
                                                                    single, n_single);
    if (fused) {
        const dim3 g2((dm + MB_GEMV_WARPS - 1) / MB_GEMV_WARPS, p->n_tokens);
        const mb_kcuda_pair *pairs = (const mb_kcuda_pair *)p->pairs;
        static const bool eight = [] {
            const char *v = getenv("MB_CUDA_DOWN8");
            return v && v[0] == '1';
        }();
        const auto kern = eight ? (vec_ff ? mb_kcuda_down_combine8_kernel<W, P, true>
                                          : mb_kcuda_down_combine8_kernel<W, P, false>)
                                : (vec_ff ? mb_kcuda_down_combine_kernel<W, P, true>
                                          : mb_kcuda_down_combine_kernel<W, P, false>);
        kern<<<g2, blk, 0, stream>>>(p->slots, single ? nullptr : ws->tok_off, pairs, ws->pair_pos,
                                     h, (P *)p->out, dff, dm, n_single);
    } else {
        const dim3 g2((dm + MB_GEMV_WARPS - 1) / MB_GEMV_WARPS, ne);
        if (vec_ff)
            mb_kcuda_down_kernel<W, true><<<g2, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                  ws->expert_off, h, ws->y, dff, dm);
        else
            mb_kcuda_down_kernel<W, false><<<g2, blk, 0, stream>>>(p->slots, ws->scalars, ws->expert_slot,
                                                                   ws->expert_off, h, ws->y, dff, dm);
    }
    return cudaGetLastError();
}

template <typename W>
static cudaError_t mb_gemv_weights(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused,
                                   cudaStream_t stream)
{
    switch (p->payload) {
    case MB_KCUDA_F32: return mb_gemv_typed<W, float>(ws, p, fused, stream);
    case MB_KCUDA_F16: return mb_gemv_typed<W, __half>(ws, p, fused, stream);
    case MB_KCUDA_BF16: return mb_gemv_typed<W, __nv_bfloat16>(ws, p, fused, stream);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t mb_kcuda_gemv_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused, cudaStream_t stream)
{
    switch (p->wdtype) {
    case MB_KCUDA_F32: return mb_gemv_weights<float>(ws, p, fused, stream);
    case MB_KCUDA_F16: return mb_gemv_weights<__half>(ws, p, fused, stream);
    case MB_KCUDA_BF16: return mb_gemv_weights<__nv_bfloat16>(ws, p, fused, stream);
    default: return cudaErrorInvalidValue;
    }
}
