/* The forward pass on GGUF checkpoints against llama.cpp's logits
 * (tests/data/gguf/<fixture>/reference.safetensors): prefill the prompt,
 * decode the rest one token at a time (teacher-forced), and compare every
 * position. llama.cpp quantizes activations to 8 bits inside its quantized
 * dot products; so do our kernels (kernels/cpu/quant.h), so results are
 * close but not identical (f32 sums in another order, f16 KV cache and
 * activations there, f32 here), and a near-tie in routing can flip one
 * position's experts. Bounds: gguf_compare.h. The routed experts run
 * through mb_kcpu_gemm on the quantized blocks, expert by expert
 * (test_parity_gguf_workers runs them on worker processes).
 * Usage: test_parity_gguf [fixture ...] (folders under $MB_TEST_DATA/gguf). */
#include <stdint.h>
#include <string.h>

#include "broker/forward.h"
#include "broker/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "tests/parity/gguf/gguf_compare.h"
#include "tests/testutil.h"

typedef struct {
    const mb_model *m;
    mb_kcpu_pool *pool;
    float *xg, *g, *u, *y, *wt;
    uint32_t *tok;
} ref_experts;

static mb_status ref_experts_fn(void *ctx, const mb_moe_work *w)
{
    ref_experts *r = ctx;
    const mb_model_config *c = &r->m->cfg;
    const size_t d = c->d_model, ff = c->d_ff_expert;
    memset(w->out, 0, sizeof(float) * w->n_tokens * d);
    for (uint32_t e = 0; e < c->n_experts; e++) {
        uint32_t n = 0;
        for (uint32_t t = 0; t < w->n_tokens; t++)
            for (uint32_t k = 0; k < w->top_k; k++)
                if (w->expert_ids[t * w->top_k + k] == (int32_t)e) {
                    memcpy(r->xg + n * d, w->x + t * d, d * sizeof(float));
                    r->tok[n] = t;
                    r->wt[n++] = w->gate[t * w->top_k + k];
                }
        if (n == 0) continue;
        const mb_expert_tensors *E = &r->m->layers[w->layer].experts[e];
        mb_kcpu_gemm(r->pool, (int)E->gate.dtype, E->gate.data, ff, d, r->xg, d, n, r->g, ff, 0);
        mb_kcpu_gemm(r->pool, (int)E->up.dtype, E->up.data, ff, d, r->xg, d, n, r->u, ff, 0);
        for (size_t i = 0; i < (size_t)n * ff; i++)
            r->g[i] = r->g[i] / (1.0f + expf(-r->g[i])) * r->u[i];
        mb_kcpu_gemm(r->pool, (int)E->down.dtype, E->down.data, d, ff, r->g, ff, n, r->y, d, 0);
        for (uint32_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++)
                w->out[r->tok[i] * d + j] += r->wt[i] * r->y[i * d + j];
    }
    return MB_STATUS_OK;
}

static void run_fixture(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    mb_kcpu_pool *pool = ctx;
    mb_status st;
    const mb_model_config *c = &m->cfg;
    const uint32_t T = ref->n_tokens, V = c->vocab, P = ref->prompt_len;
    const size_t rows = (size_t)T * c->top_k;
    ref_experts ex = {.m = m, .pool = pool};
    ex.xg = malloc(sizeof(float) * rows * c->d_model);
    ex.y = malloc(sizeof(float) * rows * c->d_model);
    ex.g = malloc(sizeof(float) * rows * c->d_ff_expert);
    ex.u = malloc(sizeof(float) * rows * c->d_ff_expert);
    ex.tok = malloc(sizeof(uint32_t) * rows);
    ex.wt = malloc(sizeof(float) * rows);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    REQUIRE(ex.xg && ex.y && ex.g && ex.u && ex.tok && ex.wt && logits);

    mb_forward *f = NULL;
    st = mb_forward_create(m, T, pool, ref_experts_fn, &ex, &f);
    CHECK_MSG(st == MB_STATUS_OK, "%s: forward_create: %s", name, mb_status_name(st));
    if (st == MB_STATUS_OK) {
        CHECK_EQ(mb_forward_step(f, ref->input_ids, P, logits, NULL), MB_STATUS_OK);
        for (uint32_t t = P; t < T; t++)
            CHECK_EQ(mb_forward_step(f, ref->input_ids + t, 1, NULL, logits + (size_t)t * V),
                     MB_STATUS_OK);
        mb_gguf_compare(name, logits, ref->logits, T, V);
        mb_forward_destroy(f);
    }
    free(logits);
    free(ex.xg);
    free(ex.y);
    free(ex.g);
    free(ex.u);
    free(ex.tok);
    free(ex.wt);
}

int main(int argc, char **argv)
{
    mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
    REQUIRE(pool);
    mb_gguf_for_fixtures(argc, argv, run_fixture, pool);
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_parity_gguf");
}
