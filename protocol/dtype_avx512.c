/* The "avx512" and "avx512bf16" bulk paths: 16 lanes a step, tails through
 * masked loads and stores. f16 uses the EVEX vcvtps2ph (round-to-nearest-even
 * immediate) and vcvtph2ps, exact IEEE including subnormals; bf16 uses integer
 * rounding, except that "avx512bf16" encodes with vcvtneps2bf16 and redoes in
 * integer the lanes that instruction gets wrong: it flushes f32 subnormal
 * inputs to zero, while bf16 keeps them. */
#include "protocol/dtype_impl.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define MB_RNE_ _MM_FROUND_TO_NEAREST_INT

/* Mask of the first min(rem, 16) lanes. */
static __mmask16 mb_dtype_avx512_mask_(size_t rem)
{
    return rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
}

static void mb_dtype_avx512_f32_to_f16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(s + 4 * i);
        __m512 b = _mm512_loadu_ps(s + 4 * i + 64);
        _mm256_storeu_si256((__m256i *)(d + 2 * i), _mm512_cvtps_ph(a, MB_RNE_));
        _mm256_storeu_si256((__m256i *)(d + 2 * i + 32), _mm512_cvtps_ph(b, MB_RNE_));
    }
    for (; i < n; i += 16) {
        __mmask16 k = mb_dtype_avx512_mask_(n - i);
        __m512 a = _mm512_maskz_loadu_ps(k, s + 4 * i);
        _mm256_mask_storeu_epi16(d + 2 * i, k, _mm512_cvtps_ph(a, MB_RNE_));
    }
}

static void mb_dtype_avx512_f16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + 2 * i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 2 * i + 32));
        _mm512_storeu_ps(d + 4 * i, _mm512_cvtph_ps(a));
        _mm512_storeu_ps(d + 4 * i + 64, _mm512_cvtph_ps(b));
    }
    for (; i < n; i += 16) {
        __mmask16 k = mb_dtype_avx512_mask_(n - i);
        __m256i a = _mm256_maskz_loadu_epi16(k, s + 2 * i);
        _mm512_mask_storeu_ps(d + 4 * i, k, _mm512_cvtph_ps(a));
    }
}

/* Sixteen f32 lanes (as integers) to bf16, exactly as mb_f32_to_bf16: add
 * 0x7fff plus the kept lsb to round to nearest even; NaNs keep their top bits
 * and are made quiet. */
static __m256i mb_dtype_avx512_bf16_round_(__m512i x)
{
    __m512i top = _mm512_srli_epi32(x, 16);
    __m512i lsb = _mm512_and_si512(top, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, top, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

static void mb_dtype_avx512_f32_to_bf16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512i a = _mm512_loadu_si512(s + 4 * i);
        __m512i b = _mm512_loadu_si512(s + 4 * i + 64);
        _mm256_storeu_si256((__m256i *)(d + 2 * i), mb_dtype_avx512_bf16_round_(a));
        _mm256_storeu_si256((__m256i *)(d + 2 * i + 32), mb_dtype_avx512_bf16_round_(b));
    }
    for (; i < n; i += 16) {
        __mmask16 k = mb_dtype_avx512_mask_(n - i);
        __m512i a = _mm512_maskz_loadu_epi32(k, s + 4 * i);
        _mm256_mask_storeu_epi16(d + 2 * i, k, mb_dtype_avx512_bf16_round_(a));
    }
}

/* Sixteen bf16 to f32: shift into the top half, make NaNs quiet. */
static __m512i mb_dtype_avx512_bf16_widen_(__m256i h)
{
    __m512i x = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(x, nan, x, _mm512_set1_epi32(0x00400000));
}

static void mb_dtype_avx512_bf16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + 2 * i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 2 * i + 32));
        _mm512_storeu_si512(d + 4 * i, mb_dtype_avx512_bf16_widen_(a));
        _mm512_storeu_si512(d + 4 * i + 64, mb_dtype_avx512_bf16_widen_(b));
    }
    for (; i < n; i += 16) {
        __mmask16 k = mb_dtype_avx512_mask_(n - i);
        __m256i a = _mm256_maskz_loadu_epi16(k, s + 2 * i);
        _mm512_mask_storeu_epi32(d + 4 * i, k, mb_dtype_avx512_bf16_widen_(a));
    }
}

const mb_dtype_simd_ops mb_dtype_ops_avx512 = {
    .name = "avx512",
    .uses_mxcsr = 1,
    .f32_to_f16 = mb_dtype_avx512_f32_to_f16_,
    .f16_to_f32 = mb_dtype_avx512_f16_to_f32_,
    .f32_to_bf16 = mb_dtype_avx512_f32_to_bf16_,
    .bf16_to_f32 = mb_dtype_avx512_bf16_to_f32_,
};

#if defined(__AVX512BF16__)
/* Lanes holding an f32 subnormal (exponent zero, mantissa not): the ones
 * vcvtneps2bf16 flushes to zero. Zeros are left alone, as the instruction
 * gets them right and zero-heavy data should not take the fix-up. */
static __mmask16 mb_dtype_avx512_subnormal_(__m512i x)
{
    return _mm512_testn_epi32_mask(x, _mm512_set1_epi32(0x7f800000)) &
           _mm512_test_epi32_mask(x, _mm512_set1_epi32(0x007fffff));
}

/* Sixteen f32 to bf16 with vcvtneps2bf16 (always round to nearest even,
 * NaNs quiet with top bits kept, no MXCSR), subnormal lanes redone. */
static __m256i mb_dtype_avx512bf16_cvt_(__m512i x)
{
    __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(x));
    __mmask16 sub = mb_dtype_avx512_subnormal_(x);
    if (sub) h = _mm256_mask_mov_epi16(h, sub, mb_dtype_avx512_bf16_round_(x));
    return h;
}

static void mb_dtype_avx512bf16_f32_to_bf16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512i a = _mm512_loadu_si512(s + 4 * i);
        __m512i b = _mm512_loadu_si512(s + 4 * i + 64);
        /* Lanes 0-15 of the result come from the second operand. */
        __m512i h = (__m512i)_mm512_cvtne2ps_pbh(_mm512_castsi512_ps(b), _mm512_castsi512_ps(a));
        __mmask32 sub = (__mmask32)mb_dtype_avx512_subnormal_(a) |
                        ((__mmask32)mb_dtype_avx512_subnormal_(b) << 16);
        if (sub) {
            __m512i fix = _mm512_inserti64x4(_mm512_castsi256_si512(mb_dtype_avx512_bf16_round_(a)),
                                             mb_dtype_avx512_bf16_round_(b), 1);
            h = _mm512_mask_mov_epi16(h, sub, fix);
        }
        _mm512_storeu_si512(d + 2 * i, h);
    }
    for (; i < n; i += 16) {
        __mmask16 k = mb_dtype_avx512_mask_(n - i);
        __m512i a = _mm512_maskz_loadu_epi32(k, s + 4 * i);
        _mm256_mask_storeu_epi16(d + 2 * i, k, mb_dtype_avx512bf16_cvt_(a));
    }
}

const mb_dtype_simd_ops mb_dtype_ops_avx512bf16 = {
    .name = "avx512bf16",
    .uses_mxcsr = 1,
    .f32_to_f16 = mb_dtype_avx512_f32_to_f16_,
    .f16_to_f32 = mb_dtype_avx512_f16_to_f32_,
    .f32_to_bf16 = mb_dtype_avx512bf16_f32_to_bf16_,
    .bf16_to_f32 = mb_dtype_avx512_bf16_to_f32_,
};
#else
const mb_dtype_simd_ops mb_dtype_ops_avx512bf16 = {.name = "avx512bf16"};
#endif

#else
const mb_dtype_simd_ops mb_dtype_ops_avx512 = {.name = "avx512"};
const mb_dtype_simd_ops mb_dtype_ops_avx512bf16 = {.name = "avx512bf16"};
#endif
