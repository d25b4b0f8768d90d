/* GEMM y = x @ W^T on every SIMD path this CPU has, every weight dtype, odd
 * and normal shapes, padded strides, accumulate mode, with and without a
 * pool, against a double-precision reference. Threshold: max|y - ref| /
 * max|ref| <= 2e-6 * sqrt(k)-ish, i.e. f32 accumulation error only (weights
 * are exact in their dtype, x is f32 in both). */
#include <math.h>
#include <stdio.h>

#include "kcpu_test.h"
#include "kernels/cpu/gemm.h"

static const char *const isas[] = {"scalar", "avx2", "avx512"};

/* One case on every supported path; err[i] gets path i's normalised error
 * (-1 when unsupported). */
static void check_case(mb_kcpu_pool *pool, int wdtype, size_t m, size_t k, size_t n, int accumulate,
                       unsigned long long *seed, double err[3])
{
    size_t ldx = k + 3, ldy = m + 5;
    void *w = kcpu_rand_weights(wdtype, m * k, 1.0f, seed);
    float *x = malloc(sizeof(float) * n * ldx + 4);
    float *y = malloc(sizeof(float) * n * ldy + 4);
    double *ref = malloc(sizeof(double) * n * m + 8);
    REQUIRE(x && y && ref);
    for (size_t i = 0; i < n * ldx; i++)
        x[i] = mb_test_rand_f32(seed);
    float *y0 = malloc(sizeof(float) * n * ldy + 4);
    REQUIRE(y0);
    for (size_t i = 0; i < n * ldy; i++)
        y0[i] = accumulate ? mb_test_rand_f32(seed) : NAN;
    double *wd = kcpu_w_double(wdtype, w, m * k);
    for (size_t t = 0; t < n; t++)
        for (size_t r = 0; r < m; r++) {
            double s = accumulate ? (double)y0[t * ldy + r] : 0.0;
            const double *wr = wd + r * k;
            const float *xr = x + t * ldx;
            for (size_t kk = 0; kk < k; kk++)
                s += wr[kk] * (double)xr[kk];
            ref[t * m + r] = s;
        }
    free(wd);
    for (int ii = 0; ii < 3; ii++) {
        err[ii] = -1;
        if (mb_kcpu_force_isa(isas[ii]) != 0) continue;
        memcpy(y, y0, sizeof(float) * n * ldy);
        if (pool)
            mb_kcpu_gemm(pool, wdtype, w, m, k, x, ldx, n, y, ldy, accumulate);
        else
            mb_kcpu_gemm_serial(wdtype, w, m, k, x, ldx, n, y, ldy, accumulate);
        double maxref = 1e-30, maxdiff = 0;
        for (size_t t = 0; t < n; t++)
            for (size_t r = 0; r < m; r++) {
                double d = fabs((double)y[t * ldy + r] - ref[t * m + r]);
                if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
                if (fabs(ref[t * m + r]) > maxref) maxref = fabs(ref[t * m + r]);
            }
        /* Padding between rows must be untouched. */
        int pad_touched = 0;
        if (!accumulate)
            for (size_t t = 0; t < n; t++)
                for (size_t r = m; r < ldy; r++)
                    pad_touched += !isnan(y[t * ldy + r]);
        CHECK_EQ(pad_touched, 0);
        err[ii] = maxdiff / maxref;
    }
    free(y0);
    free(w);
    free(x);
    free(y);
    free(ref);
}

int main(void)
{
    static const size_t shapes[][3] = {
        /* m, k, n */
        {1, 1, 1},    {7, 5, 3},      {8, 32, 1},    {13, 33, 2},    {72, 136, 1}, {136, 72, 3},
        {64, 256, 5}, {100, 1100, 4}, {49, 2056, 6}, {256, 512, 17}, {30, 64, 64}, {96, 200, 130},
    };
    mb_kcpu_pool *pool = mb_kcpu_pool_create(3, -1);
    REQUIRE(pool != NULL);
    unsigned long long seed = 0x1234abcdULL;

    CHECK(mb_kcpu_f16_f32(0x3c00) == 1.0f);
    CHECK(mb_kcpu_f16_f32(0xc000) == -2.0f);
    CHECK(mb_kcpu_f16_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(mb_kcpu_f16_f32(0x7bff) == 65504.0f);
    CHECK(mb_kcpu_bf16_f32(0x3f80) == 1.0f);
    CHECK(mb_kcpu_force_isa("nope") == -1);

    for (int wd = 0; wd < 3; wd++) {
        double worst[3] = {-1, -1, -1};
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int variant = 0; variant < 3; variant++) {
                size_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
                double err[3];
                check_case(variant == 2 ? NULL : pool, wd, m, k, n, variant == 1, &seed, err);
                double tol = 1e-6 * sqrt((double)k) + 1e-6;
                for (int ii = 0; ii < 3; ii++) {
                    if (err[ii] < 0) continue;
                    CHECK_MSG(err[ii] <= tol,
                              "isa %s w %s m %zu k %zu n %zu variant %d: err %.3g > %.3g", isas[ii],
                              kcpu_wdtype_names[wd], m, k, n, variant, err[ii], tol);
                    if (!(err[ii] <= worst[ii])) worst[ii] = err[ii];
                }
            }
        for (int ii = 0; ii < 3; ii++)
            if (worst[ii] >= 0)
                printf("isa %-6s w %-4s: worst normalised error %.3g\n", isas[ii],
                       kcpu_wdtype_names[wd], worst[ii]);
            else
                printf("isa %-6s: not supported on this CPU, skipped\n", isas[ii]);
        CHECK(worst[0] >= 0); /* scalar always runs */
    }
    CHECK(mb_kcpu_force_isa("auto") == 0);
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_kcpu_gemm");
}
