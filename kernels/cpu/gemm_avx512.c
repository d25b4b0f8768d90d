/* AVX-512 GEMM tiles: 8x1, 8x2 (row by row), 6x3, 4x4 and 4x5 weight rows by
 * tokens, k in chunks of 32.
 * bf16 rows widen exactly to f32 with one shift (even k) and one mask (odd k)
 * against deinterleaved activations, so results match an f32 reference up
 * to summation order; f16 rows widen with vcvtph2ps. Each weight chunk is
 * loaded once per tile and used for every token of the tile, which makes
 * decode (one token tile) a single stream over the weights. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/gemm_isa.h"

#define MB_K512_CHUNK 32
/* Bytes ahead of the current chunk to prefetch in each weight row. */
#define MB_K512_PREFETCH 1024

#define MB_INLINE static inline __attribute__((always_inline))

/* [sum a, sum b, sum c, sum d] */
MB_INLINE __m128 mb_k512_reduce4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

/* Writes the tile's horizontal sums to out[t * R + r]. */
MB_INLINE void mb_k512_store(__m512 acc[MB_KCPU_TILE_R_MAX][MB_KCPU_TILE_T_MAX], const int R,
                             const int T, float *out)
{
    const __m512 z = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        if (R == 1) {
            out[t] = _mm512_reduce_add_ps(acc[0][t]);
            continue;
        }
        int r = 0;
#pragma GCC unroll 8
        for (; r + 4 <= R; r += 4)
            _mm_storeu_ps(out + t * R + r,
                          mb_k512_reduce4(acc[r][t], acc[r + 1][t], acc[r + 2][t], acc[r + 3][t]));
        if (r < R) {
            float tmp[4];
            __m512 b = r + 1 < R ? acc[r + 1][t] : z, c = r + 2 < R ? acc[r + 2][t] : z;
            _mm_storeu_ps(tmp, mb_k512_reduce4(acc[r][t], b, c, z));
            for (int q = 0; r + q < R; q++)
                out[t * R + r + q] = tmp[q];
        }
    }
}

/* Widens 32 weights of one row: lo/hi are the halves that pair with the
 * packed activations' first and second 16 floats of the chunk. */
MB_INLINE void mb_k512_widen(const int wdtype, const void *row, size_t kk, size_t n, __m512 *lo,
                             __m512 *hi)
{
    if (wdtype == 2) {
        const uint16_t *p = (const uint16_t *)row + kk;
        __m512i v = n >= 32 ? _mm512_loadu_si512(p)
                            : _mm512_maskz_loadu_epi16((__mmask32)((1ull << n) - 1), p);
        *lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (wdtype == 1) {
        const uint16_t *p = (const uint16_t *)row + kk;
        if (n >= 32) {
            *lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
            *hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
        } else {
            __mmask16 ml = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
            __mmask16 mh = (__mmask16)(n > 16 ? (1u << (n - 16)) - 1 : 0);
            *lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(ml, p));
            *hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mh, p + 16));
        }
    } else {
        const float *p = (const float *)row + kk;
        if (n >= 32) {
            *lo = _mm512_loadu_ps(p);
            *hi = _mm512_loadu_ps(p + 16);
        } else {
            __mmask16 ml = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
            __mmask16 mh = (__mmask16)(n > 16 ? (1u << (n - 16)) - 1 : 0);
            *lo = _mm512_maskz_loadu_ps(ml, p);
            *hi = _mm512_maskz_loadu_ps(mh, p + 16);
        }
    }
}

/* One chunk of k (n = 32, or fewer in the tail) for every row and token. */
MB_INLINE void mb_k512_step(const int wdtype, const char *const *wr, size_t esz, const int R,
                            const float *const *xp, const int T, size_t kk, size_t n,
                            __m512 acc[MB_KCPU_TILE_R_MAX][MB_KCPU_TILE_T_MAX])
{
    __m512 xa[MB_KCPU_TILE_T_MAX], xb[MB_KCPU_TILE_T_MAX];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        xa[t] = _mm512_loadu_ps(xp[t] + kk);
        xb[t] = _mm512_loadu_ps(xp[t] + kk + 16);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m512 lo, hi;
        _mm_prefetch(wr[r] + kk * esz + MB_K512_PREFETCH, _MM_HINT_T0);
        mb_k512_widen(wdtype, wr[r], kk, n, &lo, &hi);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            acc[r][t] = _mm512_fmadd_ps(lo, xa[t], acc[r][t]);
            acc[r][t] = _mm512_fmadd_ps(hi, xb[t], acc[r][t]);
        }
    }
}

MB_INLINE void mb_k512_tile(const int wdtype, const void *w, size_t ldw, const int R,
                            const float *const *xp, const int T, size_t k0, size_t k1, float *out)
{
    const size_t esz = wdtype == 0 ? 4 : 2;
    const char *wr[MB_KCPU_TILE_R_MAX];
    __m512 acc[MB_KCPU_TILE_R_MAX][MB_KCPU_TILE_T_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        wr[r] = (const char *)w + (size_t)r * ldw * esz;
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    }
    size_t kk = k0;
    for (; kk + MB_K512_CHUNK <= k1; kk += MB_K512_CHUNK)
        mb_k512_step(wdtype, wr, esz, R, xp, T, kk, MB_K512_CHUNK, acc);
    if (kk < k1) mb_k512_step(wdtype, wr, esz, R, xp, T, kk, k1 - kk, acc);
    mb_k512_store(acc, R, T, out);
}

/* Decode tile (1-2 tokens): rows one after another, so a group of rows
 * (contiguous in memory) is read as one sequential stream instead of R
 * interleaved ones; four chunks in flight per row in independent
 * accumulators hide the FMA latency. The activations stay in L1. */
MB_INLINE void mb_k512_tile_seq(const int wdtype, const void *w, size_t ldw, const int R,
                                const float *const *xp, const int T, size_t k0, size_t k1,
                                float *out)
{
    const size_t esz = wdtype == 0 ? 4 : 2;
#pragma GCC unroll 1
    for (int r = 0; r < R; r++) {
        const char *row = (const char *)w + (size_t)r * ldw * esz;
        __m512 acc[4][2];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
#pragma GCC unroll 2
            for (int t = 0; t < T; t++)
                acc[c][t] = _mm512_setzero_ps();
        size_t kk = k0;
        for (; kk + 4 * MB_K512_CHUNK <= k1; kk += 4 * MB_K512_CHUNK) {
            _mm_prefetch(row + kk * esz + MB_K512_PREFETCH, _MM_HINT_T0);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m512 lo, hi;
                size_t kc = kk + (size_t)c * MB_K512_CHUNK;
                mb_k512_widen(wdtype, row, kc, MB_K512_CHUNK, &lo, &hi);
#pragma GCC unroll 2
                for (int t = 0; t < T; t++) {
                    acc[c][t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xp[t] + kc), acc[c][t]);
                    acc[c][t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xp[t] + kc + 16), acc[c][t]);
                }
            }
        }
        for (; kk < k1; kk += MB_K512_CHUNK) {
            __m512 lo, hi;
            mb_k512_widen(wdtype, row, kk, k1 - kk, &lo, &hi);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) {
                acc[0][t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xp[t] + kk), acc[0][t]);
                acc[0][t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xp[t] + kk + 16), acc[0][t]);
            }
        }
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            out[t * R + r] = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(acc[0][t], acc[1][t]), _mm512_add_ps(acc[2][t], acc[3][t])));
    }
}

/* One function per (dtype, rows, tokens) so every loop above is unrolled
 * with constant bounds and the accumulators live in registers. One or two
 * tokens take the row-sequential tile (measured ~6% faster streaming from
 * DRAM in one thread, 6 of 6 alternating runs). */
#define MB_K512_FN(DT, R, T)                                                                       \
    static void mb_k512_tile_##DT##_##R##_##T(const void *w, size_t ldw, const float *const *xp,   \
                                              size_t k0, size_t k1, float *out)                    \
    {                                                                                              \
        if (T <= 2)                                                                                \
            mb_k512_tile_seq(DT, w, ldw, R, xp, T, k0, k1, out);                                   \
        else                                                                                       \
            mb_k512_tile(DT, w, ldw, R, xp, T, k0, k1, out);                                       \
    }
#define MB_K512_DT(DT)                                                                             \
    MB_K512_FN(DT, 8, 1)                                                                           \
    MB_K512_FN(DT, 8, 2)                                                                           \
    MB_K512_FN(DT, 6, 1)                                                                           \
    MB_K512_FN(DT, 6, 2) MB_K512_FN(DT, 6, 3) MB_K512_FN(DT, 4, 1) MB_K512_FN(DT, 4, 2)            \
        MB_K512_FN(DT, 4, 3) MB_K512_FN(DT, 4, 4) MB_K512_FN(DT, 4, 5) MB_K512_FN(DT, 1, 1)        \
            MB_K512_FN(DT, 1, 2) MB_K512_FN(DT, 1, 3) MB_K512_FN(DT, 1, 4) MB_K512_FN(DT, 1, 5)
MB_K512_DT(0)
MB_K512_DT(1)
MB_K512_DT(2)

typedef void (*mb_k512_tile_fn)(const void *, size_t, const float *const *, size_t, size_t,
                                float *);

#define MB_K512_ROW(DT)                                                                            \
    {                                                                                              \
        {NULL, NULL, NULL, NULL, NULL, NULL},                                                      \
            {NULL,                                                                                 \
             mb_k512_tile_##DT##_1_1,                                                              \
             mb_k512_tile_##DT##_1_2,                                                              \
             mb_k512_tile_##DT##_1_3,                                                              \
             mb_k512_tile_##DT##_1_4,                                                              \
             mb_k512_tile_##DT##_1_5},                                                             \
            {NULL}, {NULL}, /* rows 2, 3 unused */                                                 \
            {NULL,                                                                                 \
             mb_k512_tile_##DT##_4_1,                                                              \
             mb_k512_tile_##DT##_4_2,                                                              \
             mb_k512_tile_##DT##_4_3,                                                              \
             mb_k512_tile_##DT##_4_4,                                                              \
             mb_k512_tile_##DT##_4_5},                                                             \
            {NULL}, {NULL,                                                                         \
                     mb_k512_tile_##DT##_6_1,                                                      \
                     mb_k512_tile_##DT##_6_2,                                                      \
                     mb_k512_tile_##DT##_6_3,                                                      \
                     NULL,                                                                         \
                     NULL},                                                                        \
            {NULL},                                                                                \
        {                                                                                          \
            NULL, mb_k512_tile_##DT##_8_1, mb_k512_tile_##DT##_8_2, NULL, NULL, NULL               \
        }                                                                                          \
    }

static const mb_k512_tile_fn mb_k512_tiles[3][9][6] = {MB_K512_ROW(0), MB_K512_ROW(1),
                                                       MB_K512_ROW(2)};

static void mb_k512_tile_any(int wdtype, const void *w, size_t ldw, int rows,
                             const float *const *xp, int n_tok, size_t k0, size_t k1, float *out)
{
    mb_k512_tile_fn fn = NULL;
    if (wdtype >= 0 && wdtype <= 2 && rows >= 1 && rows <= 8 && n_tok >= 1 && n_tok <= 5)
        fn = mb_k512_tiles[wdtype][rows][n_tok];
    if (fn) {
        fn(w, ldw, xp, k0, k1, out);
        return;
    }
    /* Shapes the driver never asks for: one row at a time. */
    const size_t esz = wdtype == 0 ? 4 : 2;
    float tmp[MB_KCPU_TILE_T_MAX];
    for (int r = 0; r < rows; r++) {
        for (int t0 = 0; t0 < n_tok; t0 += 5) {
            int nt = n_tok - t0 < 5 ? n_tok - t0 : 5;
            mb_k512_tiles[wdtype][1][nt]((const char *)w + (size_t)r * ldw * esz, ldw, xp + t0, k0,
                                         k1, tmp);
            for (int t = 0; t < nt; t++)
                out[(t0 + t) * rows + r] = tmp[t];
        }
    }
}

static void mb_k512_pack(int wdtype, const float *x, size_t k, float *xp)
{
    size_t kp = (k + MB_K512_CHUNK - 1) / MB_K512_CHUNK * MB_K512_CHUNK;
    if (wdtype != 2) {
        memcpy(xp, x, k * sizeof *xp);
        memset(xp + k, 0, (kp - k) * sizeof *xp);
        return;
    }
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (size_t c = 0; c < kp; c += MB_K512_CHUNK) {
        __m512 a, b;
        if (k - c >= MB_K512_CHUNK) {
            a = _mm512_loadu_ps(x + c);
            b = _mm512_loadu_ps(x + c + 16);
        } else {
            size_t n = k - c;
            __mmask16 ml = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
            __mmask16 mh = (__mmask16)(n > 16 ? (1u << (n - 16)) - 1 : 0);
            a = _mm512_maskz_loadu_ps(ml, x + c);
            b = _mm512_maskz_loadu_ps(mh, x + c + 16);
        }
        _mm512_storeu_ps(xp + c, _mm512_permutex2var_ps(a, ev, b));
        _mm512_storeu_ps(xp + c + 16, _mm512_permutex2var_ps(a, od, b));
    }
}

const mb_kcpu_isa_impl mb_kcpu_isa_avx512 = {
    .name = "avx512",
    .chunk = MB_K512_CHUNK,
    .bf16_deinterleave = 1,
    .t_max = 5,
    /* Decode tiles (few tokens) take more rows: more weight streams in
     * flight; 8x2 and 6x3 still fit the 32 registers without spills. */
    .rows_for_t = {8, 8, 8, 6, 4, 4, 4, 4, 4},
    .pack = mb_k512_pack,
    .tile = mb_k512_tile_any,
    .silu_mul = mb_kcpu_silu_mul_avx512,
};
