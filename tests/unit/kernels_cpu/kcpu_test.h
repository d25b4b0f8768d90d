/* Helpers shared by the CPU kernel tests: random weights that are exact in
 * their dtype, and a double-precision reference dot product. */
#ifndef MB_TESTS_UNIT_KERNELS_CPU_KCPU_TEST_H
#define MB_TESTS_UNIT_KERNELS_CPU_KCPU_TEST_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/convert.h"
#include "tests/testutil.h"

static const char *const kcpu_wdtype_names[3] = {"f32", "f16", "bf16"};

/* n random weights in [-1, 1) (scaled by scale), stored in wdtype; the
 * values are exactly representable so the reference sees what the kernel sees. */
static inline void *kcpu_rand_weights(int wdtype, size_t n, float scale, unsigned long long *seed)
{
    size_t esz = wdtype == 0 ? 4 : 2;
    void *w = malloc(n * esz + 64);
    REQUIRE(w != NULL);
    for (size_t i = 0; i < n; i++) {
        float v = mb_test_rand_f32(seed) * scale;
        uint32_t u;
        memcpy(&u, &v, 4);
        if (wdtype == 0) {
            ((float *)w)[i] = v;
        } else if (wdtype == 2) {
            ((uint16_t *)w)[i] = (uint16_t)(u >> 16);
        } else {
            /* f16 built from parts: exponent 7..16 (2^-8 .. 2^1), random mantissa. */
            uint64_t r = mb_test_rand_u64(seed);
            uint16_t h = (uint16_t)(((r >> 20) & 1u) << 15 | (7u + (uint16_t)(r % 10u)) << 10 |
                                    ((r >> 8) & 0x3ffu));
            ((uint16_t *)w)[i] = h;
        }
    }
    return w;
}

static inline double kcpu_w(int wdtype, const void *w, size_t i)
{
    return (double)mb_kcpu_load_w(wdtype, w, i);
}

/* The n weights as doubles (caller frees), so references convert once. */
static inline double *kcpu_w_double(int wdtype, const void *w, size_t n)
{
    double *d = malloc(sizeof(double) * n + 8);
    REQUIRE(d != NULL);
    for (size_t i = 0; i < n; i++)
        d[i] = kcpu_w(wdtype, w, i);
    return d;
}

#endif
