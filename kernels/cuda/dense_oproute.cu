// o_proj and the router in one launch (dense.h mb_kcuda_oproj_router; issue
// 9, round 24). The router's kernel after o_proj costs a kernel boundary
// and its own dependent trips (the residual's read for the norm, the
// logits, the last block's counter) for half a megabyte of weights. Here
// each block of the staged o_proj GEMV, once its rows of the new residual
// are written, dots them (times the norm's weights) with the router's
// columns for those rows, which it loaded before its wait, and leaves the
// partial logits and its rows' squares in part. The norm's factor is a
// scalar over the whole row, so it applies after the sums: the last block
// to finish adds the partials in block order, scales them, routes (as
// mb_kcuda_router_topk_norm_local does, local pairs and stamp included)
// and writes the normalised row for the experts.
#include "kernels/cuda/dense_gemv.cuh"
#include "kernels/cuda/dense_route.cuh"

// Dynamic shared memory: the staged Wo rows (R x k weights), then the
// router's columns for those rows as floats [R][ne + 1] (an expert a
// thread in the dots, so a row's reads are consecutive; the extra column
// spreads an expert's R values over the banks when they are stored);
// after the GEMV the last block reuses the front for the logits (ne
// floats). part: the partial logits [blocks][ne], then from an even float
// the blocks' sums of squares (double).
static size_t mb_or_smem(uint32_t k, uint32_t ne, int rows, size_t wsize)
{
    return (size_t)rows * k * wsize + (size_t)rows * (ne + 1) * sizeof(float);
}

template <typename W, int R>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_oproj_router_kernel(const W *__restrict__ wo, uint32_t m, uint32_t k,
                                 const float *__restrict__ att, const float *bias,
                                 const W *__restrict__ wr, uint32_t ne, const mb_lin_norm nrm,
                                 float *x, float *part, float *logits, uint32_t top_k, int renorm,
                                 int32_t *__restrict__ ids, float *__restrict__ gate,
                                 unsigned *done, const mb_kcuda_route_local loc)
{
    extern __shared__ uint4 mb_or_dyn[];
    __shared__ float ys[R], sq[R];
    __shared__ double ssw[MB_LIN_GEMV_WARPS];
    __shared__ int last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t row0 = blockIdx.x * R;
    float *cols = reinterpret_cast<float *>(reinterpret_cast<W *>(mb_or_dyn) + (size_t)R * k);
    // The router's columns row0 .. row0 + R (weights: before the wait,
    // while the kernels before this one run); rows past m are 0.
    // Consecutive threads read an expert's R consecutive weights.
    const uint32_t ldc = ne + 1;
    for (uint32_t i = tid; i < (uint32_t)R * ne; i += MB_LIN_GEMV_THREADS) {
        const uint32_t e = i / R, r = i % R;
        cols[r * ldc + e] = row0 + r < m ? mb_to_f32<W>(wr[(size_t)e * m + row0 + r]) : 0.0f;
    }
    // o_proj, accumulating into x (waits for the kernel before it).
    float unused[1];
    mb_lin_gemv_block<W, R, true, false, 1, false, true>(wo, m, k, att, k, 1, x, m, bias, 1, {},
                                                         unused);
    // Thread r stored row row0 + r of x itself: its own write, read back.
    if (tid < R) {
        const bool in = row0 + tid < m;
        const float y = in ? x[row0 + tid] : 0.0f;
        ys[tid] = in ? nrm.nw[row0 + tid] * y : 0.0f;
        sq[tid] = y;
    }
    __syncthreads(); // ys, sq and cols are in
    double *ssp = reinterpret_cast<double *>(part + (((size_t)gridDim.x * ne + 1) & ~(size_t)1));
    if (tid == 0) {
        double s = 0.0;
        for (int r = 0; r < R; r++)
            s += (double)sq[r] * (double)sq[r];
        ssp[blockIdx.x] = s;
    }
    for (uint32_t e = tid; e < ne; e += MB_LIN_GEMV_THREADS) {
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
            s += cols[r * ldc + e] * ys[r];
        part[(size_t)blockIdx.x * ne + e] = s;
    }
    __threadfence(); // this block's partials are visible device-wide before it counts itself done
    __syncthreads();
    if (tid == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence(); // every other block's partials (and rows of x) are visible to the loads below

    // The squares in block order: a thread's blocks, then a fixed butterfly
    // and the warps in order.
    double ss = 0.0;
    for (uint32_t b = tid; b < gridDim.x; b += MB_LIN_GEMV_THREADS)
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

    // Logits: expert e's partials in block order (loads in flight four at a time).
    float *p = reinterpret_cast<float *>(mb_or_dyn);
    for (uint32_t e = tid; e < ne; e += MB_LIN_GEMV_THREADS) {
        float s = 0.0f;
#pragma unroll 4
        for (uint32_t b = 0; b < gridDim.x; b++)
            s += __ldcg(part + (size_t)b * ne + e);
        const float l = s * scale;
        p[e] = l;
        logits[e] = l;
    }
    __syncthreads();
    if (warp == 0) {
        mb_route_row(p, p, (int)ne, (int)top_k, renorm, ids, gate, lane, loc.pairs ? &loc : nullptr,
                     0);
    } else if (nrm.xn) { // the normalised row, as mb_lin_norm_store_xn computes it
        for (uint32_t j = (uint32_t)(tid - 32); j < m; j += MB_LIN_GEMV_THREADS - 32) {
            const float v = nrm.nw[j] * (__ldcg(x + j) * scale);
            nrm.xn[j] = v;
            if (nrm.xn2) nrm.xn2[j] = v;
        }
    }
    __syncthreads(); // routed and normalised
    if (tid == 0) {
        if (loc.stamp) *loc.stamp = mb_dense_globaltimer();
        *done = 0;
    }
}

// The rows a block for these shapes, or 0 where the kernel does not take them.
static int mb_or_rows(uint32_t m, uint32_t k, uint32_t ne, size_t wsize)
{
    if (ne == 0 || ne > MB_ROUTE_MAX_EXPERTS || k % (16 / wsize) != 0) return 0;
    const int rows = mb_lin_staged(m, k, wsize, false);
    if (rows == 0) return 0;
    return mb_or_smem(k, ne, rows, wsize) <= mb_lin_stage_max() ? rows : 0;
}

static size_t mb_or_wsize(int wdtype)
{
    return wdtype == MB_KCUDA_F32 ? 4 : wdtype == MB_KCUDA_F16 || wdtype == MB_KCUDA_BF16 ? 2 : 0;
}

extern "C" int mb_kcuda_oproj_router_ok(int wdtype, uint32_t m, uint32_t k, uint32_t n_experts)
{
    const size_t ws = mb_or_wsize(wdtype);
    return ws && m && k && mb_or_rows(m, k, n_experts, ws) != 0;
}

extern "C" size_t mb_kcuda_oproj_router_part_bytes(uint32_t n_experts)
{
    const size_t blocks = (size_t)mb_dense_sms();
    return blocks * n_experts * sizeof(float) + 8 + blocks * sizeof(double);
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
                                     float eps, float *xn, float *xn2, float *logits,
                                     uint32_t top_k, int renorm, int32_t *ids, float *gate,
                                     unsigned *done, void *part, const mb_kcuda_route_local *loc)
{
    if (!wo || !att || !x || !wr || !norm_w || !logits || !ids || !gate || !done || !part ||
        m == 0 || k == 0 || n_experts == 0 || n_experts > MB_ROUTE_MAX_EXPERTS || top_k == 0 ||
        top_k > MB_ROUTE_MAX_K || top_k > n_experts)
        return (int)cudaErrorInvalidValue;
    const size_t ws = mb_or_wsize(wdtype);
    if (!ws) return (int)cudaErrorInvalidValue;
    const int rows = mb_or_rows(m, k, n_experts, ws);
    if (rows == 0) return (int)cudaErrorNotSupported;
    const auto al = [](const void *p) { return ((uintptr_t)p & 15) == 0; };
    if (!al(wo) || !al(att)) return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    const mb_lin_norm nrm = {nullptr, norm_w, eps, xn, xn2};
    const mb_kcuda_route_local no_loc = {};
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        const auto go = [&](auto r) {
            mb_or_launch<W, decltype(r)::value>(s, (const W *)wo, m, k, att, bias, (const W *)wr,
                                                n_experts, nrm, x, (float *)part, logits, top_k,
                                                renorm, ids, gate, done, loc ? *loc : no_loc);
        };
        if (rows == 16)
            go(std::integral_constant<int, 16>{});
        else if (rows == 8)
            go(std::integral_constant<int, 8>{});
        else
            go(std::integral_constant<int, 4>{});
        return mb_dense_launched();
    });
}
