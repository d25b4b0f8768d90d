/* Expert FFN with quantized weights (expert_ffn_quant.c), both ways an
 * expert can compute (integer dots, dequantized f32 tiles) and the
 * automatic choice between them, on every instruction-set path: every
 * quantized type, Q4_K_M's mix (Q6_K down) and gate/up taking different
 * activation blocks (Q8_0 beside Q4_K), 1..300 tokens, calls whose experts
 * fall on both sides of the tiles threshold (so the automatic choice mixes
 * the two ways in one call), one expert with more pairs than a block of
 * them (MB_MOE_NB), k not a multiple of the tile width, rows not a multiple
 * of the row block, the activation callback and out_done.
 * Reference: double precision over the exactly dequantized weights, with
 * the activations and SiLU products quantized to 8 bits per block as the
 * kernel does (mb_kcpu_qact_row then mb_kcpu_qact_dequant_row); its SiLU
 * products are computed in double, so an 8-bit rounding may land on the
 * other side of a half step: bound 1e-3 of max|ref|. Dots against tiles:
 * the same sums in another f32 order, so mostly within 1e-6, but the SiLU
 * products they quantize for down may again round apart: the same bound.
 * Shapes the block format does not allow (k not whole blocks) are refused. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>

#include "kcpu_test.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/quant.h"
#include "tests/quant_testutil.h"

static const char *mb_kcpu_dtype_name(int type)
{
    static const char *const names[] = {"f32",  "f16",  "bf16", "q8_0",
                                        "q4_0", "q4_k", "q5_k", "q6_k"};
    return type >= 0 && type < 8 ? names[type] : "?";
}

/* rows x cols of random blocks with sane scales. */
static void *rand_blocks(int type, size_t rows, size_t cols, unsigned long long *seed)
{
    return mb_test_quant_blocks_exp(type, rows * cols / mb_kcpu_block_elems(type), 5, seed);
}

/* x[k] as the dots see it after 8-bit quantization for weights of type. */
static void as_quantized(int type, const float *x, float *out, size_t k)
{
    void *q = malloc(mb_kcpu_qact_row_bytes(type, k));
    REQUIRE(q);
    mb_kcpu_qact_row(type, x, q, k);
    mb_kcpu_qact_dequant_row(type, q, out, k);
    free(q);
}

static void load_row(void *ctx, size_t t, float *dst)
{
    const float *x = ((const float *const *)ctx)[0];
    const size_t d = (size_t)(uintptr_t)((void *const *)ctx)[1];
    memcpy(dst, x + t * d, d * sizeof(float));
}

static void on_done(void *ctx, size_t c0, size_t c1)
{
    _Atomic int *hits = ctx;
    for (size_t c = c0; c < c1; c++)
        atomic_fetch_add(&hits[c], 1);
}

typedef struct {
    int type[3];
    size_t d_model, d_ff, n_tok, n_exp, top_k;
    int skew; /* 1: every token routes to expert 0 first; 2: every other token */
} qcase;

static const char *const paths[] = {"auto", "dots", "tiles"};
static const char *const isas[] = {"scalar", "avx2", "avx512"};

/* Runs one case on every path and way; returns the worst error against the
 * reference and checks dots against tiles. */
static double run_case(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const qcase *c, int use_loader,
                       unsigned long long *seed)
{
    const size_t dm = c->d_model, dff = c->d_ff, n_tok = c->n_tok, n_exp = c->n_exp;
    void *w[8][3];
    double *wr[8][3];
    mb_kcpu_expert ex[8];
    REQUIRE(n_exp <= 8);
    for (size_t e = 0; e < n_exp; e++) {
        for (int m = 0; m < 3; m++) {
            const size_t rows = m == 2 ? dm : dff, cols = m == 2 ? dff : dm;
            w[e][m] = rand_blocks(c->type[m], rows, cols, seed);
            wr[e][m] = mb_test_quant_dequant(c->type[m], w[e][m], rows, cols);
        }
        ex[e] = (mb_kcpu_expert){w[e][0], w[e][1], w[e][2], dm, dff};
    }
    float *x = malloc(sizeof(float) * n_tok * dm);
    REQUIRE(x);
    for (size_t i = 0; i < n_tok * dm; i++)
        x[i] = mb_test_rand_f32(seed) * 2.0f;

    /* Routing, grouped by expert: token t takes top_k consecutive experts
     * from a random first one (expert 0 first when skewed); every 5th
     * token none. */
    size_t pair0[9] = {0}, np = 0;
    uint32_t *ptok = malloc(sizeof(uint32_t) * n_tok * c->top_k + 4);
    float *pgate = malloc(sizeof(float) * n_tok * c->top_k + 4);
    REQUIRE(ptok && pgate);
    size_t *first = malloc(sizeof(size_t) * n_tok);
    REQUIRE(first);
    for (size_t t = 0; t < n_tok; t++)
        first[t] = c->skew == 1 || (c->skew == 2 && t % 2 == 0) ? 0
                   : c->skew == 2 ? 1 + mb_test_rand_u64(seed) % (n_exp - 1)
                                  : mb_test_rand_u64(seed) % n_exp;
    for (size_t e = 0; e < n_exp; e++) {
        pair0[e] = np;
        for (size_t t = 0; t < n_tok; t++) {
            if (t % 5 == 4) continue;
            if ((e + n_exp - first[t]) % n_exp >= c->top_k) continue;
            ptok[np] = (uint32_t)t;
            pgate[np++] = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
        }
    }
    pair0[n_exp] = np;

    /* Reference. */
    double *ref = calloc(n_tok * dm, sizeof *ref);
    float *xg = malloc(sizeof(float) * dm), *xu = malloc(sizeof(float) * dm);
    float *hf = malloc(sizeof(float) * dff), *hq = malloc(sizeof(float) * dff);
    REQUIRE(ref && xg && xu && hf && hq);
    for (size_t e = 0; e < n_exp; e++)
        for (size_t q = pair0[e]; q < pair0[e + 1]; q++) {
            const size_t t = ptok[q];
            as_quantized(c->type[0], x + t * dm, xg, dm);
            as_quantized(c->type[1], x + t * dm, xu, dm);
            for (size_t f = 0; f < dff; f++) {
                double g = 0, u = 0;
                for (size_t i = 0; i < dm; i++) {
                    g += wr[e][0][f * dm + i] * xg[i];
                    u += wr[e][1][f * dm + i] * xu[i];
                }
                hf[f] = (float)(g / (1.0 + exp(-g)) * u);
            }
            as_quantized(c->type[2], hf, hq, dff);
            for (size_t o = 0; o < dm; o++) {
                double s = 0;
                for (size_t f = 0; f < dff; f++)
                    s += wr[e][2][o * dff + f] * hq[f];
                ref[t * dm + o] += (double)pgate[q] * s;
            }
        }

    const size_t ldo = dm + 5;
    float *out[3];
    _Atomic int *hits = calloc(dm, sizeof *hits);
    REQUIRE(hits);
    const void *lctx[2] = {x, (void *)(uintptr_t)dm};
    double worst = 0;
    for (int ii = 0; ii < 3; ii++) {
        if (mb_kcpu_force_isa(isas[ii]) != 0) continue;
        /* Sanitized builds run the scalar path's automatic choice only. */
        const int n_paths = MB_TEST_SANITIZED && ii == 0 ? 1 : 3;
        for (int pi = 0; pi < 3; pi++)
            out[pi] = NULL;
        for (int pi = 0; pi < n_paths; pi++) {
            out[pi] = malloc(sizeof(float) * n_tok * ldo);
            REQUIRE(out[pi]);
            for (size_t i = 0; i < n_tok * ldo; i++)
                out[pi][i] = NAN;
            for (size_t o = 0; o < dm; o++)
                atomic_store(&hits[o], 0);
            mb_kcpu_moe_problem p = {
                .wdtype = {c->type[0], c->type[1], c->type[2]},
                .d_model = dm,
                .d_ff = dff,
                .n_tokens = n_tok,
                .n_experts = n_exp,
                .experts = ex,
                .expert_pair0 = pair0,
                .pair_token = ptok,
                .pair_gate = pgate,
                .x = use_loader ? NULL : x,
                .ldx = dm,
                .load_x = use_loader ? load_row : NULL,
                .load_ctx = lctx,
                .out = out[pi],
                .ldo = ldo,
                .out_done = on_done,
                .out_ctx = hits,
            };
            mb_kcpu_moe_force_qpath(pi);
            REQUIRE(mb_kcpu_moe_run(pool, ws, &p) == 0);
            double maxref = 1e-30, maxdiff = 0;
            for (size_t t = 0; t < n_tok; t++)
                for (size_t o = 0; o < dm; o++) {
                    const double d = fabs((double)out[pi][t * ldo + o] - ref[t * dm + o]);
                    if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
                    if (fabs(ref[t * dm + o]) > maxref) maxref = fabs(ref[t * dm + o]);
                    if (t % 5 == 4) CHECK(out[pi][t * ldo + o] == 0.0f);
                }
            int bad_hits = 0;
            for (size_t o = 0; o < dm; o++)
                bad_hits += atomic_load(&hits[o]) != 1;
            CHECK_EQ(bad_hits, 0);
            const double err = maxdiff / maxref;
            CHECK_MSG(err <= 1e-3, "%s/%s/%s %zux%zu, %zu tokens, isa %s, %s: error %.3g",
                      mb_kcpu_dtype_name(c->type[0]), mb_kcpu_dtype_name(c->type[1]),
                      mb_kcpu_dtype_name(c->type[2]), dm, dff, n_tok, isas[ii], paths[pi], err);
            if (err > worst) worst = err;
        }
        /* Dots and tiles: the same sums in another order (see above). */
        double maxout = 1e-30, maxdiff = 0;
        for (size_t t = 0; n_paths == 3 && t < n_tok; t++)
            for (size_t o = 0; o < dm; o++) {
                const double d = fabs((double)out[1][t * ldo + o] - out[2][t * ldo + o]);
                if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
                if (fabs(out[1][t * ldo + o]) > maxout) maxout = fabs(out[1][t * ldo + o]);
            }
        CHECK_MSG(maxdiff / maxout <= 1e-3, "%s %zux%zu, %zu tokens, isa %s: dots vs tiles %.3g",
                  mb_kcpu_dtype_name(c->type[0]), dm, dff, n_tok, isas[ii], maxdiff / maxout);
        for (int pi = 0; pi < 3; pi++)
            free(out[pi]);
    }
    mb_kcpu_moe_force_qpath(MB_KCPU_QPATH_AUTO);
    CHECK(mb_kcpu_force_isa("auto") == 0);
    for (size_t e = 0; e < n_exp; e++)
        for (int m = 0; m < 3; m++) {
            free(w[e][m]);
            free(wr[e][m]);
        }
    free(x), free(ptok), free(pgate), free(first), free(ref), free(xg), free(xu), free(hf),
        free(hq);
    free((void *)hits);
    return worst;
}

int main(void)
{
    enum {
        Q8 = MB_KCPU_Q8_0,
        Q40 = MB_KCPU_Q4_0,
        Q4 = MB_KCPU_Q4_K,
        Q5 = MB_KCPU_Q5_K,
        Q6 = MB_KCPU_Q6_K
    };
    static const qcase cases[] = {
        /* type, d_model, d_ff, tokens, experts, top_k, skew */
        {{Q4, Q4, Q4}, 512, 1280, 1, 4, 2, 0},  {{Q4, Q4, Q4}, 512, 1280, 32, 3, 2, 0},
        {{Q4, Q4, Q6}, 256, 512, 300, 3, 1, 1}, {{Q4, Q4, Q6}, 512, 768, 24, 4, 2, 0},
        {{Q5, Q5, Q5}, 256, 768, 24, 3, 2, 0},  {{Q6, Q6, Q6}, 512, 1280, 24, 3, 2, 0},
        {{Q8, Q8, Q8}, 160, 1184, 1, 3, 2, 0},  {{Q8, Q8, Q8}, 1184, 160, 40, 3, 2, 0},
        {{Q8, Q8, Q8}, 160, 224, 300, 2, 1, 1}, {{Q40, Q40, Q40}, 160, 1184, 32, 3, 2, 0},
        {{Q8, Q4, Q6}, 512, 768, 32, 3, 2, 0},  {{Q40, Q40, Q40}, 160, 224, 48, 4, 1, 2},
        {{Q5, Q5, Q5}, 256, 512, 96, 3, 1, 2},
    };
    mb_kcpu_pool *pool = mb_kcpu_pool_create(2, -1);
    mb_kcpu_moe_ws *ws = mb_kcpu_moe_ws_create();
    REQUIRE(pool && ws);
    unsigned long long seed = 4242;
    const size_t n_cases = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n_cases; i++) {
        const qcase *c = &cases[i];
        const double worst = run_case(i == 3 ? NULL : pool, ws, c, (int)(i & 1), &seed);
        printf("%s/%s/%s %zux%zu, %zu tokens over %zu experts: worst error %.3g\n",
               mb_kcpu_dtype_name(c->type[0]), mb_kcpu_dtype_name(c->type[1]),
               mb_kcpu_dtype_name(c->type[2]), c->d_model, c->d_ff, c->n_tok, c->n_exp, worst);
    }

    /* Shapes the blocks do not allow, and unpadded rows only: refused. */
    unsigned long long s2 = 1;
    void *wq = rand_blocks(Q4, 320, 256, &s2);
    float x[320] = {0}, out[320];
    size_t pair0[2] = {0, 1};
    uint32_t ptok[1] = {0};
    float pg[1] = {1.0f};
    mb_kcpu_expert ex = {wq, wq, wq, 256, 320};
    mb_kcpu_moe_problem p = {.wdtype = {Q4, Q4, Q4},
                             .d_model = 256,
                             .d_ff = 320,
                             .n_tokens = 1,
                             .n_experts = 1,
                             .experts = &ex,
                             .expert_pair0 = pair0,
                             .pair_token = ptok,
                             .pair_gate = pg,
                             .x = x,
                             .ldx = 256,
                             .out = out,
                             .ldo = 256};
    CHECK_MSG(mb_kcpu_moe_run(pool, ws, &p) == -1, "Q4_K down rows of 320 accepted");
    p.d_model = 320, p.d_ff = 256, ex.ld_in = 320, ex.ld_ff = 256, p.ldx = 320, p.ldo = 320;
    CHECK_MSG(mb_kcpu_moe_run(pool, ws, &p) == -1, "Q4_K gate rows of 320 accepted");
    p.d_model = 256, ex.ld_in = 264, p.ldx = 256, p.ldo = 256;
    CHECK_MSG(mb_kcpu_moe_run(pool, ws, &p) == -1, "padded quantized rows accepted");
    ex.ld_in = 256;
    p.wdtype[2] = 0;
    CHECK_MSG(mb_kcpu_moe_run(pool, ws, &p) == -1, "quantized gate/up with f32 down accepted");
    p.wdtype[2] = Q8, p.d_ff = 48;
    CHECK_MSG(mb_kcpu_moe_run(pool, ws, &p) == -1, "Q8_0 rows of 48 accepted");
    float y[4];
    CHECK_MSG(mb_kcpu_qgemm(pool, Q4, wq, 144, 1, 320, x, 320, 1, y, 1, 0) == -1,
              "qgemm over 320 Q4_K elements accepted");
    free(wq);
    mb_kcpu_moe_ws_destroy(ws);
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_kcpu_expert_ffn_quant");
}
