// Device side of quantized weights (layout: kernels/cuda/quant_layout.h):
// a matrix's section pointers, and runs of 16 consecutive weights of a row
// (k a multiple of 16), loaded as raw bytes with 16-byte loads and
// dequantized in registers exactly as kernels/cpu/quant.c does: the same
// f32 products and differences, never fused (the __f*_rn intrinsics keep
// nvcc from contracting them). The decode GEMV, the grouped GEMM's tile
// loader and the dequantize kernel all go through these, so the dequantize
// kernel's bitwise test covers every path's weights. Private to kernels/cuda/.
#pragma once

#include <cstdint>

#include "kernels/cuda/moe_internal.cuh"
#include "kernels/cuda/quant_layout.h"

// One matrix in the device layout: its sections and blocks a row.
struct mb_qmat {
    const uint8_t *s0, *s1, *s2, *s3;
    int nb;
};

// Section pointers of a [rows][k] matrix of type q at base.
__device__ __forceinline__ mb_qmat mb_qmat_make(int q, const void *base, int rows, int k)
{
    const uint8_t *b = (const uint8_t *)base;
    mb_qmat m;
    m.nb = q == MB_KCUDA_Q8_0 ? k >> 5 : k >> 8;
    const size_t n = (size_t)rows * m.nb; // blocks of the matrix
    m.s0 = b;
    m.s1 = q == MB_KCUDA_Q8_0 ? b + n * 32 : b + n * 128;
    m.s2 = b + n * 192;
    m.s3 = b + n * 208;
    return m;
}

// The raw bytes of one run of 16 weights (what each type keeps in it is
// at its mb_qload).
struct mb_qraw {
    uint4 a, b;
    uint32_t s;
};

__device__ __forceinline__ float mb_f16_bits_f32(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

// Exact integer to float for 0 <= v < 2^23, without the slow I2F: v in the
// mantissa of 2^23, then 2^23 (plus the type's offset) subtracted exactly.
__device__ __forceinline__ float mb_u23_f32(uint32_t v, float offset)
{
    return __fsub_rn(__uint_as_float(0x4B000000u | v), 8388608.0f + offset);
}

__device__ __forceinline__ uint32_t mb_byte(const uint4 &v, int i)
{
    const uint32_t w = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
    return (w >> (8 * (i & 3))) & 0xffu;
}

template <int Q> __device__ __forceinline__ mb_qraw mb_qload(const mb_qmat &m, int row, int k);
template <int Q> __device__ __forceinline__ void mb_qdeq(const mb_qraw &r, float w[16]);

// Q8_0: a = the 16 qs, s = d. y = q * d.
template <> __device__ __forceinline__ mb_qraw mb_qload<MB_KCUDA_Q8_0>(const mb_qmat &m, int row, int k)
{
    const size_t b = (size_t)row * m.nb + (k >> 5);
    mb_qraw r;
    r.a = __ldg(reinterpret_cast<const uint4 *>(m.s0 + b * 32 + (k & 16)));
    r.b = make_uint4(0u, 0u, 0u, 0u);
    r.s = __ldg(reinterpret_cast<const unsigned short *>(m.s1) + b);
    return r;
}
template <> __device__ __forceinline__ void mb_qdeq<MB_KCUDA_Q8_0>(const mb_qraw &r, float w[16])
{
    const float d = mb_f16_bits_f32(r.s);
#pragma unroll
    for (int i = 0; i < 16; i++)
        w[i] = __fmul_rn(mb_u23_f32(mb_byte(r.a, i) ^ 0x80u, 128.0f), d);
}

// Q4_K: a = the block's first 16 bytes (d, dmin, scales), b = the 16 qs
// bytes holding the run in their low or high nibbles, s = the sub-block
// j of 32. y = (d * sc_j) * q - dmin * m_j.
template <> __device__ __forceinline__ mb_qraw mb_qload<MB_KCUDA_Q4_K>(const mb_qmat &m, int row, int k)
{
    const size_t b = (size_t)row * m.nb + (k >> 8);
    const int e = k & 255;
    const uint8_t *blk = m.s0 + b * 144;
    mb_qraw r;
    r.a = __ldg(reinterpret_cast<const uint4 *>(blk));
    r.b = __ldg(reinterpret_cast<const uint4 *>(blk + 16 + ((e >> 6) << 5) + (e & 16)));
    r.s = (uint32_t)(e >> 5);
    return r;
}
template <> __device__ __forceinline__ void mb_qdeq<MB_KCUDA_Q4_K>(const mb_qraw &r, float w[16])
{
    // The 6-bit scale and min of sub-block j (llama.cpp's get_scale_min_k4):
    // scales[0..11] are the bytes of a.y, a.z, a.w.
    const int j = (int)r.s, sh = 8 * (j & 3);
    const uint32_t lo = (r.a.y >> sh) & 0xffu, mid = (r.a.z >> sh) & 0xffu, hi = (r.a.w >> sh) & 0xffu;
    const uint32_t sc = j < 4 ? lo & 63u : (hi & 0xFu) | ((lo >> 6) << 4);
    const uint32_t mn = j < 4 ? mid & 63u : (hi >> 4) | ((mid >> 6) << 4);
    const float ds = __fmul_rn(mb_f16_bits_f32(r.a.x & 0xffffu), (float)sc);
    const float dm = __fmul_rn(mb_f16_bits_f32(r.a.x >> 16), (float)mn);
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int i = 0; i < 16; i++)
        w[i] = __fsub_rn(__fmul_rn(ds, mb_u23_f32((mb_byte(r.b, i) >> shift) & 0xFu, 0.0f)), dm);
}

// Q6_K: a = 16 ql bytes, b = 16 qh bytes, s = the int8 scale (bits 0-7),
// which quarter g of the half-block (bits 8-9) and d (bits 16-31).
// q = (4 bits of ql | 2 bits of qh << 4) - 32, y = (d * sc) * q.
template <> __device__ __forceinline__ mb_qraw mb_qload<MB_KCUDA_Q6_K>(const mb_qmat &m, int row, int k)
{
    const size_t b = (size_t)row * m.nb + (k >> 8);
    const int e = k & 255, h = e >> 7, g = (e >> 5) & 3, l0 = e & 16;
    mb_qraw r;
    r.a = __ldg(reinterpret_cast<const uint4 *>(m.s0 + b * 128 + 64 * h + 32 * (g & 1) + l0));
    r.b = __ldg(reinterpret_cast<const uint4 *>(m.s1 + b * 64 + 32 * h + l0));
    const uint32_t sc = (uint8_t)__ldg(reinterpret_cast<const signed char *>(m.s2) + b * 16 + 8 * h + (l0 >> 4) + 2 * g);
    const uint32_t d = __ldg(reinterpret_cast<const unsigned short *>(m.s3) + b);
    r.s = sc | ((uint32_t)g << 8) | (d << 16);
    return r;
}
template <> __device__ __forceinline__ void mb_qdeq<MB_KCUDA_Q6_K>(const mb_qraw &r, float w[16])
{
    const int g = (int)(r.s >> 8) & 3;
    const float ds = __fmul_rn(mb_f16_bits_f32(r.s >> 16), (float)(int8_t)(r.s & 0xffu));
    const int shl = (g >> 1) * 4, shh = 2 * g;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const uint32_t q = ((mb_byte(r.a, i) >> shl) & 0xFu) | (((mb_byte(r.b, i) >> shh) & 3u) << 4);
        w[i] = __fmul_rn(ds, mb_u23_f32(q, 32.0f));
    }
}

// The same with the type chosen at run time (a uniform branch), for the
// grouped GEMM's tile loader, where one kernel serves every type.
__device__ __forceinline__ mb_qraw mb_qload_any(int q, const mb_qmat &m, int row, int k)
{
    return q == MB_KCUDA_Q8_0 ? mb_qload<MB_KCUDA_Q8_0>(m, row, k)
           : q == MB_KCUDA_Q4_K ? mb_qload<MB_KCUDA_Q4_K>(m, row, k)
                                : mb_qload<MB_KCUDA_Q6_K>(m, row, k);
}
__device__ __forceinline__ void mb_qdeq_any(int q, const mb_qraw &r, float w[16])
{
    if (q == MB_KCUDA_Q8_0)
        mb_qdeq<MB_KCUDA_Q8_0>(r, w);
    else if (q == MB_KCUDA_Q4_K)
        mb_qdeq<MB_KCUDA_Q4_K>(r, w);
    else
        mb_qdeq<MB_KCUDA_Q6_K>(r, w);
}

// 16 activations at x (aligned to 16 elements) as floats.
template <typename P> __device__ __forceinline__ void mb_load16(const P *x, float f[16])
{
    if constexpr (sizeof(P) == 4) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 a = __ldg(reinterpret_cast<const float4 *>(x) + i);
            f[4 * i] = a.x, f[4 * i + 1] = a.y, f[4 * i + 2] = a.z, f[4 * i + 3] = a.w;
        }
    } else {
        mb_unpack8<P>(__ldg(reinterpret_cast<const uint4 *>(x)), f);
        mb_unpack8<P>(__ldg(reinterpret_cast<const uint4 *>(x) + 1), f + 8);
    }
}

// Launchers of the quantized paths (each one file), all asynchronous.
cudaError_t mb_kcuda_qgemv_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int fused, cudaStream_t stream);
cudaError_t mb_kcuda_qgemm_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                  cudaStream_t stream);
// Bytes of f16 scratch (ws->wq) the cuBLAS path needs for quantized weights.
size_t mb_kcuda_cublas_quant_scratch(const mb_kcuda_moe_problem *p);
// out [rows][k] in f32 or f16 (MB_KCUDA_F32 / MB_KCUDA_F16) from w.
cudaError_t mb_kcuda_qdequant_launch(int q, const void *w, int rows, int k, int out_dtype, void *out,
                                     cudaStream_t stream);
