/* AVX2 dequantization of quantized rows to f32, for the prefill path that
 * runs the f32 GEMM tiles over dequantized weights. Bit-identical to the
 * scalar mb_kcpu_dequant_row (so to gguf-py): the same f32 products and
 * differences, each rounded once. This file is built with FMA, and the
 * compilers may fuse a multiply and a following subtraction into one FMA
 * (one rounding, a different result), so the product passes through an
 * empty asm statement that hides it from that contraction. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_avx2.h"
#include "kernels/cpu/quant_isa.h"

/* The value unchanged, opaque to the optimiser (no fusing across it). */
MB_INLINE __m256 opaque(__m256 v)
{
    __asm__("" : "+x"(v));
    return v;
}

/* dst[8] = f32(8 bytes at src, unsigned or signed) * s - m (m NULL: no subtraction). */
MB_INLINE void store8(__m128i bytes8, int is_signed, __m256 s, const __m256 *m, float *dst)
{
    const __m256i v = is_signed ? _mm256_cvtepi8_epi32(bytes8) : _mm256_cvtepu8_epi32(bytes8);
    __m256 p = _mm256_mul_ps(s, _mm256_cvtepi32_ps(v));
    if (m) p = _mm256_sub_ps(opaque(p), *m);
    _mm256_storeu_ps(dst, p);
}

/* dst[32] from 32 bytes of element values, one scale (and min). */
MB_INLINE void store32(__m256i q, int is_signed, __m256 s, const __m256 *m, float *dst)
{
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    store8(lo, is_signed, s, m, dst);
    store8(_mm_srli_si128(lo, 8), is_signed, s, m, dst + 8);
    store8(hi, is_signed, s, m, dst + 16);
    store8(_mm_srli_si128(hi, 8), is_signed, s, m, dst + 24);
}

static void dequant_q8_0(const mb_kcpu_block_q8_0 *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += 32)
        store32(_mm256_loadu_si256((const __m256i *)b[i].qs), 1, _mm256_set1_ps(mb_k2_f16(b[i].d)),
                NULL, y);
}

static void dequant_q4_0(const mb_kcpu_block_q4_0 *b, float *y, size_t nb)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), off = _mm256_set1_epi8(8);
    for (size_t i = 0; i < nb; i++, y += 32) {
        const __m128i t = _mm_loadu_si128((const __m128i *)b[i].qs);
        const __m256i q =
            _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4), off);
        store32(q, 1, _mm256_set1_ps(mb_k2_f16(b[i].d)), NULL, y);
    }
}

/* Q4_K (qh NULL) or Q5_K: per sub-block of 32, y = (d * sc) * q - dmin * m. */
static void dequant_k4(const uint8_t *blk, const uint8_t *qh, const uint8_t *qs, float *y)
{
    uint16_t dh[2];
    memcpy(dh, blk, 4);
    const __m128i sm = mb_k2_scales_k4(blk + 4);
    float ds[8], dm[8];
    _mm256_storeu_ps(ds, _mm256_mul_ps(_mm256_set1_ps(mb_k2_f16(dh[0])),
                                       _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm))));
    _mm256_storeu_ps(
        dm, _mm256_mul_ps(_mm256_set1_ps(mb_k2_f16(dh[1])),
                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)))));
    const __m256i m4 = _mm256_set1_epi8(0x0F), x10 = _mm256_set1_epi8(0x10);
    const __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * j)));
            const __m256i b1 = _mm256_set1_epi8((char)(1 << (2 * j + 1)));
            lo = _mm256_or_si256(
                lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b0), b0), x10));
            hi = _mm256_or_si256(
                hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b1), b1), x10));
        }
        const __m256 m0 = _mm256_set1_ps(dm[2 * j]), m1 = _mm256_set1_ps(dm[2 * j + 1]);
        store32(lo, 0, _mm256_set1_ps(ds[2 * j]), &m0, y + 64 * j);
        store32(hi, 0, _mm256_set1_ps(ds[2 * j + 1]), &m1, y + 64 * j + 32);
    }
}

/* Q6_K: element l + 32 g of half h has scale sc[8h + l/16 + 2g]. */
static void dequant_q6_k(const mb_kcpu_block_q6_k *b, float *y, size_t nb)
{
    const __m256i o32 = _mm256_set1_epi8(32);
    for (size_t i = 0; i < nb; i++, y += MB_KCPU_QK) {
        const __m256 d = _mm256_set1_ps(mb_k2_f16(b[i].d));
        float ds[16];
        const __m128i sc = _mm_loadu_si128((const __m128i *)b[i].scales);
        _mm256_storeu_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
        _mm256_storeu_ps(
            ds + 8,
            _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(b[i].qh + 32 * h));
            __m256i q[4];
            mb_k2_q6k_unpack(ql0, ql1, qh, q);
            float *yh = y + 128 * h;
            for (int g = 0; g < 4; g++) {
                const __m256i v = _mm256_sub_epi8(q[g], o32);
                const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
                const __m256 s0 = _mm256_set1_ps(ds[8 * h + 2 * g]),
                             s1 = _mm256_set1_ps(ds[8 * h + 2 * g + 1]);
                store8(lo, 1, s0, NULL, yh + 32 * g);
                store8(_mm_srli_si128(lo, 8), 1, s0, NULL, yh + 32 * g + 8);
                store8(hi, 1, s1, NULL, yh + 32 * g + 16);
                store8(_mm_srli_si128(hi, 8), 1, s1, NULL, yh + 32 * g + 24);
            }
        }
    }
}

int mb_kcpu_dequant_avx2(int wdtype, const void *src, float *dst, size_t k)
{
    switch (wdtype) {
    case MB_KCPU_Q8_0:
        dequant_q8_0(src, dst, k / 32);
        return 1;
    case MB_KCPU_Q4_0:
        dequant_q4_0(src, dst, k / 32);
        return 1;
    case MB_KCPU_Q4_K:
        for (size_t i = 0; i < k / MB_KCPU_QK; i++) {
            const mb_kcpu_block_q4_k *b = (const mb_kcpu_block_q4_k *)src + i;
            dequant_k4((const uint8_t *)b, NULL, b->qs, dst + i * MB_KCPU_QK);
        }
        return 1;
    case MB_KCPU_Q5_K:
        for (size_t i = 0; i < k / MB_KCPU_QK; i++) {
            const mb_kcpu_block_q5_k *b = (const mb_kcpu_block_q5_k *)src + i;
            dequant_k4((const uint8_t *)b, b->qh, b->qs, dst + i * MB_KCPU_QK);
        }
        return 1;
    case MB_KCPU_Q6_K:
        dequant_q6_k(src, dst, k / MB_KCPU_QK);
        return 1;
    default:
        return 0;
    }
}
