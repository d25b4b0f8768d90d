/* RoPE against a naive double-precision rotate-half reference, plus the
 * properties the attention relies on (identity at 0, norm kept, scores
 * depend only on the distance between positions). */
#include <string.h>

#include "broker/rope.h"
#include "tests/testutil.h"

static void ref_rope(double *out, const float *x, uint32_t hd, uint32_t pos, double theta)
{
    uint32_t half = hd / 2;
    for (uint32_t i = 0; i < half; i++) {
        double ang = (double)pos * pow(theta, -(2.0 * i) / hd);
        double c = cos(ang), s = sin(ang);
        out[i] = x[i] * c - x[i + half] * s;
        out[i + half] = x[i + half] * c + x[i] * s;
    }
}

int main(void)
{
    unsigned long long seed = 42;
    mb_rope r;
    CHECK_EQ(mb_rope_init(&r, 7, 10, 1e4f), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_rope_init(&r, 0, 10, 1e4f), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_rope_init(&r, 8, 0, 1e4f), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_rope_init(&r, 8, 10, 0.0f), MB_STATUS_INVALID_ARG);

    const uint32_t hds[] = {2, 16, 24, 128};
    const float thetas[] = {10000.0f, 1000000.0f};
    for (size_t a = 0; a < 4; a++) {
        for (size_t b = 0; b < 2; b++) {
            const uint32_t hd = hds[a], n_heads = 3, n_tok = 5, ld = n_heads * hd + 3;
            const uint32_t n_pos = 512;
            REQUIRE(mb_rope_init(&r, hd, n_pos, thetas[b]) == MB_STATUS_OK);
            float x[5 * (3 * 128 + 3)], orig[5 * (3 * 128 + 3)];
            for (size_t i = 0; i < (size_t)n_tok * ld; i++)
                x[i] = orig[i] = mb_test_rand_f32(&seed);
            const uint32_t pos0s[] = {0, 77, n_pos - n_tok};
            for (size_t p = 0; p < 3; p++) {
                memcpy(x, orig, sizeof(float) * n_tok * ld);
                mb_rope_apply(&r, x, ld, n_tok, n_heads, pos0s[p]);
                for (uint32_t t = 0; t < n_tok; t++) {
                    for (uint32_t h = 0; h < n_heads; h++) {
                        double want[128];
                        const float *in = orig + (size_t)t * ld + (size_t)h * hd;
                        const float *got = x + (size_t)t * ld + (size_t)h * hd;
                        ref_rope(want, in, hd, pos0s[p] + t, thetas[b]);
                        double n_in = 0, n_out = 0;
                        for (uint32_t i = 0; i < hd; i++) {
                            /* f32 angle error grows with the position */
                            double tol = 2e-6 + 2e-7 * (pos0s[p] + t);
                            CHECK_MSG(fabs(got[i] - want[i]) <= tol, "hd %u pos %u i %u: %g vs %g",
                                      hd, pos0s[p] + t, i, got[i], want[i]);
                            n_in += (double)in[i] * in[i];
                            n_out += (double)got[i] * got[i];
                        }
                        CHECK(fabs(n_in - n_out) <= 1e-5 * (1 + n_in));
                        if (pos0s[p] + t == 0) CHECK(memcmp(in, got, hd * sizeof(float)) == 0);
                    }
                    /* padding past the heads is left alone */
                    for (uint32_t i = n_heads * hd; i < ld; i++)
                        CHECK(x[(size_t)t * ld + i] == orig[(size_t)t * ld + i]);
                }
            }
            /* <rope(q, p1), rope(k, p2)> depends on p1 - p2 only. */
            float q[128] = {0}, k[128] = {0}, q1[128], k1[128], q2[128], k2[128];
            for (uint32_t i = 0; i < hd; i++) {
                q[i] = mb_test_rand_f32(&seed);
                k[i] = mb_test_rand_f32(&seed);
            }
            memcpy(q1, q, sizeof(q));
            memcpy(k1, k, sizeof(k));
            memcpy(q2, q, sizeof(q));
            memcpy(k2, k, sizeof(k));
            mb_rope_apply(&r, q1, hd, 1, 1, 20);
            mb_rope_apply(&r, k1, hd, 1, 1, 5);
            mb_rope_apply(&r, q2, hd, 1, 1, 115);
            mb_rope_apply(&r, k2, hd, 1, 1, 100);
            double d1 = 0, d2 = 0;
            for (uint32_t i = 0; i < hd; i++) {
                d1 += (double)q1[i] * k1[i];
                d2 += (double)q2[i] * k2[i];
            }
            CHECK_MSG(fabs(d1 - d2) <= 1e-4, "relative property: %g vs %g", d1, d2);
            mb_rope_fini(&r);
        }
    }
    return mb_test_finish("test_rope");
}
