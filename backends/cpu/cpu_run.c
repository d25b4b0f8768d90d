/* One EXPERT_REQ on the CPU backend: the routing plan (backends/route_plan.c)
 * checks every pair's slot and groups the pairs by slot; the expert FFN
 * kernel then runs with activations decoded from the payload dtype by the
 * pool threads (one row per token, straight into the kernel's packed
 * buffer) and results encoded to the payload dtype by the thread that
 * finished each column block. Scratch grows on demand
 * and is reused, so steady-state requests allocate nothing. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/cpu/cpu_internal.h"

typedef struct {
    const mb_proto_expert_req *req;
    size_t act_row_bytes;
    void *out;
    const float *out_f32;
} mb_cpu_io;

static uint64_t mb_cpu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void mb_cpu_load_act(void *ctx, size_t token, float *dst)
{
    const mb_cpu_io *io = ctx;
    mb_dtype_decode_f32(io->req->dtype, dst, (const char *)io->req->act + token * io->act_row_bytes,
                        io->req->d_model);
}

static void mb_cpu_store_out(void *ctx, size_t col0, size_t col1)
{
    const mb_cpu_io *io = ctx;
    const size_t d = io->req->d_model, esz = mb_dtype_size(io->req->dtype);
    for (size_t t = 0; t < io->req->n_tokens; t++)
        mb_dtype_encode_f32(io->req->dtype, (char *)io->out + (t * d + col0) * esz,
                            io->out_f32 + t * d + col0, col1 - col0);
}

/* Grows the kernel's expert array to hold n experts. */
static mb_status mb_cpu_reserve_experts(mb_cpu_backend *be, size_t n)
{
    if (n <= be->experts_cap) return MB_STATUS_OK;
    size_t cap = be->experts_cap ? be->experts_cap : 64;
    while (cap < n)
        cap *= 2;
    mb_kcpu_expert *ex = realloc(be->experts, cap * sizeof *ex);
    if (!ex) return MB_STATUS_NOMEM;
    be->experts = ex;
    be->experts_cap = cap;
    return MB_STATUS_OK;
}

mb_status mb_cpu_run(void *state, const mb_proto_expert_req *req, void *out, uint64_t *compute_ns)
{
    mb_cpu_backend *be = state;
    if (!be || !req) return MB_STATUS_INVALID_ARG;
    const uint64_t t0 = mb_cpu_now_ns();
    if (!mb_dtype_valid(req->dtype)) return MB_STATUS_BAD_DTYPE;
    if (req->n_tokens == 0 || req->d_model == 0) {
        if (req->n_pairs != 0)
            return req->n_tokens == 0 ? MB_STATUS_PAIR_COUNT : MB_STATUS_BAD_SHAPE;
        if (compute_ns) *compute_ns = 0;
        return MB_STATUS_OK;
    }
    if (!out || !req->act || !req->pair_counts || (req->n_pairs && !req->pairs))
        return MB_STATUS_INVALID_ARG;
    const size_t esz = mb_dtype_size(req->dtype), d = req->d_model;
    size_t out_elems;
    if (__builtin_mul_overflow((size_t)req->n_tokens, d, &out_elems) ||
        out_elems > SIZE_MAX / sizeof(float))
        return MB_STATUS_OVERFLOW;
    /* f32 results go straight to out when it is float-aligned; other
     * dtypes go through out_f32 and are encoded per column block. */
    const int direct = req->dtype == MB_DTYPE_F32 && ((uintptr_t)out % sizeof(float)) == 0;
    if (!direct && out_elems > be->out_cap) {
        float *o = malloc(out_elems * sizeof *o);
        if (!o) return MB_STATUS_NOMEM;
        free(be->out_f32);
        be->out_f32 = o;
        be->out_cap = out_elems;
    }

    /* Check the pair counts and every pair against the slot table, and
     * group the pairs by expert. */
    mb_route_plan *plan = &be->plan;
    mb_status st = mb_route_plan_build(&be->table, req, plan);
    if (st != MB_STATUS_OK) return st;
    const size_t ne = plan->n_experts;
    st = mb_cpu_reserve_experts(be, ne);
    if (st != MB_STATUS_OK) return st;
    for (size_t e = 0; e < ne; e++) {
        const mb_cpu_slot *s = &be->slots[plan->expert_slot[e]];
        be->experts[e] = (mb_kcpu_expert){s->gate, s->up, s->down, s->ld_in, s->ld_ff};
    }

    mb_cpu_io io = {req, d * esz, out, direct ? (float *)out : be->out_f32};
    /* f32 activations are read in place when float-aligned. */
    const int act_f32 = req->dtype == MB_DTYPE_F32 && ((uintptr_t)req->act % sizeof(float)) == 0;
    mb_kcpu_moe_problem p = {
        .wdtype = {(int)plan->wdtype[MB_PROTO_MAT_GATE], (int)plan->wdtype[MB_PROTO_MAT_UP],
                   (int)plan->wdtype[MB_PROTO_MAT_DOWN]}, /* all F32 without experts */
        .d_model = d,
        .d_ff = ne ? plan->d_ff : 1,
        .n_tokens = req->n_tokens,
        .n_experts = ne,
        .experts = be->experts,
        .expert_pair0 = plan->expert_pair0,
        .pair_token = plan->pair_token,
        .pair_gate = plan->pair_gate,
        .x = act_f32 ? (const float *)req->act : NULL,
        .ldx = d,
        .load_x = act_f32 ? NULL : mb_cpu_load_act,
        .load_ctx = &io,
        .out = direct ? (float *)out : be->out_f32,
        .ldo = d,
        .out_done = direct ? NULL : mb_cpu_store_out,
        .out_ctx = &io,
    };
    if (mb_kcpu_moe_run(be->pool, be->ws, &p) != 0) return MB_STATUS_NOMEM;
    if (compute_ns) *compute_ns = mb_cpu_now_ns() - t0;
    return MB_STATUS_OK;
}
