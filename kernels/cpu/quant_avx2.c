/* AVX2 dot products of quantized weight rows with 8-bit activations: per
 * block, u8 x s8 pair products (maddubs) widened to int32 with the block's
 * integer scales, then one f32 scale per block; the integer sums equal the
 * scalar path's (quant.c) exactly, only the f32 accumulation order differs. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_isa.h"

#define MB_INLINE static inline __attribute__((always_inline))
/* Full unrolling keeps the per-row arrays of the multi-row kernels in
 * registers; -O2 would otherwise leave them on the stack. */
#define MB_UNROLL _Pragma("GCC unroll 4")

MB_INLINE float f16(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* Prefetches the weight bytes a block of `bytes` will use some blocks
 * ahead: decode streams each weight once, and the hardware prefetcher alone
 * left the dots waiting on memory (Mixtral Q4_K decode ~10% faster with it).
 * Past a row's end it fetches the next row, which is what the caller reads
 * next; a prefetch never faults. */
#define MB_PREFETCH_AHEAD 1024
MB_INLINE void prefetch_block(const void *block, size_t bytes)
{
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)block + MB_PREFETCH_AHEAD + o, _MM_HINT_T0);
}

MB_INLINE float hsum4(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

MB_INLINE float hsum8(__m256 v)
{
    return hsum4(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

/* int32 lanes of sum over pairs of x * y for signed x and y (|y| <= 127). */
MB_INLINE __m256i dot_s8(__m256i x, __m256i y)
{
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

static float dot_q8_0(const mb_kcpu_block_q8_0 *a, const mb_kcpu_block_q8_0 *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(f16(a[i].d) * f16(b[i].d));
        const __m256i s = dot_s8(_mm256_loadu_si256((const __m256i *)a[i].qs),
                                 _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    return hsum8(acc);
}

static float dot_q4_0(const mb_kcpu_block_q4_0 *a, const mb_kcpu_block_q8_0 *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), off = _mm256_set1_epi8(8);
    for (size_t i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(f16(a[i].d) * f16(b[i].d));
        const __m128i t = _mm_loadu_si128((const __m128i *)a[i].qs);
        __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4);
        q = _mm256_sub_epi8(q, off);
        const __m256i s = dot_s8(q, _mm256_loadu_si256((const __m256i *)b[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    return hsum8(acc);
}

/* The 8 scales (low 8 bytes) and 8 mins (high 8) of a Q4_K/Q5_K block:
 * get_scale_min_k4 for every j as 32-bit word operations (llama.cpp's utmp
 * trick), so the unpacking costs a few instructions per super-block. */
MB_INLINE __m128i scales_k4(const uint8_t *q)
{
    uint32_t u[3];
    memcpy(u, q, 12);
    const uint32_t s0 = u[0] & 0x3f3f3f3fu, m0 = u[1] & 0x3f3f3f3fu;
    const uint32_t s1 = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    const uint32_t m1 = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    return _mm_set_epi32((int)m1, (int)m0, (int)s1, (int)s0);
}

/* One Q4_K/Q5_K super-block of nr rows (1 or 2, a constant after inlining)
 * against y, the activation loads shared by the rows. Two rows from
 * different places keep two read streams in flight, which decode (one pass
 * over weights that are not in cache) needs more than the hot-cache speed,
 * the same for one row or two. Per row, per 64 elements: two maddubs (u4/u5 x
 * s8), two madd with the 16-bit sub-block scales (broadcast by a shuffle),
 * int32 sums; then one FMA per super-block for the scales and one 4-lane
 * FMA for the mins against the bsums. The integer sums equal the scalar
 * path's; each row's f32 operations are the same whatever nr is. */
MB_INLINE void block_k4(int nr, const uint8_t *const *scales, const uint8_t *const *qs,
                        const uint8_t *const *qh, const uint16_t *dh, const uint16_t *dminh,
                        const mb_kcpu_block_q8_k *y, __m256 *acc, __m128 *accm)
{
    const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
    const __m128i ysum = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256i sc[2], hb[2], sumi[2];
    MB_UNROLL
    for (int r = 0; r < nr; r++) {
        const __m256i sm = _mm256_cvtepu8_epi16(scales_k4(scales[r]));
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), ysum);
        accm[r] = _mm_fmadd_ps(_mm_set1_ps(f16(dminh[r]) * y->d), _mm_cvtepi32_ps(prod), accm[r]);
        sc[r] = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
        hb[r] = qh[r] ? _mm256_loadu_si256((const __m256i *)qh[r]) : _mm256_setzero_si256();
        sumi[r] = _mm256_setzero_si256();
    }
    MB_UNROLL
    for (int j = 0; j < 4; j++) {
        const __m256i y0 = _mm256_loadu_si256((const __m256i *)(y->qs + 64 * j));
        const __m256i y1 = _mm256_loadu_si256((const __m256i *)(y->qs + 64 * j + 32));
        /* 16-bit word 2j (2j + 1) of the scales in every lane */
        const __m256i sh0 = _mm256_set1_epi16((short)((4 * j + 1) << 8 | 4 * j));
        const __m256i sh1 = _mm256_set1_epi16((short)((4 * j + 3) << 8 | (4 * j + 2)));
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs[r] + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (qh[r]) {
                const __m128i s0 = _mm_cvtsi32_si128(2 * j), s1 = _mm_cvtsi32_si128(2 * j + 1);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb[r], s0), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb[r], s1), one), 4));
            }
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_shuffle_epi8(sc[r], sh0));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), _mm256_shuffle_epi8(sc[r], sh1));
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
        }
    }
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f16(dh[r]) * y->d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
}

/* nr rows of Q4_K (q5 0) or Q5_K (q5 1) against nb blocks of x. */
MB_INLINE void dot_k4(int nr, int q5, const void *const *w, const mb_kcpu_block_q8_k *x,
                      size_t nb, float *out)
{
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 accm[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *sc[2], *qs[2], *qh[2] = {NULL, NULL};
        uint16_t d[2], dmin[2];
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            if (q5) {
                const mb_kcpu_block_q5_k *a = (const mb_kcpu_block_q5_k *)w[r] + i;
                prefetch_block(a, sizeof *a);
                sc[r] = a->scales, qs[r] = a->qs, qh[r] = a->qh, d[r] = a->d, dmin[r] = a->dmin;
            } else {
                const mb_kcpu_block_q4_k *a = (const mb_kcpu_block_q4_k *)w[r] + i;
                prefetch_block(a, sizeof *a);
                sc[r] = a->scales, qs[r] = a->qs, d[r] = a->d, dmin[r] = a->dmin;
            }
        }
        block_k4(nr, sc, qs, qh, d, dmin, &x[i], acc, accm);
    }
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        out[r] = hsum8(acc[r]) - hsum4(accm[r]);
}

/* q6 in [0, 64) against y; the offset of 32 comes off once per block as
 * 32 * sum_s sc[s] * bsums[s] (one madd), not as a second maddubs per 32
 * elements. Sixteen 16-bit scales are widened once per block; a shuffle
 * puts sub-block 2g's scale in the low lane and 2g + 1's in the high one. */
static float dot_q6_k(const mb_kcpu_block_q6_k *a, const mb_kcpu_block_q8_k *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    for (size_t i = 0; i < nb; i++) {
        prefetch_block(&a[i], sizeof a[i]);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
        const __m256i offs = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)b[i].bsums));
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offs, 5));
        MB_UNROLL
        for (int h = 0; h < 2; h++) {
            /* immediates spelled out: -O0 does not fold h into one */
            const __m256i sch = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                  : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            MB_UNROLL
            for (int g = 0; g < 4; g++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(b[i].qs + 128 * h + 32 * g));
                const __m256i sh = _mm256_setr_epi8(
                    4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1,
                    4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g + 2, 4 * g + 3, 4 * g + 2,
                    4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2,
                    4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3);
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], y), _mm256_shuffle_epi8(sch, sh));
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

float mb_kcpu_qdot_avx2(int wdtype, const void *w, const void *xq, size_t k)
{
    float out;
    switch (wdtype) {
    case MB_KCPU_Q8_0: return dot_q8_0(w, xq, k / 32);
    case MB_KCPU_Q4_0: return dot_q4_0(w, xq, k / 32);
    case MB_KCPU_Q4_K: dot_k4(1, 0, &w, xq, k / MB_KCPU_QK, &out); return out;
    case MB_KCPU_Q5_K: dot_k4(1, 1, &w, xq, k / MB_KCPU_QK, &out); return out;
    case MB_KCPU_Q6_K: return dot_q6_k(w, xq, k / MB_KCPU_QK);
    default: return mb_kcpu_qdot_scalar(wdtype, w, xq, k);
    }
}

void mb_kcpu_qdot2_avx2(int wdtype, const void *w0, const void *w1, const void *xq, size_t k,
                        float out[2])
{
    const void *w[2] = {w0, w1};
    switch (wdtype) {
    case MB_KCPU_Q4_K: dot_k4(2, 0, w, xq, k / MB_KCPU_QK, out); return;
    case MB_KCPU_Q5_K: dot_k4(2, 1, w, xq, k / MB_KCPU_QK, out); return;
    default:
        out[0] = mb_kcpu_qdot_avx2(wdtype, w0, xq, k);
        out[1] = mb_kcpu_qdot_avx2(wdtype, w1, xq, k);
    }
}
