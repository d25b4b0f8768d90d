/* Test helpers for the forward pass: a tiny random bf16 model of each
 * family built in memory, a naive expert callback, and a naive
 * double-precision reference of the whole model. */
#ifndef MB_TESTS_UNIT_FORWARD_SYNTH_H
#define MB_TESTS_UNIT_FORWARD_SYNTH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/forward.h"
#include "tests/testutil.h"

typedef struct {
    mb_model m;
    void *blocks[4096]; /* every allocation, freed by synth_fini */
    int n_blocks;
} synth;

static void *synth_alloc(synth *s, size_t bytes)
{
    REQUIRE(s->n_blocks < 4096);
    void *p = calloc(1, bytes ? bytes : 1);
    REQUIRE(p);
    s->blocks[s->n_blocks++] = p;
    return p;
}

/* bf16 tensor [rows][cols] of uniform values in [bias - scale, bias + scale). */
static mb_tensor synth_tensor(synth *s, uint64_t rows, uint64_t cols, float scale, float bias,
                              unsigned long long *seed)
{
    uint16_t *d = synth_alloc(s, rows * cols * sizeof(uint16_t));
    for (uint64_t i = 0; i < rows * cols; i++)
        d[i] = mb_f32_to_bf16(bias + scale * mb_test_rand_f32(seed));
    mb_tensor t = {.dtype = MB_DTYPE_BF16, .data = d, .rows = rows, .cols = cols, .file = -1};
    return t;
}

static void synth_init(synth *s, mb_arch arch, unsigned long long seed)
{
    memset(s, 0, sizeof(*s));
    mb_model_config *c = &s->m.cfg;
    c->arch = arch;
    c->n_layers = 2;
    c->d_model = 64;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = arch == MB_ARCH_QWEN3_MOE ? 24 : 16; /* Qwen3: n_heads*head_dim != d_model */
    c->vocab = 97;
    c->n_experts = arch == MB_ARCH_QWEN3_MOE ? 10 : 6;
    c->top_k = arch == MB_ARCH_QWEN3_MOE ? 3 : 2;
    c->d_ff_expert = 48;
    c->d_ff_shared = arch == MB_ARCH_QWEN2_MOE ? 40 : 0;
    c->max_positions = 256;
    c->rms_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->norm_topk_prob = arch == MB_ARCH_QWEN3_MOE;
    c->qkv_bias = arch == MB_ARCH_QWEN2_MOE;
    c->qk_norm = arch == MB_ARCH_QWEN3_MOE;
    c->dtype = MB_DTYPE_BF16;
    const uint64_t d = c->d_model, qd = (uint64_t)c->n_heads * c->head_dim,
                   kvd = (uint64_t)c->n_kv_heads * c->head_dim;
    s->m.embed = synth_tensor(s, c->vocab, d, 1.0f, 0.0f, &seed);
    s->m.lm_head = synth_tensor(s, c->vocab, d, 0.5f, 0.0f, &seed);
    s->m.final_norm = synth_tensor(s, 1, d, 0.2f, 1.0f, &seed);
    s->m.layers = synth_alloc(s, c->n_layers * sizeof(mb_layer_weights));
    for (uint32_t l = 0; l < c->n_layers; l++) {
        mb_layer_weights *L = &s->m.layers[l];
        L->attn_norm = synth_tensor(s, 1, d, 0.2f, 1.0f, &seed);
        L->ffn_norm = synth_tensor(s, 1, d, 0.2f, 1.0f, &seed);
        L->wq = synth_tensor(s, qd, d, 0.4f, 0.0f, &seed);
        L->wk = synth_tensor(s, kvd, d, 0.4f, 0.0f, &seed);
        L->wv = synth_tensor(s, kvd, d, 0.2f, 0.0f, &seed);
        L->wo = synth_tensor(s, d, qd, 0.2f, 0.0f, &seed);
        L->router = synth_tensor(s, c->n_experts, d, 0.3f, 0.0f, &seed);
        if (c->qkv_bias) {
            L->bq = synth_tensor(s, 1, qd, 0.5f, 0.0f, &seed);
            L->bk = synth_tensor(s, 1, kvd, 0.5f, 0.0f, &seed);
            L->bv = synth_tensor(s, 1, kvd, 0.5f, 0.0f, &seed);
        }
        if (c->qk_norm) {
            L->q_norm = synth_tensor(s, 1, c->head_dim, 0.2f, 1.0f, &seed);
            L->k_norm = synth_tensor(s, 1, c->head_dim, 0.2f, 1.0f, &seed);
        }
        L->experts = synth_alloc(s, c->n_experts * sizeof(mb_expert_tensors));
        for (uint32_t e = 0; e < c->n_experts; e++) {
            L->experts[e].gate = synth_tensor(s, c->d_ff_expert, d, 0.3f, 0.0f, &seed);
            L->experts[e].up = synth_tensor(s, c->d_ff_expert, d, 0.3f, 0.0f, &seed);
            L->experts[e].down = synth_tensor(s, d, c->d_ff_expert, 0.3f, 0.0f, &seed);
        }
        if (c->d_ff_shared) {
            L->shared.gate = synth_tensor(s, c->d_ff_shared, d, 0.3f, 0.0f, &seed);
            L->shared.up = synth_tensor(s, c->d_ff_shared, d, 0.3f, 0.0f, &seed);
            L->shared.down = synth_tensor(s, d, c->d_ff_shared, 0.3f, 0.0f, &seed);
            L->shared_gate = synth_tensor(s, 1, d, 0.3f, 0.0f, &seed);
        }
    }
}

static void synth_fini(synth *s)
{
    for (int i = 0; i < s->n_blocks; i++)
        free(s->blocks[i]);
    s->n_blocks = 0;
}

static double synth_w(const mb_tensor *t, uint64_t i)
{
    return mb_bf16_to_f32(((const uint16_t *)t->data)[i]);
}

/* out[d_model] = FFN(x) in double for one SwiGLU expert. */
static void synth_ffn(const mb_expert_tensors *e, const double *x, size_t d, size_t ff, double *out)
{
    double *h = malloc(ff * sizeof(double));
    REQUIRE(h);
    for (size_t i = 0; i < ff; i++) {
        double g = 0, u = 0;
        for (size_t j = 0; j < d; j++) {
            g += synth_w(&e->gate, i * d + j) * x[j];
            u += synth_w(&e->up, i * d + j) * x[j];
        }
        h[i] = g / (1 + exp(-g)) * u;
    }
    for (size_t j = 0; j < d; j++) {
        double o = 0;
        for (size_t i = 0; i < ff; i++)
            o += synth_w(&e->down, j * ff + i) * h[i];
        out[j] = o;
    }
    free(h);
}

/* The test's mb_moe_fn: naive loops; fails on demand. */
typedef struct {
    const mb_model *m;
    int calls;
    int fail_at_call; /* -1: never */
    int saw_decode;
} synth_moe;

static mb_status synth_moe_fn(void *ctx, const mb_moe_work *w)
{
    synth_moe *s = ctx;
    const mb_model_config *c = &s->m->cfg;
    if (s->calls++ == s->fail_at_call) return MB_STATUS_BACKEND;
    if (w->decode) s->saw_decode = 1;
    const size_t d = c->d_model;
    double x[512], y[512];
    REQUIRE(d <= 512 && w->top_k == c->top_k && w->layer < c->n_layers);
    for (uint32_t t = 0; t < w->n_tokens; t++) {
        double acc[512] = {0};
        for (size_t j = 0; j < d; j++)
            x[j] = w->x[t * d + j];
        for (uint32_t k = 0; k < w->top_k; k++) {
            int32_t e = w->expert_ids[t * w->top_k + k];
            REQUIRE(e >= 0 && (uint32_t)e < c->n_experts);
            synth_ffn(&s->m->layers[w->layer].experts[e], x, d, c->d_ff_expert, y);
            for (size_t j = 0; j < d; j++)
                acc[j] += w->gate[t * w->top_k + k] * y[j];
        }
        for (size_t j = 0; j < d; j++)
            w->out[t * d + j] = (float)acc[j];
    }
    return MB_STATUS_OK;
}

#endif
