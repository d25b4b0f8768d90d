// Routing in one kernel (dense.h mb_kcuda_route_topk): a warp per token
// computes the softmax of its logits row into shared memory, then takes the
// top k by k rounds of a warp-wide arg-max (ties: the lower index), and
// renormalises in the CPU's order. Softmax sums use a fixed butterfly, so
// probabilities can differ from broker/router.c by f32 rounding, never the
// order of distinct values.
#include <climits>

#include "kernels/cuda/dense_gemv.cuh"

// Whether this block is the last of its grid to get here, counted on done
// (0 before the launch; the last block puts it back). What every block
// wrote before the call is visible to the last block's loads after it
// (through L2: __ldcg). Every thread of the block calls it.
static __device__ __forceinline__ bool mb_route_last_block(unsigned *done)
{
    __shared__ int last;
    __threadfence(); // this block's writes are visible device-wide before it counts itself done
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence(); // every other block's writes are visible to the loads that follow
    return true;
}

#define MB_ROUTE_WARPS 4
#define MB_ROUTE_MAX_EXPERTS 1024
#define MB_ROUTE_MAX_K 32

// Pair i (token i / top_k, choice i % top_k) of the routing table as the
// expert kernels read it: expert e's slot on this device and its gate g;
// routed (or nullptr) counts the choice.
static __device__ __forceinline__ void mb_local_pair(uint32_t i, int32_t e, float g,
                                                     const int32_t *slot_of, uint2 *pairs,
                                                     uint32_t *routed)
{
    pairs[i] = make_uint2((uint32_t)slot_of[e], __float_as_uint(g));
    if (routed) atomicAdd(&routed[e], 1u);
}

// One token's routing by one warp: row holds its n_experts logits, p is
// the warp's n_experts floats of shared memory (p may equal row: each lane
// reads an element before it writes it). ids_t and gate_t get top_k
// entries; with loc (or nullptr), token t's pairs for the experts on this
// device too (mb_local_pair's, from the lanes' own choices).
static __device__ __forceinline__ void mb_route_row(const float *row, float *p, int ne, int top_k,
                                                    int renorm, int32_t *__restrict__ ids_t,
                                                    float *__restrict__ gate_t, int lane,
                                                    const mb_kcuda_route_local *loc = nullptr,
                                                    uint32_t t = 0)
{
    float mx = -INFINITY;
    for (int e = lane; e < ne; e += 32)
        mx = fmaxf(mx, row[e]);
    mx = mb_warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < ne; e += 32) {
        const float v = expf(row[e] - mx);
        p[e] = v;
        sum += v;
    }
    sum = mb_warp_sum(sum);
    for (int e = lane; e < ne; e += 32)
        p[e] = p[e] / sum;
    __syncwarp();

    // Round j: the largest remaining probability, lowest index on ties;
    // lane j keeps it. Taken entries become -1 (probabilities are >= 0). A
    // NaN (a NaN or infinite logit makes the whole row NaN) ranks below
    // every probability and above a taken entry, so every round still
    // takes an untaken expert, the lowest NaN first, as broker/router.c
    // does; its gate stays NaN. The ranks are unsigned keys: a taken entry
    // 0, a NaN 1, a probability its bits + 2 (non-negative floats order as
    // their bits), so that from sm_80 two warp reductions (redux.sync) find
    // the round's winner where a butterfly of ten shuffles did.
    float my_g = 0.0f;
    int my_id = 0;
    for (int j = 0; j < top_k; j++) {
        unsigned bk = 0; // some lane finds an untaken entry: top_k <= ne
        int bi = INT_MAX;
        for (int e = lane; e < ne; e += 32) {
            const float v = p[e];
            const unsigned key = v < 0.0f ? 0u : v == v ? __float_as_uint(v) + 2u : 1u;
            if (key > bk) { // e ascends: a tie keeps the lower index
                bk = key;
                bi = e;
            }
        }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
        const unsigned mk = __reduce_max_sync(0xffffffffu, bk);
        bi = (int)__reduce_min_sync(0xffffffffu, bk == mk ? (unsigned)bi : 0xffffffffu);
        bk = mk;
#else
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned ok = __shfl_xor_sync(0xffffffffu, bk, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ok > bk || (ok == bk && oi < bi)) {
                bk = ok;
                bi = oi;
            }
        }
#endif
        if (lane == j) {
            my_g = bk == 1u ? NAN : __uint_as_float(bk - 2u);
            my_id = bi;
        }
        if (lane == 0) p[bi] = -1.0f;
        __syncwarp();
    }
    // The renormalising sum in slot order, as the CPU adds them.
    float ksum = 0.0f;
    for (int j = 0; j < top_k; j++)
        ksum += __shfl_sync(0xffffffffu, my_g, j);
    if (lane < top_k) {
        const float g = renorm ? my_g / ksum : my_g;
        ids_t[lane] = my_id;
        gate_t[lane] = g;
        if (loc) {
            if (lane == 0) loc->counts[t] = (uint16_t)top_k;
            mb_local_pair(t * (uint32_t)top_k + (uint32_t)lane, my_id, g, loc->slot_of,
                          reinterpret_cast<uint2 *>(loc->pairs), loc->routed);
        }
    }
}

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
    if (!w || !mb_lin_norm_in_ok(in) || !logits || !ids || !gate || !done || k == 0 ||
        n_experts == 0 || n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 ||
        top_k > MB_ROUTE_MAX_K || top_k > n_experts ||
        (loc && (!loc->slot_of || !loc->counts || !loc->pairs)))
        return (int)cudaErrorInvalidValue;
    const mb_lin_norm nrm = mb_lin_norm_of(in);
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
