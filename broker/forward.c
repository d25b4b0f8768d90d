/* The coordinator's forward pass: the layer loop over chunks of tokens, with
 * every projection through mb_kcpu_gemm and the routed experts through the
 * caller's callback. Everything a step touches is allocated at create. */
#include "broker/forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/attention.h"
#include "broker/device/forward_cuda.h"
#include "broker/norm.h"
#include "broker/rope.h"
#include "broker/router.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/quant.h"

/* f32 copies of one layer's small 1-D tensors (NULL when absent). */
typedef struct {
    float *attn_norm, *ffn_norm; /* [d_model] */
    float *bq, *bk, *bv;         /* [n_heads*head_dim], [n_kv*head_dim] x2 */
    float *q_norm, *k_norm;      /* [head_dim] */
} layer_small;

struct mb_forward {
    const mb_model *m;
    mb_model_config cfg;
    mb_kcpu_pool *pool;
    mb_moe_fn moe_fn;
    void *moe_ctx;
    uint32_t max_ctx, chunk_cap, chunk, pos;
    uint32_t q_dim, kv_dim; /* n_heads*head_dim, n_kv_heads*head_dim */
    mb_rope rope;
    mb_attn attn;
    mb_router router;
    layer_small *ls;    /* [n_layers] */
    float *final_norm;  /* [d_model] */
    float *small;       /* arena behind ls and final_norm */
    float *scratch;     /* arena behind the buffers below */
    float *x;           /* [chunk][d_model] residual stream */
    float *xn;          /* [chunk][d_model] normed input of a block */
    float *q;           /* [chunk][q_dim] */
    float *k, *v;       /* [chunk][kv_dim] */
    float *att;         /* [chunk][q_dim] attention output before o_proj */
    float *rlog;        /* [chunk][n_experts] router logits, then probabilities */
    float *gate;        /* [chunk][top_k] */
    float *moe;         /* [chunk][d_model] expert output */
    float *sh_g, *sh_u; /* [chunk][d_ff_shared] shared expert gate/up */
    float *sh_s;        /* [chunk] shared expert gate logit */
    int32_t *ids;       /* [chunk][top_k] */
    mb_fwd_cuda *cuda;  /* the dense part on a GPU instead (none of the above allocated) */
};

/* ---- creation: checks and allocation ---------------------------------- */

static int add_ok(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* A 2-D weight used by a GEMM: present, a dtype the kernels take (rows of
 * whole blocks when quantized), and exactly rows x cols. */
static mb_status check_matrix(const mb_tensor *t, uint64_t rows, uint64_t cols)
{
    uint64_t row_bytes;
    if (!t->data) return MB_STATUS_CONFIG;
    if (!mb_dtype_weight_valid((int)t->dtype)) return MB_STATUS_BAD_DTYPE;
    if (mb_dtype_row_bytes((int)t->dtype, cols, &row_bytes) != MB_STATUS_OK)
        return MB_STATUS_BAD_SHAPE;
    if (t->rows != rows || t->cols != cols) return MB_STATUS_BAD_SHAPE;
    return MB_STATUS_OK;
}

/* A 1-D tensor of n elements (stored as [1][n] or [n][1]). */
static mb_status check_vector(const mb_tensor *t, uint64_t n)
{
    if (!t->data) return MB_STATUS_CONFIG;
    if (!mb_dtype_valid((int)t->dtype)) return MB_STATUS_BAD_DTYPE;
    if (!((t->rows == 1 && t->cols == n) || (t->rows == n && t->cols == 1)))
        return MB_STATUS_BAD_SHAPE;
    return MB_STATUS_OK;
}

static mb_status check_config(const mb_model_config *c)
{
    if (c->arch != MB_ARCH_MIXTRAL && c->arch != MB_ARCH_QWEN2_MOE && c->arch != MB_ARCH_QWEN3_MOE)
        return MB_STATUS_UNSUPPORTED;
    if (c->n_layers == 0 || c->d_model == 0 || c->n_heads == 0 || c->n_kv_heads == 0 ||
        c->head_dim == 0 || (c->head_dim & 1u) || c->vocab == 0 || c->n_experts == 0 ||
        c->top_k == 0 || c->top_k > c->n_experts || c->n_heads % c->n_kv_heads != 0 ||
        c->vocab > (uint32_t)INT32_MAX || c->n_experts > (uint32_t)INT32_MAX ||
        !(c->rms_eps >= 0.0f) || !(c->rope_theta > 0.0f))
        return MB_STATUS_CONFIG;
    return MB_STATUS_OK;
}

static mb_status check_model(const mb_model *m)
{
    const mb_model_config *c = &m->cfg;
    MB_TRY(check_config(c));
    const uint64_t d = c->d_model, qd = (uint64_t)c->n_heads * c->head_dim,
                   kvd = (uint64_t)c->n_kv_heads * c->head_dim;
    MB_TRY(check_matrix(&m->embed, c->vocab, d));
    MB_TRY(check_matrix(&m->lm_head, c->vocab, d));
    MB_TRY(check_vector(&m->final_norm, d));
    if (!m->layers) return MB_STATUS_CONFIG;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const mb_layer_weights *L = &m->layers[l];
        MB_TRY(check_vector(&L->attn_norm, d));
        MB_TRY(check_matrix(&L->wq, qd, d));
        MB_TRY(check_matrix(&L->wk, kvd, d));
        MB_TRY(check_matrix(&L->wv, kvd, d));
        MB_TRY(check_matrix(&L->wo, d, qd));
        MB_TRY(check_vector(&L->ffn_norm, d));
        MB_TRY(check_matrix(&L->router, c->n_experts, d));
        if (c->qkv_bias) {
            MB_TRY(check_vector(&L->bq, qd));
            MB_TRY(check_vector(&L->bk, kvd));
            MB_TRY(check_vector(&L->bv, kvd));
        }
        if (c->qk_norm) {
            MB_TRY(check_vector(&L->q_norm, c->head_dim));
            MB_TRY(check_vector(&L->k_norm, c->head_dim));
        }
        if (c->d_ff_shared) {
            MB_TRY(check_matrix(&L->shared.gate, c->d_ff_shared, d));
            MB_TRY(check_matrix(&L->shared.up, c->d_ff_shared, d));
            MB_TRY(check_matrix(&L->shared.down, d, c->d_ff_shared));
            MB_TRY(check_matrix(&L->shared_gate, 1, d));
        }
    }
    return MB_STATUS_OK;
}

/* Hands out n floats from an arena cursor. */
static float *take(float **cursor, size_t n)
{
    float *p = *cursor;
    *cursor += n;
    return p;
}

static float *decode_vec(float **cursor, const mb_tensor *t, size_t n)
{
    float *p = take(cursor, n);
    mb_dtype_decode_f32(t->dtype, p, t->data, n);
    return p;
}

/* Copies norms and biases to f32 once: they are read on every token. */
static mb_status alloc_small(mb_forward *f)
{
    const mb_model_config *c = &f->cfg;
    size_t per_layer = 2 * (size_t)c->d_model;
    if (c->qkv_bias) per_layer += (size_t)f->q_dim + 2 * (size_t)f->kv_dim;
    if (c->qk_norm) per_layer += 2 * (size_t)c->head_dim;
    size_t total;
    if (!mul_ok(per_layer, c->n_layers, &total) || !add_ok(total, c->d_model, &total) ||
        !mul_ok(total, sizeof(float), &total))
        return MB_STATUS_OVERFLOW;
    f->small = malloc(total);
    f->ls = calloc(c->n_layers, sizeof(*f->ls));
    if (!f->small || !f->ls) return MB_STATUS_NOMEM;
    float *cur = f->small;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const mb_layer_weights *L = &f->m->layers[l];
        layer_small *s = &f->ls[l];
        s->attn_norm = decode_vec(&cur, &L->attn_norm, c->d_model);
        s->ffn_norm = decode_vec(&cur, &L->ffn_norm, c->d_model);
        if (c->qkv_bias) {
            s->bq = decode_vec(&cur, &L->bq, f->q_dim);
            s->bk = decode_vec(&cur, &L->bk, f->kv_dim);
            s->bv = decode_vec(&cur, &L->bv, f->kv_dim);
        }
        if (c->qk_norm) {
            s->q_norm = decode_vec(&cur, &L->q_norm, c->head_dim);
            s->k_norm = decode_vec(&cur, &L->k_norm, c->head_dim);
        }
    }
    f->final_norm = decode_vec(&cur, &f->m->final_norm, c->d_model);
    return MB_STATUS_OK;
}

static mb_status alloc_scratch(mb_forward *f)
{
    const mb_model_config *c = &f->cfg;
    /* Floats per chunk row; ids are int32 and share the arena (same size). */
    size_t row = 0;
    const size_t parts[] = {
        c->d_model, c->d_model, f->q_dim,       f->kv_dim,      f->kv_dim, f->q_dim, c->n_experts,
        c->top_k,   c->d_model, c->d_ff_shared, c->d_ff_shared, 1,         c->top_k};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (!add_ok(row, parts[i], &row)) return MB_STATUS_OVERFLOW;
    size_t total;
    if (!mul_ok(row, f->chunk_cap, &total) || !mul_ok(total, sizeof(float), &total))
        return MB_STATUS_OVERFLOW;
    f->scratch = malloc(total);
    if (!f->scratch) return MB_STATUS_NOMEM;
    const size_t n = f->chunk_cap;
    float *cur = f->scratch;
    f->x = take(&cur, n * c->d_model);
    f->xn = take(&cur, n * c->d_model);
    f->q = take(&cur, n * f->q_dim);
    f->k = take(&cur, n * f->kv_dim);
    f->v = take(&cur, n * f->kv_dim);
    f->att = take(&cur, n * f->q_dim);
    f->rlog = take(&cur, n * c->n_experts);
    f->gate = take(&cur, n * c->top_k);
    f->moe = take(&cur, n * c->d_model);
    f->sh_g = take(&cur, n * c->d_ff_shared);
    f->sh_u = take(&cur, n * c->d_ff_shared);
    f->sh_s = take(&cur, n);
    f->ids = (int32_t *)take(&cur, n * c->top_k);
    return MB_STATUS_OK;
}

mb_status mb_forward_create(const mb_model *m, uint32_t max_ctx, mb_kcpu_pool *pool,
                            mb_moe_fn moe_fn, void *moe_ctx, mb_forward **out)
{
    const mb_forward_place cpu = {.cuda_device = -1};
    return mb_forward_create_on(m, max_ctx, pool, &cpu, moe_fn, moe_ctx, out, NULL, 0);
}

mb_status mb_forward_create_on(const mb_model *m, uint32_t max_ctx, mb_kcpu_pool *pool,
                               const mb_forward_place *place, mb_moe_fn moe_fn, void *moe_ctx,
                               mb_forward **out, char *err, size_t err_cap)
{
    if (!m || !moe_fn || !out || max_ctx == 0 || !place) return MB_STATUS_INVALID_ARG;
    mb_status st = check_model(m);
    if (st != MB_STATUS_OK) return st;
    mb_forward *f = calloc(1, sizeof(*f));
    if (!f) return MB_STATUS_NOMEM;
    f->m = m;
    f->cfg = m->cfg;
    f->pool = pool;
    f->moe_fn = moe_fn;
    f->moe_ctx = moe_ctx;
    f->max_ctx = max_ctx;
    f->chunk_cap = max_ctx < MB_FORWARD_CHUNK_DEFAULT ? max_ctx : MB_FORWARD_CHUNK_DEFAULT;
    f->chunk = f->chunk_cap;
    f->q_dim = f->cfg.n_heads * f->cfg.head_dim;
    f->kv_dim = f->cfg.n_kv_heads * f->cfg.head_dim;
    if (place->cuda_device >= 0) {
        char msg[256] = "";
        st = mb_fwd_cuda_create(m, max_ctx, f->chunk_cap, place->cuda_device, place->progress, &f->cuda, msg,
                                sizeof msg);
        if (st != MB_STATUS_OK) {
            if (err && err_cap) snprintf(err, err_cap, "%s", msg);
            free(f);
            return st;
        }
        *out = f;
        return MB_STATUS_OK;
    }
    int n_threads = pool ? mb_kcpu_pool_threads(pool) : 1;
    if (n_threads < 1) n_threads = 1;
    if ((st = mb_router_init(&f->router, &f->cfg)) != MB_STATUS_OK ||
        (st = mb_rope_init(&f->rope, f->cfg.head_dim, max_ctx, f->cfg.rope_theta)) !=
            MB_STATUS_OK ||
        (st = mb_attn_init(&f->attn, f->cfg.n_layers, f->cfg.n_heads, f->cfg.n_kv_heads,
                           f->cfg.head_dim, max_ctx, f->cfg.sliding_window, n_threads)) !=
            MB_STATUS_OK ||
        (st = alloc_small(f)) != MB_STATUS_OK || (st = alloc_scratch(f)) != MB_STATUS_OK)
        goto fail;
    f->rope.interleaved = f->cfg.rope_interleaved != 0;
    *out = f;
    return MB_STATUS_OK;
fail:
    mb_forward_destroy(f);
    return st;
}

void mb_forward_destroy(mb_forward *f)
{
    if (!f) return;
    mb_fwd_cuda_destroy(f->cuda);
    mb_rope_fini(&f->rope);
    mb_attn_fini(&f->attn);
    free(f->small);
    free(f->ls);
    free(f->scratch);
    free(f);
}

void mb_forward_reset(mb_forward *f)
{
    if (f) f->pos = 0;
}

void mb_forward_truncate(mb_forward *f, uint32_t pos)
{
    if (f && pos < f->pos) f->pos = pos; /* rows past pos are dead and get overwritten */
}

mb_status mb_forward_set_chunk(mb_forward *f, uint32_t chunk_tokens)
{
    if (!f || chunk_tokens == 0 || chunk_tokens > f->chunk_cap) return MB_STATUS_INVALID_ARG;
    f->chunk = chunk_tokens;
    return MB_STATUS_OK;
}

uint32_t mb_forward_pos(const mb_forward *f)
{
    return f ? f->pos : 0;
}

/* ---- the layer loop ----------------------------------------------------- */

/* y[n][m] = x[n][k] @ t^T (+ y when accumulate), rows contiguous. */
static void proj(mb_forward *f, const mb_tensor *t, const float *x, size_t n, float *y,
                 int accumulate)
{
    mb_kcpu_gemm(f->pool, (int)t->dtype, t->data, (size_t)t->rows, (size_t)t->cols, x,
                 (size_t)t->cols, n, y, (size_t)t->rows, accumulate);
}

static void add_bias(float *y, size_t n, size_t m, const float *b)
{
    for (size_t t = 0; t < n; t++)
        for (size_t i = 0; i < m; i++)
            y[t * m + i] += b[i];
}

/* Attention block: x += o_proj(attn(rope(q), rope(k), v)) for n tokens at pos. */
static void attention_block(mb_forward *f, uint32_t l, uint32_t n)
{
    const mb_model_config *c = &f->cfg;
    const mb_layer_weights *L = &f->m->layers[l];
    const layer_small *s = &f->ls[l];
    mb_norm_rms(f->xn, c->d_model, f->x, c->d_model, n, c->d_model, s->attn_norm, c->rms_eps);
    proj(f, &L->wq, f->xn, n, f->q, 0); /* q[n][q_dim] */
    proj(f, &L->wk, f->xn, n, f->k, 0); /* k[n][kv_dim] */
    proj(f, &L->wv, f->xn, n, f->v, 0); /* v[n][kv_dim] */
    if (c->qkv_bias) {
        add_bias(f->q, n, f->q_dim, s->bq);
        add_bias(f->k, n, f->kv_dim, s->bk);
        add_bias(f->v, n, f->kv_dim, s->bv);
    }
    if (c->qk_norm) { /* Qwen3: RMSNorm over each head, before RoPE */
        mb_norm_rms(f->q, c->head_dim, f->q, c->head_dim, (size_t)n * c->n_heads, c->head_dim,
                    s->q_norm, c->rms_eps);
        mb_norm_rms(f->k, c->head_dim, f->k, c->head_dim, (size_t)n * c->n_kv_heads, c->head_dim,
                    s->k_norm, c->rms_eps);
    }
    mb_rope_apply(&f->rope, f->q, f->q_dim, n, c->n_heads, f->pos);
    mb_rope_apply(&f->rope, f->k, f->kv_dim, n, c->n_kv_heads, f->pos);
    mb_attn_store(&f->attn, l, f->pos, n, f->k, f->kv_dim, f->v, f->kv_dim);
    mb_attn_compute(&f->attn, f->pool, l, f->pos, n, f->q, f->q_dim, f->att, f->q_dim);
    proj(f, &L->wo, f->att, n, f->x, 1); /* x[n][d] += att[n][q_dim] @ wo^T */
}

/* Qwen2-MoE shared expert, added into moe:
 * moe += sigmoid(x @ shared_gate^T) * down(silu(gate x) * up x). The sigmoid
 * scales the activation before down_proj (same value by linearity). */
static void shared_expert(mb_forward *f, uint32_t l, uint32_t n)
{
    const mb_layer_weights *L = &f->m->layers[l];
    const size_t ff = f->cfg.d_ff_shared;
    proj(f, &L->shared.gate, f->xn, n, f->sh_g, 0); /* sh_g[n][ff] */
    proj(f, &L->shared.up, f->xn, n, f->sh_u, 0);   /* sh_u[n][ff] */
    proj(f, &L->shared_gate, f->xn, n, f->sh_s, 0); /* sh_s[n][1] */
    for (size_t t = 0; t < n; t++) {
        float sg = 1.0f / (1.0f + expf(-f->sh_s[t]));
        float *g = f->sh_g + t * ff;
        const float *u = f->sh_u + t * ff;
        for (size_t i = 0; i < ff; i++) {
            float silu = g[i] / (1.0f + expf(-g[i]));
            g[i] = sg * (silu * u[i]);
        }
    }
    proj(f, &L->shared.down, f->sh_g, n, f->moe, 1); /* moe[n][d] += sh_g @ down^T */
}

/* MoE block: x += experts(norm(x)) (+ the shared expert). */
static mb_status moe_block(mb_forward *f, uint32_t l, uint32_t n, int decode)
{
    const mb_model_config *c = &f->cfg;
    const mb_layer_weights *L = &f->m->layers[l];
    mb_norm_rms(f->xn, c->d_model, f->x, c->d_model, n, c->d_model, f->ls[l].ffn_norm, c->rms_eps);
    proj(f, &L->router, f->xn, n, f->rlog, 0); /* rlog[n][n_experts] */
    mb_router_select(&f->router, f->rlog, n, f->ids, f->gate);
    const mb_moe_work w = {.layer = l,
                           .n_tokens = n,
                           .top_k = c->top_k,
                           .decode = decode,
                           .expert_ids = f->ids,
                           .gate = f->gate,
                           .x = f->xn,
                           .out = f->moe};
    mb_status st = f->moe_fn(f->moe_ctx, &w);
    if (st != MB_STATUS_OK) return st;
    if (c->d_ff_shared) shared_expert(f, l, n);
    const size_t total = (size_t)n * c->d_model;
    for (size_t i = 0; i < total; i++)
        f->x[i] += f->moe[i];
    return MB_STATUS_OK;
}

/* Runs n <= chunk tokens at f->pos and advances it on success. */
static mb_status run_chunk(mb_forward *f, const int32_t *ids, uint32_t n, int decode, float *logits,
                           float *last_logits)
{
    const mb_model_config *c = &f->cfg;
    const mb_tensor *E = &f->m->embed;
    const size_t row_bytes = mb_kcpu_row_bytes((int)E->dtype, c->d_model);
    for (uint32_t t = 0; t < n; t++)
        mb_kcpu_dequant_row((int)E->dtype, (const char *)E->data + (size_t)ids[t] * row_bytes,
                            f->x + (size_t)t * c->d_model, c->d_model);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        attention_block(f, l, n);
        mb_status st = moe_block(f, l, n, decode);
        if (st != MB_STATUS_OK) return st;
    }
    if (logits) {
        mb_norm_rms(f->xn, c->d_model, f->x, c->d_model, n, c->d_model, f->final_norm, c->rms_eps);
        proj(f, &f->m->lm_head, f->xn, n, logits, 0); /* logits[n][vocab] */
        if (last_logits)
            memcpy(last_logits, logits + (size_t)(n - 1) * c->vocab, c->vocab * sizeof(float));
    } else if (last_logits) {
        const float *last = f->x + (size_t)(n - 1) * c->d_model;
        mb_norm_rms(f->xn, c->d_model, last, c->d_model, 1, c->d_model, f->final_norm, c->rms_eps);
        proj(f, &f->m->lm_head, f->xn, 1, last_logits, 0);
    }
    f->pos += n;
    return MB_STATUS_OK;
}

mb_status mb_forward_step(mb_forward *f, const int32_t *ids, uint32_t n_tokens, float *logits,
                          float *last_logits)
{
    if (!f || !ids || n_tokens == 0) return MB_STATUS_INVALID_ARG;
    for (uint32_t t = 0; t < n_tokens; t++)
        if (ids[t] < 0 || (uint32_t)ids[t] >= f->cfg.vocab) return MB_STATUS_INVALID_ARG;
    if (n_tokens > f->max_ctx - f->pos) return MB_STATUS_FULL;
    const uint32_t start = f->pos;
    const int decode = n_tokens == 1;
    for (uint32_t done = 0; done < n_tokens;) {
        uint32_t n = n_tokens - done < f->chunk ? n_tokens - done : f->chunk;
        float *lg = logits ? logits + (size_t)done * f->cfg.vocab : NULL;
        float *last = done + n == n_tokens ? last_logits : NULL;
        mb_status st = f->cuda ? mb_fwd_cuda_chunk(f->cuda, ids + done, n, f->pos, decode, f->moe_fn,
                                                   f->moe_ctx, lg, last)
                               : run_chunk(f, ids + done, n, decode, lg, last);
        if (st == MB_STATUS_OK && f->cuda) f->pos += n;
        if (st != MB_STATUS_OK) {
            f->pos = start; /* cache rows past pos are dead and get overwritten */
            return st;
        }
        done += n;
    }
    return MB_STATUS_OK;
}

uint64_t mb_forward_take_device_ns(mb_forward *f)
{
    return f ? mb_fwd_cuda_take_device_ns(f->cuda) : 0;
}

struct mb_fwd_cuda *mb_forward_cuda(mb_forward *f)
{
    return f ? f->cuda : NULL;
}

const char *mb_forward_error(const mb_forward *f)
{
    return f && f->cuda ? mb_fwd_cuda_error(f->cuda) : "";
}
