/* Expert FFN kernel against a double-precision reference: every SIMD path,
 * every weight dtype, odd and normal shapes, 1..300 tokens, several experts
 * per token with gate weights, experts without tokens, tokens without
 * experts (zeros), both activation sources (rows and callback), the
 * out_done callback covering each column exactly once, and a poisoned
 * output so unwritten elements fail. Threshold: max|out - ref| / max|ref|
 * <= 1e-5 (f32 accumulation and the SIMD exp's ~2e-7 relative error). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>

#include "kcpu_test.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/gemm.h"

typedef struct {
    const float *x;
    size_t ldx;
    _Atomic int calls;
} loader;

static void load_row(void *ctx, size_t t, float *dst)
{
    loader *l = ctx;
    for (size_t i = 0; i < l->ldx; i++)
        dst[i] = l->x[t * l->ldx + i];
    atomic_fetch_add(&l->calls, 1);
}

typedef struct {
    _Atomic int *hits;
} done_ctx;

static void on_done(void *ctx, size_t c0, size_t c1)
{
    done_ctx *d = ctx;
    for (size_t c = c0; c < c1; c++)
        atomic_fetch_add(&d->hits[c], 1);
}

static double silu(double g)
{
    return g / (1.0 + exp(-g));
}

static const char *const isas[] = {"scalar", "avx2", "avx512"};

/* Runs one case on every path this CPU has; err[i] receives path i's
 * normalised error (-1 when the path is not supported). */
static void run_case(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, int wd, size_t d_model, size_t d_ff,
                     size_t n_tok, size_t n_exp, size_t top_k, int use_loader,
                     unsigned long long *seed, double err[3])
{
    /* Weights of n_exp experts; gate/up rows padded to show ld_in works. */
    size_t ld_in = d_model + 8, ld_ff = d_ff;
    void **wg = calloc(n_exp, sizeof *wg), **wu = calloc(n_exp, sizeof *wu),
         **wdn = calloc(n_exp, sizeof *wdn);
    REQUIRE(wg && wu && wdn);
    float sc = 2.0f / sqrtf((float)d_model), sd = 2.0f / sqrtf((float)d_ff);
    for (size_t e = 0; e < n_exp; e++) {
        wg[e] = kcpu_rand_weights(wd, d_ff * ld_in, wd == 1 ? 1.0f : sc, seed);
        wu[e] = kcpu_rand_weights(wd, d_ff * ld_in, wd == 1 ? 1.0f : sc, seed);
        wdn[e] = kcpu_rand_weights(wd, d_model * ld_ff, wd == 1 ? 1.0f : sd, seed);
    }
    float *x = malloc(sizeof(float) * n_tok * d_model + 4);
    REQUIRE(x);
    for (size_t i = 0; i < n_tok * d_model; i++)
        x[i] = mb_test_rand_f32(seed);

    /* Routing: token t picks top_k distinct experts, except every 7th token
     * which has none; expert n_exp - 1 is never picked. */
    size_t max_pairs = n_tok * top_k;
    uint32_t *tok_of = malloc(sizeof(uint32_t) * max_pairs + 4),
             *exp_of = malloc(sizeof(uint32_t) * max_pairs + 4);
    float *gate_of = malloc(sizeof(float) * max_pairs + 4);
    REQUIRE(tok_of && exp_of && gate_of);
    size_t np = 0;
    for (size_t t = 0; t < n_tok; t++) {
        if (t % 7 == 3) continue;
        size_t first = mb_test_rand_u64(seed) % (n_exp - 1);
        for (size_t i = 0; i < top_k && i < n_exp - 1; i++) {
            tok_of[np] = (uint32_t)t;
            exp_of[np] = (uint32_t)((first + i) % (n_exp - 1));
            gate_of[np] = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
            np++;
        }
    }
    /* Group by expert (all n_exp listed, some with no pairs). */
    size_t *pair0 = calloc(n_exp + 1, sizeof *pair0);
    uint32_t *ptok = malloc(sizeof(uint32_t) * np + 4);
    float *pgate = malloc(sizeof(float) * np + 4);
    mb_kcpu_expert *ex = calloc(n_exp, sizeof *ex);
    REQUIRE(pair0 && ptok && pgate && ex);
    for (size_t q = 0; q < np; q++)
        pair0[exp_of[q] + 1]++;
    for (size_t e = 0; e < n_exp; e++)
        pair0[e + 1] += pair0[e];
    size_t *fill = calloc(n_exp, sizeof *fill);
    REQUIRE(fill);
    for (size_t q = 0; q < np; q++) {
        size_t e = exp_of[q], at = pair0[e] + fill[e]++;
        ptok[at] = tok_of[q];
        pgate[at] = gate_of[q];
    }
    for (size_t e = 0; e < n_exp; e++)
        ex[e] = (mb_kcpu_expert){wg[e], wu[e], wdn[e], ld_in, ld_ff};

    /* Reference in double. */
    double *ref = calloc(n_tok * d_model + 1, sizeof *ref), *h = malloc(sizeof(double) * d_ff);
    double **dg = calloc(n_exp, sizeof *dg), **du = calloc(n_exp, sizeof *du),
           **dd = calloc(n_exp, sizeof *dd);
    REQUIRE(ref && h && dg && du && dd);
    for (size_t e = 0; e < n_exp; e++) {
        dg[e] = kcpu_w_double(wd, wg[e], d_ff * ld_in);
        du[e] = kcpu_w_double(wd, wu[e], d_ff * ld_in);
        dd[e] = kcpu_w_double(wd, wdn[e], d_model * ld_ff);
    }
    for (size_t q = 0; q < np; q++) {
        size_t t = tok_of[q], e = exp_of[q];
        const float *xr = x + t * d_model;
        for (size_t f = 0; f < d_ff; f++) {
            const double *gr = dg[e] + f * ld_in, *ur = du[e] + f * ld_in;
            double g = 0, u = 0;
            for (size_t i = 0; i < d_model; i++) {
                g += gr[i] * xr[i];
                u += ur[i] * xr[i];
            }
            h[f] = silu(g) * u;
        }
        for (size_t c = 0; c < d_model; c++) {
            const double *dr = dd[e] + c * ld_ff;
            double s = 0;
            for (size_t f = 0; f < d_ff; f++)
                s += dr[f] * h[f];
            ref[t * d_model + c] += (double)gate_of[q] * s;
        }
    }
    for (size_t e = 0; e < n_exp; e++) {
        free(dg[e]);
        free(du[e]);
        free(dd[e]);
    }
    free(dg), free(du), free(dd);

    size_t ldo = d_model + 3;
    float *out = malloc(sizeof(float) * n_tok * ldo + 4);
    _Atomic int *hits = calloc(d_model, sizeof *hits);
    REQUIRE(out && hits);
    for (int ii = 0; ii < 3; ii++) {
        err[ii] = -1;
        if (mb_kcpu_force_isa(isas[ii]) != 0) continue;
        for (size_t i = 0; i < n_tok * ldo; i++)
            out[i] = NAN;
        for (size_t c = 0; c < d_model; c++)
            atomic_store(&hits[c], 0);
        loader ld = {x, d_model, 0};
        done_ctx dc = {hits};
        mb_kcpu_moe_problem p = {
            .wdtype = {wd, wd, wd},
            .d_model = d_model,
            .d_ff = d_ff,
            .n_tokens = n_tok,
            .n_experts = n_exp,
            .experts = ex,
            .expert_pair0 = pair0,
            .pair_token = ptok,
            .pair_gate = pgate,
            .x = use_loader ? NULL : x,
            .ldx = d_model,
            .load_x = use_loader ? load_row : NULL,
            .load_ctx = &ld,
            .out = out,
            .ldo = ldo,
            .out_done = on_done,
            .out_ctx = &dc,
        };
        REQUIRE(mb_kcpu_moe_run(pool, ws, &p) == 0);

        double maxref = 1e-30, maxdiff = 0;
        for (size_t t = 0; t < n_tok; t++)
            for (size_t c = 0; c < d_model; c++) {
                double d = fabs((double)out[t * ldo + c] - ref[t * d_model + c]);
                if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
                if (fabs(ref[t * d_model + c]) > maxref) maxref = fabs(ref[t * d_model + c]);
                if (t % 7 == 3) CHECK(out[t * ldo + c] == 0.0f);
            }
        int bad_hits = 0;
        for (size_t c = 0; c < d_model; c++)
            bad_hits += atomic_load(&hits[c]) != 1;
        CHECK_EQ(bad_hits, 0);
        if (use_loader)
            CHECK(atomic_load(&ld.calls) == 0 || (size_t)atomic_load(&ld.calls) == n_tok);
        err[ii] = maxdiff / maxref;
    }

    for (size_t e = 0; e < n_exp; e++) {
        free(wg[e]);
        free(wu[e]);
        free(wdn[e]);
    }
    free(wg), free(wu), free(wdn), free(x), free(tok_of), free(exp_of), free(gate_of), free(pair0);
    free(ptok), free(pgate), free(ex), free(fill), free(ref), free(h), free(out),
        free((void *)hits);
}

int main(void)
{
    static const size_t cases[][5] = {
        /* d_model, d_ff, n_tokens, n_experts, top_k */
        {136, 72, 1, 4, 2},  {136, 72, 3, 5, 3},  {136, 72, 17, 6, 2}, {256, 512, 1, 9, 8},
        {256, 512, 3, 4, 2}, {64, 96, 300, 5, 2}, {40, 200, 9, 3, 1},
    };
    mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
    mb_kcpu_moe_ws *ws = mb_kcpu_moe_ws_create();
    REQUIRE(pool && ws);
    unsigned long long seed = 77;

    /* Malformed problems fail without writing. */
    mb_kcpu_moe_problem bad = {.wdtype = {7, 7, 7}, .d_model = 8, .d_ff = 8};
    CHECK(mb_kcpu_moe_run(pool, ws, &bad) == -1);
    CHECK(mb_kcpu_moe_run(pool, ws, NULL) == -1);

    for (int wd = 0; wd < 3; wd++) {
        double worst[3] = {-1, -1, -1};
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            int use_loader = (int)(c & 1);
            mb_kcpu_pool *pl = c == 2 ? NULL : pool;
            double err[3];
            run_case(pl, ws, wd, cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4],
                     use_loader, &seed, err);
            for (int ii = 0; ii < 3; ii++) {
                if (err[ii] < 0) continue;
                CHECK_MSG(err[ii] <= 1e-5, "isa %s w %s case %zu: err %.3g", isas[ii],
                          kcpu_wdtype_names[wd], c, err[ii]);
                if (!(err[ii] <= worst[ii])) worst[ii] = err[ii];
            }
        }
        for (int ii = 0; ii < 3; ii++)
            if (worst[ii] >= 0)
                printf("isa %-6s w %-4s: worst normalised error %.3g\n", isas[ii],
                       kcpu_wdtype_names[wd], worst[ii]);
            else
                printf("isa %-6s: not supported on this CPU, skipped\n", isas[ii]);
    }
    CHECK(mb_kcpu_force_isa("auto") == 0);
    CHECK(mb_kcpu_moe_ws_bytes(ws) > 0);
    mb_kcpu_moe_ws_destroy(ws);
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_kcpu_expert_ffn");
}
