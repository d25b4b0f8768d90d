/* The forward pass against transformers' float32 logits for each reference
 * checkpoint: prefill the prompt, decode the rest one token at a time
 * (teacher-forced), and compare every position's logits: max |diff| within
 * 1e-3 of max |reference| and the same argmax everywhere. The routed
 * experts run here in plain f32 through mb_kcpu_gemm.
 * Usage: test_parity_model [fixture ...] (folders under $MB_TEST_DATA). */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/forward.h"
#include "broker/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "tests/testutil.h"

/* ---- the routed experts: FFN_e(x) = down(silu(gate x) * up x) ---------- */

typedef struct {
    const mb_model *m;
    mb_kcpu_pool *pool;
    uint32_t cap;  /* rows the buffers hold */
    float *xg;     /* [cap][d_model] tokens routed to one expert */
    float *g, *u;  /* [cap][d_ff] */
    float *y;      /* [cap][d_model] */
    uint32_t *tok; /* [cap] token of each gathered row */
    float *wt;     /* [cap] its routing weight */
} ref_experts;

/* As transformers' eager experts loop: expert by expert in index order,
 * out[token] += weight * FFN_e(x[token]). */
static mb_status ref_experts_fn(void *ctx, const mb_moe_work *w)
{
    ref_experts *r = ctx;
    const mb_model_config *c = &r->m->cfg;
    const size_t d = c->d_model, ff = c->d_ff_expert;
    if (w->n_tokens > r->cap) return MB_STATUS_INVALID_ARG;
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
        if (!E->gate.data || !E->up.data || !E->down.data) return MB_STATUS_NOT_LOADED;
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

/* ---- one fixture ------------------------------------------------------- */

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static uint32_t argmax(const float *x, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Returns 1 if the fixture ran (pass or fail), 0 if it is absent. */
static int run_fixture(const char *root, const char *name, mb_kcpu_pool *pool)
{
    char dir[4096], path[4200], err[512] = "";
    snprintf(dir, sizeof(dir), "%s/%s", root, name);
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    if (!is_file(path)) {
        fprintf(stderr, "%s: no %s, skipped\n", name, path);
        return 0;
    }
    mb_model *m = NULL;
    mb_status st = mb_model_load(dir, &m, err, sizeof(err));
    CHECK_MSG(st == MB_STATUS_OK, "%s: load: %s: %s", name, mb_status_name(st), err);
    if (st != MB_STATUS_OK) return 1;
    mb_reference ref;
    st = mb_reference_init(&ref, path, err, sizeof(err));
    CHECK_MSG(st == MB_STATUS_OK, "%s: reference: %s: %s", name, mb_status_name(st), err);
    if (st != MB_STATUS_OK) {
        mb_model_destroy(m);
        return 1;
    }
    const mb_model_config *c = &m->cfg;
    const uint32_t T = ref.n_tokens, V = c->vocab, P = ref.prompt_len;
    REQUIRE(ref.vocab == V);

    ref_experts ex = {.m = m, .pool = pool};
    ex.cap = T < MB_FORWARD_CHUNK_DEFAULT ? T : MB_FORWARD_CHUNK_DEFAULT;
    const size_t rows = (size_t)ex.cap * c->top_k; /* a token may pick an expert once */
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
        CHECK_EQ(mb_forward_step(f, ref.input_ids, P, logits, NULL), MB_STATUS_OK);
        for (uint32_t t = P; t < T; t++)
            CHECK_EQ(mb_forward_step(f, ref.input_ids + t, 1, NULL, logits + (size_t)t * V),
                     MB_STATUS_OK);
        double max_diff = 0, max_ref = 0;
        uint32_t argmax_bad = 0, worst_pos = 0;
        for (uint32_t t = 0; t < T; t++) {
            const float *a = logits + (size_t)t * V, *b = ref.logits + (size_t)t * V;
            for (uint32_t i = 0; i < V; i++) {
                double d = fabs((double)a[i] - b[i]);
                if (d > max_diff) {
                    max_diff = d;
                    worst_pos = t;
                }
                max_ref = fabs(b[i]) > max_ref ? fabs(b[i]) : max_ref;
            }
            if (argmax(a, V) != argmax(b, V)) {
                argmax_bad++;
                fprintf(stderr, "%s: position %u: argmax %u, reference %u\n", name, t, argmax(a, V),
                        argmax(b, V));
            }
        }
        printf("%s: %u positions (prompt %u): max|diff| %.4g, max|ref| %.4g, ratio %.3g "
               "(worst at %u), argmax mismatches %u\n",
               name, T, P, max_diff, max_ref, max_diff / max_ref, worst_pos, argmax_bad);
        CHECK_MSG(max_diff <= 1e-3 * max_ref, "%s: max|diff| %g > 1e-3 * %g", name, max_diff,
                  max_ref);
        CHECK_EQ(argmax_bad, 0);
        mb_forward_destroy(f);
    }
    free(logits);
    free(ex.xg);
    free(ex.y);
    free(ex.g);
    free(ex.u);
    free(ex.tok);
    free(ex.wt);
    mb_reference_fini(&ref);
    mb_model_destroy(m);
    return 1;
}

int main(int argc, char **argv)
{
    static const char *defaults[] = {"mixtral-a", "qwen2moe-a", "qwen3moe-a"};
    const char *root = getenv("MB_TEST_DATA");
    if (!root) MB_TEST_SKIP("MB_TEST_DATA is not set");
    const char **names = argc > 1 ? (const char **)(argv + 1) : defaults;
    int n_names = argc > 1 ? argc - 1 : 3;
    mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
    REQUIRE(pool);
    int ran = 0;
    for (int i = 0; i < n_names; i++)
        ran += run_fixture(root, names[i], pool);
    mb_kcpu_pool_destroy(pool);
    if (!ran) MB_TEST_SKIP("no reference fixtures under %s", root);
    return mb_test_finish("test_parity_model");
}
