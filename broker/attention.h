/* Causal grouped-query attention over an f32 KV cache that lives for the
 * whole context: the cache is allocated once for max_ctx positions and the
 * computation is split over the thread pool by kv head, block of queries
 * and (for short steps such as decode) slice of the cached positions. */
#ifndef MB_BROKER_ATTENTION_H
#define MB_BROKER_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "protocol/status.h"

/* Query rows (tokens x query heads of one kv head) handled by one task, so
 * that each key and value row is read once for all of them. */
#define MB_ATTN_ROWS 16

typedef struct {
    uint32_t n_layers, n_heads, n_kv_heads, head_dim, max_ctx;
    uint32_t window;    /* 0: full causal; else query at pos sees (pos - window, pos] */
    uint32_t n_rep;     /* query heads per kv head */
    uint32_t tok_block; /* tokens per task: max(1, MB_ATTN_ROWS / n_rep) */
    uint32_t rows;      /* tok_block * n_rep */
    int n_threads;      /* threads of the pool this was sized for */
    uint32_t max_parts; /* partial results room for split tasks */
    float scale;        /* head_dim^-0.5 */
    float *k;           /* [n_layers][n_kv_heads][max_ctx][head_dim] */
    float *vt;          /* [n_layers][n_kv_heads][head_dim][max_ctx]: values transposed */
    float *scratch;     /* per thread: q[rows][head_dim], s[rows][max_ctx], o[rows][head_dim] */
    size_t scratch_per_thread; /* floats */
    float *parts;              /* [max_parts][rows][head_dim + 2]: o, max, sum of a slice */
} mb_attn;

/* Allocates the cache and scratch (caller owns a, frees with mb_attn_fini).
 * n_heads must be a multiple of n_kv_heads; n_threads is the pool's thread
 * count (1 without a pool); window is the sliding window in positions
 * (Mistral/Mixtral's sliding_window, masked as transformers does: key p is
 * visible from query q when q - window < p <= q), 0 for none.
 * Errors: INVALID_ARG, OVERFLOW, NOMEM. */
mb_status mb_attn_init(mb_attn *a, uint32_t n_layers, uint32_t n_heads, uint32_t n_kv_heads,
                       uint32_t head_dim, uint32_t max_ctx, uint32_t window, int n_threads);
void mb_attn_fini(mb_attn *a);

/* Writes the keys and values of n_tokens tokens at positions pos0.. into
 * layer's cache: k[t][n_kv_heads*head_dim] (row stride ldk), likewise v.
 * The caller guarantees pos0 + n_tokens <= max_ctx. Cannot fail. */
void mb_attn_store(mb_attn *a, uint32_t layer, uint32_t pos0, uint32_t n_tokens, const float *k,
                   size_t ldk, const float *v, size_t ldv);

/* out[t][n_heads*head_dim] (row stride ldo) = softmax(q_t K^T * scale) V
 * over cached positions [0, pos0 + t] (within the window, if any), for
 * query rows q[t][n_heads*head_dim] (stride ldq) of tokens at pos0 + t.
 * Keys and values of those positions must already be stored. Query head h
 * reads kv head h / (n_heads / n_kv_heads), as transformers' repeat_kv.
 * Runs on pool (may be NULL; it must have at most a->n_threads threads).
 * Blocking; cannot fail. */
void mb_attn_compute(mb_attn *a, mb_kcpu_pool *pool, uint32_t layer, uint32_t pos0,
                     uint32_t n_tokens, const float *q, size_t ldq, float *out, size_t ldo);

#endif
