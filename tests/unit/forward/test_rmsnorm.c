/* RMSNorm against a naive double-precision reference, with strides, in
 * place, and over widely different magnitudes. */
#include <string.h>

#include "broker/norm.h"
#include "tests/testutil.h"

int main(void)
{
    unsigned long long seed = 7;
    const size_t ds[] = {1, 7, 16, 128, 4096};
    const float scales[] = {1e-3f, 1.0f, 300.0f};
    const float epss[] = {1e-6f, 1e-5f};
    for (size_t a = 0; a < 5; a++) {
        for (size_t s = 0; s < 3; s++) {
            const size_t d = ds[a], n = 4, ldx = d + 5, ldy = d + 2;
            const float eps = epss[s % 2];
            float *x = malloc(sizeof(float) * n * ldx);
            float *y = malloc(sizeof(float) * n * ldy);
            float *w = malloc(sizeof(float) * d);
            REQUIRE(x && y && w);
            for (size_t i = 0; i < n * ldx; i++)
                x[i] = mb_test_rand_f32(&seed) * scales[s];
            for (size_t i = 0; i < d; i++)
                w[i] = 1.0f + 0.5f * mb_test_rand_f32(&seed);
            mb_norm_rms(y, ldy, x, ldx, n, d, w, eps);
            for (size_t t = 0; t < n; t++) {
                double ss = 0;
                for (size_t i = 0; i < d; i++)
                    ss += (double)x[t * ldx + i] * x[t * ldx + i];
                double inv = 1.0 / sqrt(ss / d + eps);
                for (size_t i = 0; i < d; i++) {
                    double want = w[i] * x[t * ldx + i] * inv;
                    CHECK_MSG(fabs(y[t * ldy + i] - want) <= 1e-6 * (1 + fabs(want)),
                              "d %zu t %zu i %zu: %g vs %g", d, t, i, y[t * ldy + i], want);
                }
            }
            /* in place gives the same bits */
            float *z = malloc(sizeof(float) * n * ldx);
            REQUIRE(z);
            memcpy(z, x, sizeof(float) * n * ldx);
            mb_norm_rms(z, ldx, z, ldx, n, d, w, eps);
            for (size_t t = 0; t < n; t++)
                CHECK(memcmp(z + t * ldx, y + t * ldy, d * sizeof(float)) == 0);
            free(x);
            free(y);
            free(w);
            free(z);
        }
    }
    /* all-zero row: eps keeps it finite and zero */
    float zero[8] = {0}, out[8], w[8];
    for (int i = 0; i < 8; i++)
        w[i] = 1.0f;
    mb_norm_rms(out, 8, zero, 8, 1, 8, w, 1e-6f);
    for (int i = 0; i < 8; i++)
        CHECK(out[i] == 0.0f);
    return mb_test_finish("test_rmsnorm");
}
