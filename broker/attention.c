/* Causal grouped-query attention with an f32 KV cache: keys laid out
 * [layer][kv_head][pos][head_dim], values transposed [layer][kv_head]
 * [head_dim][pos], so that both products are GEMMs with the cache as the
 * weight operand:
 *   S[r][p]   = q[r] . K[p]                 (m = positions, k = head_dim)
 *   out[r][i] = sum_p P[r][p] * V^T[i][p]   (m = head_dim,  k = positions)
 * A task is one kv head, a block of tokens (all their query heads of that
 * kv head: up to MB_ATTN_ROWS rows) and, when there are too few such tasks
 * to fill the pool (decode), one slice of the positions; slices are merged
 * afterwards with the usual max/sum rescaling. */
#include "broker/attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemm.h"

/* A slice of positions is not worth a task below this many keys. */
#define MB_ATTN_MIN_SLICE 256u

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
    const uint32_t n_rep = n_heads / n_kv_heads;
    const uint32_t tok_block = n_rep >= MB_ATTN_ROWS ? 1 : MB_ATTN_ROWS / n_rep;
    const size_t rows = (size_t)tok_block * n_rep;
    /* Split tasks number base * slices < 3 * n_threads (see compute). */
    const size_t max_parts = 3 * (size_t)n_threads;
    size_t per_layer, cache, per_thread, qo, scratch, parts;
    if (!mul_ok((size_t)n_kv_heads * head_dim, max_ctx, &per_layer) ||
        !mul_ok(per_layer, n_layers, &cache) || !mul_ok(cache, sizeof(float), &cache) ||
        !mul_ok(rows, max_ctx, &per_thread) || !mul_ok(rows, 2 * (size_t)head_dim, &qo) ||
        per_thread > SIZE_MAX - qo || !mul_ok(per_thread + qo, (size_t)n_threads, &scratch) ||
        !mul_ok(scratch, sizeof(float), &scratch) ||
        !mul_ok(max_parts * rows, (size_t)head_dim + 2, &parts) ||
        !mul_ok(parts, sizeof(float), &parts))
        return MB_STATUS_OVERFLOW;
    /* calloc: stale positions are never read, but zeroed pages keep the
     * untouched part of a large cache unbacked. */
    a->k = calloc(1, cache);
    a->vt = calloc(1, cache);
    a->scratch = malloc(scratch);
    a->parts = malloc(parts);
    if (!a->k || !a->vt || !a->scratch || !a->parts) {
        mb_attn_fini(a);
        return MB_STATUS_NOMEM;
    }
    a->n_layers = n_layers;
    a->n_heads = n_heads;
    a->n_kv_heads = n_kv_heads;
    a->head_dim = head_dim;
    a->max_ctx = max_ctx;
    a->window = window < max_ctx ? window : 0; /* a window that wide hides nothing */
    a->n_rep = n_rep;
    a->tok_block = tok_block;
    a->rows = (uint32_t)rows;
    a->n_threads = n_threads;
    a->max_parts = (uint32_t)max_parts;
    a->scratch_per_thread = per_thread + qo;
    a->scale = (float)(1.0 / sqrt((double)head_dim));
    return MB_STATUS_OK;
}

void mb_attn_fini(mb_attn *a)
{
    if (!a) return;
    free(a->k);
    free(a->vt);
    free(a->scratch);
    free(a->parts);
    memset(a, 0, sizeof(*a));
}

/* Start of one (layer, kv head) in k or vt: max_ctx * head_dim floats. */
static size_t head_base(const mb_attn *a, uint32_t layer, uint32_t kvh)
{
    return (((size_t)layer * a->n_kv_heads + kvh) * a->max_ctx) * a->head_dim;
}

void mb_attn_store(mb_attn *a, uint32_t layer, uint32_t pos0, uint32_t n_tokens, const float *k,
                   size_t ldk, const float *v, size_t ldv)
{
    const size_t hd = a->head_dim;
    for (uint32_t h = 0; h < a->n_kv_heads; h++) {
        float *K = a->k + head_base(a, layer, h), *Vt = a->vt + head_base(a, layer, h);
        for (uint32_t t = 0; t < n_tokens; t++)
            memcpy(K + (size_t)(pos0 + t) * hd, k + (size_t)t * ldk + h * hd, hd * sizeof(float));
        for (size_t i = 0; i < hd; i++)
            for (uint32_t t = 0; t < n_tokens; t++)
                Vt[i * a->max_ctx + pos0 + t] = v[(size_t)t * ldv + h * hd + i];
    }
}

typedef struct {
    mb_attn *a;
    uint32_t layer, pos0, n_tokens, n_blocks, n_slices;
    const float *q;
    size_t ldq;
    float *out;
    size_t ldo;
} attn_job;

/* First position visible from the query at position pos. */
static uint32_t first_visible(const mb_attn *a, uint32_t pos)
{
    return a->window && pos + 1 > a->window ? pos + 1 - a->window : 0;
}

static void attn_task(void *ctx, size_t task, int thread)
{
    const attn_job *j = ctx;
    const mb_attn *a = j->a;
    const size_t hd = a->head_dim, n_rep = a->n_rep;
    const uint32_t slice = (uint32_t)(task % j->n_slices);
    const size_t gb = task / j->n_slices; /* kv head * n_blocks + block */
    const uint32_t g = (uint32_t)(gb / j->n_blocks);
    const uint32_t t0 = (uint32_t)(gb % j->n_blocks) * a->tok_block;
    const uint32_t nb = j->n_tokens - t0 < a->tok_block ? j->n_tokens - t0 : a->tok_block;
    const size_t R = nb * n_rep; /* row r: token t0 + r / n_rep, head g * n_rep + r % n_rep */
    float *Q = a->scratch + (size_t)thread * a->scratch_per_thread;
    float *O = Q + (size_t)a->rows * hd;
    float *S = O + (size_t)a->rows * hd;

    /* The block's positions [lo, hi] are the union of its queries' ranges;
     * this task takes slice `slice` of them. */
    const uint32_t hi0 = j->pos0 + t0, hi = hi0 + nb - 1, lo = first_visible(a, hi0);
    const uint32_t span = hi - lo + 1;
    const uint32_t p0 = lo + (uint32_t)((uint64_t)span * slice / j->n_slices);
    const uint32_t p1 = lo + (uint32_t)((uint64_t)span * (slice + 1) / j->n_slices);
    const size_t len = p1 - p0;
    float *part = NULL;
    if (j->n_slices > 1) part = a->parts + task * (size_t)a->rows * (hd + 2);
    if (len == 0) { /* an empty slice contributes nothing */
        for (size_t r = 0; r < R; r++) {
            part[R * hd + r] = -INFINITY;
            part[R * hd + R + r] = 0.0f;
        }
        return;
    }
    for (uint32_t b = 0; b < nb; b++) /* the block's query heads of kv head g, contiguous */
        memcpy(Q + (size_t)b * n_rep * hd, j->q + (size_t)(t0 + b) * j->ldq + g * n_rep * hd,
               n_rep * hd * sizeof(float));
    /* S[r][p - p0] = q[r] . K[p] for p in [p0, p1) */
    const float *K = a->k + head_base(a, j->layer, g) + (size_t)p0 * hd;
    mb_kcpu_gemm_serial(MB_KCPU_F32, K, len, hd, Q, hd, R, S, len, 0);

    /* Softmax per row over its visible positions, f32 as transformers'
     * eager path ((q @ k^T) * scaling, then softmax); others get 0. */
    for (size_t r = 0; r < R; r++) {
        float *s = S + r * len;
        const uint32_t qpos = hi0 + (uint32_t)(r / n_rep), qlo = first_visible(a, qpos);
        const uint32_t v0 = qlo > p0 ? qlo : p0, v1 = qpos + 1 < p1 ? qpos + 1 : p1;
        float mx = -INFINITY, sum = 0.0f;
        for (uint32_t p = v0; p < v1; p++) {
            s[p - p0] *= a->scale;
            if (s[p - p0] > mx) mx = s[p - p0];
        }
        for (uint32_t p = p0; p < v0; p++)
            s[p - p0] = 0.0f;
        for (uint32_t p = v1 > v0 ? v1 : v0; p < p1; p++)
            s[p - p0] = 0.0f;
        for (uint32_t p = v0; p < v1; p++) {
            s[p - p0] = expf(s[p - p0] - mx);
            sum += s[p - p0];
        }
        if (!part) { /* the only slice: normalise now, as torch does */
            float inv = 1.0f / sum;
            for (uint32_t p = v0; p < v1; p++)
                s[p - p0] *= inv;
        } else {
            part[R * hd + r] = mx; /* -inf when no position is visible */
            part[R * hd + R + r] = sum;
        }
    }
    /* O[r][i] = sum_p S[r][p] * V^T[i][p] */
    const float *Vt = a->vt + head_base(a, j->layer, g) + p0;
    if (part) {
        mb_kcpu_gemm_ex(NULL, MB_KCPU_F32, Vt, a->max_ctx, hd, len, S, len, R, part, hd, 0);
        return;
    }
    mb_kcpu_gemm_ex(NULL, MB_KCPU_F32, Vt, a->max_ctx, hd, len, S, len, R, O, hd, 0);
    for (uint32_t b = 0; b < nb; b++)
        memcpy(j->out + (size_t)(t0 + b) * j->ldo + g * n_rep * hd, O + (size_t)b * n_rep * hd,
               n_rep * hd * sizeof(float));
}

/* Merges the slices of every (kv head, block): out = sum_s e^(m_s - M) O_s
 * / sum_s e^(m_s - M) l_s with M the largest slice maximum. */
static void merge_slices(const attn_job *j)
{
    const mb_attn *a = j->a;
    const size_t hd = a->head_dim, n_rep = a->n_rep, stride = (size_t)a->rows * (hd + 2);
    for (size_t gb = 0; gb < (size_t)a->n_kv_heads * j->n_blocks; gb++) {
        const uint32_t g = (uint32_t)(gb / j->n_blocks);
        const uint32_t t0 = (uint32_t)(gb % j->n_blocks) * a->tok_block;
        const uint32_t nb = j->n_tokens - t0 < a->tok_block ? j->n_tokens - t0 : a->tok_block;
        const size_t R = nb * n_rep;
        const float *first = a->parts + gb * j->n_slices * stride;
        for (size_t r = 0; r < R; r++) {
            float M = -INFINITY;
            for (uint32_t s = 0; s < j->n_slices; s++) {
                float m = first[s * stride + R * hd + r];
                if (m > M) M = m;
            }
            float *o = j->out + (size_t)(t0 + r / n_rep) * j->ldo + (g * n_rep + r % n_rep) * hd;
            memset(o, 0, hd * sizeof(float));
            float denom = 0.0f;
            for (uint32_t s = 0; s < j->n_slices; s++) {
                const float *ps = first + s * stride;
                if (ps[R * hd + r] == -INFINITY) continue;
                float c = expf(ps[R * hd + r] - M);
                denom += c * ps[R * hd + R + r];
                for (size_t i = 0; i < hd; i++)
                    o[i] += c * ps[r * hd + i];
            }
            const float inv = 1.0f / denom;
            for (size_t i = 0; i < hd; i++)
                o[i] *= inv;
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
                  .n_blocks = (n_tokens + a->tok_block - 1) / a->tok_block,
                  .n_slices = 1,
                  .q = q,
                  .ldq = ldq,
                  .out = out,
                  .ldo = ldo};
    /* Too few (kv head, block) tasks for the pool: cut the positions into
     * slices of at least MB_ATTN_MIN_SLICE, about two tasks per thread.
     * base < T and slices <= ceil(2T / base) keep base * slices < 3T. */
    const size_t base = (size_t)a->n_kv_heads * j.n_blocks;
    const int threads = pool ? mb_kcpu_pool_threads(pool) : 1;
    if (threads > 1 && base < (size_t)threads) {
        size_t want = (2 * (size_t)threads + base - 1) / base;
        size_t span = pos0 + n_tokens; /* at most the positions a block sees */
        if (a->window && span > a->window + (size_t)a->tok_block) span = a->window + a->tok_block;
        size_t by_len = (span + MB_ATTN_MIN_SLICE - 1) / MB_ATTN_MIN_SLICE;
        size_t ns = want < by_len ? want : by_len;
        if (ns > 1 && base * ns <= a->max_parts) j.n_slices = (uint32_t)ns;
    }
    mb_kcpu_pool_run(pool, base * j.n_slices, attn_task, &j);
    if (j.n_slices > 1) merge_slices(&j);
}
