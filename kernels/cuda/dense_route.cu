// Routing in one kernel (dense.h mb_kcuda_route_topk): a warp per token
// computes the softmax of its logits row into shared memory, then takes the
// top k by k rounds of a warp-wide arg-max (ties: the lower index), and
// renormalises in the CPU's order. Softmax sums use a fixed butterfly, so
// probabilities can differ from broker/router.c by f32 rounding, never the
// order of distinct values.
#include "kernels/cuda/dense_gemv.cuh"
#include "kernels/cuda/dense_route.cuh"

// A warp per token; p: this warp's n_experts floats of shared memory.
__global__ void __launch_bounds__(MB_ROUTE_WARPS * 32)
mb_kcuda_route_topk_kernel(const float *__restrict__ logits, uint32_t n, uint32_t n_experts, uint32_t top_k,
                           int renorm, int32_t *__restrict__ ids, float *__restrict__ gate)
{
    mb_pdl_enter();
    extern __shared__ float mb_route_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t t = (size_t)blockIdx.x * MB_ROUTE_WARPS + warp;
    if (t >= n) return; // whole warps leave; no block-wide sync below
    mb_route_row(logits + t * n_experts, mb_route_smem + (size_t)warp * n_experts, (int)n_experts, (int)top_k, renorm,
                 ids + t * top_k, gate + t * top_k, lane);
}

// The router GEMV and the routing in one launch: each block computes one
// expert's logit for every token with the GEMV's own block body (so the
// logits are mb_kcuda_linear's, bit for bit); the last block to finish,
// found by a counter, routes every token. done returns to 0 for the next
// launch.
// NORM: the input is RMSNorm(x) (mb_lin_norm), for mb_kcuda_router_topk_norm.
// NT: 1 for one token (one accumulator a block), else MB_LIN_NT.
// PRE (one token): the weights loaded before the wait (mb_dense_preload).
template <typename W, bool VEC, bool NORM, int NT, bool PRE>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_router_topk_kernel(const W *__restrict__ w, uint32_t ne, uint32_t k,
                                const float *__restrict__ x, size_t ldx, uint32_t n, float *logits,
                                uint32_t top_k, int renorm, int32_t *__restrict__ ids,
                                float *__restrict__ gate, unsigned *done, const mb_lin_norm nrm,
                                const mb_kcuda_route_local loc)
{
    if constexpr (!PRE) mb_pdl_enter();
    extern __shared__ float mb_route_smem[];
    // NORM (one token): the normalised row is written after the block
    // counts itself done, by the last block after it routes.
    float scale[NT];
    mb_lin_gemv_block<W, 1, VEC, NORM, NT, PRE>(w, ne, k, x, ldx, n, logits, ne, nullptr, 0, nrm,
                                                scale);
    if (!mb_route_last_block(done)) { // the last routes every token from all blocks' logits
        if constexpr (NORM) mb_lin_norm_store_xn(x, ldx, (int)n, k, nrm, scale);
        return;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *p = mb_route_smem + (size_t)warp * ne;
    for (uint32_t t = warp; t < n; t += MB_LIN_GEMV_WARPS) {
        // Through L2 (__ldcg): other blocks wrote these.
        for (uint32_t e = lane; e < ne; e += 32)
            p[e] = __ldcg(logits + (size_t)t * ne + e);
        __syncwarp();
        mb_route_row(p, p, (int)ne, (int)top_k, renorm, ids + (size_t)t * top_k,
                     gate + (size_t)t * top_k, lane, loc.pairs ? &loc : nullptr, t);
        __syncwarp();
    }
    if (loc.stamp) {
        __syncthreads(); // every token routed
        if (threadIdx.x == 0) *loc.stamp = mb_dense_globaltimer();
    }
    if (threadIdx.x == 0) *done = 0;
    if constexpr (NORM) mb_lin_norm_store_xn(x, ldx, (int)n, k, nrm, scale);
}

extern "C" int mb_kcuda_route_topk(void *stream, const float *logits, uint32_t n, uint32_t n_experts, uint32_t top_k,
                                   int renorm, int32_t *ids, float *gate)
{
    if (!logits || !ids || !gate || n == 0 || n_experts == 0 || n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 ||
        top_k > MB_ROUTE_MAX_K || top_k > n_experts)
        return (int)cudaErrorInvalidValue;
    const size_t smem = (size_t)MB_ROUTE_WARPS * n_experts * sizeof(float);
    const unsigned blocks = (unsigned)mb_dense_cdiv(n, MB_ROUTE_WARPS);
    mb_dense_launch(mb_kcuda_route_topk_kernel, blocks, MB_ROUTE_WARPS * 32, smem,
                    mb_dense_stream(stream), logits, n, n_experts, top_k, renorm, ids, gate);
    return mb_dense_launched();
}

// The fused router's launch (nrm: the norm folded in, one token; or nullptr).
static int mb_router_topk_launch(cudaStream_t s, int wdtype, const void *w, uint32_t ne, uint32_t k,
                                 const float *x, size_t ldx, uint32_t n, float *logits,
                                 uint32_t top_k, int renorm, int32_t *ids, float *gate,
                                 unsigned *done, const mb_lin_norm *nrm,
                                 const mb_kcuda_route_local *loc)
{
    const size_t smem = (size_t)MB_LIN_GEMV_WARPS * ne * sizeof(float);
    const mb_lin_norm none = {};
    const mb_kcuda_route_local no_loc = {};
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        const W *wt = (const W *)w;
        const bool vec = mb_lin_vec_ok<W>(k, ldx, w, x, nrm);
        const bool pre = vec && n == 1 && mb_dense_preload('r');
        mb_dense_by_flags(vec, nrm != nullptr, [&](auto v, auto nm) {
            constexpr bool VEC = decltype(v)::value, NORM = decltype(nm)::value;
            const auto go = [&](auto nt, auto p) {
                mb_dense_launch(mb_kcuda_router_topk_kernel<W, VEC, NORM, decltype(nt)::value,
                                                            decltype(p)::value>,
                                ne, MB_LIN_GEMV_THREADS, smem, s, wt, ne, k, x, ldx, n, logits,
                                top_k, renorm, ids, gate, done, nrm ? *nrm : none,
                                loc ? *loc : no_loc);
            };
            using one = std::integral_constant<int, 1>;
            if constexpr (VEC) {
                if (pre) {
                    go(one{}, std::true_type{});
                    return;
                }
            }
            if (n == 1) // one accumulator a block
                go(one{}, std::false_type{});
            else
                go(std::integral_constant<int, MB_LIN_NT>{}, std::false_type{});
        });
        return mb_dense_launched();
    });
}

extern "C" int mb_kcuda_router_topk(void *stream, int wdtype, const void *w, uint32_t n_experts, uint32_t k,
                                    const float *x, size_t ldx, uint32_t n, float *logits, uint32_t top_k, int renorm,
                                    int32_t *ids, float *gate, unsigned *done)
{
    if (!w || !x || !logits || !ids || !gate || !done || n == 0 || k == 0 || ldx < k || n_experts == 0 ||
        n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 || top_k > MB_ROUTE_MAX_K || top_k > n_experts)
        return (int)cudaErrorInvalidValue;
    // Where mb_kcuda_linear would not take the one-row SIMT GEMV (more tokens
    // than a GEMV pass, or bf16 rows enough for its tensor-core GEMV), the
    // two launches it replaces, so the results stay theirs.
    const bool mma = wdtype == MB_KCUDA_BF16 && n >= 2 && n_experts >= MB_LIN_MMA_GEMV_MIN_M;
    if (n > MB_LIN_GEMV_MAX_N || mma || n_experts >= 2048) {
        int e = mb_kcuda_linear(stream, wdtype, w, n_experts, k, x, ldx, n, logits, n_experts, NULL, 0);
        return e ? e : mb_kcuda_route_topk(stream, logits, n, n_experts, top_k, renorm, ids, gate);
    }
    return mb_router_topk_launch(mb_dense_stream(stream), wdtype, w, n_experts, k, x, ldx, n,
                                 logits, top_k, renorm, ids, gate, done, nullptr, nullptr);
}

extern "C" int mb_kcuda_router_topk_norm_local(void *stream, int wdtype, const void *w,
                                               uint32_t n_experts, uint32_t k,
                                               const mb_kcuda_norm_in *in, float *logits,
                                               uint32_t top_k, int renorm, int32_t *ids,
                                               float *gate, unsigned *done,
                                               const mb_kcuda_route_local *loc)
{
    if (!w || !in || !in->x || !in->w || !mb_dense_wdtype_ok(in->xn2_dtype) || !logits || !ids ||
        !gate || !done || k == 0 || n_experts == 0 || n_experts > MB_ROUTE_MAX_EXPERTS ||
        top_k == 0 || top_k > MB_ROUTE_MAX_K || top_k > n_experts ||
        (loc && (!loc->slot_of || !loc->counts || !loc->pairs)))
        return (int)cudaErrorInvalidValue;
    const mb_lin_norm nrm = {in->a, in->w, in->eps, in->xn, in->xn2, in->xn2_dtype};
    return mb_router_topk_launch(mb_dense_stream(stream), wdtype, w, n_experts, k, in->x, k, 1,
                                 logits, top_k, renorm, ids, gate, done, &nrm, loc);
}

extern "C" int mb_kcuda_router_topk_norm(void *stream, int wdtype, const void *w,
                                         uint32_t n_experts, uint32_t k, const mb_kcuda_norm_in *in,
                                         float *logits, uint32_t top_k, int renorm, int32_t *ids,
                                         float *gate, unsigned *done)
{
    return mb_kcuda_router_topk_norm_local(stream, wdtype, w, n_experts, k, in, logits, top_k,
                                           renorm, ids, gate, done, NULL);
}

// One thread per (token, choice): the pair the expert kernels read.
__global__ void mb_kcuda_local_pairs_kernel(const int32_t *__restrict__ ids, const float *__restrict__ gate,
                                            uint32_t n, uint32_t top_k, const int32_t *__restrict__ slot_of,
                                            uint16_t *__restrict__ counts, uint2 *__restrict__ pairs,
                                            uint32_t *__restrict__ routed)
{
    mb_pdl_enter();
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) counts[i] = (uint16_t)top_k;
    if (i < n * top_k) mb_local_pair(i, ids[i], gate[i], slot_of, pairs, routed);
}

extern "C" int mb_kcuda_local_pairs(void *stream, const int32_t *ids, const float *gate, uint32_t n, uint32_t top_k,
                                    const int32_t *slot_of, uint16_t *counts, void *pairs, uint32_t *routed)
{
    if (!ids || !gate || !slot_of || !counts || !pairs || n == 0 || top_k == 0 || top_k > MB_ROUTE_MAX_K)
        return (int)cudaErrorInvalidValue;
    const uint32_t total = n * top_k, threads = 128;
    mb_dense_launch(mb_kcuda_local_pairs_kernel, (total + threads - 1) / threads, threads, 0,
                    mb_dense_stream(stream), ids, gate, n, top_k, slot_of, counts, (uint2 *)pairs,
                    routed);
    return mb_dense_launched();
}
