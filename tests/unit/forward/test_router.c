/* Routing against a straightforward reference for each family: softmax in
 * double, a stable sort by descending probability, the first k, and a
 * renormalisation where the family asks for one. */
#include <string.h>

#include "broker/router.h"
#include "tests/testutil.h"

#define MAX_E 160

typedef struct {
    double p;
    int e;
} pe;

/* Stable descending order: equal values keep the lower index first. */
static void sort_desc(pe *a, int n)
{
    for (int i = 1; i < n; i++) {
        pe v = a[i];
        int j = i;
        while (j > 0 && a[j - 1].p < v.p) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

static void ref_route(const float *logits, int n, int k, int renorm, int32_t *ids, double *w,
                      double *probs)
{
    double mx = logits[0], sum = 0;
    for (int e = 1; e < n; e++)
        mx = logits[e] > mx ? logits[e] : mx;
    pe a[MAX_E];
    for (int e = 0; e < n; e++) {
        probs[e] = exp((double)logits[e] - mx);
        sum += probs[e];
    }
    for (int e = 0; e < n; e++) {
        probs[e] /= sum;
        a[e].p = probs[e];
        a[e].e = e;
    }
    sort_desc(a, n);
    double s = 0;
    for (int j = 0; j < k; j++)
        s += a[j].p;
    for (int j = 0; j < k; j++) {
        ids[j] = a[j].e;
        w[j] = renorm ? a[j].p / s : a[j].p;
    }
}

static void check_family(mb_arch arch, int norm_topk_prob, int expect_renorm, uint32_t n_experts,
                         uint32_t top_k, unsigned long long *seed)
{
    mb_model_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.arch = arch;
    cfg.n_experts = n_experts;
    cfg.top_k = top_k;
    cfg.norm_topk_prob = norm_topk_prob;
    mb_router r;
    REQUIRE(mb_router_init(&r, &cfg) == MB_STATUS_OK);
    CHECK_EQ(r.renorm, expect_renorm);
    enum { N_TOK = 37 };
    float *logits = malloc(sizeof(float) * N_TOK * n_experts);
    float *orig = malloc(sizeof(float) * N_TOK * n_experts);
    int32_t *ids = malloc(sizeof(int32_t) * N_TOK * top_k);
    float *gate = malloc(sizeof(float) * N_TOK * top_k);
    REQUIRE(logits && orig && ids && gate);
    for (size_t i = 0; i < (size_t)N_TOK * n_experts; i++)
        orig[i] = logits[i] = 4.0f * mb_test_rand_f32(seed);
    mb_router_select(&r, logits, N_TOK, ids, gate);
    for (uint32_t t = 0; t < N_TOK; t++) {
        int32_t want_ids[MAX_E];
        double want_w[MAX_E], probs[MAX_E];
        ref_route(orig + (size_t)t * n_experts, (int)n_experts, (int)top_k, expect_renorm, want_ids,
                  want_w, probs);
        for (uint32_t j = 0; j < top_k; j++) {
            CHECK_EQ(ids[t * top_k + j], want_ids[j]);
            CHECK_MSG(fabs(gate[t * top_k + j] - want_w[j]) <= 1e-6, "t %u j %u: %g vs %g", t, j,
                      gate[t * top_k + j], want_w[j]);
        }
        for (uint32_t e = 0; e < n_experts; e++)
            CHECK(fabs(logits[(size_t)t * n_experts + e] - probs[e]) <= 1e-6);
        if (arch == MB_ARCH_MIXTRAL) {
            /* MixtralSparseMoeBlock's older form: top-k of the logits, then
             * softmax over those k. Same weights. */
            const float *lg = orig + (size_t)t * n_experts;
            double mx = lg[ids[t * top_k]], s = 0;
            for (uint32_t j = 0; j < top_k; j++)
                s += exp(lg[ids[t * top_k + j]] - mx);
            for (uint32_t j = 0; j < top_k; j++)
                CHECK(fabs(gate[t * top_k + j] - exp(lg[ids[t * top_k + j]] - mx) / s) <= 1e-6);
        }
    }
    free(logits);
    free(orig);
    free(ids);
    free(gate);
}

int main(void)
{
    unsigned long long seed = 1234;
    /* Mixtral renormalises whatever norm_topk_prob says. */
    check_family(MB_ARCH_MIXTRAL, 0, 1, 8, 2, &seed);
    check_family(MB_ARCH_MIXTRAL, 1, 1, 8, 2, &seed);
    /* Qwen2-MoE checkpoints ship norm_topk_prob false: raw probabilities. */
    check_family(MB_ARCH_QWEN2_MOE, 0, 0, 8, 2, &seed);
    check_family(MB_ARCH_QWEN2_MOE, 0, 0, 60, 4, &seed);
    check_family(MB_ARCH_QWEN2_MOE, 1, 1, 60, 4, &seed);
    /* Qwen3-MoE: renormalised when norm_topk_prob. */
    check_family(MB_ARCH_QWEN3_MOE, 1, 1, 16, 4, &seed);
    check_family(MB_ARCH_QWEN3_MOE, 1, 1, 128, 8, &seed);
    check_family(MB_ARCH_QWEN3_MOE, 0, 0, 128, 8, &seed);
    /* Edge sizes: k = 1 and k = n. */
    check_family(MB_ARCH_QWEN3_MOE, 1, 1, 5, 1, &seed);
    check_family(MB_ARCH_QWEN3_MOE, 0, 0, 5, 5, &seed);

    /* Ties: equal logits pick the lowest indices, in order. */
    mb_model_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.arch = MB_ARCH_QWEN2_MOE;
    cfg.n_experts = 6;
    cfg.top_k = 3;
    mb_router r;
    REQUIRE(mb_router_init(&r, &cfg) == MB_STATUS_OK);
    float lg[6] = {0.5f, 1.0f, 0.5f, 1.0f, 1.0f, 0.5f};
    int32_t ids[3];
    float gate[3];
    mb_router_select(&r, lg, 1, ids, gate);
    CHECK_EQ(ids[0], 1);
    CHECK_EQ(ids[1], 3);
    CHECK_EQ(ids[2], 4);
    CHECK(gate[0] == gate[1] && gate[1] == gate[2]);
    float flat[6] = {0};
    mb_router_select(&r, flat, 1, ids, gate);
    CHECK_EQ(ids[0], 0);
    CHECK_EQ(ids[1], 1);
    CHECK_EQ(ids[2], 2);
    CHECK(fabs(gate[0] - 1.0 / 6) <= 1e-7);

    /* Huge logits do not overflow the softmax. */
    float big[6] = {1e30f, -1e30f, 80.0f, 89.0f, 88.0f, -3.0f};
    mb_router_select(&r, big, 1, ids, gate);
    CHECK_EQ(ids[0], 0);
    CHECK(gate[0] == 1.0f);
    CHECK(isfinite(gate[1]) && isfinite(gate[2]));

    /* Bad configurations are refused. */
    cfg.top_k = 7;
    CHECK_EQ(mb_router_init(&r, &cfg), MB_STATUS_INVALID_ARG);
    cfg.top_k = 0;
    CHECK_EQ(mb_router_init(&r, &cfg), MB_STATUS_INVALID_ARG);
    return mb_test_finish("test_router");
}
