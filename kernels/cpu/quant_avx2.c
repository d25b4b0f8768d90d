/* AVX2 dot products of quantized weight rows with 8-bit activations: per
 * block, u8 x s8 pair products (maddubs) widened to int32 with the block's
 * integer scales, then one f32 scale per block; the integer sums equal the
 * scalar path's (quant.c) exactly, only the f32 accumulation order differs. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_isa.h"

#define MB_INLINE static inline __attribute__((always_inline))

MB_INLINE float f16(uint16_t h)
{
    return _cvtsh_ss(h);
}

MB_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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

/* The 8 scales and 8 mins of a Q4_K/Q5_K block (get_scale_min_k4 for
 * every j, as 32-bit word operations: llama.cpp's utmp trick). */
MB_INLINE void scales_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    uint32_t u[3], s[2], m[2];
    memcpy(u, q, 12);
    s[0] = u[0] & 0x3f3f3f3fu;
    m[0] = u[1] & 0x3f3f3f3fu;
    s[1] = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    m[1] = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    memcpy(sc, s, 8);
    memcpy(mn, m, 8);
}

/* Q4_K (qh NULL) and Q5_K. */
MB_INLINE float dot_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t dh,
                       uint16_t dminh, const mb_kcpu_block_q8_k *y, __m256 *acc)
{
    uint8_t sc[8], mn[8];
    scales_k4(scales, sc, mn);
    int msum = 0;
    for (int j = 0; j < 8; j++)
        msum += mn[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m256i lo = _mm256_and_si256(q, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            const __m128i s0 = _mm_cvtsi32_si128(2 * j), s1 = _mm_cvtsi32_si128(2 * j + 1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s0), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s1), one), 4));
        }
        __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y->qs + 64 * j)));
        __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y->qs + 64 * j + 32)));
        p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * j]));
        p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * j + 1]));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(dh) * y->d), _mm256_cvtepi32_ps(sumi), *acc);
    return f16(dminh) * y->d * (float)msum;
}

static float dot_q4_k(const mb_kcpu_block_q4_k *a, const mb_kcpu_block_q8_k *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (size_t i = 0; i < nb; i++)
        mins += dot_k4(a[i].scales, a[i].qs, NULL, a[i].d, a[i].dmin, &b[i], &acc);
    return hsum8(acc) - mins;
}

static float dot_q5_k(const mb_kcpu_block_q5_k *a, const mb_kcpu_block_q8_k *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (size_t i = 0; i < nb; i++)
        mins += dot_k4(a[i].scales, a[i].qs, a[i].qh, a[i].d, a[i].dmin, &b[i], &acc);
    return hsum8(acc) - mins;
}

/* q6 in [0, 64) against y, minus 32 * y through a second maddubs. */
static float dot_q6_k(const mb_kcpu_block_q6_k *a, const mb_kcpu_block_q8_k *b, size_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i k32 = _mm256_set1_epi8(32);
    for (size_t i = 0; i < nb; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
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
            const int8_t *sc = a[i].scales + 8 * h;
            for (int g = 0; g < 4; g++) {
                const __m256i y = _mm256_loadu_si256((const __m256i *)(b[i].qs + 128 * h + 32 * g));
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[g], y),
                                                   _mm256_maddubs_epi16(k32, y));
                const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * g + 1]), _mm_set1_epi16(sc[2 * g]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

float mb_kcpu_qdot_avx2(int wdtype, const void *w, const void *xq, size_t k)
{
    switch (wdtype) {
    case MB_KCPU_Q8_0: return dot_q8_0(w, xq, k / 32);
    case MB_KCPU_Q4_0: return dot_q4_0(w, xq, k / 32);
    case MB_KCPU_Q4_K: return dot_q4_k(w, xq, k / MB_KCPU_QK);
    case MB_KCPU_Q5_K: return dot_q5_k(w, xq, k / MB_KCPU_QK);
    case MB_KCPU_Q6_K: return dot_q6_k(w, xq, k / MB_KCPU_QK);
    default: return mb_kcpu_qdot_scalar(wdtype, w, xq, k);
    }
}
