/* Private to the expert FFN drivers (expert_ffn.c: element dtypes, entry
 * and validation; expert_ffn_quant.c: quantized weights): the workspace and
 * the helpers both use. */
#ifndef MB_KERNELS_CPU_EXPERT_FFN_INTERNAL_H
#define MB_KERNELS_CPU_EXPERT_FFN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cpu/expert_ffn.h"

/* Tokens per block: their activation rows for one k-block (MB_KCPU_KC
 * floats each) stay in L2 while row groups of W sweep over them. */
#define MB_MOE_NB 120

struct mb_kcpu_moe_ws {
    float *xp; /* [n_tokens][kp_model] packed activations (f32 rows for dequantized tiles) */
    size_t xp_cap;
    float *h; /* [n_pairs][kp_ff] packed SiLU products (quantized weights: [n_pairs][d_ff]) */
    size_t h_cap;
    const float **rows; /* [2][n_pairs]: x row and h row of each pair */
    size_t rows_cap;
    float *scratch; /* [n_threads][per_thread] */
    size_t scratch_cap;
    /* Quantized weights: 8-bit activations and SiLU products (bytes). */
    unsigned char *qx; /* [n_tokens][qact row of d_model] */
    size_t qx_cap;
    unsigned char *qh; /* [n_pairs][qact row of d_ff] */
    size_t qh_cap;
};

/* Grows *buf (64-byte aligned, contents dropped) to at least n elements of
 * elem bytes. Returns 0, or -1 when out of memory (buf unchanged). */
static inline int mb_moe_grow(void **buf, size_t *cap, size_t n, size_t elem)
{
    if (n <= *cap) return 0;
    if (n > (SIZE_MAX - 64) / elem) return -1;
    size_t bytes = (n * elem + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (!p) return -1;
    free(*buf);
    *buf = p;
    *cap = bytes / elem;
    return 0;
}

static inline size_t mb_moe_round16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* a * b, or SIZE_MAX when it overflows (which then fails to allocate). */
static inline size_t mb_moe_mul(size_t a, size_t b)
{
    return b != 0 && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

/* The down projection's results of pairs [q0, q0 + nq) (acc, row q at q *
 * ld, columns c0..c0 + nc of the output) added into their tokens' output
 * rows, each scaled by its pair's gate: the combine both paths share. */
static inline void mb_moe_add_gated(const mb_kcpu_moe_problem *p, size_t q0, size_t nq, const float *acc, size_t ld,
                                    size_t c0, size_t nc)
{
    for (size_t q = 0; q < nq; q++) {
        const float g = p->pair_gate[q0 + q];
        const float *src = acc + q * ld;
        float *dst = p->out + (size_t)p->pair_token[q0 + q] * p->ldo + c0;
        for (size_t c = 0; c < nc; c++)
            dst[c] += g * src[c];
    }
}

/* The quantized-weight problem (all three matrices quantized, rows
 * unpadded), already validated; n_pairs from validation. Returns 0, or -1
 * when the workspace cannot grow or a row stride is not the unpadded one.
 * expert_ffn_quant.c. */
int mb_moeq_run(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const mb_kcpu_moe_problem *p,
                size_t n_pairs);

#endif
