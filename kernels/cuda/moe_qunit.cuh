// The decode GEMV's view of quantized weights (moe_qgemv.cu): a row in
// units of 32 (Q8_0, one block) or 64 weights (Q4_K, Q6_K: a quarter of a
// super-block), one unit a lane at a time, each unit four 16-byte loads at
// most and its scales decoded once. A unit is 2 or 4 runs of 16 weights
// with one scale (and for Q4_K one min) each, and the dot product is
// factored: per run the integer weights q (exact in f32) are dotted with
// the activations, then scaled once,
//   W[run] . x = (d*sc) * sum(q * x) - (dmin*m) * sum(x)        (Q4_K)
//              = (d*sc) * sum(q * x)                             (Q8_0, Q6_K: q signed)
// so the products are those of kernels/cpu/quant.c but summed in another
// order: results differ from the exact-weight dot in the last bits of f32
// (within the GEMV's test bounds), which moe_quant.cuh's bit-exact
// dequantization (the GEMM and dequantize paths) does not. Private to
// kernels/cuda/.
#pragma once

#include "kernels/cuda/moe_quant.cuh"

// The integer in byte i of w (exact, 0..255) minus off, as a float: the
// byte moved into the mantissa of 2^23 (one PRMT) and 2^23 + off
// subtracted (one FADD); no I2F.
__device__ __forceinline__ float mb_qu_byte(uint32_t w, int i, float off)
{
    return __fsub_rn(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540u | (uint32_t)i)), 8388608.0f + off);
}

__device__ __forceinline__ uint32_t mb_qu_word(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The raw bytes of one unit (what each type keeps where: at its load).
struct mb_qunit {
    uint4 a, b, c;
    uint32_t s0, s1;
};

template <int Q> struct mb_qu_traits;
// Q8_0: unit t = block t; runs at 0 and 16.
template <> struct mb_qu_traits<MB_KCUDA_Q8_0> {
    static constexpr int unit = 32, runs = 2, run_step = 16, has_min = 0;
};
// Q4_K: unit t = super-block t / 4, weights 64 (t % 4) .. +63, i.e. 64 t ..
// 64 t + 63 of the row; runs at 0, 16, 32, 48.
template <> struct mb_qu_traits<MB_KCUDA_Q4_K> {
    static constexpr int unit = 64, runs = 4, run_step = 16, has_min = 1;
};
// Q6_K: unit t = super-block t / 4, half h = (t / 2) % 2, l0 = 16 (t % 2):
// weights 128 h + 32 g + l0 .. +15 of the super-block for g = 0..3 (the
// four runs, 32 apart).
template <> struct mb_qu_traits<MB_KCUDA_Q6_K> {
    static constexpr int unit = 64, runs = 4, run_step = 32, has_min = 0;
};

// First weight (column) of unit t's run 0 within the row.
template <int Q> __device__ __forceinline__ int mb_qu_xbase(int t)
{
    if constexpr (Q == MB_KCUDA_Q6_K) return (t >> 2) * 256 + ((t >> 1) & 1) * 128 + (t & 1) * 16;
    else return t * mb_qu_traits<Q>::unit;
}

// Loads unit t of row `row` and decodes its per-run scale ds[r] and min
// dm[r] (dm unused without a min), each as kernels/cpu/quant.c computes it.
template <int Q> __device__ __forceinline__ mb_qunit mb_qu_load(const mb_qmat &m, int row, int t);
template <int Q> __device__ __forceinline__ void mb_qu_scales(const mb_qunit &u, int t, float ds[4], float dm[4]);
// The 16 integer weights of run r (before the scale; Q8_0 and Q6_K signed).
template <int Q> __device__ __forceinline__ void mb_qu_run(const mb_qunit &u, int r, float q[16]);

// Q8_0: a, b = the 32 qs (int8), s0 = d.
template <> __device__ __forceinline__ mb_qunit mb_qu_load<MB_KCUDA_Q8_0>(const mb_qmat &m, int row, int t)
{
    const size_t b = (size_t)row * m.nb + t;
    const uint4 *qs = reinterpret_cast<const uint4 *>(m.s0 + b * 32);
    mb_qunit u;
    u.a = __ldg(qs);
    u.b = __ldg(qs + 1);
    u.s0 = __ldg(reinterpret_cast<const unsigned short *>(m.s1) + b);
    return u;
}
template <> __device__ __forceinline__ void mb_qu_scales<MB_KCUDA_Q8_0>(const mb_qunit &u, int, float ds[4], float[4])
{
    ds[0] = ds[1] = mb_f16_bits_f32(u.s0);
}
template <> __device__ __forceinline__ void mb_qu_run<MB_KCUDA_Q8_0>(const mb_qunit &u, int r, float q[16])
{
    const uint4 &v = r ? u.b : u.a;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const uint32_t x = mb_qu_word(v, w) ^ 0x80808080u; // int8 + 128, per byte
#pragma unroll
        for (int i = 0; i < 4; i++)
            q[4 * w + i] = mb_qu_byte(x, i, 128.0f);
    }
}

// Q4_K: a = the super-block's d, dmin, scales[12]; b, c = qs bytes
// 32 (t%4) .. +31, whose low nibbles are sub-block 2 (t%4) (runs 0, 1) and
// high nibbles sub-block 2 (t%4) + 1 (runs 2, 3).
template <> __device__ __forceinline__ mb_qunit mb_qu_load<MB_KCUDA_Q4_K>(const mb_qmat &m, int row, int t)
{
    const uint8_t *blk = m.s0 + ((size_t)row * m.nb + (t >> 2)) * 144;
    const uint4 *qs = reinterpret_cast<const uint4 *>(blk + 16 + 32 * (t & 3));
    mb_qunit u;
    u.a = __ldg(reinterpret_cast<const uint4 *>(blk));
    u.b = __ldg(qs);
    u.c = __ldg(qs + 1);
    return u;
}
template <> __device__ __forceinline__ void mb_qu_scales<MB_KCUDA_Q4_K>(const mb_qunit &u, int t, float ds[4],
                                                                        float dm[4])
{
    // llama.cpp's get_scale_min_k4 for sub-blocks j = 2c, 2c + 1 at once,
    // two bytes at a time: scales[0..11] are the bytes of a.y, a.z, a.w,
    // and j, j + 1 sit in bytes 2 (c % 2), +1 of each word.
    const int c = t & 3, sh = 16 * (c & 1);
    const uint32_t y = u.a.y >> sh, z = u.a.z >> sh, w = u.a.w >> sh;
    const uint32_t sc = c < 2 ? y & 0x3F3Fu : (w & 0x0F0Fu) | ((y >> 2) & 0x3030u);
    const uint32_t mn = c < 2 ? z & 0x3F3Fu : ((w >> 4) & 0x0F0Fu) | ((z >> 2) & 0x3030u);
    const float d = mb_f16_bits_f32(u.a.x & 0xffffu), dmin = mb_f16_bits_f32(u.a.x >> 16);
    ds[0] = ds[1] = __fmul_rn(d, mb_qu_byte(sc, 0, 0.0f));
    ds[2] = ds[3] = __fmul_rn(d, mb_qu_byte(sc, 1, 0.0f));
    dm[0] = dm[1] = __fmul_rn(dmin, mb_qu_byte(mn, 0, 0.0f));
    dm[2] = dm[3] = __fmul_rn(dmin, mb_qu_byte(mn, 1, 0.0f));
}
template <> __device__ __forceinline__ void mb_qu_run<MB_KCUDA_Q4_K>(const mb_qunit &u, int r, float q[16])
{
    const uint4 &v = r & 1 ? u.c : u.b;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const uint32_t x = r < 2 ? mb_qu_word(v, w) & 0x0F0F0F0Fu : (mb_qu_word(v, w) >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int i = 0; i < 4; i++)
            q[4 * w + i] = mb_qu_byte(x, i, 0.0f);
    }
}

// Q6_K: a = ql bytes 64 h + l0 .. +15 (low nibbles run 0, high run 2),
// b = ql 64 h + 32 + l0 .. (runs 1, 3), c = qh 32 h + l0 .. (bits 2g: run
// g), s0 = the four int8 scales of runs 0..3, s1 = d.
template <> __device__ __forceinline__ mb_qunit mb_qu_load<MB_KCUDA_Q6_K>(const mb_qmat &m, int row, int t)
{
    const size_t b = (size_t)row * m.nb + (t >> 2);
    const int h = (t >> 1) & 1, l0 = (t & 1) * 16;
    mb_qunit u;
    u.a = __ldg(reinterpret_cast<const uint4 *>(m.s0 + b * 128 + 64 * h + l0));
    u.b = __ldg(reinterpret_cast<const uint4 *>(m.s0 + b * 128 + 64 * h + 32 + l0));
    u.c = __ldg(reinterpret_cast<const uint4 *>(m.s1 + b * 64 + 32 * h + l0));
    // scales[8h + l0/16 + 2g], g = 0..3: every other byte of 8.
    const uint2 sc = __ldg(reinterpret_cast<const uint2 *>(m.s2 + b * 16 + 8 * h));
    u.s0 = __byte_perm(sc.x, sc.y, l0 ? 0x7531u : 0x6420u);
    u.s1 = __ldg(reinterpret_cast<const unsigned short *>(m.s3) + b);
    return u;
}
template <> __device__ __forceinline__ void mb_qu_scales<MB_KCUDA_Q6_K>(const mb_qunit &u, int, float ds[4], float[4])
{
    const float d = mb_f16_bits_f32(u.s1);
    const uint32_t s = u.s0 ^ 0x80808080u; // int8 + 128, per byte
#pragma unroll
    for (int g = 0; g < 4; g++)
        ds[g] = __fmul_rn(d, mb_qu_byte(s, g, 128.0f));
}
template <> __device__ __forceinline__ void mb_qu_run<MB_KCUDA_Q6_K>(const mb_qunit &u, int r, float q[16])
{
    const uint4 &v = r & 1 ? u.b : u.a;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const uint32_t lo = r < 2 ? mb_qu_word(v, w) & 0x0F0F0F0Fu : (mb_qu_word(v, w) >> 4) & 0x0F0F0F0Fu;
        const uint32_t hi = ((mb_qu_word(u.c, w) >> (2 * r)) & 0x03030303u) << 4;
        const uint32_t x = lo | hi; // 0..63 a byte, q + 32
#pragma unroll
        for (int i = 0; i < 4; i++)
            q[4 * w + i] = mb_qu_byte(x, i, 32.0f);
    }
}

// acc[mi][i] += W_mi[row, unit t] . xr[i][unit t's columns] for NM
// matrices of one type sharing the activations (gate and up: NM = 2) and
// the first nt <= NT activation rows (x in P, widened to f32).
template <int Q, int NM, int NT, typename P>
__device__ __forceinline__ void mb_qu_dot(const mb_qmat *m, int row, int t, const P *const *xr, int nt,
                                          float (*acc)[NT])
{
    using T = mb_qu_traits<Q>;
    mb_qunit u[NM];
    float ds[NM][4], dm[NM][4];
#pragma unroll
    for (int mi = 0; mi < NM; mi++) {
        u[mi] = mb_qu_load<Q>(m[mi], row, t);
        mb_qu_scales<Q>(u[mi], t, ds[mi], dm[mi]);
    }
    const int xb = mb_qu_xbase<Q>(t);
#pragma unroll
    for (int r = 0; r < T::runs; r++) {
        float q[NM][16];
#pragma unroll
        for (int mi = 0; mi < NM; mi++)
            mb_qu_run<Q>(u[mi], r, q[mi]);
#pragma unroll
        for (int i = 0; i < NT; i++) {
            if (i >= nt) break;
            float x[16];
            mb_load16<P>(xr[i] + xb + r * T::run_step, x);
            float sx = 0.0f;
            if constexpr (T::has_min) {
#pragma unroll
                for (int v = 0; v < 16; v++)
                    sx += x[v];
            }
#pragma unroll
            for (int mi = 0; mi < NM; mi++) {
                float s = 0.0f;
#pragma unroll
                for (int v = 0; v < 16; v++)
                    s = fmaf(q[mi][v], x[v], s);
                acc[mi][i] = fmaf(ds[mi][r], s, acc[mi][i]);
                if constexpr (T::has_min) acc[mi][i] = fmaf(-dm[mi][r], sx, acc[mi][i]);
            }
        }
    }
}

// The same over a lane's units of the row (t = lane, lane + 32, ...).
template <int Q, int NM, int NT, typename P>
__device__ __forceinline__ void mb_qu_row(const mb_qmat *m, int row, int K, const P *const *xr, int nt, int lane,
                                          float (*acc)[NT])
{
    const int n_units = K / mb_qu_traits<Q>::unit;
#pragma unroll 2
    for (int t = lane; t < n_units; t += 32)
        mb_qu_dot<Q, NM, NT, P>(m, row, t, xr, nt, acc);
}
