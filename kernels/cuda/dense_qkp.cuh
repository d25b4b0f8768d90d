// The decode head pass (Qwen3's per-head RMSNorm, RoPE, the KV-cache
// store) as one warp's work on one head: shared by the fused kernels of
// dense_fused.cu and the decode attention, which runs it on its own heads
// (dense_attention_decode.cu), so their results are bit for bit the same.
// Private to kernels/cuda/.
#pragma once

#include "kernels/cuda/dense_internal.cuh"

// What the head pass needs besides the rows: nh query, nkv key and value
// heads of hd; the norms' weights (or nullptr) and eps; the first token's
// position (pos_dev, when set, holds it on the device); the RoPE tables;
// the cache.
struct mb_qkp_args {
    uint32_t nh, nkv, hd;
    const float *qn, *kn;
    float eps;
    uint32_t pos0;
    const uint32_t *pos_dev;
    const float *cos, *sin;
    int interleaved;
    float *kc, *vc;
    uint32_t max_ctx;
};

// Head slot s (query heads first, then key heads, then value heads, the
// column order of qkv) of the token at pos, by one warp: h holds the
// head's values and is worked on in place; out, when it is not h, gets the
// rotated query and key values too (the fused projection works on a copy
// in shared memory, qkv already holds the values).
static __device__ __forceinline__ void
mb_qkp_slot(float *h, float *out, uint32_t s, const mb_qkp_args &a, uint32_t pos, uint32_t lane)
{
    const uint32_t hd = a.hd;
    if (s >= a.nh + a.nkv) { // a value head: only stored
        if (pos >= a.max_ctx)
            return; // a device position past the cache (the caller checks; never write there)
        float *dst = a.vc + ((size_t)(s - a.nh - a.nkv) * a.max_ctx + pos) * hd;
        for (uint32_t i = lane; i < hd; i += 32)
            dst[i] = h[i];
        return;
    }
    const bool is_k = s >= a.nh;
    const float *nw = is_k ? a.kn : a.qn;
    if (nw) { // as mb_kcuda_rmsnorm_kernel<32>: the same sums in the same order
        double ss = 0.0;
        for (uint32_t i = lane; i < hd; i += 32)
            ss += (double)h[i] * (double)h[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        const float var = (float)(ss / (double)hd);
        const float scale = 1.0f / sqrtf(var + a.eps);
        for (uint32_t i = lane; i < hd; i += 32)
            h[i] = nw[i] * (h[i] * scale);
        __syncwarp(); // the rotation below pairs elements other lanes wrote
    }
    const uint32_t half = hd / 2;
    float *dst =
        is_k && pos < a.max_ctx ? a.kc + ((size_t)(s - a.nh) * a.max_ctx + pos) * hd : nullptr;
    for (uint32_t i = lane; i < half; i += 32) { // as mb_kcuda_rope_kernel
        const size_t tab = (size_t)pos * half + i;
        const float c = a.cos[tab], sn = a.sin[tab];
        const uint32_t ia = a.interleaved ? 2 * i : i, ib = a.interleaved ? 2 * i + 1 : i + half;
        const float va = h[ia], vb = h[ib];
        const float ra = __fsub_rn(__fmul_rn(va, c), __fmul_rn(vb, sn));
        const float rb = __fadd_rn(__fmul_rn(vb, c), __fmul_rn(va, sn));
        h[ia] = ra;
        h[ib] = rb;
        if (out != h) {
            out[ia] = ra;
            out[ib] = rb;
        }
        if (dst) {
            dst[ia] = ra;
            dst[ib] = rb;
        }
    }
}
