/* The routing decision: one fused pass per token (softmax, top-k, renorm)
 * over logits the router projection already produced. */
#include "broker/router.h"

#include <math.h>

mb_status mb_router_init(mb_router *r, const mb_model_config *cfg)
{
    if (!r || !cfg || cfg->n_experts == 0 || cfg->top_k == 0 || cfg->top_k > cfg->n_experts)
        return MB_STATUS_INVALID_ARG;
    r->n_experts = cfg->n_experts;
    r->top_k = cfg->top_k;
    r->renorm = cfg->arch == MB_ARCH_MIXTRAL ? 1 : (cfg->norm_topk_prob != 0);
    return MB_STATUS_OK;
}

/* Softmax of one row in place, as torch does in f32: exp(x - max) / sum. */
static void softmax_row(float *p, uint32_t n)
{
    float mx = p[0];
    for (uint32_t e = 1; e < n; e++)
        if (p[e] > mx) mx = p[e];
    float sum = 0.0f;
    for (uint32_t e = 0; e < n; e++) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    for (uint32_t e = 0; e < n; e++)
        p[e] = p[e] / sum;
}

void mb_router_select(const mb_router *r, float *logits, uint32_t n_tokens, int32_t *expert_ids,
                      float *gate)
{
    const uint32_t n = r->n_experts, k = r->top_k;
    for (uint32_t t = 0; t < n_tokens; t++) {
        float *p = logits + (size_t)t * n;
        int32_t *ids = expert_ids + (size_t)t * k;
        float *g = gate + (size_t)t * k;
        softmax_row(p, n);
        /* Insertion into a sorted list of k: strictly greater moves up, so an
         * equal value never passes an earlier (lower-index) expert. */
        uint32_t have = 0;
        for (uint32_t e = 0; e < n; e++) {
            float v = p[e];
            if (have == k && !(v > g[k - 1])) continue;
            uint32_t j = have < k ? have++ : k - 1;
            while (j > 0 && v > g[j - 1]) {
                g[j] = g[j - 1];
                ids[j] = ids[j - 1];
                j--;
            }
            g[j] = v;
            ids[j] = (int32_t)e;
        }
        if (r->renorm) {
            float sum = 0.0f;
            for (uint32_t j = 0; j < k; j++)
                sum += g[j];
            for (uint32_t j = 0; j < k; j++)
                g[j] = g[j] / sum;
        }
    }
}
