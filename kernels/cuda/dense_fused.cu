// Fusions of a decode layer's small operations (dense.h): at one token a
// layer was ~18 kernels of a few microseconds each against ~13 us of weight
// traffic, so every kernel that goes saves its fixed cost. Each fusion
// computes exactly what the unfused sequence computes, in the same order:
// the results are bit-identical to it (test_dense_cuda checks).
//   mb_kcuda_qk_rope_store(_at): after one projection into qkv[t][q | k | v],
//     per head and token one warp does Qwen3's head RMSNorm, RoPE and, for
//     key and value heads, the store into the cache.
// The residual add folded into the next RMSNorm is in dense_norm.cu.
#include "kernels/cuda/dense_internal.cuh"

#define MB_QKP_THREADS 256
#define MB_QKP_WARPS (MB_QKP_THREADS / 32)

// Warp w of the grid owns slot s = w % slots of token t = w / slots: query
// heads first, then key heads, then value heads, the column order of qkv.
__global__ void __launch_bounds__(MB_QKP_THREADS)
mb_kcuda_qk_rope_store_kernel(float *__restrict__ qkv, size_t ld, uint32_t n, uint32_t nh, uint32_t nkv,
                              uint32_t hd, const float *__restrict__ qn, const float *__restrict__ kn, float eps,
                              uint32_t pos0, const uint32_t *__restrict__ pos_dev, const float *__restrict__ cos,
                              const float *__restrict__ sin, int interleaved, float *__restrict__ kc,
                              float *__restrict__ vc, uint32_t max_ctx)
{
    mb_pdl_enter();
    if (pos_dev) pos0 = *pos_dev;
    const uint32_t slots = nh + 2 * nkv;
    const size_t wid = (size_t)blockIdx.x * MB_QKP_WARPS + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x & 31;
    if (wid >= (size_t)n * slots) return; // a whole warp: no block barrier below
    const uint32_t t = (uint32_t)(wid / slots), s = (uint32_t)(wid % slots);
    const uint32_t pos = pos0 + t;
    float *h = qkv + (size_t)t * ld + (size_t)s * hd;
    if (s >= nh + nkv) { // a value head: only stored
        if (pos >= max_ctx) return; // a device position past the cache (the caller checks; never write there)
        float *dst = vc + ((size_t)(s - nh - nkv) * max_ctx + pos) * hd;
        for (uint32_t i = lane; i < hd; i += 32)
            dst[i] = h[i];
        return;
    }
    const bool is_k = s >= nh;
    const float *nw = is_k ? kn : qn;
    if (nw) { // as mb_kcuda_rmsnorm_kernel<32>: the same sums in the same order
        double ss = 0.0;
        for (uint32_t i = lane; i < hd; i += 32)
            ss += (double)h[i] * (double)h[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        const float var = (float)(ss / (double)hd);
        const float scale = 1.0f / sqrtf(var + eps);
        for (uint32_t i = lane; i < hd; i += 32)
            h[i] = nw[i] * (h[i] * scale);
        __syncwarp(); // the rotation below pairs elements other lanes wrote
    }
    const uint32_t half = hd / 2;
    float *dst = is_k && pos < max_ctx ? kc + ((size_t)(s - nh) * max_ctx + pos) * hd : nullptr;
    for (uint32_t i = lane; i < half; i += 32) { // as mb_kcuda_rope_kernel
        const size_t tab = (size_t)pos * half + i;
        const float c = cos[tab], sn = sin[tab];
        const uint32_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = h[ia], b = h[ib];
        const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
        const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
        h[ia] = ra;
        h[ib] = rb;
        if (dst) {
            dst[ia] = ra;
            dst[ib] = rb;
        }
    }
}

static int mb_qkp_launch(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads, const float *q_norm,
                         const float *k_norm, float eps, uint32_t pos0, const uint32_t *pos_dev, const float *cos,
                         const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    if (!qkv || !cos || !sin || !kv || !kv->k || !kv->v || n == 0 || n_heads == 0 || kv->n_kv_heads == 0 ||
        kv->head_dim == 0 || (kv->head_dim & 1u) || ld < (size_t)(n_heads + 2 * kv->n_kv_heads) * kv->head_dim)
        return (int)cudaErrorInvalidValue;
    if (!pos_dev && (pos0 > kv->max_ctx || n > kv->max_ctx - pos0)) return (int)cudaErrorInvalidValue;
    const size_t warps = (size_t)n * (n_heads + 2 * kv->n_kv_heads);
    const size_t blocks = (warps + MB_QKP_WARPS - 1) / MB_QKP_WARPS;
    if (blocks > INT32_MAX) return (int)cudaErrorInvalidValue;
    mb_dense_launch(mb_kcuda_qk_rope_store_kernel, (unsigned)blocks, MB_QKP_THREADS, 0,
                    mb_dense_stream(stream), qkv, ld, n, n_heads, kv->n_kv_heads, kv->head_dim,
                    q_norm, k_norm, eps, pos0, pos_dev, cos, sin, interleaved, kv->k, kv->v,
                    kv->max_ctx);
    return mb_dense_launched();
}

extern "C" int mb_kcuda_qk_rope_store(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads,
                                      const float *q_norm, const float *k_norm, float eps, uint32_t pos0,
                                      const float *cos, const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    return mb_qkp_launch(stream, qkv, ld, n, n_heads, q_norm, k_norm, eps, pos0, NULL, cos, sin, interleaved, kv);
}

extern "C" int mb_kcuda_qk_rope_store_at(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads,
                                         const float *q_norm, const float *k_norm, float eps, const uint32_t *pos,
                                         const float *cos, const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    if (!pos) return (int)cudaErrorInvalidValue;
    return mb_qkp_launch(stream, qkv, ld, n, n_heads, q_norm, k_norm, eps, 0, pos, cos, sin, interleaved, kv);
}
