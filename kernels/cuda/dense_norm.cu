// Row-wise ops at the edges of a layer: the embedding gather and RMSNorm
// (dense.h). Both are bandwidth-bound: plain coalesced loads.
#include "kernels/cuda/dense_internal.cuh"

#define MB_NORM_THREADS 256

// x[t][0..d) = table[ids[t]][0..d) widened; one block per token. Where
// rows are 16-byte aligned, a thread loads up to MB_EMBED_BATCH 16-byte
// chunks of the row at once, then widens and stores them: a row of a few
// thousand is one memory trip (the element loop, waiting on one load after
// another, took 4.4 us for one token on the H100).
#define MB_EMBED_BATCH 4
template <typename T>
__global__ void __launch_bounds__(MB_NORM_THREADS)
    mb_kcuda_embed_kernel(const T *__restrict__ table, uint32_t d, const int32_t *__restrict__ ids,
                          float *__restrict__ x)
{
    mb_pdl_enter();
    constexpr int V = mb_vec16<T>::n;
    const T *row = table + (size_t)ids[blockIdx.x] * d;
    float *out = x + (size_t)blockIdx.x * d;
    if (d % V == 0 && ((uintptr_t)row & 15) == 0 && ((uintptr_t)out & 15) == 0) {
        const uint32_t chunks = d / V;
        for (uint32_t c0 = 0; c0 < chunks; c0 += MB_EMBED_BATCH * MB_NORM_THREADS) {
            float f[MB_EMBED_BATCH][V];
#pragma unroll
            for (int b = 0; b < MB_EMBED_BATCH; b++) {
                const uint32_t c = c0 + b * MB_NORM_THREADS + threadIdx.x;
                if (c < chunks) mb_loadv<T, V, true>(row + (size_t)c * V, f[b]);
            }
#pragma unroll
            for (int b = 0; b < MB_EMBED_BATCH; b++) {
                const uint32_t c = c0 + b * MB_NORM_THREADS + threadIdx.x;
                if (c >= chunks) break;
#pragma unroll
                for (int i = 0; i < V; i += 4)
                    *reinterpret_cast<float4 *>(out + (size_t)c * V + i) =
                        make_float4(f[b][i], f[b][i + 1], f[b][i + 2], f[b][i + 3]);
            }
        }
        return;
    }
    for (uint32_t i = threadIdx.x; i < d; i += MB_NORM_THREADS)
        out[i] = mb_to_f32<T>(row[i]);
}

extern "C" int mb_kcuda_embed(void *stream, int wdtype, const void *table, uint32_t d,
                              const int32_t *ids, uint32_t n, float *x)
{
    if (!table || !ids || !x || d == 0 || n == 0 || n > INT32_MAX)
        return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        mb_dense_launch(mb_kcuda_embed_kernel<W>, n, MB_NORM_THREADS, 0, s, (const W *)table, d,
                        ids, x);
        return mb_dense_launched();
    });
}

// TPR threads per row (a warp for head-sized rows, the whole block for
// d_model rows). The mean of squares is accumulated in double, as
// broker/norm.c does: each square of an f32 is exact in double, so the
// rounded mean almost always equals the CPU's bit for bit whatever the
// summation order, and the rest is the same f32 arithmetic. The order is
// fixed (lane-strided, then a butterfly), so runs are reproducible.
template <int TPR>
__global__ void __launch_bounds__(MB_NORM_THREADS)
    mb_kcuda_rmsnorm_kernel(float *y, size_t ldy, void *y2, int y2dt, size_t ldy2, float *x,
                            size_t ldx, const float *__restrict__ a, size_t lda, uint32_t rows,
                            uint32_t d, const float *__restrict__ w, float eps)
{
    mb_pdl_enter();
    constexpr int RPB = MB_NORM_THREADS / TPR; // rows per block
    const int sub = threadIdx.x % TPR;
    const size_t r = (size_t)blockIdx.x * RPB + threadIdx.x / TPR;
    // No early return: TPR == MB_NORM_THREADS syncs the block below.
    const bool live = r < rows;
    float *xr = x + (live ? r : 0) * ldx;
    if (a && live) { // the residual add folded in: x += a, stored, then normalised
        const float *ar = a + r * lda;
        for (uint32_t i = sub; i < d; i += TPR)
            xr[i] += ar[i];
    }
    double ss = 0.0;
    if (live)
        for (uint32_t i = sub; i < d; i += TPR)
            ss += (double)xr[i] * (double)xr[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if constexpr (TPR > 32) {
        __shared__ double part[TPR / 32];
        if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
        __syncthreads();
        ss = 0.0;
#pragma unroll
        for (int i = 0; i < TPR / 32; i++)
            ss += part[i];
    }
    if (!live) return;
    const float var = (float)(ss / (double)d);
    const float scale = 1.0f / sqrtf(var + eps);
    // y may be x: each element is read above and here by the same thread
    // before it writes it.
    float *yr = y + r * ldy;
    if (y2) { // a second copy (mapped host memory: posted writes, no copy on the stream)
        for (uint32_t i = sub; i < d; i += TPR) {
            const float v = w[i] * (xr[i] * scale);
            yr[i] = v;
            mb_store_as(y2, y2dt, r * ldy2 + i, v);
        }
        return;
    }
    for (uint32_t i = sub; i < d; i += TPR)
        yr[i] = w[i] * (xr[i] * scale);
}

static int mb_rmsnorm_launch(void *stream, float *y, size_t ldy, void *y2, int y2dt, size_t ldy2,
                             float *x, size_t ldx, const float *a, size_t lda, uint32_t rows,
                             uint32_t d, const float *w, float eps)
{
    if (!y || !x || !w || rows == 0 || d == 0 || ldx < d || ldy < d || (a && lda < d) ||
        (y2 && (ldy2 < d || !mb_dense_wdtype_ok(y2dt))))
        return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    if (d <= 512) {
        constexpr int rpb = MB_NORM_THREADS / 32;
        const unsigned blocks = (unsigned)mb_dense_cdiv(rows, rpb);
        mb_dense_launch(mb_kcuda_rmsnorm_kernel<32>, blocks, MB_NORM_THREADS, 0, s, y, ldy, y2,
                        y2dt, ldy2, x, ldx, a, lda, rows, d, w, eps);
    } else {
        mb_dense_launch(mb_kcuda_rmsnorm_kernel<MB_NORM_THREADS>, rows, MB_NORM_THREADS, 0, s, y,
                        ldy, y2, y2dt, ldy2, x, ldx, a, lda, rows, d, w, eps);
    }
    return mb_dense_launched();
}

extern "C" int mb_kcuda_rmsnorm(void *stream, float *y, size_t ldy, const float *x, size_t ldx, uint32_t rows,
                                uint32_t d, const float *w, float eps)
{
    // Without an addend the kernel never writes x.
    return mb_rmsnorm_launch(stream, y, ldy, NULL, 0, 0, (float *)x, ldx, NULL, 0, rows, d, w, eps);
}

extern "C" int mb_kcuda_rmsnorm_copy(void *stream, float *y, size_t ldy, void *y2, int y2_dtype,
                                     size_t ldy2, const float *x, size_t ldx, uint32_t rows,
                                     uint32_t d, const float *w, float eps)
{
    if (!y2) return (int)cudaErrorInvalidValue;
    return mb_rmsnorm_launch(stream, y, ldy, y2, y2_dtype, ldy2, (float *)x, ldx, NULL, 0, rows, d,
                             w, eps);
}

extern "C" int mb_kcuda_add_rmsnorm(void *stream, float *y, size_t ldy, float *x, size_t ldx, const float *a,
                                    size_t lda, uint32_t rows, uint32_t d, const float *w, float eps)
{
    if (!a) return (int)cudaErrorInvalidValue;
    return mb_rmsnorm_launch(stream, y, ldy, NULL, 0, 0, x, ldx, a, lda, rows, d, w, eps);
}
