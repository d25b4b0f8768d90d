/* Random block-quantized weights for tests (ggml's Q8_0, Q4_0, Q4_K, Q5_K,
 * Q6_K blocks): random bytes with chosen f16 scales, and their exact
 * dequantization (kernels/cpu/quant.c, gguf-py's values) as doubles for
 * references. Tests that include it link mb_kernels. */
#ifndef MB_TESTS_QUANT_TESTUTIL_H
#define MB_TESTS_QUANT_TESTUTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "tests/testutil.h"

/* An f16 scale for blocks of type t. Mode 0: positive, with weights of at
 * most about 0.1 to 1 as trained layers have (d of 2^-12 to 2^-10 for
 * Q8_0, 2^-13 to 2^-11 for Q4_0 and the 4/5-bit K-quants, 2^-14 to 2^-12
 * for Q6_K, whose integer factors reach 127, about 1000 and 4096); larger
 * weights drive hidden values past f16's range on GPU tensor-core paths.
 * Mode 1: any finite value of either sign, subnormals and zero included
 * (for dequantization, not for products). */
static inline uint16_t mb_test_quant_scale(int t, int mode, unsigned long long *seed)
{
    const uint64_t r = mb_test_rand_u64(seed);
    const unsigned e0 = t == MB_KCPU_Q8_0 ? 3u : t == MB_KCPU_Q6_K ? 1u : 2u;
    if (mode == 0) return (uint16_t)((e0 + (unsigned)(r % 3u)) << 10 | ((r >> 8) & 0x3ffu));
    uint16_t h = (uint16_t)(r >> 16);
    if ((h & 0x7c00u) == 0x7c00u) h &= 0xbfffu; /* no inf or NaN */
    switch (r % 8) {
    case 0: return (uint16_t)(h & 0x83ffu); /* subnormal or zero */
    case 1: return 0;
    default: return h;
    }
}

/* n_blocks random blocks of type t (malloc'd): every byte random, then
 * per block a scale d and a dmin (Q4_K, Q5_K), each from one draw: by
 * mode as above when e_lo is 0, else of 2^(e_lo - 15) to 2^(e_lo - 12)
 * with no Q8_0 quant of -128, which llama.cpp's quantizer never writes
 * (its range is -127..127). */
static inline void *mb_test_quant_blocks_(int t, size_t n_blocks, int mode, unsigned e_lo, unsigned long long *seed)
{
    const size_t bb = mb_kcpu_block_bytes(t);
    uint8_t *w = (uint8_t *)malloc(n_blocks * bb + 1);
    REQUIRE(w);
    for (size_t i = 0; i < n_blocks * bb; i++)
        w[i] = (uint8_t)mb_test_rand_u64(seed);
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = w + b * bb;
        uint16_t sc[2];
        for (int i = 0; i < 2; i++) {
            if (!e_lo) {
                sc[i] = mb_test_quant_scale(t, mode, seed);
                continue;
            }
            const uint64_t r = mb_test_rand_u64(seed);
            sc[i] = (uint16_t)((e_lo + (unsigned)(r % 3u)) << 10 | ((r >> 8) & 0x3ffu));
        }
        if (t == MB_KCPU_Q6_K) {
            memcpy(blk + 208, &sc[0], 2);
            continue;
        }
        memcpy(blk, &sc[0], 2);
        if (t == MB_KCPU_Q4_K || t == MB_KCPU_Q5_K) memcpy(blk + 2, &sc[1], 2);
        if (e_lo && t == MB_KCPU_Q8_0)
            for (int l = 0; l < 32; l++)
                if (blk[2 + l] == 0x80) blk[2 + l] = 0x81;
    }
    return w;
}

/* n_blocks random blocks of type t, scales by mode as above. */
static inline void *mb_test_quant_blocks(int t, size_t n_blocks, int mode, unsigned long long *seed)
{
    return mb_test_quant_blocks_(t, n_blocks, mode, 0, seed);
}

/* n_blocks random blocks of type t for products, scales of 2^(e_lo - 15)
 * to 2^(e_lo - 12) (e_lo >= 1), no Q8_0 quant of -128. */
static inline void *mb_test_quant_blocks_exp(int t, size_t n_blocks, unsigned e_lo, unsigned long long *seed)
{
    return mb_test_quant_blocks_(t, n_blocks, 0, e_lo, seed);
}

/* The [rows][cols] matrix of blocks (row-major, whole blocks a row)
 * dequantized exactly, as doubles (malloc'd). */
static inline double *mb_test_quant_dequant(int t, const void *blocks, size_t rows, size_t cols)
{
    double *out = (double *)malloc(rows * cols * sizeof *out + 1);
    float *row = (float *)malloc(cols * sizeof *row + 1);
    REQUIRE(out && row);
    const size_t rb = mb_kcpu_row_bytes(t, cols);
    for (size_t r = 0; r < rows; r++) {
        mb_kcpu_dequant_row(t, (const char *)blocks + r * rb, row, cols);
        for (size_t c = 0; c < cols; c++)
            out[r * cols + c] = row[c];
    }
    free(row);
    return out;
}

#endif
