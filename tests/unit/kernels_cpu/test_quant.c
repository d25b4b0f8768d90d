/* Quantized weights on the CPU: dequantization against llama.cpp's own
 * dequantize_row_* loops (written out here independently; the gguf-py
 * comparison on real files is tests/unit/model/test_gguf_dequant.c), the
 * SIMD dequantization against the scalar one (bit-identical), the
 * dot products against the dequantized weights times the dequantized 8-bit
 * activations (they must agree to f32 rounding, since both sum the same
 * integers), the SIMD path against the scalar one, the two-row dots (one
 * pair, and n pairs in one call) against the single-row ones, and the quantized GEMM against those dots. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/convert.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_isa.h"
#include "tests/testutil.h"

static const int types[] = {MB_KCPU_Q8_0, MB_KCPU_Q4_0, MB_KCPU_Q4_K, MB_KCPU_Q5_K, MB_KCPU_Q6_K};
static const char *names[] = {"q8_0", "q4_0", "q4_k", "q5_k", "q6_k"};

/* f16 bits of a value in [2^-9, 2^-5) with a random mantissa. */
static uint16_t rand_scale(unsigned long long *seed)
{
    uint64_t r = mb_test_rand_u64(seed);
    return (uint16_t)((6u + (uint16_t)(r % 4u)) << 10 | ((r >> 8) & 0x3ffu));
}

/* Random blocks: random bytes everywhere, then sane f16 scale fields. */
static void *rand_row(int type, size_t k, unsigned long long *seed)
{
    const size_t bytes = mb_kcpu_row_bytes(type, k), nb = k / mb_kcpu_block_elems(type);
    uint8_t *w = malloc(bytes);
    REQUIRE(w);
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)mb_test_rand_u64(seed);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * mb_kcpu_block_bytes(type);
        uint16_t d = rand_scale(seed), dmin = rand_scale(seed);
        switch (type) {
        case MB_KCPU_Q8_0:
            memcpy(blk, &d, 2);
            for (int l = 0; l < 32; l++)
                if ((int8_t)blk[2 + l] == -128) blk[2 + l] = 0x81; /* ggml writes -127..127 */
            break;
        case MB_KCPU_Q4_0: memcpy(blk, &d, 2); break;
        case MB_KCPU_Q4_K:
        case MB_KCPU_Q5_K: memcpy(blk, &d, 2); memcpy(blk + 2, &dmin, 2); break;
        case MB_KCPU_Q6_K: memcpy(blk + 208, &d, 2); break;
        }
    }
    return w;
}

/* ---- llama.cpp's dequantize_row_* (ggml-quants.c), transcribed -------- */

static void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static void ref_dequant(int type, const void *src, float *y, size_t k)
{
    const size_t nb = k / mb_kcpu_block_elems(type);
    for (size_t i = 0; i < nb; i++) {
        if (type == MB_KCPU_Q8_0) {
            const mb_kcpu_block_q8_0 *x = (const mb_kcpu_block_q8_0 *)src + i;
            const float d = mb_kcpu_f16_f32(x->d);
            for (int j = 0; j < 32; ++j) *y++ = x->qs[j] * d;
        } else if (type == MB_KCPU_Q4_0) {
            const mb_kcpu_block_q4_0 *x = (const mb_kcpu_block_q4_0 *)src + i;
            const float d = mb_kcpu_f16_f32(x->d);
            for (int j = 0; j < 16; ++j) {
                y[j] = ((x->qs[j] & 0x0F) - 8) * d;
                y[j + 16] = ((x->qs[j] >> 4) - 8) * d;
            }
            y += 32;
        } else if (type == MB_KCPU_Q4_K || type == MB_KCPU_Q5_K) {
            const int q5 = type == MB_KCPU_Q5_K;
            const mb_kcpu_block_q4_k *x4 = (const mb_kcpu_block_q4_k *)src + i;
            const mb_kcpu_block_q5_k *x5 = (const mb_kcpu_block_q5_k *)src + i;
            const uint8_t *ql = q5 ? x5->qs : x4->qs, *qh = q5 ? x5->qh : NULL;
            const uint8_t *scales = q5 ? x5->scales : x4->scales;
            const float d = mb_kcpu_f16_f32(q5 ? x5->d : x4->d);
            const float min = mb_kcpu_f16_f32(q5 ? x5->dmin : x4->dmin);
            int is = 0;
            uint8_t sc, m, u1 = 1, u2 = 2;
            for (int j = 0; j < 256; j += 64) {
                get_scale_min_k4(is + 0, scales, &sc, &m);
                const float d1 = d * sc, m1 = min * m;
                get_scale_min_k4(is + 1, scales, &sc, &m);
                const float d2 = d * sc, m2 = min * m;
                for (int l = 0; l < 32; ++l)
                    *y++ = d1 * ((ql[l] & 0xF) + (qh && (qh[l] & u1) ? 16 : 0)) - m1;
                for (int l = 0; l < 32; ++l)
                    *y++ = d2 * ((ql[l] >> 4) + (qh && (qh[l] & u2) ? 16 : 0)) - m2;
                ql += 32;
                is += 2;
                u1 <<= 2;
                u2 <<= 2;
            }
        } else {
            const mb_kcpu_block_q6_k *x = (const mb_kcpu_block_q6_k *)src + i;
            const float d = mb_kcpu_f16_f32(x->d);
            const uint8_t *ql = x->ql, *qh = x->qh;
            const int8_t *sc = x->scales;
            for (int n = 0; n < 256; n += 128) {
                for (int l = 0; l < 32; ++l) {
                    int is = l / 16;
                    const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l + 0] = d * sc[is + 0] * q1;
                    y[l + 32] = d * sc[is + 2] * q2;
                    y[l + 64] = d * sc[is + 4] * q3;
                    y[l + 96] = d * sc[is + 6] * q4;
                }
                y += 128;
                ql += 64;
                qh += 32;
                sc += 8;
            }
        }
    }
}

/* Dequantized 8-bit activations (d * q per element). */
static void act_values(int type, const void *xq, float *out, size_t k)
{
    if (type == MB_KCPU_Q8_0 || type == MB_KCPU_Q4_0) {
        const mb_kcpu_block_q8_0 *b = xq;
        for (size_t i = 0; i < k; i++)
            out[i] = mb_kcpu_f16_f32(b[i / 32].d) * b[i / 32].qs[i % 32];
    } else {
        const mb_kcpu_block_q8_k *b = xq;
        for (size_t i = 0; i < k; i++)
            out[i] = b[i / 256].d * b[i / 256].qs[i % 256];
        for (size_t j = 0; j < k / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b[j / 16].qs[(j % 16) * 16 + l];
            CHECK_EQ(b[j / 16].bsums[j % 16], s);
        }
    }
}

int main(void)
{
    unsigned long long seed = 12345;
    const size_t k = 1024, m = 37, n = 5;
    float *wf = malloc(sizeof(float) * k * m), *wr = malloc(sizeof(float) * k);
    float *x = malloc(sizeof(float) * k * n), *xa = malloc(sizeof(float) * k);
    float *y = malloc(sizeof(float) * m * n);
    REQUIRE(wf && wr && x && xa && y);
    for (size_t i = 0; i < k * n; i++)
        x[i] = mb_test_rand_f32(&seed) * 3.0f;
    printf("quantized dot path: %s\n", mb_kcpu_quant_isa_name());
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        const size_t rb = mb_kcpu_row_bytes(type, k);
        uint8_t *w = malloc(rb * m);
        REQUIRE(w);
        for (size_t r = 0; r < m; r++) {
            void *row = rand_row(type, k, &seed);
            memcpy(w + r * rb, row, rb);
            free(row);
        }
        /* Dequantization: bit-identical to llama.cpp's loops. */
        size_t bad = 0;
        for (size_t r = 0; r < m; r++) {
            mb_kcpu_dequant_row(type, w + r * rb, wf + r * k, k);
            ref_dequant(type, w + r * rb, wr, k);
            bad += memcmp(wf + r * k, wr, k * sizeof(float)) != 0;
        }
        CHECK_MSG(bad == 0, "%s: %zu rows dequantize differently from llama.cpp", names[ti], bad);
        /* The SIMD dequantization (prefill tiles): bit-identical, also from
         * a block in the middle of a row. */
        for (size_t r = 0; r < m; r++) {
            const size_t skip = mb_kcpu_block_elems(type);
            mb_kcpu_dequant_get()(type, w + r * rb, wr, k);
            bad += memcmp(wf + r * k, wr, k * sizeof(float)) != 0;
            mb_kcpu_dequant_get()(type, w + r * rb + mb_kcpu_block_bytes(type), wr, k - skip);
            bad += memcmp(wf + r * k + skip, wr, (k - skip) * sizeof(float)) != 0;
        }
        CHECK_MSG(bad == 0, "%s: %zu rows dequantize differently on the %s path", names[ti], bad,
                  mb_kcpu_quant_isa_name());

        /* Dots: scalar = avx2 = sum of dequantized products, to f32 rounding. */
        uint8_t *xq = malloc(mb_kcpu_qact_row_bytes(type, k));
        REQUIRE(xq);
        double worst = 0;
        size_t pair_bad = 0;
        float *o0 = malloc(sizeof(float) * m), *o1 = malloc(sizeof(float) * m);
        REQUIRE(o0 && o1);
        for (size_t t = 0; t < n; t++) {
            mb_kcpu_qact_row(type, x + t * k, xq, k);
            /* Row pairs in one call (rows i and i + 1): the single-row results. */
            mb_kcpu_qdot2_rows_get()(type, w, w + rb, rb, m - 1, xq, k, o0, o1);
            for (size_t r = 0; r + 1 < m; r++)
                pair_bad += o0[r] != mb_kcpu_qdot(type, w + r * rb, xq, k) ||
                            o1[r] != mb_kcpu_qdot(type, w + (r + 1) * rb, xq, k);
            act_values(type, xq, xa, k);
            mb_kcpu_qact_dequant_row(type, xq, wr, k);
            CHECK_MSG(memcmp(wr, xa, k * sizeof(float)) == 0, "%s: qact_dequant_row differs", names[ti]);
            for (size_t r = 0; r < m; r++) {
                double ref = 0, mag = 0;
                for (size_t i = 0; i < k; i++) {
                    ref += (double)wf[r * k + i] * xa[i];
                    mag += fabs((double)wf[r * k + i] * xa[i]);
                }
                const float s = mb_kcpu_qdot_scalar(type, w + r * rb, xq, k);
                const float v = mb_kcpu_qdot(type, w + r * rb, xq, k);
                const double e1 = fabs(s - ref) / (mag + 1e-30), e2 = fabs(v - ref) / (mag + 1e-30);
                worst = e1 > worst ? e1 : worst;
                worst = e2 > worst ? e2 : worst;
                /* Two rows at once: the same f32 results as one at a time. */
                const size_t r2 = (r + 1) % m;
                float v2[2];
                mb_kcpu_qdot2_get()(type, w + r * rb, w + r2 * rb, xq, k, v2);
                if (v2[0] != v || v2[1] != mb_kcpu_qdot(type, w + r2 * rb, xq, k)) pair_bad++;
                /* The activations themselves: within half a step of x. */
                if (r == 0)
                    for (size_t i = 0; i < k; i++) {
                        const float step = type == MB_KCPU_Q8_0 || type == MB_KCPU_Q4_0
                                               ? mb_kcpu_f16_f32(((mb_kcpu_block_q8_0 *)xq)[i / 32].d)
                                               : fabsf(((mb_kcpu_block_q8_k *)xq)[i / 256].d);
                        if (fabsf(xa[i] - x[t * k + i]) > 0.51f * step + 1e-3f * fabsf(x[t * k + i])) {
                            bad++;
                            break;
                        }
                    }
            }
        }
        CHECK_MSG(bad == 0, "%s: activation quantization off by more than half a step", names[ti]);
        CHECK_MSG(worst < 1e-5, "%s: dot products off by %g of their magnitude", names[ti], worst);
        CHECK_MSG(pair_bad == 0, "%s: %zu two-row dots differ from single-row ones", names[ti], pair_bad);

        /* Several tokens a weight block (prefill), 1..n tokens (n past the
         * kernels' group of 4): bit-identical to one token at a time. */
        {
            const size_t qrb = mb_kcpu_qact_row_bytes(type, k), ld = m + 3;
            uint8_t *xs = malloc(qrb * n);
            float *a0 = malloc(sizeof(float) * ld * n), *a1 = malloc(sizeof(float) * ld * n);
            REQUIRE(xs && a0 && a1);
            const void *xp[5];
            REQUIRE(n <= 5);
            for (size_t t = 0; t < n; t++) {
                mb_kcpu_qact_row(type, x + t * k, xs + t * qrb, k);
                xp[t] = xs + t * qrb;
            }
            size_t nt_bad = 0;
            for (size_t nt = 1; nt <= n; nt++) {
                mb_kcpu_qdot2_rows_nt_get()(type, w, w + rb, rb, m - 1, xp, nt, k, a0, a1, ld);
                for (size_t t = 0; t < nt; t++) {
                    mb_kcpu_qdot2_rows_get()(type, w, w + rb, rb, m - 1, xp[t], k, o0, o1);
                    nt_bad += memcmp(a0 + t * ld, o0, (m - 1) * sizeof(float)) != 0 ||
                              memcmp(a1 + t * ld, o1, (m - 1) * sizeof(float)) != 0;
                }
            }
            CHECK_MSG(nt_bad == 0, "%s: %zu multi-token dot rows differ from one token at a time",
                      names[ti], nt_bad);
            free(xs);
            free(a0);
            free(a1);
        }
        free(o0);
        free(o1);

        /* GEMM: each output is one of those dots (any thread split). */
        mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
        REQUIRE(pool);
        mb_kcpu_gemm(pool, type, w, m, k, x, k, n, y, m, 0);
        double gworst = 0;
        for (size_t t = 0; t < n; t++) {
            mb_kcpu_qact_row(type, x + t * k, xq, k);
            for (size_t r = 0; r < m; r++) {
                const float v = mb_kcpu_qdot(type, w + r * rb, xq, k);
                const double e = fabs((double)y[t * m + r] - v) / (fabs(v) + 1e-6);
                gworst = e > gworst ? e : gworst;
            }
        }
        CHECK_MSG(gworst == 0, "%s: gemm differs from the dots by %g", names[ti], gworst);
        mb_kcpu_pool_destroy(pool);
        printf("%s: dequant exact, dot rel err %.2g\n", names[ti], worst);
        free(xq);
        free(w);
    }
    free(wf);
    free(wr);
    free(x);
    free(xa);
    free(y);
    return mb_test_finish("test_kcpu_quant");
}
