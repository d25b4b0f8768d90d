/* The "f16c" bulk path: f32 <-> f16 with AVX + F16C (vcvtps2ph with an
 * explicit round-to-nearest-even immediate, vcvtph2ps; both exact IEEE
 * including subnormals and ignore DAZ/FTZ), f32 <-> bf16 with 128-bit SSE4.1
 * integer code, as this file may not assume AVX2. Tails go through a
 * zero-padded stack block so they use the same instructions. */
#include "protocol/dtype_impl.h"

#if defined(__AVX__) && defined(__F16C__)
#include <immintrin.h>
#include <string.h>

static void mb_dtype_f16c_f32_to_f16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps((const float *)(s + 4 * i));
        __m256 b = _mm256_loadu_ps((const float *)(s + 4 * i + 32));
        _mm_storeu_si128((__m128i *)(d + 2 * i), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128((__m128i *)(d + 2 * i + 16),
                         _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i += 8) {
        size_t k = n - i < 8 ? n - i : 8;
        float in[8] = {0};
        uint16_t out[8];
        memcpy(in, s + 4 * i, 4 * k);
        _mm_storeu_si128((__m128i *)out,
                         _mm256_cvtps_ph(_mm256_loadu_ps(in), _MM_FROUND_TO_NEAREST_INT));
        memcpy(d + 2 * i, out, 2 * k);
    }
}

static void mb_dtype_f16c_f16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + 2 * i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 2 * i + 16));
        _mm256_storeu_ps((float *)(d + 4 * i), _mm256_cvtph_ps(a));
        _mm256_storeu_ps((float *)(d + 4 * i + 32), _mm256_cvtph_ps(b));
    }
    for (; i < n; i += 8) {
        size_t k = n - i < 8 ? n - i : 8;
        uint16_t in[8] = {0};
        float out[8];
        memcpy(in, s + 2 * i, 2 * k);
        _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)in)));
        memcpy(d + 4 * i, out, 4 * k);
    }
}

/* Four f32 lanes to bf16 in the low half of each lane: round to nearest even
 * by adding 0x7fff plus the kept lsb; NaNs keep their top bits, made quiet. */
static __m128i mb_dtype_f16c_bf16_round_(__m128i x)
{
    __m128i top = _mm_srli_epi32(x, 16);
    __m128i lsb = _mm_and_si128(top, _mm_set1_epi32(1));
    __m128i r = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(x, _mm_set1_epi32(0x7fff)), lsb), 16);
    /* Signed compare is fine: both sides have the sign bit clear. */
    __m128i nan =
        _mm_cmpgt_epi32(_mm_and_si128(x, _mm_set1_epi32(0x7fffffff)), _mm_set1_epi32(0x7f800000));
    return _mm_blendv_epi8(r, _mm_or_si128(top, _mm_set1_epi32(0x40)), nan);
}

/* Eight f32 at s to eight bf16 (lanes are <= 0xffff, so the unsigned
 * saturating pack just narrows). */
static __m128i mb_dtype_f16c_bf16_pack8_(const void *s)
{
    __m128i lo = mb_dtype_f16c_bf16_round_(_mm_loadu_si128((const __m128i *)s));
    __m128i hi = mb_dtype_f16c_bf16_round_(_mm_loadu_si128((const __m128i *)s + 1));
    return _mm_packus_epi32(lo, hi);
}

static void mb_dtype_f16c_f32_to_bf16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + 2 * i), mb_dtype_f16c_bf16_pack8_(s + 4 * i));
    if (i < n) {
        size_t k = n - i;
        float in[8] = {0};
        uint16_t out[8];
        memcpy(in, s + 4 * i, 4 * k);
        _mm_storeu_si128((__m128i *)out, mb_dtype_f16c_bf16_pack8_(in));
        memcpy(d + 2 * i, out, 2 * k);
    }
}

/* bf16 lanes already shifted into the top half of f32 lanes: quiet NaNs. */
static __m128i mb_dtype_f16c_bf16_quiet_(__m128i x)
{
    __m128i nan =
        _mm_cmpgt_epi32(_mm_and_si128(x, _mm_set1_epi32(0x7fffffff)), _mm_set1_epi32(0x7f800000));
    return _mm_or_si128(x, _mm_and_si128(nan, _mm_set1_epi32(0x00400000)));
}

static void mb_dtype_f16c_bf16_unpack8_(void *d, __m128i h)
{
    __m128i z = _mm_setzero_si128();
    _mm_storeu_si128((__m128i *)d, mb_dtype_f16c_bf16_quiet_(_mm_unpacklo_epi16(z, h)));
    _mm_storeu_si128((__m128i *)d + 1, mb_dtype_f16c_bf16_quiet_(_mm_unpackhi_epi16(z, h)));
}

static void mb_dtype_f16c_bf16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        mb_dtype_f16c_bf16_unpack8_(d + 4 * i, _mm_loadu_si128((const __m128i *)(s + 2 * i)));
    if (i < n) {
        size_t k = n - i;
        uint16_t in[8] = {0};
        float out[8];
        memcpy(in, s + 2 * i, 2 * k);
        mb_dtype_f16c_bf16_unpack8_(out, _mm_loadu_si128((const __m128i *)in));
        memcpy(d + 4 * i, out, 4 * k);
    }
}

const mb_dtype_simd_ops mb_dtype_ops_f16c = {
    .name = "f16c",
    .uses_mxcsr = 1,
    .f32_to_f16 = mb_dtype_f16c_f32_to_f16_,
    .f16_to_f32 = mb_dtype_f16c_f16_to_f32_,
    .f32_to_bf16 = mb_dtype_f16c_f32_to_bf16_,
    .bf16_to_f32 = mb_dtype_f16c_bf16_to_f32_,
};
#else
const mb_dtype_simd_ops mb_dtype_ops_f16c = {.name = "f16c"};
#endif
