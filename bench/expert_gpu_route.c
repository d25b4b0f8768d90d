/* bench_expert_gpu's routings (expert_gpu_route.h). */
#include "bench/expert_gpu_route.h"

#include <stdlib.h>
#include <string.h>

#include "bench/bench_rand.h"
#include "bench/gpu_device.h"

static unsigned long long mb_egpu_rng = 0x5DEECE66Dull;

uint64_t mb_egpu_rand(void)
{
    return mb_bench_rand(&mb_egpu_rng);
}

int mb_egpu_route_make(mb_egpu_route *r, const mb_egpu_model *m, uint32_t n_tokens)
{
    memset(r, 0, sizeof *r);
    r->n_tokens = n_tokens;
    r->n_pairs = n_tokens * m->top_k;
    r->counts = malloc(sizeof *r->counts * n_tokens);
    r->pairs = malloc(sizeof *r->pairs * r->n_pairs);
    uint8_t *used = calloc(m->n_experts, 1);
    if (!r->counts || !r->pairs || !used) {
        free(used);
        return -1;
    }
    uint32_t q = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        r->counts[t] = (uint16_t)m->top_k;
        uint32_t ids[8];
        float sum = 0, g[8];
        for (uint32_t k = 0; k < m->top_k; k++) {
            uint32_t e, dup;
            do {
                e = (uint32_t)(mb_egpu_rand() % m->n_experts);
                dup = 0;
                for (uint32_t j = 0; j < k; j++)
                    dup |= ids[j] == e;
            } while (dup);
            ids[k] = e;
            g[k] = 0.2f + (float)(mb_egpu_rand() >> 40) * 0x1p-24f;
            sum += g[k];
            if (!used[e]) r->n_distinct++;
            used[e] = 1;
        }
        for (uint32_t k = 0; k < m->top_k; k++)
            r->pairs[q++] = (mb_proto_pair){ids[k], g[k] / sum};
    }
    /* The plan: counts per expert (ids are slots here), ascending. */
    int32_t *cnt = calloc(m->n_experts, sizeof *cnt);
    int32_t *plan = malloc(sizeof *plan * (2 * (size_t)m->n_experts + 1));
    r->plan_count = malloc(sizeof *r->plan_count * m->n_experts);
    r->plan_slot = malloc(sizeof *r->plan_slot * m->n_experts);
    if (!cnt || !plan || !r->plan_count || !r->plan_slot) {
        free(cnt);
        free(plan);
        free(used);
        return -1;
    }
    for (uint32_t i = 0; i < r->n_pairs; i++)
        cnt[r->pairs[i].slot]++;
    for (uint32_t e = 0; e < m->n_experts; e++)
        if (cnt[e]) {
            plan[r->plan_n] = (int32_t)e;
            r->plan_slot[r->plan_n] = (int32_t)e;
            r->plan_count[r->plan_n++] = cnt[e];
        }
    int32_t off = 0;
    for (uint32_t e = 0; e < r->plan_n; e++) {
        plan[r->plan_n + e] = off;
        off += r->plan_count[e];
    }
    plan[2 * r->plan_n] = off;
    const size_t plan_bytes = sizeof *plan * (2 * (size_t)r->plan_n + 1);
    int pe = mb_gpu_alloc(&r->d_plan, plan_bytes) || mb_gpu_upload(r->d_plan, plan, plan_bytes);
    free(cnt);
    free(plan);
    free(used);
    if (pe) return -1;
    if (mb_gpu_alloc(&r->d_counts, sizeof *r->counts * n_tokens) ||
        mb_gpu_alloc(&r->d_pairs, sizeof *r->pairs * r->n_pairs) ||
        mb_gpu_upload(r->d_counts, r->counts, sizeof *r->counts * n_tokens) ||
        mb_gpu_upload(r->d_pairs, r->pairs, sizeof *r->pairs * r->n_pairs))
        return -1;
    return 0;
}

void mb_egpu_route_free(mb_egpu_route *r)
{
    free(r->counts);
    free(r->pairs);
    free(r->plan_count);
    free(r->plan_slot);
    mb_gpu_free(r->d_plan);
    mb_gpu_free(r->d_counts);
    mb_gpu_free(r->d_pairs);
    memset(r, 0, sizeof *r);
}
