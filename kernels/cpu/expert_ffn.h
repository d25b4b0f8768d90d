/* The MoE expert FFN on the CPU: for every (token, expert, gate) pair,
 *   h[pair][d_ff]      = silu(x[token] @ W_gate^T) * (x[token] @ W_up^T)
 *   out[token][d_model] += gate * (h[pair] @ W_down^T)
 * with pairs grouped by expert, so each weight tile is read once for all the
 * tokens of its expert. Work is split over the pool by (expert, d_ff block)
 * and then by d_model block, which keeps every thread busy both in decode
 * (few tokens, many experts) and in prefill. */
#ifndef MB_KERNELS_CPU_EXPERT_FFN_H
#define MB_KERNELS_CPU_EXPERT_FFN_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"

/* One expert's weights, row-major in the problem's wdtype[]:
 * gate, up [d_ff][ld_in], down [d_model][ld_ff] (row strides in elements,
 * >= d_model and >= d_ff). */
typedef struct {
    const void *gate;
    const void *up;
    const void *down;
    size_t ld_in;
    size_t ld_ff;
} mb_kcpu_expert;

/* Index of each matrix's type in mb_kcpu_moe_problem.wdtype. */
enum { MB_KCPU_GATE = 0, MB_KCPU_UP = 1, MB_KCPU_DOWN = 2 };

typedef struct {
    /* Weight types per matrix (MB_KCPU_GATE/UP/DOWN): one of MB_KCPU_F32,
     * MB_KCPU_F16, MB_KCPU_BF16 for all three, or quantized types, each its
     * own (kernels/cpu/quant.h: gate/up rows of d_model and down rows of
     * d_ff in whole blocks, rows unpadded, ld_in = d_model and ld_ff =
     * d_ff; activations and SiLU products are quantized to 8 bits per
     * block). Other mixes are malformed. */
    int wdtype[3];
    size_t d_model;
    size_t d_ff;
    size_t n_tokens;

    /* Experts with work and their pairs: the pairs of expert e are
     * [expert_pair0[e], expert_pair0[e + 1]) in pair_token / pair_gate. */
    size_t n_experts;
    const mb_kcpu_expert *experts; /* [n_experts] */
    const size_t *expert_pair0;    /* [n_experts + 1], non-decreasing, from 0 */
    const uint32_t *pair_token;    /* [n_pairs] each < n_tokens */
    const float *pair_gate;        /* [n_pairs] */

    /* Activations: f32 rows x[n_tokens][ldx], or when load_x is set, a
     * callback that writes token t's row (d_model floats) into dst; it is
     * called from pool threads, at most once per token. */
    const float *x;
    size_t ldx;
    void (*load_x)(void *ctx, size_t token, float *dst);
    void *load_ctx;

    /* Result: out[n_tokens][ldo] f32, every element of the d_model columns
     * written (tokens without pairs get zeros). When out_done is set it is
     * called from a pool thread once columns [col0, col1) are final for
     * every token, e.g. to convert them to the wire dtype. */
    float *out;
    size_t ldo;
    void (*out_done)(void *ctx, size_t col0, size_t col1);
    void *out_ctx;
} mb_kcpu_moe_problem;

/* Scratch for mb_kcpu_moe_run; grows to the largest problem seen and is
 * reused, so steady-state calls allocate nothing. */
typedef struct mb_kcpu_moe_ws mb_kcpu_moe_ws;

/* Returns NULL when out of memory. */
mb_kcpu_moe_ws *mb_kcpu_moe_ws_create(void);
void mb_kcpu_moe_ws_destroy(mb_kcpu_moe_ws *ws);
/* Bytes the workspace holds now. */
size_t mb_kcpu_moe_ws_bytes(const mb_kcpu_moe_ws *ws);

/* Runs the problem on pool (NULL: the calling thread only) using ws, which
 * must not be shared by concurrent calls. Blocking. Returns 0, or -1 when
 * the workspace cannot grow (out of memory) or the problem is malformed
 * (counts inconsistent, NULL arrays); out is not written then. The caller
 * guarantees pair_token < n_tokens and the weight pointers' extents. */
int mb_kcpu_moe_run(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const mb_kcpu_moe_problem *p);

/* How experts with quantized weights compute (expert_ffn_quant.c): by
 * default each expert's gate/up and down choose, by their type and the
 * expert's pairs in the call, between integer dots against 8-bit
 * activations (decode) and f32 GEMM tiles over dequantized weights
 * (prefill); both see the same 8-bit activations, so they differ by f32
 * rounding only. */
enum { MB_KCPU_QPATH_AUTO = 0, MB_KCPU_QPATH_DOTS = 1, MB_KCPU_QPATH_TILES = 2 };

/* For tests and benchmarks: forces one way for every expert (or AUTO).
 * Not thread-safe against running kernels. */
void mb_kcpu_moe_force_qpath(int mode);

#endif
