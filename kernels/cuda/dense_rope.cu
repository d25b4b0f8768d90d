// Rotary embedding in place and the KV-cache store (dense.h): one thread per
// rotated pair or per stored element, grid-stride. The rotation uses
// round-to-nearest intrinsics so nvcc cannot contract it into FMAs: the
// result is then bit-identical to broker/rope.c.
#include "kernels/cuda/dense_internal.cuh"

#define MB_ROPE_THREADS 256

__global__ void __launch_bounds__(MB_ROPE_THREADS)
mb_kcuda_rope_kernel(float *__restrict__ x, size_t ldx, size_t pairs, uint32_t n_heads, uint32_t head_dim,
                     uint32_t pos0, const uint32_t *__restrict__ pos_dev, const float *__restrict__ cos,
                     const float *__restrict__ sin, int interleaved)
{
    mb_pdl_enter();
    const uint32_t half = head_dim / 2;
    if (pos_dev) pos0 = *pos_dev;
    for (size_t idx = (size_t)blockIdx.x * MB_ROPE_THREADS + threadIdx.x; idx < pairs;
         idx += (size_t)gridDim.x * MB_ROPE_THREADS) {
        const uint32_t i = (uint32_t)(idx % half);
        const size_t th = idx / half; // token * n_heads + head
        const uint32_t h = (uint32_t)(th % n_heads);
        const size_t t = th / n_heads;
        const size_t tab = (size_t)(pos0 + t) * half + i;
        const float c = cos[tab], s = sin[tab];
        float *xh = x + t * ldx + (size_t)h * head_dim;
        float *pa = interleaved ? xh + 2 * i : xh + i;
        float *pb = interleaved ? xh + 2 * i + 1 : xh + i + half;
        const float a = *pa, b = *pb;
        *pa = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        // rotate-half writes b*c + a*s, interleaved a*s + b*c: the same sum
        // in another order, which IEEE addition does not distinguish.
        *pb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}

static int mb_rope_launch(void *stream, float *x, size_t ldx, uint32_t n, uint32_t n_heads, uint32_t head_dim,
                          uint32_t pos0, const uint32_t *pos_dev, const float *cos, const float *sin, int interleaved)
{
    if (!x || !cos || !sin || n == 0 || n_heads == 0 || head_dim == 0 || (head_dim & 1u) ||
        ldx < (size_t)n_heads * head_dim)
        return (int)cudaErrorInvalidValue;
    const size_t pairs = (size_t)n * n_heads * (head_dim / 2);
    mb_dense_launch(mb_kcuda_rope_kernel, mb_dense_blocks(pairs, MB_ROPE_THREADS), MB_ROPE_THREADS,
                    0, mb_dense_stream(stream), x, ldx, pairs, n_heads, head_dim, pos0, pos_dev,
                    cos, sin, interleaved);
    return mb_dense_launched();
}

extern "C" int mb_kcuda_rope(void *stream, float *x, size_t ldx, uint32_t n, uint32_t n_heads, uint32_t head_dim,
                             uint32_t pos0, const float *cos, const float *sin, int interleaved)
{
    return mb_rope_launch(stream, x, ldx, n, n_heads, head_dim, pos0, NULL, cos, sin, interleaved);
}

extern "C" int mb_kcuda_rope_at(void *stream, float *x, size_t ldx, uint32_t n, uint32_t n_heads, uint32_t head_dim,
                                const uint32_t *pos, const float *cos, const float *sin, int interleaved)
{
    if (!pos) return (int)cudaErrorInvalidValue;
    return mb_rope_launch(stream, x, ldx, n, n_heads, head_dim, 0, pos, cos, sin, interleaved);
}

// cache[h][pos0 + t][d] = src[t][h * head_dim + d] for keys and values.
__global__ void __launch_bounds__(MB_ROPE_THREADS)
mb_kcuda_kv_store_kernel(float *__restrict__ kc, float *__restrict__ vc, uint32_t n_kv, uint32_t head_dim,
                         uint32_t max_ctx, uint32_t pos0, const uint32_t *__restrict__ pos_dev, size_t count,
                         const float *__restrict__ k, size_t ldk, const float *__restrict__ v, size_t ldv)
{
    mb_pdl_enter();
    if (pos_dev) pos0 = *pos_dev;
    for (size_t idx = (size_t)blockIdx.x * MB_ROPE_THREADS + threadIdx.x; idx < count;
         idx += (size_t)gridDim.x * MB_ROPE_THREADS) {
        const uint32_t d = (uint32_t)(idx % head_dim);
        const size_t th = idx / head_dim;
        const uint32_t h = (uint32_t)(th % n_kv);
        const size_t t = th / n_kv;
        if (pos0 + t >= max_ctx) continue; // a device position past the cache (the caller checks; never write there)
        const size_t dst = ((size_t)h * max_ctx + pos0 + t) * head_dim + d;
        const size_t col = (size_t)h * head_dim + d;
        kc[dst] = k[t * ldk + col];
        vc[dst] = v[t * ldv + col];
    }
}

static int mb_kv_store_launch(void *stream, const mb_kcuda_kv *kv, uint32_t pos0, const uint32_t *pos_dev, uint32_t n,
                              const float *k, size_t ldk, const float *v, size_t ldv)
{
    if (!kv || !kv->k || !kv->v || !k || !v || n == 0 || kv->n_kv_heads == 0 || kv->head_dim == 0 ||
        pos0 > kv->max_ctx || n > kv->max_ctx - pos0)
        return (int)cudaErrorInvalidValue;
    const size_t row = (size_t)kv->n_kv_heads * kv->head_dim;
    if (ldk < row || ldv < row) return (int)cudaErrorInvalidValue;
    const size_t count = (size_t)n * row;
    mb_dense_launch(mb_kcuda_kv_store_kernel, mb_dense_blocks(count, MB_ROPE_THREADS),
                    MB_ROPE_THREADS, 0, mb_dense_stream(stream), kv->k, kv->v, kv->n_kv_heads,
                    kv->head_dim, kv->max_ctx, pos0, pos_dev, count, k, ldk, v, ldv);
    return mb_dense_launched();
}

extern "C" int mb_kcuda_kv_store(void *stream, const mb_kcuda_kv *kv, uint32_t pos0, uint32_t n, const float *k,
                                 size_t ldk, const float *v, size_t ldv)
{
    return mb_kv_store_launch(stream, kv, pos0, NULL, n, k, ldk, v, ldv);
}

extern "C" int mb_kcuda_kv_store_at(void *stream, const mb_kcuda_kv *kv, const uint32_t *pos, uint32_t n,
                                    const float *k, size_t ldk, const float *v, size_t ldv)
{
    if (!pos) return (int)cudaErrorInvalidValue;
    return mb_kv_store_launch(stream, kv, 0, pos, n, k, ldk, v, ldv);
}
