/* AVX2 dot products of quantized weight rows with 8-bit activations: per
 * block, u8 x s8 pair products (maddubs) widened to int32 with the block's
 * integer scales, then one f32 scale per block; the integer sums equal the
 * scalar path's (quant.c) exactly, only the f32 accumulation order differs.
 * One inline kernel per type takes nr rows (1 or 2) by nt tokens (1 to 4),
 * constants after inlining: each (row, token) gets the same operations
 * whatever nr and nt are, so decode (one token, two rows: two weight
 * streams in flight) and prefill (a weight block unpacked once for several
 * tokens) give the same bits for a token. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_avx2.h"
#include "kernels/cpu/quant_isa.h"

/* Full unrolling keeps the per-row arrays of the multi-row kernels in
 * registers; -O2 would otherwise leave them on the stack. */
#define MB_UNROLL _Pragma("GCC unroll 4")

#ifndef MB_PF_DIST
#define MB_PF_DIST 1024
#endif
#ifndef MB_PF_HINT
#define MB_PF_HINT _MM_HINT_T0
#endif

/* Prefetches the weight bytes a block of `bytes` will use some blocks
 * ahead: decode streams each weight once, and the hardware prefetcher alone
 * left the dots waiting on memory (Mixtral Q4_K decode ~10% faster with it).
 * Past a row's end it fetches the next row, which is what the caller reads
 * next; a prefetch never faults. */
MB_INLINE void prefetch_block(const void *block, size_t bytes)
{
    const char *p = (const char *)block + MB_PF_DIST;
    if (MB_PF_DIST == 0) return;
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch(p + o, MB_PF_HINT);
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

/* ---- shuffles of the K-quants ------------------------------------------ */

/* A shuffle that puts 16-bit word lo of a lane in every word of the low
 * lane and word hi in every word of the high lane. */
MB_INLINE __m256i word_shuffle(int lo, int hi)
{
    const short l = (short)((2 * lo + 1) << 8 | 2 * lo), h = (short)((2 * hi + 1) << 8 | 2 * hi);
    return _mm256_setr_epi16(l, l, l, l, l, l, l, l, h, h, h, h, h, h, h, h);
}

/* v shifted so that bit b of each byte lands on bit 4 (b a constant after
 * inlining; immediates spelled out for -O0). */
MB_INLINE __m256i shift_bit_to_4(__m256i v, int b)
{
    switch (b) {
    case 0:
        return _mm256_slli_epi16(v, 4);
    case 1:
        return _mm256_slli_epi16(v, 3);
    case 2:
        return _mm256_slli_epi16(v, 2);
    case 3:
        return _mm256_slli_epi16(v, 1);
    case 4:
        return v;
    case 5:
        return _mm256_srli_epi16(v, 1);
    case 6:
        return _mm256_srli_epi16(v, 2);
    default:
        return _mm256_srli_epi16(v, 3);
    }
}

/* ---- the kernels: nr rows x nt tokens ------------------------------------ */

/* Each kernel unpacks a weight block once for its nt tokens and repeats,
 * for each (row, token), the same operations: the same integer lanes, the
 * same f32 multiply for the block scale, the same FMA into the same
 * accumulator lane, the same final horizontal sum. Only the interleaving of
 * independent outputs depends on nr and nt. Two rows from different places
 * keep two read streams in flight, which decode (one pass over weights not
 * in cache) needs; for several tokens, nr trades register pressure (16 ymm
 * on AVX2) against shared loads. */

/* Pins an accumulator to a register at this point: without it GCC
 * reassociates the integer sums of a block into a tree over all its
 * products, which with nt tokens' worth of them spilled most to the stack
 * (Q4_K 4 tokens: 1.09x one token at a time instead of ~1.5x). */
#define MB_KEEP(v) __asm__("" : "+x"(v))

/* nr rows x nt tokens of Q8_0 (q4 0) or Q4_0 (q4 1); out[r * 4 + t]. The
 * weights' absolute values (dot_s8's sign(x, x)) are taken once per block
 * for every token. */
MB_INLINE void dot_b32_nt(int nr, int nt, int q4, const void *const *w,
                          const mb_kcpu_block_q8_0 *const *y, size_t nb, float *out)
{
    __m256 acc[2][4];
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++)
            acc[r][t] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), off = _mm256_set1_epi8(8);
    const __m256i ones = _mm256_set1_epi16(1);
    for (size_t i = 0; i < nb; i++) {
        __m256i q[2], aq[2];
        __m256 wd[2];
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            uint16_t dh;
            if (q4) {
                const mb_kcpu_block_q4_0 *a = (const mb_kcpu_block_q4_0 *)w[r] + i;
                const __m128i t = _mm_loadu_si128((const __m128i *)a->qs);
                q[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4);
                q[r] = _mm256_sub_epi8(q[r], off);
                dh = a->d;
            } else {
                const mb_kcpu_block_q8_0 *a = (const mb_kcpu_block_q8_0 *)w[r] + i;
                q[r] = _mm256_loadu_si256((const __m256i *)a->qs);
                dh = a->d;
            }
            aq[r] = _mm256_sign_epi8(q[r], q[r]);
            wd[r] = _mm256_set1_ps(mb_k2_f16(dh));
        }
        MB_UNROLL
        for (int t = 0; t < nt; t++) {
            const __m256i yq = _mm256_loadu_si256((const __m256i *)y[t][i].qs);
            const __m256 yd = _mm256_set1_ps(mb_k2_f16(y[t][i].d));
            MB_UNROLL
            for (int r = 0; r < nr; r++) {
                const __m256i p16 = _mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(yq, q[r]));
                /* the f32 product of the one-token kernel's scalar one */
                const __m256 d = _mm256_mul_ps(wd[r], yd);
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)),
                                            acc[r][t]);
            }
        }
    }
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++)
            out[r * 4 + t] = hsum8(acc[r][t]);
}

/* nr rows x nt tokens of Q4_K (q5 0) or Q5_K (q5 1); out[r * 4 + t]. Per
 * row and block: the scales and mins unpacked in SIMD, d and dmin converted
 * together; per 64 weights the nibbles (and fifth bits) and the two
 * sub-block scale shuffles made once for the nt tokens, then per token two
 * maddubs (u4/u5 x s8) and two madd with the 16-bit scales into int32 sums;
 * one FMA per block for the scales and one 4-lane FMA for the mins against
 * the bsums. */
MB_INLINE void dot_k4_nt(int nr, int nt, int q5, const void *const *w,
                         const mb_kcpu_block_q8_k *const *x, size_t nb, float *out)
{
    const size_t bb = q5 ? sizeof(mb_kcpu_block_q5_k) : sizeof(mb_kcpu_block_q4_k);
    const size_t qs_at = q5 ? 48 : 16;
    const __m256i m4 = _mm256_set1_epi8(0x0F), x10 = _mm256_set1_epi8(0x10);
    __m256 acc[2][4];
    __m128 accm[2][4];
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++) {
            acc[r][t] = _mm256_setzero_ps();
            accm[r][t] = _mm_setzero_ps();
        }
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *blk[2];
        __m256i sc[2], hb[2], sumi[2][4];
        __m128 dw[2];
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            blk[r] = (const uint8_t *)w[r] + i * bb;
            prefetch_block(blk[r], bb);
            uint32_t dbits;
            memcpy(&dbits, blk[r], 4);
            dw[r] = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dbits)); /* d, dmin */
            const __m256i sm = _mm256_cvtepu8_epi16(mb_k2_scales_k4(blk[r] + 4));
            const __m128i mins = _mm256_extracti128_si256(sm, 1);
            sc[r] = _mm256_permute2x128_si256(sm, sm, 0x00);
            hb[r] = q5 ? _mm256_loadu_si256((const __m256i *)(blk[r] + 16)) : _mm256_setzero_si256();
            MB_UNROLL
            for (int t = 0; t < nt; t++) {
                const mb_kcpu_block_q8_k *y = &x[t][i];
                const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
                const __m128i ysum =
                    _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                const __m128 dd = _mm_mul_ps(dw[r], _mm_set1_ps(y->d));
                const __m128i prod = _mm_madd_epi16(mins, ysum);
                accm[r][t] =
                    _mm_fmadd_ps(_mm_permute_ps(dd, 0x55), _mm_cvtepi32_ps(prod), accm[r][t]);
                sumi[r][t] = _mm256_setzero_si256();
            }
        }
        MB_UNROLL
        for (int j = 0; j < 4; j++) {
            const __m256i sh0 = word_shuffle(2 * j, 2 * j), sh1 = word_shuffle(2 * j + 1, 2 * j + 1);
            MB_UNROLL
            for (int r = 0; r < nr; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(blk[r] + qs_at + 32 * j));
                __m256i lo = _mm256_and_si256(q, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (q5) {
                    lo = _mm256_or_si256(lo, _mm256_and_si256(shift_bit_to_4(hb[r], 2 * j), x10));
                    hi = _mm256_or_si256(hi,
                                         _mm256_and_si256(shift_bit_to_4(hb[r], 2 * j + 1), x10));
                }
                const __m256i s0 = _mm256_shuffle_epi8(sc[r], sh0);
                const __m256i s1 = _mm256_shuffle_epi8(sc[r], sh1);
                MB_UNROLL
                for (int t = 0; t < nt; t++) {
                    const int8_t *yq = x[t][i].qs + 64 * j;
                    const __m256i p0 = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)yq)), s0);
                    const __m256i p1 = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(yq + 32))),
                        s1);
                    sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_add_epi32(p0, p1));
                    MB_KEEP(sumi[r][t]);
                }
            }
        }
        MB_UNROLL
        for (int r = 0; r < nr; r++)
            MB_UNROLL
            for (int t = 0; t < nt; t++) {
                const __m128 dd = _mm_mul_ps(dw[r], _mm_set1_ps(x[t][i].d));
                acc[r][t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi[r][t]),
                                            acc[r][t]);
            }
    }
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++)
            out[r * 4 + t] = hsum8(acc[r][t]) - hsum4(accm[r][t]);
}

/* nr rows x nt tokens of Q6_K, q6 in [0, 64); out[r * 4 + t]. The offset
 * of 32 comes off once per block as 32 * sum_s sc[s] * bsums[s] (one
 * madd), not as a second maddubs per 32 weights; the sixteen scales are
 * widened once per block and a shuffle puts sub-block 2g's in the low lane
 * and 2g + 1's in the high one; the 6-bit unpacking and the shuffles are
 * made once for the nt tokens. */
MB_INLINE void dot_q6_k_nt(int nr, int nt, const void *const *w, const mb_kcpu_block_q8_k *const *b,
                           size_t nb, float *out)
{
    __m256 acc[2][4];
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++)
            acc[r][t] = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) {
        const mb_kcpu_block_q6_k *a[2];
        __m256i sc16[2], sumi[2][4];
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            a[r] = (const mb_kcpu_block_q6_k *)w[r] + i;
            prefetch_block(a[r], sizeof *a[r]);
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[r]->scales));
            MB_UNROLL
            for (int t = 0; t < nt; t++) {
                const __m256i bsums = _mm256_loadu_si256((const __m256i *)b[t][i].bsums);
                sumi[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                              _mm256_slli_epi32(_mm256_madd_epi16(sc16[r], bsums), 5));
            }
        }
        MB_UNROLL
        for (int h = 0; h < 2; h++) {
            MB_UNROLL
            for (int r = 0; r < nr; r++) {
                const __m256i sch = h ? _mm256_permute2x128_si256(sc16[r], sc16[r], 0x11)
                                      : _mm256_permute2x128_si256(sc16[r], sc16[r], 0x00);
                const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(a[r]->ql + 64 * h));
                const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(a[r]->ql + 64 * h + 32));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(a[r]->qh + 32 * h));
                __m256i q[4];
                mb_k2_q6k_unpack(ql0, ql1, qh, q);
                MB_UNROLL
                for (int g = 0; g < 4; g++) {
                    const __m256i s = _mm256_shuffle_epi8(sch, word_shuffle(2 * g, 2 * g + 1));
                    MB_UNROLL
                    for (int t = 0; t < nt; t++) {
                        const __m256i y =
                            _mm256_loadu_si256((const __m256i *)(b[t][i].qs + 128 * h + 32 * g));
                        sumi[r][t] = _mm256_add_epi32(
                            sumi[r][t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], y), s));
                        MB_KEEP(sumi[r][t]);
                    }
                }
            }
        }
        MB_UNROLL
        for (int r = 0; r < nr; r++) {
            const float wd = mb_k2_f16(a[r]->d);
            MB_UNROLL
            for (int t = 0; t < nt; t++)
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(wd * b[t][i].d),
                                            _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
        }
    }
    MB_UNROLL
    for (int r = 0; r < nr; r++)
        MB_UNROLL
        for (int t = 0; t < nt; t++)
            out[r * 4 + t] = hsum8(acc[r][t]);
}

/* Rows a kernel takes at once for several tokens, per type (one token always
 * takes 2): 2 where the per-token work is small
 * enough for two rows' accumulators (Q8_0/Q4_0: one per row and token),
 * 1 for the K-quants (sumi and the unpacked weights fill the registers). */
#ifndef MB_QNT_NR_B32
#define MB_QNT_NR_B32 2
#endif
#ifndef MB_QNT_NR_K
#define MB_QNT_NR_K 1
#endif

/* nr rows x nt tokens of one type (a constant after inlining). */
MB_INLINE void dot_nt(int wdtype, int nr, int nt, const void *const *w, const void *const *xq,
                      size_t k, float *out)
{
    switch (wdtype) {
    case MB_KCPU_Q8_0:
        dot_b32_nt(nr, nt, 0, w, (const mb_kcpu_block_q8_0 *const *)xq, k / 32, out);
        break;
    case MB_KCPU_Q4_0:
        dot_b32_nt(nr, nt, 1, w, (const mb_kcpu_block_q8_0 *const *)xq, k / 32, out);
        break;
    case MB_KCPU_Q4_K:
        dot_k4_nt(nr, nt, 0, w, (const mb_kcpu_block_q8_k *const *)xq, k / MB_KCPU_QK, out);
        break;
    case MB_KCPU_Q5_K:
        dot_k4_nt(nr, nt, 1, w, (const mb_kcpu_block_q8_k *const *)xq, k / MB_KCPU_QK, out);
        break;
    default:
        dot_q6_k_nt(nr, nt, w, (const mb_kcpu_block_q8_k *const *)xq, k / MB_KCPU_QK, out);
        break;
    }
}

/* ---- entry points ------------------------------------------------------- */

MB_INLINE int has_type(int wdtype)
{
    return wdtype == MB_KCPU_Q8_0 || wdtype == MB_KCPU_Q4_0 || wdtype == MB_KCPU_Q4_K ||
           wdtype == MB_KCPU_Q5_K || wdtype == MB_KCPU_Q6_K;
}

float mb_kcpu_qdot_avx2(int wdtype, const void *w, const void *xq, size_t k)
{
    if (!has_type(wdtype)) return mb_kcpu_qdot_scalar(wdtype, w, xq, k);
    float o[8];
    dot_nt(wdtype, 1, 1, &w, &xq, k, o);
    return o[0];
}

void mb_kcpu_qdot2_avx2(int wdtype, const void *w0, const void *w1, const void *xq, size_t k,
                        float out[2])
{
    if (!has_type(wdtype)) {
        mb_kcpu_qdot2_scalar(wdtype, w0, w1, xq, k, out);
        return;
    }
    const void *w[2] = {w0, w1};
    float o[8];
    dot_nt(wdtype, 2, 1, w, &xq, k, o);
    out[0] = o[0];
    out[1] = o[4];
}

/* mb_kcpu_qdot2_rows_nt for one type and token count (constants after
 * inlining). One token (decode) takes two rows a kernel call, two weight
 * streams, at every type; the type is dispatched once for all n row
 * pairs, no call per row (rows of a few blocks, as Qwen3's down rows of
 * 768, spent a good part of their time in it). */
MB_INLINE void rows2_nt(int wdtype, int nt, const void *w0, const void *w1, size_t row_bytes,
                        size_t n, const void *const *xq, size_t k, float *out0, float *out1,
                        size_t ld_out)
{
    const int nr = nt == 1                                            ? 2
                   : wdtype == MB_KCPU_Q8_0 || wdtype == MB_KCPU_Q4_0 ? MB_QNT_NR_B32
                                                                      : MB_QNT_NR_K;
    for (size_t i = 0; i < n; i++) {
        const void *w[2] = {(const char *)w0 + i * row_bytes, (const char *)w1 + i * row_bytes};
        float o[8];
        if (nr == 2) {
            dot_nt(wdtype, 2, nt, w, xq, k, o);
        } else {
            dot_nt(wdtype, 1, nt, &w[0], xq, k, o);
            dot_nt(wdtype, 1, nt, &w[1], xq, k, o + 4);
        }
        MB_UNROLL
        for (int t = 0; t < nt; t++) {
            out0[t * ld_out + i] = o[t];
            out1[t * ld_out + i] = o[4 + t];
        }
    }
}

/* One copy per type and token count, so each inlines its kernel. */
// clang-format off
#define MB_QNT_CASE(T)                                                                             \
    case T:                                                                                        \
        switch (nt) {                                                                              \
        case 1: rows2_nt(T, 1, w0, w1, row_bytes, n, xq, k, out0, out1, ld_out); return;          \
        case 2: rows2_nt(T, 2, w0, w1, row_bytes, n, xq, k, out0, out1, ld_out); return;          \
        case 3: rows2_nt(T, 3, w0, w1, row_bytes, n, xq, k, out0, out1, ld_out); return;          \
        default: rows2_nt(T, 4, w0, w1, row_bytes, n, xq, k, out0, out1, ld_out); return;         \
        }
// clang-format on

void mb_kcpu_qdot2_rows_nt_avx2(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                                size_t n, const void *const *xq, size_t nt, size_t k, float *out0,
                                float *out1, size_t ld_out)
{
    while (nt > MB_KCPU_QDOT_NT) {
        mb_kcpu_qdot2_rows_nt_avx2(wdtype, w0, w1, row_bytes, n, xq, MB_KCPU_QDOT_NT, k, out0,
                                   out1, ld_out);
        xq += MB_KCPU_QDOT_NT;
        nt -= MB_KCPU_QDOT_NT;
        out0 += MB_KCPU_QDOT_NT * ld_out;
        out1 += MB_KCPU_QDOT_NT * ld_out;
    }
    if (nt == 0) return;
    switch (wdtype) {
        MB_QNT_CASE(MB_KCPU_Q8_0)
        MB_QNT_CASE(MB_KCPU_Q4_0)
        MB_QNT_CASE(MB_KCPU_Q4_K)
        MB_QNT_CASE(MB_KCPU_Q5_K)
        MB_QNT_CASE(MB_KCPU_Q6_K)
    default:
        mb_kcpu_qdot2_rows_nt_scalar(wdtype, w0, w1, row_bytes, n, xq, nt, k, out0, out1, ld_out);
    }
}

void mb_kcpu_qdot2_rows_avx2(int wdtype, const void *w0, const void *w1, size_t row_bytes, size_t n,
                             const void *xq, size_t k, float *out0, float *out1)
{
    mb_kcpu_qdot2_rows_nt_avx2(wdtype, w0, w1, row_bytes, n, &xq, 1, k, out0, out1, 0);
}
