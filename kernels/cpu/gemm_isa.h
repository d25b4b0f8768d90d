/* Private interface between the GEMM drivers (gemm.c, expert_ffn.c) and the
 * per-instruction-set paths (gemm_scalar.c, gemm_avx2.c, gemm_avx512.c).
 *
 * Every path computes dot products of weight rows (row-major, f32/f16/bf16)
 * with "packed" activation rows: f32 copies padded with zeros to a multiple
 * of the path's chunk, and for bf16 weights on SIMD paths deinterleaved per
 * chunk (the even k of the chunk first, then the odd k), so that the two
 * halves of a bf16 pair convert to f32 with one shift and one mask. */
#ifndef MB_KERNELS_CPU_GEMM_ISA_H
#define MB_KERNELS_CPU_GEMM_ISA_H

#include <stddef.h>
#include <stdint.h>

/* Largest tile: rows of W by tokens. */
#define MB_KCPU_TILE_R_MAX 8
#define MB_KCPU_TILE_T_MAX 8

/* k is processed in blocks sized so that the activation rows of all tokens
 * of a block (n_tok * kc floats) stay in L2 while the row groups of W sweep
 * over them: at most MB_KCPU_KC_BYTES of them, and at least MB_KCPU_KC_MIN
 * elements (a multiple of every chunk). With few tokens (decode) a block
 * spans all of k, so each weight row is one continuous stream. */
#define MB_KCPU_KC_BYTES (512u * 1024u)
#define MB_KCPU_KC_MIN 1024u

typedef struct {
    const char *name;
    size_t chunk;                           /* packed rows hold a multiple of chunk floats */
    int bf16_deinterleave;                  /* bf16 packing splits each chunk into even/odd k */
    int t_max;                              /* tokens per tile, <= MB_KCPU_TILE_T_MAX */
    int rows_for_t[MB_KCPU_TILE_T_MAX + 1]; /* rows per tile for t tokens */

    /* xp[kpad] = x[k] packed for weights of wdtype; pads with zeros. */
    void (*pack)(int wdtype, const float *x, size_t k, float *xp);

    /* out[t * rows + r] = sum over kk in [k0, k1) of w[r * ldw + kk] *
     * x_t[kk] for r < rows, t < n_tok. rows is rows_for_t[t'] for some
     * t' >= n_tok, or 1. k0 is a multiple of chunk. xp[t] are packed rows
     * (the kernel adds k0 itself); w points at row 0, column 0. */
    void (*tile)(int wdtype, const void *w, size_t ldw, int rows, const float *const *xp, int n_tok,
                 size_t k0, size_t k1, float *out);

    /* h[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u for i < n. */
    void (*silu_mul)(const float *g, const float *u, float *h, size_t n);
} mb_kcpu_isa_impl;

void mb_kcpu_silu_mul_scalar(const float *g, const float *u, float *h, size_t n);
void mb_kcpu_silu_mul_avx2(const float *g, const float *u, float *h, size_t n);
void mb_kcpu_silu_mul_avx512(const float *g, const float *u, float *h, size_t n);

extern const mb_kcpu_isa_impl mb_kcpu_isa_scalar;
extern const mb_kcpu_isa_impl mb_kcpu_isa_avx2;
extern const mb_kcpu_isa_impl mb_kcpu_isa_avx512;

/* The path in use (detected once, or forced by mb_kcpu_force_isa). */
const mb_kcpu_isa_impl *mb_kcpu_isa_current(void);

/* Floats in a packed row of k elements. */
static inline size_t mb_kcpu_packed_len(const mb_kcpu_isa_impl *isa, size_t k)
{
    return (k + isa->chunk - 1) / isa->chunk * isa->chunk;
}

/* Position of element kk inside a packed row. */
static inline size_t mb_kcpu_packed_pos(const mb_kcpu_isa_impl *isa, int wdtype, size_t kk)
{
    if (wdtype != 2 || !isa->bf16_deinterleave) return kk;
    size_t c = isa->chunk, base = kk / c * c, q = kk - base;
    return base + (q & 1u) * (c / 2) + q / 2;
}

/* Bytes per weight element. */
static inline size_t mb_kcpu_wsize(int wdtype)
{
    return wdtype == 0 ? 4u : 2u;
}

/* acc[t * ldacc + (r - r0)] (=, or += when add) for r in [r0, r1), t < n_tok:
 * rows of w (row stride ldw elements) dotted with packed rows xp[t], over
 * the whole of k, blocked over k and tiled with isa->tile. Single thread. */
void mb_kcpu_gemm_block(const mb_kcpu_isa_impl *isa, int wdtype, const void *w, size_t ldw,
                        size_t r0, size_t r1, const float *const *xp, size_t n_tok, size_t k,
                        float *acc, size_t ldacc, int add);

#endif
