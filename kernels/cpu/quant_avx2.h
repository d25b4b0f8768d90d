/* Helpers shared by the AVX2 quantized kernels (quant_avx2.c, the dots;
 * dequant_avx2.c, the dequantization); include only from files built with
 * AVX2 + F16C. */
#ifndef MB_KERNELS_CPU_QUANT_AVX2_H
#define MB_KERNELS_CPU_QUANT_AVX2_H

#include <immintrin.h>
#include <stdint.h>

#define MB_INLINE static inline __attribute__((always_inline))

MB_INLINE float mb_k2_f16(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* The 8 scales (bytes 0-7) and 8 mins (bytes 8-15) of a Q4_K/Q5_K block,
 * get_scale_min_k4 for every j at once: llama.cpp's utmp word trick on the
 * four 32-bit lanes of one register. Reads 16 bytes at q, the 12 scale
 * bytes and the 4 that follow them in the block. */
MB_INLINE __m128i mb_k2_scales_k4(const uint8_t *q)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)q);           /* u0 u1 u2 - */
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    const __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
                                     _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    const __m128i hi =
        _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0));
    return _mm_or_si128(lo, hi); /* s0 s1 m0 m1 */
}

/* One half of a Q6_K block (128 weights) as unsigned 6-bit values 0..63
 * (the caller subtracts 32): q[g] holds weights 32g..32g+31 of the half,
 * low 4 bits from ql0/ql1 (64 bytes), high 2 from qh (32 bytes), in
 * llama.cpp's order. */
MB_INLINE void mb_k2_q6k_unpack(__m256i ql0, __m256i ql1, __m256i qh, __m256i q[4])
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
}

#endif
