// o_proj and the router in one launch (dense.h mb_kcuda_oproj_router; issue
// 9, rounds 24 and 25). The router's kernel after o_proj costs a kernel
// boundary and its own dependent trips (the residual's read for the norm,
// the logits, the last block's counter) for half a megabyte of weights.
// Here each block of the staged o_proj GEMV, once its rows of the new
// residual are written, dots them (times the norm's weights) with the
// router's columns for those rows (the first chunk of experts loaded
// before its wait, into registers) and leaves the partial logits and its
// rows' squares in part. The norm's factor is a
// scalar over the whole row, so it applies after the sums: the last block
// to finish adds the partials in block order, scales them, routes (as
// mb_kcuda_router_topk_norm_local does, local pairs and stamp included)
// and writes the normalised row for the experts.
#include "kernels/cuda/dense_gemv.cuh"
#include "kernels/cuda/dense_route.cuh"

// Dynamic shared memory: the staged Wo rows (R x k weights); after the
// GEMV the last block reuses the front for the logits (ne floats).
// part: the partial logits expert by expert, [ne][ldp] with ldp the
// blocks rounded up to 4 (a row read as float4), then the blocks' sums of
// squares (double).
static size_t mb_or_smem(uint32_t k, uint32_t ne, int rows, size_t wsize)
{
    const size_t staged = (size_t)rows * k * wsize, logits = (size_t)ne * sizeof(float);
    return staged > logits ? staged : logits;
}

static __host__ __device__ __forceinline__ uint32_t mb_or_ldp(uint32_t blocks)
{
    return (blocks + 3u) & ~3u;
}

#define MB_OR_UM 16 // router weights a thread holds for a chunk of experts

template <typename W, int R>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_oproj_router_kernel(const W *__restrict__ wo, uint32_t m, uint32_t k,
                                 const float *__restrict__ att, const float *bias,
                                 const W *__restrict__ wr, uint32_t ne, const mb_lin_norm nrm,
                                 float *x, float *part, float *logits, uint32_t top_k, int renorm,
                                 int32_t *__restrict__ ids, float *__restrict__ gate,
                                 unsigned *done, const mb_kcuda_route_local loc)
{
    constexpr int T = MB_LIN_GEMV_THREADS, EPI = T / R, EC = MB_OR_UM * EPI;
    static_assert(T % R == 0 && 32 % R == 0, "a row group of R lanes inside a warp");
    extern __shared__ uint4 mb_or_dyn[];
    __shared__ float ys[R], sq[R];
    __shared__ double ssw[MB_LIN_GEMV_WARPS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // Thread tid holds the router's weight of row row0 + r for experts
    // eg, eg + EPI, ... of each chunk of EC experts: R lanes a group of
    // experts, so the dot over the block's rows is a shuffle within them.
    const int r = tid % R, eg = tid / R;
    const uint32_t row0 = blockIdx.x * R, ldp = mb_or_ldp(gridDim.x);
    const bool rin = row0 + (uint32_t)r < m;
    const auto load_chunk = [&](uint32_t base, float(&w)[MB_OR_UM]) {
#pragma unroll
        for (int u = 0; u < MB_OR_UM; u++) {
            const uint32_t e = base + (uint32_t)(eg + u * EPI);
            w[u] = rin && e < ne ? mb_to_f32<W>(wr[(size_t)e * m + row0 + r]) : 0.0f;
        }
    };
    // The first chunk's weights are loaded before the wait (in registers,
    // all in flight while Wo's rows stream into shared memory).
    float w0[MB_OR_UM];
    load_chunk(0, w0);
    // o_proj, accumulating into x (waits for the kernel before it).
    float unused[1];
    mb_lin_gemv_block<W, R, true, false, 1, false, true>(wo, m, k, att, k, 1, x, m, bias, 1, {},
                                                         unused);
    // Thread r stored row row0 + r of x itself: its own write, read back.
    if (tid < R) {
        const float y = rin ? x[row0 + tid] : 0.0f;
        ys[tid] = rin ? nrm.nw[row0 + tid] * y : 0.0f;
        sq[tid] = y;
    }
    __syncthreads(); // ys and sq are in
    double *ssp = reinterpret_cast<double *>(part + (size_t)ne * ldp);
    if (tid == 0) {
        double s = 0.0;
        for (int i = 0; i < R; i++)
            s += (double)sq[i] * (double)sq[i];
        ssp[blockIdx.x] = s;
    }
    // Partial logits: products over the group's R lanes by a fixed
    // butterfly; its first lane stores the sum.
    const float yr = ys[r];
    const auto dot_chunk = [&](uint32_t base, const float(&w)[MB_OR_UM]) {
#pragma unroll
        for (int u = 0; u < MB_OR_UM; u++) {
            float v = w[u] * yr;
#pragma unroll
            for (int o = R / 2; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
            const uint32_t e = base + (uint32_t)(eg + u * EPI);
            if (r == 0 && e < ne) part[(size_t)e * ldp + blockIdx.x] = v;
        }
    };
    dot_chunk(0, w0);
    for (uint32_t base = EC; base < ne; base += EC) { // more experts than a chunk: after the wait
        float w[MB_OR_UM];
        load_chunk(base, w);
        dot_chunk(base, w);
    }
    if (!mb_route_last_block(done)) return; // the last sums the partials (and reads x's rows)

    // The squares in block order: a thread's blocks, then a fixed butterfly
    // and the warps in order.
    double ss = 0.0;
    for (uint32_t b = tid; b < gridDim.x; b += T)
        ss += __ldcg(ssp + b);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) ssw[warp] = ss;
    __syncthreads();
    double t = 0.0;
#pragma unroll
    for (int wi = 0; wi < MB_LIN_GEMV_WARPS; wi++)
        t += ssw[wi];
    const float scale = 1.0f / sqrtf((float)(t / (double)m) + nrm.eps);

    // Logits: a thread an expert, its row of partials in block order,
    // sixteen float4 loads in flight at a time.
    float *p = reinterpret_cast<float *>(mb_or_dyn);
    const uint32_t G = gridDim.x, n4 = ldp / 4;
    for (uint32_t e = tid; e < ne; e += T) {
        const float4 *row = reinterpret_cast<const float4 *>(part + (size_t)e * ldp);
        float s = 0.0f;
        for (uint32_t c0 = 0; c0 < n4; c0 += 16) {
            float4 v[16];
#pragma unroll
            for (int u = 0; u < 16; u++)
                if (c0 + u < n4) v[u] = __ldcg(row + c0 + u);
#pragma unroll
            for (int u = 0; u < 16; u++) {
                if (c0 + u >= n4) break;
                const uint32_t b = 4 * (c0 + u); // b < G: ldp - 4 < G
                s += v[u].x;
                if (b + 1 < G) s += v[u].y;
                if (b + 2 < G) s += v[u].z;
                if (b + 3 < G) s += v[u].w;
            }
        }
        const float l = s * scale;
        p[e] = l;
        logits[e] = l;
    }
    __syncthreads();
    if (warp == 0) { // a copy here: taking the parameter's address copies it in every block
        const mb_kcuda_route_local lc = loc;
        mb_route_row(p, p, (int)ne, (int)top_k, renorm, ids, gate, lane, lc.pairs ? &lc : nullptr,
                     0);
    } else if (nrm.xn) { // the normalised row, as mb_lin_norm_store_xn computes it
        const auto al = [](const void *q) { return ((uintptr_t)q & 15) == 0; };
        const uint32_t t0 = (uint32_t)(tid - 32), step = T - 32;
        if (m % 4 == 0 && al(x) && al(nrm.nw) && al(nrm.xn) && (!nrm.xn2 || al(nrm.xn2))) {
#pragma unroll 4
            for (uint32_t j = t0; j < m / 4; j += step) {
                const float4 h = __ldcg(reinterpret_cast<const float4 *>(x) + j);
                const float4 g = reinterpret_cast<const float4 *>(nrm.nw)[j];
                const float4 v = make_float4(g.x * (h.x * scale), g.y * (h.y * scale),
                                             g.z * (h.z * scale), g.w * (h.w * scale));
                reinterpret_cast<float4 *>(nrm.xn)[j] = v;
                if (nrm.xn2) mb_store4_as(nrm.xn2, nrm.xn2_dt, j, v);
            }
        } else {
            for (uint32_t j = t0; j < m; j += step) {
                const float v = nrm.nw[j] * (__ldcg(x + j) * scale);
                nrm.xn[j] = v;
                if (nrm.xn2) mb_store_as(nrm.xn2, nrm.xn2_dt, j, v);
            }
        }
    }
    __syncthreads(); // routed and normalised
    if (tid == 0) {
        if (loc.stamp) *loc.stamp = mb_dense_globaltimer();
        *done = 0;
    }
}

// The rows a block for these shapes (the staged o_proj's: one of
// MB_LIN_STAGE_ROWS, at most a block an SM, which part is sized for), or 0
// where the kernel does not take them.
static int mb_or_rows(uint32_t m, uint32_t k, uint32_t ne, size_t wsize)
{
    if (ne == 0 || ne > MB_ROUTE_MAX_EXPERTS || k % (16 / wsize) != 0) return 0;
    const int rows = mb_lin_staged(m, k, wsize);
    return rows && mb_or_smem(k, ne, rows, wsize) <= mb_lin_stage_max() ? rows : 0;
}

extern "C" int mb_kcuda_oproj_router_ok(int wdtype, uint32_t m, uint32_t k, uint32_t n_experts)
{
    const size_t ws = mb_dense_wsize(wdtype);
    return ws && m && k && mb_or_rows(m, k, n_experts, ws) != 0;
}

extern "C" size_t mb_kcuda_oproj_router_part_bytes(uint32_t n_experts)
{
    const uint32_t blocks = (uint32_t)mb_dense_sms();
    return (size_t)n_experts * mb_or_ldp(blocks) * sizeof(float) + blocks * sizeof(double);
}

template <typename W, int R>
static void mb_or_launch(cudaStream_t s, const W *wo, uint32_t m, uint32_t k, const float *att,
                         const float *bias, const W *wr, uint32_t ne, const mb_lin_norm &nrm,
                         float *x, float *part, float *logits, uint32_t top_k, int renorm,
                         int32_t *ids, float *gate, unsigned *done, const mb_kcuda_route_local &loc)
{
    constexpr auto kern = mb_kcuda_oproj_router_kernel<W, R>;
    const size_t smem = mb_or_smem(k, ne, R, sizeof(W));
    if (mb_dense_opt_in<kern>(smem, mb_lin_stage_max()) != cudaSuccess)
        return; // the error stays for mb_dense_launched
    mb_dense_launch(kern, (unsigned)mb_dense_cdiv(m, R), MB_LIN_GEMV_THREADS, smem, s, wo, m, k,
                    att, bias, wr, ne, nrm, x, part, logits, top_k, renorm, ids, gate, done, loc);
}

extern "C" int mb_kcuda_oproj_router(void *stream, int wdtype, const void *wo, uint32_t m,
                                     uint32_t k, const float *att, const float *bias, float *x,
                                     const void *wr, uint32_t n_experts, const float *norm_w,
                                     float eps, float *xn, void *xn2, int xn2_dtype, float *logits,
                                     uint32_t top_k, int renorm, int32_t *ids, float *gate,
                                     unsigned *done, void *part, const mb_kcuda_route_local *loc)
{
    if (!wo || !att || !x || !wr || !norm_w || !mb_dense_wdtype_ok(xn2_dtype) || !logits || !ids ||
        !gate || !done || !part || m == 0 || k == 0 || n_experts == 0 ||
        n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 || top_k > MB_ROUTE_MAX_K ||
        top_k > n_experts)
        return (int)cudaErrorInvalidValue;
    const size_t ws = mb_dense_wsize(wdtype);
    if (!ws) return (int)cudaErrorInvalidValue;
    const int rows = mb_or_rows(m, k, n_experts, ws);
    if (rows == 0) return (int)cudaErrorNotSupported;
    const auto al = [](const void *p) { return ((uintptr_t)p & 15) == 0; };
    if (!al(wo) || !al(att) || !al(part) || (loc && (!loc->slot_of || !loc->counts || !loc->pairs)))
        return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    const mb_lin_norm nrm = {nullptr, norm_w, eps, xn, xn2, xn2_dtype};
    const mb_kcuda_route_local no_loc = {};
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        mb_lin_with_rows<MB_LIN_STAGE_ROWS>(rows, [&](auto r) {
            mb_or_launch<W, decltype(r)::value>(s, (const W *)wo, m, k, att, bias, (const W *)wr,
                                                n_experts, nrm, x, (float *)part, logits, top_k,
                                                renorm, ids, gate, done, loc ? *loc : no_loc);
        });
        return mb_dense_launched();
    });
}
