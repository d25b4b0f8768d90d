/* Random expert weights for the backend parity tests: gate and up
 * [d_ff][d_model], down [d_model][d_ff], stored in an element dtype, with
 * the same dtype-rounded values as doubles for a reference. */
#ifndef MB_TESTS_EXPERT_TESTUTIL_H
#define MB_TESTS_EXPERT_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "protocol/dtype.h"
#include "tests/testutil.h"

/* Fills w[3] (malloc'd, in wd) and wr[3] (malloc'd doubles): uniform
 * values scaled by 2 / sqrt(fan-in), drawn from seed in the order gate,
 * up, down. The caller frees all six. */
static inline void mb_test_expert_weights(mb_dtype wd, uint32_t d_model, uint32_t d_ff,
                                          unsigned long long *seed, void *w[3], double *wr[3])
{
    const size_t n = (size_t)d_model * d_ff;
    float *tmp = malloc(sizeof(float) * n);
    REQUIRE(tmp);
    for (int m = 0; m < 3; m++) {
        float scale = 2.0f / sqrtf((float)(m == 2 ? d_ff : d_model));
        for (size_t i = 0; i < n; i++)
            tmp[i] = mb_test_rand_f32(seed) * scale;
        w[m] = malloc(n * mb_dtype_size(wd));
        wr[m] = malloc(n * sizeof(double));
        REQUIRE(w[m] && wr[m]);
        mb_dtype_encode_f32(wd, w[m], tmp, n);
        mb_dtype_decode_f32(wd, tmp, w[m], n);
        for (size_t i = 0; i < n; i++)
            wr[m][i] = tmp[i];
    }
    free(tmp);
}

#endif
