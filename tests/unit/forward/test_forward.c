/* The whole forward pass on tiny random models of each family: against a
 * naive double-precision reference; one big prefill against chunked
 * prefill and teacher-forced decode; and the error paths (bad ids, context
 * overflow, a failing expert callback, models that do not fit their
 * config). */
#include "tests/unit/forward/synth.h"

#define T_MAX 40

/* ---- naive double-precision reference ----------------------------------- */

static void ref_matvec(const mb_tensor *w, const double *x, double *y)
{
    for (uint64_t r = 0; r < w->rows; r++) {
        double s = 0;
        for (uint64_t j = 0; j < w->cols; j++)
            s += synth_w(w, r * w->cols + j) * x[j];
        y[r] = s;
    }
}

static void ref_rms(double *x, size_t d, const mb_tensor *w, double eps)
{
    double ss = 0;
    for (size_t i = 0; i < d; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / d + eps);
    for (size_t i = 0; i < d; i++)
        x[i] = x[i] * inv * synth_w(w, i);
}

static void ref_rope(double *x, size_t hd, uint32_t pos, double theta)
{
    size_t half = hd / 2;
    for (size_t i = 0; i < half; i++) {
        double a = pos * pow(theta, -(2.0 * i) / hd), c = cos(a), s = sin(a);
        double x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
    }
}

typedef struct {
    double h[T_MAX][64], xn[T_MAX][64];
    double q[T_MAX][128], k[T_MAX][64], v[T_MAX][64], att[T_MAX][128];
} ref_state;

static void ref_forward(const mb_model *m, const int32_t *ids, uint32_t T, double *logits)
{
    const mb_model_config *c = &m->cfg;
    const size_t d = c->d_model, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    REQUIRE(d <= 64 && H * hd <= 128 && KV * hd <= 64 && T <= T_MAX && c->n_experts <= 16);
    ref_state *s = calloc(1, sizeof(*s));
    REQUIRE(s);
    for (uint32_t t = 0; t < T; t++)
        for (size_t i = 0; i < d; i++)
            s->h[t][i] = synth_w(&m->embed, (uint64_t)ids[t] * d + i);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const mb_layer_weights *L = &m->layers[l];
        for (uint32_t t = 0; t < T; t++) {
            memcpy(s->xn[t], s->h[t], d * sizeof(double));
            ref_rms(s->xn[t], d, &L->attn_norm, c->rms_eps);
            ref_matvec(&L->wq, s->xn[t], s->q[t]);
            ref_matvec(&L->wk, s->xn[t], s->k[t]);
            ref_matvec(&L->wv, s->xn[t], s->v[t]);
            if (c->qkv_bias) {
                for (size_t i = 0; i < H * hd; i++)
                    s->q[t][i] += synth_w(&L->bq, i);
                for (size_t i = 0; i < KV * hd; i++) {
                    s->k[t][i] += synth_w(&L->bk, i);
                    s->v[t][i] += synth_w(&L->bv, i);
                }
            }
            for (size_t h = 0; h < H; h++) {
                if (c->qk_norm) ref_rms(s->q[t] + h * hd, hd, &L->q_norm, c->rms_eps);
                ref_rope(s->q[t] + h * hd, hd, t, c->rope_theta);
            }
            for (size_t h = 0; h < KV; h++) {
                if (c->qk_norm) ref_rms(s->k[t] + h * hd, hd, &L->k_norm, c->rms_eps);
                ref_rope(s->k[t] + h * hd, hd, t, c->rope_theta);
            }
        }
        for (uint32_t t = 0; t < T; t++) {
            for (size_t h = 0; h < H; h++) {
                size_t g = h / (H / KV);
                double sc[T_MAX], mx = -1e300, sum = 0;
                const uint32_t w = c->sliding_window, lo = w && t + 1 > w ? t + 1 - w : 0;
                for (uint32_t p = lo; p <= t; p++) {
                    double dd = 0;
                    for (size_t i = 0; i < hd; i++)
                        dd += s->q[t][h * hd + i] * s->k[p][g * hd + i];
                    sc[p] = dd / sqrt((double)hd);
                    mx = sc[p] > mx ? sc[p] : mx;
                }
                for (uint32_t p = lo; p <= t; p++)
                    sum += (sc[p] = exp(sc[p] - mx));
                for (size_t i = 0; i < hd; i++) {
                    double o = 0;
                    for (uint32_t p = lo; p <= t; p++)
                        o += sc[p] / sum * s->v[p][g * hd + i];
                    s->att[t][h * hd + i] = o;
                }
            }
            double o[64];
            ref_matvec(&L->wo, s->att[t], o);
            for (size_t i = 0; i < d; i++)
                s->h[t][i] += o[i];
        }
        for (uint32_t t = 0; t < T; t++) {
            double x[64], pr[16], out[64] = {0}, y[64];
            memcpy(x, s->h[t], d * sizeof(double));
            ref_rms(x, d, &L->ffn_norm, c->rms_eps);
            ref_matvec(&L->router, x, pr);
            double mx = pr[0], sum = 0;
            for (uint32_t e = 1; e < c->n_experts; e++)
                mx = pr[e] > mx ? pr[e] : mx;
            for (uint32_t e = 0; e < c->n_experts; e++)
                sum += (pr[e] = exp(pr[e] - mx));
            int used[16] = {0}, sel[16];
            double wsel[16], wsum = 0;
            for (uint32_t k = 0; k < c->top_k; k++) {
                int best = -1;
                for (uint32_t e = 0; e < c->n_experts; e++)
                    if (!used[e] && (best < 0 || pr[e] > pr[best])) best = (int)e;
                used[best] = 1;
                sel[k] = best;
                wsum += (wsel[k] = pr[best] / sum);
            }
            int renorm = c->arch == MB_ARCH_MIXTRAL || c->norm_topk_prob;
            for (uint32_t k = 0; k < c->top_k; k++) {
                synth_ffn(&L->experts[sel[k]], x, d, c->d_ff_expert, y);
                double wk = renorm ? wsel[k] / wsum : wsel[k];
                for (size_t i = 0; i < d; i++)
                    out[i] += wk * y[i];
            }
            if (c->d_ff_shared) {
                double gl;
                ref_matvec(&L->shared_gate, x, &gl);
                synth_ffn(&L->shared, x, d, c->d_ff_shared, y);
                for (size_t i = 0; i < d; i++)
                    out[i] += y[i] / (1 + exp(-gl));
            }
            for (size_t i = 0; i < d; i++)
                s->h[t][i] += out[i];
        }
    }
    for (uint32_t t = 0; t < T; t++) {
        ref_rms(s->h[t], d, &m->final_norm, c->rms_eps);
        ref_matvec(&m->lm_head, s->h[t], logits + (size_t)t * c->vocab);
    }
    free(s);
}

/* ---- checks --------------------------------------------------------------- */

/* max |a - b| / max |b| over n values. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double dd = fabs((double)a[i] - b[i]);
        md = dd > md ? dd : md;
        mr = fabs(b[i]) > mr ? fabs(b[i]) : mr;
    }
    return mr > 0 ? md / mr : md;
}

static void check_arch(mb_arch arch, uint32_t window, mb_kcpu_pool *pool)
{
    static const char *names[] = {"mixtral", "qwen2moe", "qwen3moe"};
    synth s;
    synth_init(&s, arch, 1000 + (unsigned)arch);
    s.m.cfg.sliding_window = window;
    const mb_model_config *c = &s.m.cfg;
    const uint32_t T = 31, V = c->vocab;
    unsigned long long seed = 5;
    int32_t ids[T_MAX];
    for (uint32_t t = 0; t < T; t++)
        ids[t] = (int32_t)(mb_test_rand_u64(&seed) % V);
    float *big = malloc(sizeof(float) * T * V), *inc = malloc(sizeof(float) * T * V);
    double *refd = malloc(sizeof(double) * T * V);
    float *ref = malloc(sizeof(float) * T * V), last[128];
    REQUIRE(big && inc && refd && ref && V <= 128);
    synth_moe moe = {.m = &s.m, .fail_at_call = -1};

    /* one prefill of everything, default chunk */
    mb_forward *f = NULL;
    REQUIRE(mb_forward_create(&s.m, 40, pool, synth_moe_fn, &moe, &f) == MB_STATUS_OK);
    CHECK_EQ(mb_forward_step(f, ids, T, big, last), MB_STATUS_OK);
    CHECK_EQ(mb_forward_pos(f), T);
    CHECK(memcmp(last, big + (size_t)(T - 1) * V, V * sizeof(float)) == 0);
    CHECK_EQ(moe.calls, (int)c->n_layers);

    ref_forward(&s.m, ids, T, refd);
    for (size_t i = 0; i < (size_t)T * V; i++)
        ref[i] = (float)refd[i];
    double r = rel_diff(big, ref, (size_t)T * V);
    printf("%s (window %u): prefill vs double reference: %.3g\n", names[arch], window, r);
    CHECK_MSG(r <= 1e-4, "%s: forward vs reference %g", names[arch], r);

    /* chunked prefill of 20 in chunks of 7, then teacher-forced decode */
    mb_forward_reset(f);
    CHECK_EQ(mb_forward_pos(f), 0);
    CHECK_EQ(mb_forward_set_chunk(f, 7), MB_STATUS_OK);
    moe.saw_decode = 0;
    CHECK_EQ(mb_forward_step(f, ids, 20, inc, NULL), MB_STATUS_OK);
    CHECK(!moe.saw_decode);
    for (uint32_t t = 20; t < T; t++) {
        CHECK_EQ(mb_forward_step(f, ids + t, 1, NULL, inc + (size_t)t * V), MB_STATUS_OK);
        CHECK_EQ(mb_forward_pos(f), t + 1);
    }
    CHECK(moe.saw_decode);
    r = rel_diff(inc, big, (size_t)T * V);
    printf("%s: chunked prefill + decode vs one prefill: %.3g\n", names[arch], r);
    CHECK_MSG(r <= 1e-5, "%s: prefill+decode vs prefill %g", names[arch], r);

    /* errors leave the position where it was */
    uint32_t pos = mb_forward_pos(f);
    int32_t bad[2] = {0, (int32_t)V};
    CHECK_EQ(mb_forward_step(f, bad, 2, NULL, NULL), MB_STATUS_INVALID_ARG);
    bad[1] = -1;
    CHECK_EQ(mb_forward_step(f, bad, 2, NULL, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_forward_step(f, ids, 0, NULL, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_forward_step(f, NULL, 1, NULL, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_forward_step(f, ids, 10, NULL, NULL), MB_STATUS_FULL); /* 31 + 10 > 40 */
    CHECK_EQ(mb_forward_pos(f), pos);
    CHECK_EQ(mb_forward_set_chunk(f, 0), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_forward_set_chunk(f, 41), MB_STATUS_INVALID_ARG);

    /* a failing callback in the second chunk rolls the whole step back;
     * retrying gives the same logits as before */
    mb_forward_reset(f);
    CHECK_EQ(mb_forward_step(f, ids, 5, NULL, NULL), MB_STATUS_OK);
    moe.calls = 0;
    moe.fail_at_call = (int)c->n_layers + 1;
    CHECK_EQ(mb_forward_step(f, ids + 5, 10, NULL, NULL), MB_STATUS_BACKEND);
    CHECK_EQ(mb_forward_pos(f), 5);
    moe.fail_at_call = -1;
    CHECK_EQ(mb_forward_step(f, ids + 5, T - 5, inc + 5 * (size_t)V, NULL), MB_STATUS_OK);
    r = rel_diff(inc + 5 * (size_t)V, big + 5 * (size_t)V, (size_t)(T - 5) * V);
    CHECK_MSG(r <= 1e-5, "%s: retry after failure %g", names[arch], r);
    mb_forward_destroy(f);

    /* models that do not fit their config are refused at create */
    mb_forward *g = NULL;
    CHECK_EQ(mb_forward_create(&s.m, 0, pool, synth_moe_fn, &moe, &g), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_forward_create(&s.m, 8, pool, NULL, &moe, &g), MB_STATUS_INVALID_ARG);
    s.m.layers[1].wk.rows++;
    CHECK_EQ(mb_forward_create(&s.m, 8, pool, synth_moe_fn, &moe, &g), MB_STATUS_BAD_SHAPE);
    s.m.layers[1].wk.rows--;
    const void *keep = s.m.lm_head.data;
    s.m.lm_head.data = NULL;
    CHECK_EQ(mb_forward_create(&s.m, 8, pool, synth_moe_fn, &moe, &g), MB_STATUS_CONFIG);
    s.m.lm_head.data = keep;
    s.m.final_norm.dtype = (mb_dtype)7;
    CHECK_EQ(mb_forward_create(&s.m, 8, pool, synth_moe_fn, &moe, &g), MB_STATUS_BAD_DTYPE);
    s.m.final_norm.dtype = MB_DTYPE_BF16;
    const uint32_t top_k = s.m.cfg.top_k;
    s.m.cfg.top_k = s.m.cfg.n_experts + 1;
    CHECK_EQ(mb_forward_create(&s.m, 8, pool, synth_moe_fn, &moe, &g), MB_STATUS_CONFIG);
    s.m.cfg.top_k = top_k;
    CHECK(g == NULL);

    free(big);
    free(inc);
    free(refd);
    free(ref);
    synth_fini(&s);
}

int main(void)
{
    mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
    REQUIRE(pool);
    for (int a = MB_ARCH_MIXTRAL; a <= MB_ARCH_QWEN3_MOE; a++)
        check_arch((mb_arch)a, 0, a == MB_ARCH_QWEN2_MOE ? NULL : pool);
    check_arch(MB_ARCH_MIXTRAL, 9, pool); /* Mistral-style sliding window */
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_forward");
}
