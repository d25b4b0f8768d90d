/* Expert FFN driver: packs activations, then runs gate/up (+ SiLU) by
 * (expert, d_ff block) tasks and down (+ gate-weighted scatter-add) by
 * d_model block tasks on the pool. A down task owns its output columns for
 * every token and loops over all experts, so the scatter-add needs no
 * atomics and no per-expert output buffers. The arithmetic is in the
 * gemm_<isa>.c tiles; this file only schedules and owns the workspace.
 * Quantized weights take their own driver (expert_ffn_quant.c) after the
 * validation here. */
#include "kernels/cpu/expert_ffn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/expert_ffn_internal.h"
#include "kernels/cpu/gemm_isa.h"
#include "kernels/cpu/quant.h"

/* Row blocks: multiples of 32 (so a d_ff block covers whole packing
 * chunks) and of 24 (so every tile height divides them). */
#define MB_MOE_RB_MAX 96

typedef struct {
    const mb_kcpu_moe_problem *p;
    const mb_kcpu_isa_impl *isa;
    mb_kcpu_moe_ws *ws;
    size_t kp_model, kp_ff;
    size_t per_thread;
    size_t rb1, nb1; /* d_ff block rows, blocks per expert */
    size_t rb2;      /* d_model block columns */
    const float **xrow, **hrow;
} mb_moe_job;

mb_kcpu_moe_ws *mb_kcpu_moe_ws_create(void)
{
    return calloc(1, sizeof(mb_kcpu_moe_ws));
}

void mb_kcpu_moe_ws_destroy(mb_kcpu_moe_ws *ws)
{
    if (!ws) return;
    free(ws->xp);
    free(ws->h);
    free(ws->rows);
    free(ws->scratch);
    free(ws->qx);
    free(ws->qh);
    free(ws);
}

size_t mb_kcpu_moe_ws_bytes(const mb_kcpu_moe_ws *ws)
{
    if (!ws) return 0;
    return (ws->xp_cap + ws->h_cap + ws->scratch_cap) * sizeof(float) +
           ws->rows_cap * sizeof(float *) + ws->qx_cap + ws->qh_cap;
}

/* Per-thread scratch: acc_g, acc_u [NB][rb1], silu row [rb1], acc_d
 * [NB][rb2], one activation row [d_model]. */
static float *mb_moe_scratch(const mb_moe_job *j, int thread)
{
    return j->ws->scratch + (size_t)thread * j->per_thread;
}

static void mb_moe_pack_task(void *ctx, size_t task, int thread)
{
    const mb_moe_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    float *tmp = mb_moe_scratch(j, thread) + 2 * MB_MOE_NB * j->rb1 + j->rb1 + MB_MOE_NB * j->rb2;
    size_t t0 = task * 8, t1 = t0 + 8 < p->n_tokens ? t0 + 8 : p->n_tokens;
    for (size_t t = t0; t < t1; t++) {
        const float *src = p->x ? p->x + t * p->ldx : NULL;
        if (p->load_x) {
            p->load_x(p->load_ctx, t, tmp);
            src = tmp;
        }
        j->isa->pack(p->wdtype[MB_KCPU_GATE], src, p->d_model, j->ws->xp + t * j->kp_model);
    }
}

static void mb_moe_gate_up_task(void *ctx, size_t task, int thread)
{
    const mb_moe_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const size_t e = task / j->nb1, b = task % j->nb1;
    const mb_kcpu_expert *E = &p->experts[e];
    const size_t r0 = b * j->rb1, r1 = r0 + j->rb1 < p->d_ff ? r0 + j->rb1 : p->d_ff;
    float *acc_g = mb_moe_scratch(j, thread);
    float *acc_u = acc_g + MB_MOE_NB * j->rb1;
    float *hrow = acc_u + MB_MOE_NB * j->rb1;
    for (size_t q0 = p->expert_pair0[e]; q0 < p->expert_pair0[e + 1]; q0 += MB_MOE_NB) {
        size_t nq =
            p->expert_pair0[e + 1] - q0 < MB_MOE_NB ? p->expert_pair0[e + 1] - q0 : MB_MOE_NB;
        mb_kcpu_gemm_block(j->isa, p->wdtype[MB_KCPU_GATE], E->gate, E->ld_in, r0, r1,
                           j->xrow + q0, nq, p->d_model, acc_g, j->rb1, 0);
        mb_kcpu_gemm_block(j->isa, p->wdtype[MB_KCPU_UP], E->up, E->ld_in, r0, r1, j->xrow + q0,
                           nq, p->d_model, acc_u, j->rb1, 0);
        for (size_t q = 0; q < nq; q++) {
            j->isa->silu_mul(acc_g + q * j->rb1, acc_u + q * j->rb1, hrow, r1 - r0);
            /* r0 is a multiple of the chunk, so this block packs on its own;
             * the last block also writes the zero padding up to kp_ff. */
            j->isa->pack(p->wdtype[MB_KCPU_DOWN], hrow, r1 - r0,
                         j->ws->h + (q0 + q) * j->kp_ff + r0);
        }
    }
}

static void mb_moe_down_task(void *ctx, size_t task, int thread)
{
    const mb_moe_job *j = ctx;
    const mb_kcpu_moe_problem *p = j->p;
    const size_t c0 = task * j->rb2, c1 = c0 + j->rb2 < p->d_model ? c0 + j->rb2 : p->d_model;
    const size_t nc = c1 - c0;
    float *acc = mb_moe_scratch(j, thread) + 2 * MB_MOE_NB * j->rb1 + j->rb1;
    for (size_t t = 0; t < p->n_tokens; t++)
        memset(p->out + t * p->ldo + c0, 0, nc * sizeof(float));
    for (size_t e = 0; e < p->n_experts; e++) {
        const mb_kcpu_expert *E = &p->experts[e];
        for (size_t q0 = p->expert_pair0[e]; q0 < p->expert_pair0[e + 1]; q0 += MB_MOE_NB) {
            size_t nq =
                p->expert_pair0[e + 1] - q0 < MB_MOE_NB ? p->expert_pair0[e + 1] - q0 : MB_MOE_NB;
            mb_kcpu_gemm_block(j->isa, p->wdtype[MB_KCPU_DOWN], E->down, E->ld_ff, c0, c1,
                               j->hrow + q0, nq, p->d_ff, acc, j->rb2, 0);
            mb_moe_add_gated(p, q0, nq, acc, j->rb2, c0, nc);
        }
    }
    if (p->out_done) p->out_done(p->out_ctx, c0, c1);
}

/* The dtypes go together: one element dtype for all three matrices, or
 * quantized ones, each in whole blocks (gate/up rows hold d_model
 * elements, down rows d_ff). */
static int mb_moe_dtypes_ok(const mb_kcpu_moe_problem *p)
{
    int n_quant = 0;
    for (int i = 0; i < 3; i++) {
        const int wd = p->wdtype[i];
        if (wd < 0 || wd > MB_KCPU_Q6_K) return 0;
        n_quant += mb_kcpu_quant_valid(wd);
        if ((i == MB_KCPU_DOWN ? p->d_ff : p->d_model) % mb_kcpu_block_elems(wd)) return 0;
    }
    if (n_quant == 3) return 1;
    return n_quant == 0 && p->wdtype[0] == p->wdtype[1] && p->wdtype[1] == p->wdtype[2];
}

static int mb_moe_validate(const mb_kcpu_moe_problem *p, size_t *n_pairs)
{
    if (!p || p->d_model == 0 || p->d_ff == 0 || !p->out || p->ldo < p->d_model ||
        !mb_moe_dtypes_ok(p))
        return -1;
    if (p->n_tokens > 0 && !p->x && !p->load_x) return -1;
    if (p->x && !p->load_x && p->ldx < p->d_model) return -1;
    if (p->n_experts > 0 && (!p->experts || !p->expert_pair0)) return -1;
    size_t np = p->n_experts > 0 ? p->expert_pair0[p->n_experts] : 0;
    if (p->n_experts > 0 && p->expert_pair0[0] != 0) return -1;
    for (size_t e = 0; e < p->n_experts; e++) {
        if (p->expert_pair0[e + 1] < p->expert_pair0[e]) return -1;
        const mb_kcpu_expert *E = &p->experts[e];
        if (!E->gate || !E->up || !E->down || E->ld_in < p->d_model || E->ld_ff < p->d_ff)
            return -1;
    }
    if (np > 0 && (!p->pair_token || !p->pair_gate)) return -1;
    for (size_t q = 0; q < np; q++)
        if (p->pair_token[q] >= p->n_tokens) return -1;
    *n_pairs = np;
    return 0;
}

int mb_kcpu_moe_run(mb_kcpu_pool *pool, mb_kcpu_moe_ws *ws, const mb_kcpu_moe_problem *p)
{
    size_t n_pairs = 0;
    if (!ws || mb_moe_validate(p, &n_pairs) != 0) return -1;
    /* Validated: quantized means all three are. */
    if (mb_kcpu_quant_valid(p->wdtype[MB_KCPU_GATE])) return mb_moeq_run(pool, ws, p, n_pairs);
    const int threads = mb_kcpu_pool_threads(pool);
    mb_moe_job j = {.p = p, .isa = mb_kcpu_isa_current(), .ws = ws};
    j.kp_model = mb_kcpu_packed_len(j.isa, p->d_model);
    j.kp_ff = mb_kcpu_packed_len(j.isa, p->d_ff);

    /* Block sizes: the largest that still gives each thread a few tasks. */
    j.rb1 = MB_MOE_RB_MAX;
    while (j.rb1 > 32 && p->n_experts * ((p->d_ff + j.rb1 - 1) / j.rb1) < (size_t)threads * 4)
        j.rb1 -= 32;
    j.nb1 = (p->d_ff + j.rb1 - 1) / j.rb1;
    j.rb2 = n_pairs >= 32 * p->n_experts ? 96 : 48;
    while (j.rb2 > 24 && (p->d_model + j.rb2 - 1) / j.rb2 < (size_t)threads * 4)
        j.rb2 /= 2;
    j.per_thread = mb_moe_round16(2 * MB_MOE_NB * j.rb1 + j.rb1 + MB_MOE_NB * j.rb2) +
                   mb_moe_round16(p->d_model);

    if (mb_moe_grow((void **)&ws->xp, &ws->xp_cap, mb_moe_mul(p->n_tokens, j.kp_model),
                    sizeof(float)) ||
        mb_moe_grow((void **)&ws->h, &ws->h_cap, mb_moe_mul(n_pairs, j.kp_ff), sizeof(float)) ||
        mb_moe_grow((void **)&ws->rows, &ws->rows_cap, mb_moe_mul(n_pairs, 2), sizeof(float *)) ||
        mb_moe_grow((void **)&ws->scratch, &ws->scratch_cap,
                    mb_moe_mul(j.per_thread, (size_t)threads), sizeof(float)))
        return -1;
    j.xrow = ws->rows;
    j.hrow = n_pairs ? ws->rows + n_pairs : NULL; /* rows is NULL until a request has pairs */
    for (size_t q = 0; q < n_pairs; q++) {
        j.xrow[q] = ws->xp + (size_t)p->pair_token[q] * j.kp_model;
        j.hrow[q] = ws->h + q * j.kp_ff;
    }

    if (n_pairs > 0) {
        mb_kcpu_pool_run(pool, (p->n_tokens + 7) / 8, mb_moe_pack_task, &j);
        mb_kcpu_pool_run(pool, p->n_experts * j.nb1, mb_moe_gate_up_task, &j);
    }
    mb_kcpu_pool_run(pool, (p->d_model + j.rb2 - 1) / j.rb2, mb_moe_down_task, &j);
    return 0;
}
