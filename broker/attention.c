/* Causal grouped-query attention with an f32 KV cache laid out
 * [layer][kv_head][pos][head_dim]. One task is one query head times a block
 * of up to MB_ATTN_QBLOCK queries; tasks are spread over the pool. */
#include "broker/attention.h"

#include "kernels/cpu/gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Multiplies with overflow check: returns 0 on overflow. */
static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

mb_status mb_attn_init(mb_attn *a, uint32_t n_layers, uint32_t n_heads, uint32_t n_kv_heads,
                       uint32_t head_dim, uint32_t max_ctx, uint32_t window, int n_threads)
{
    if (!a || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || max_ctx == 0 ||
        n_threads < 1 || n_heads % n_kv_heads != 0)
        return MB_STATUS_INVALID_ARG;
    memset(a, 0, sizeof(*a));
    size_t per_layer, cache, scratch;
    if (!mul_ok((size_t)n_kv_heads * head_dim, max_ctx, &per_layer) ||
        !mul_ok(per_layer, n_layers, &cache) || !mul_ok(cache, sizeof(float), &cache) ||
        !mul_ok((size_t)n_threads * MB_ATTN_QBLOCK, max_ctx, &scratch) ||
        !mul_ok(scratch, sizeof(float), &scratch))
        return MB_STATUS_OVERFLOW;
    /* calloc: stale positions are never read, but zeroed pages keep the
     * untouched part of a large cache unbacked. */
    a->k = calloc(1, cache);
    a->v = calloc(1, cache);
    a->scratch = malloc(scratch);
    if (!a->k || !a->v || !a->scratch) {
        mb_attn_fini(a);
        return MB_STATUS_NOMEM;
    }
    a->n_layers = n_layers;
    a->n_heads = n_heads;
    a->n_kv_heads = n_kv_heads;
    a->head_dim = head_dim;
    a->max_ctx = max_ctx;
    a->window = window < max_ctx ? window : 0; /* a window that wide hides nothing */
    a->n_threads = n_threads;
    a->scale = (float)(1.0 / sqrt((double)head_dim));
    return MB_STATUS_OK;
}

void mb_attn_fini(mb_attn *a)
{
    if (!a) return;
    free(a->k);
    free(a->v);
    free(a->scratch);
    memset(a, 0, sizeof(*a));
}

/* Start of cache rows for (layer, kv_head): [max_ctx][head_dim]. */
static size_t head_base(const mb_attn *a, uint32_t layer, uint32_t kvh)
{
    return (((size_t)layer * a->n_kv_heads + kvh) * a->max_ctx) * a->head_dim;
}

void mb_attn_store(mb_attn *a, uint32_t layer, uint32_t pos0, uint32_t n_tokens, const float *k,
                   size_t ldk, const float *v, size_t ldv)
{
    const size_t hd = a->head_dim;
    for (uint32_t h = 0; h < a->n_kv_heads; h++) {
        size_t base = head_base(a, layer, h);
        for (uint32_t t = 0; t < n_tokens; t++) {
            size_t dst = base + (size_t)(pos0 + t) * hd;
            memcpy(a->k + dst, k + (size_t)t * ldk + h * hd, hd * sizeof(float));
            memcpy(a->v + dst, v + (size_t)t * ldv + h * hd, hd * sizeof(float));
        }
    }
}

typedef struct {
    mb_attn *a;
    uint32_t layer, pos0, n_tokens, n_blocks;
    const float *q;
    size_t ldq;
    float *out;
    size_t ldo;
} attn_job;

static void attn_task(void *ctx, size_t task, int thread)
{
    const attn_job *j = ctx;
    const mb_attn *a = j->a;
    const size_t hd = a->head_dim;
    const uint32_t h = (uint32_t)(task / j->n_blocks);
    const uint32_t t0 = (uint32_t)(task % j->n_blocks) * MB_ATTN_QBLOCK;
    uint32_t nb = j->n_tokens - t0;
    if (nb > MB_ATTN_QBLOCK) nb = MB_ATTN_QBLOCK;
    const uint32_t kvh = h / (a->n_heads / a->n_kv_heads);
    const float *K = a->k + head_base(a, j->layer, kvh);
    const float *V = a->v + head_base(a, j->layer, kvh);
    float *S = a->scratch + (size_t)thread * MB_ATTN_QBLOCK * a->max_ctx;

    /* Query b (position hi0 + b) sees keys [lo(b), hi0 + b]: lo is 0, or
     * with a window hi0 + b + 1 - window clamped at 0. The block's scores
     * are one small GEMM over the union of those ranges,
     *   S[b][lo0..hi_last] = q[b] @ K[lo0..hi_last]^T,
     * so each key row is read once; the few entries outside a query's own
     * range (at most a block's width at either end) are never used. */
    const uint32_t hi0 = j->pos0 + t0, hi_last = hi0 + nb - 1;
    const uint32_t w = a->window;
    const uint32_t lo0 = w && hi0 + 1 > w ? hi0 + 1 - w : 0;
    const float *qb = j->q + (size_t)t0 * j->ldq + (size_t)h * hd;
    mb_kcpu_gemm_serial(MB_KCPU_F32, K + (size_t)lo0 * hd, hi_last - lo0 + 1, hd, qb, j->ldq, nb,
                        S + lo0, a->max_ctx, 0);
    /* Softmax per query over its own range, f32 as torch's eager path. */
    for (uint32_t b = 0; b < nb; b++) {
        float *s = S + (size_t)b * a->max_ctx;
        const uint32_t hi = hi0 + b, lo = w && hi + 1 > w ? hi + 1 - w : 0;
        for (uint32_t p = lo; p <= hi; p++)
            s[p] *= a->scale; /* transformers: (q @ k^T) * scaling, then softmax */
        float mx = s[lo];
        for (uint32_t p = lo + 1; p <= hi; p++)
            if (s[p] > mx) mx = s[p];
        float sum = 0.0f;
        for (uint32_t p = lo; p <= hi; p++) {
            s[p] = expf(s[p] - mx);
            sum += s[p];
        }
        float inv = 1.0f / sum;
        for (uint32_t p = lo; p <= hi; p++)
            s[p] *= inv;
        memset(j->out + (size_t)(t0 + b) * j->ldo + (size_t)h * hd, 0, hd * sizeof(float));
    }
    /* out_b = sum_p s_b[p] v_p over the same ranges. */
    for (uint32_t p = lo0; p <= hi_last; p++) {
        const float *vr = V + (size_t)p * hd;
        uint32_t b0 = p <= hi0 ? 0 : p - hi0;
        uint32_t b1 = w && p + w <= hi_last ? p + w - hi0 : nb;
        for (uint32_t b = b0; b < b1; b++) {
            float wt = S[(size_t)b * a->max_ctx + p];
            float *o = j->out + (size_t)(t0 + b) * j->ldo + (size_t)h * hd;
            for (size_t i = 0; i < hd; i++)
                o[i] += wt * vr[i];
        }
    }
}

void mb_attn_compute(mb_attn *a, mb_kcpu_pool *pool, uint32_t layer, uint32_t pos0,
                     uint32_t n_tokens, const float *q, size_t ldq, float *out, size_t ldo)
{
    if (n_tokens == 0) return;
    attn_job j = {.a = a,
                  .layer = layer,
                  .pos0 = pos0,
                  .n_tokens = n_tokens,
                  .n_blocks = (n_tokens + MB_ATTN_QBLOCK - 1) / MB_ATTN_QBLOCK,
                  .q = q,
                  .ldq = ldq,
                  .out = out,
                  .ldo = ldo};
    mb_kcpu_pool_run(pool, (size_t)a->n_heads * j.n_blocks, attn_task, &j);
}
