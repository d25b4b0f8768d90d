/* AVX2+FMA+F16C GEMM tiles: 4x1, 4x2, 2x3, 2x4 weight rows by tokens, k in chunks of
 * 16. Same scheme as the AVX-512 path with 8-lane registers: bf16 rows
 * widen with a shift (even k) and a mask (odd k) against deinterleaved
 * activations, f16 rows with vcvtph2ps. AVX2 has no 16-bit masked loads, so
 * a short last chunk is copied into a zero-padded buffer first. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/gemm_isa.h"

#define MB_K256_CHUNK 16
#define MB_K256_PREFETCH 512

#define MB_INLINE static inline __attribute__((always_inline))

/* [sum a, sum b, sum c, sum d] */
MB_INLINE __m128 mb_k256_reduce4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 t0 = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    __m256 t1 = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* Widens 16 weights at p (a full chunk). */
MB_INLINE void mb_k256_widen(const int wdtype, const void *p, __m256 *lo, __m256 *hi)
{
    if (wdtype == 2) {
        __m256i v = _mm256_loadu_si256((const __m256i *)p);
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
    } else if (wdtype == 1) {
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p + 1));
    } else {
        *lo = _mm256_loadu_ps((const float *)p);
        *hi = _mm256_loadu_ps((const float *)p + 8);
    }
}

MB_INLINE void mb_k256_step(const int wdtype, const char *const *wr, size_t esz, const int R,
                            const float *const *xp, const int T, size_t kk, size_t n,
                            __m256 acc[MB_KCPU_TILE_R_MAX][MB_KCPU_TILE_T_MAX])
{
    __m256 xa[MB_KCPU_TILE_T_MAX], xb[MB_KCPU_TILE_T_MAX];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        xa[t] = _mm256_loadu_ps(xp[t] + kk);
        xb[t] = _mm256_loadu_ps(xp[t] + kk + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m256 lo, hi;
        const char *p = wr[r] + kk * esz;
        _mm_prefetch(p + MB_K256_PREFETCH, _MM_HINT_T0);
        if (n >= MB_K256_CHUNK) {
            mb_k256_widen(wdtype, p, &lo, &hi);
        } else {
            _Alignas(32) unsigned char buf[MB_K256_CHUNK * 4] = {0};
            memcpy(buf, p, n * esz);
            mb_k256_widen(wdtype, buf, &lo, &hi);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            acc[r][t] = _mm256_fmadd_ps(lo, xa[t], acc[r][t]);
            acc[r][t] = _mm256_fmadd_ps(hi, xb[t], acc[r][t]);
        }
    }
}

MB_INLINE void mb_k256_tile(const int wdtype, const void *w, size_t ldw, const int R,
                            const float *const *xp, const int T, size_t k0, size_t k1, float *out)
{
    const size_t esz = wdtype == 0 ? 4 : 2;
    const char *wr[MB_KCPU_TILE_R_MAX];
    __m256 acc[MB_KCPU_TILE_R_MAX][MB_KCPU_TILE_T_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        wr[r] = (const char *)w + (size_t)r * ldw * esz;
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    }
    size_t kk = k0;
    for (; kk + MB_K256_CHUNK <= k1; kk += MB_K256_CHUNK)
        mb_k256_step(wdtype, wr, esz, R, xp, T, kk, MB_K256_CHUNK, acc);
    if (kk < k1) mb_k256_step(wdtype, wr, esz, R, xp, T, kk, k1 - kk, acc);

    const __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        float tmp[4];
        __m256 b = R > 1 ? acc[1][t] : z, c = R > 2 ? acc[2][t] : z, d = R > 3 ? acc[3][t] : z;
        _mm_storeu_ps(tmp, mb_k256_reduce4(acc[0][t], b, c, d));
        for (int r = 0; r < R; r++)
            out[t * R + r] = tmp[r];
    }
}

#define MB_K256_FN(DT, R, T)                                                                       \
    static void mb_k256_tile_##DT##_##R##_##T(const void *w, size_t ldw, const float *const *xp,   \
                                              size_t k0, size_t k1, float *out)                    \
    {                                                                                              \
        mb_k256_tile(DT, w, ldw, R, xp, T, k0, k1, out);                                           \
    }
#define MB_K256_DT(DT)                                                                             \
    MB_K256_FN(DT, 4, 1)                                                                           \
    MB_K256_FN(DT, 4, 2) MB_K256_FN(DT, 2, 1) MB_K256_FN(DT, 2, 2) MB_K256_FN(DT, 2, 3)            \
        MB_K256_FN(DT, 2, 4) MB_K256_FN(DT, 1, 1) MB_K256_FN(DT, 1, 2) MB_K256_FN(DT, 1, 3)        \
            MB_K256_FN(DT, 1, 4)
MB_K256_DT(0)
MB_K256_DT(1)
MB_K256_DT(2)

typedef void (*mb_k256_tile_fn)(const void *, size_t, const float *const *, size_t, size_t,
                                float *);

#define MB_K256_ROW(DT)                                                                            \
    {                                                                                              \
        {NULL},                                                                                    \
            {NULL, mb_k256_tile_##DT##_1_1, mb_k256_tile_##DT##_1_2, mb_k256_tile_##DT##_1_3,      \
             mb_k256_tile_##DT##_1_4},                                                             \
            {NULL, mb_k256_tile_##DT##_2_1, mb_k256_tile_##DT##_2_2, mb_k256_tile_##DT##_2_3,      \
             mb_k256_tile_##DT##_2_4},                                                             \
            {NULL},                                                                                \
        {                                                                                          \
            NULL, mb_k256_tile_##DT##_4_1, mb_k256_tile_##DT##_4_2, NULL, NULL                     \
        }                                                                                          \
    }

static const mb_k256_tile_fn mb_k256_tiles[3][5][5] = {MB_K256_ROW(0), MB_K256_ROW(1),
                                                       MB_K256_ROW(2)};

static void mb_k256_tile_any(int wdtype, const void *w, size_t ldw, int rows,
                             const float *const *xp, int n_tok, size_t k0, size_t k1, float *out)
{
    mb_k256_tile_fn fn = NULL;
    if (wdtype >= 0 && wdtype <= 2 && rows >= 1 && rows <= 4 && n_tok >= 1 && n_tok <= 4)
        fn = mb_k256_tiles[wdtype][rows][n_tok];
    if (fn) {
        fn(w, ldw, xp, k0, k1, out);
        return;
    }
    const size_t esz = wdtype == 0 ? 4 : 2;
    float tmp[MB_KCPU_TILE_T_MAX];
    for (int r = 0; r < rows; r++) {
        for (int t0 = 0; t0 < n_tok; t0 += 4) {
            int nt = n_tok - t0 < 4 ? n_tok - t0 : 4;
            mb_k256_tiles[wdtype][1][nt]((const char *)w + (size_t)r * ldw * esz, ldw, xp + t0, k0,
                                         k1, tmp);
            for (int t = 0; t < nt; t++)
                out[(t0 + t) * rows + r] = tmp[t];
        }
    }
}

static void mb_k256_pack(int wdtype, const float *x, size_t k, float *xp)
{
    size_t kp = (k + MB_K256_CHUNK - 1) / MB_K256_CHUNK * MB_K256_CHUNK;
    if (wdtype != 2) {
        memcpy(xp, x, k * sizeof *xp);
        memset(xp + k, 0, (kp - k) * sizeof *xp);
        return;
    }
    for (size_t c = 0; c < kp; c += MB_K256_CHUNK) {
        float v[MB_K256_CHUNK] = {0};
        size_t n = k - c < MB_K256_CHUNK ? k - c : MB_K256_CHUNK;
        memcpy(v, x + c, n * sizeof *v);
        for (int q = 0; q < MB_K256_CHUNK / 2; q++) {
            xp[c + (size_t)q] = v[2 * q];
            xp[c + MB_K256_CHUNK / 2 + (size_t)q] = v[2 * q + 1];
        }
    }
}

const mb_kcpu_isa_impl mb_kcpu_isa_avx2 = {
    .name = "avx2",
    .chunk = MB_K256_CHUNK,
    .bf16_deinterleave = 1,
    .t_max = 4,
    /* 4x2 needs 8 accumulators + 4 activations + 2 weights = 14 registers. */
    .rows_for_t = {4, 4, 4, 2, 2, 2, 2, 2, 2},
    .pack = mb_k256_pack,
    .tile = mb_k256_tile_any,
    .silu_mul = mb_kcpu_silu_mul_avx2,
};
