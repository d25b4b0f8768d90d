/* One EXPERT_REQ on the CPU backend: checks every pair's slot, groups the
 * pairs by slot, and runs the expert FFN kernel with activations decoded
 * from the payload dtype by the pool threads (one row per token, straight
 * into the kernel's packed buffer) and results encoded to the payload dtype
 * by the thread that finished each column block. Scratch grows on demand
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

/* Grows the per-pair scratch to hold n pairs. */
static mb_status mb_cpu_reserve_pairs(mb_cpu_backend *be, size_t n)
{
    if (n == 0) n = 1; /* expert_pair0 always needs one entry */
    if (n <= be->pairs_cap) return MB_STATUS_OK;
    size_t cap = be->pairs_cap ? be->pairs_cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *es = realloc(be->expert_slot, cap * sizeof *es);
    if (es) be->expert_slot = es;
    size_t *p0 = realloc(be->expert_pair0, (cap + 1) * sizeof *p0);
    if (p0) be->expert_pair0 = p0;
    uint32_t *pt = realloc(be->pair_token, cap * sizeof *pt);
    if (pt) be->pair_token = pt;
    float *pg = realloc(be->pair_gate, cap * sizeof *pg);
    if (pg) be->pair_gate = pg;
    mb_kcpu_expert *ex = realloc(be->experts, cap * sizeof *ex);
    if (ex) be->experts = ex;
    if (!es || !p0 || !pt || !pg || !ex) return MB_STATUS_NOMEM;
    be->pairs_cap = cap;
    return MB_STATUS_OK;
}

/* Validates every pair's slot against the request and assigns each active
 * slot a dense expert index; on failure every mapping made is undone. */
static mb_status mb_cpu_map_slots(mb_cpu_backend *be, const mb_proto_expert_req *req,
                                  size_t *n_experts)
{
    size_t ne = 0;
    mb_status st = MB_STATUS_OK;
    const mb_cpu_slot *first = NULL;
    for (uint32_t i = 0; i < req->n_pairs; i++) {
        uint32_t slot = req->pairs[i].slot;
        if (slot >= be->max_slots) {
            st = MB_STATUS_SLOT_RANGE;
            break;
        }
        if (be->slot_to_expert[slot] >= 0) continue;
        const mb_cpu_slot *s = &be->slots[slot];
        if (!s->loaded || s->layer != req->layer) {
            st = MB_STATUS_NOT_LOADED;
            break;
        }
        if (s->d_model != req->d_model) {
            st = MB_STATUS_BAD_SHAPE;
            break;
        }
        /* load_expert keeps a layer's slots alike; check anyway, since the
         * kernel runs them as one problem. */
        if (first && (s->d_ff != first->d_ff || s->wdtype != first->wdtype)) {
            st = MB_STATUS_BAD_SHAPE;
            break;
        }
        if (!first) first = s;
        be->slot_to_expert[slot] = (int32_t)ne;
        be->expert_slot[ne++] = slot;
    }
    if (st != MB_STATUS_OK) {
        for (size_t e = 0; e < ne; e++)
            be->slot_to_expert[be->expert_slot[e]] = -1;
        return st;
    }
    *n_experts = ne;
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
    uint64_t sum = 0;
    for (uint32_t t = 0; t < req->n_tokens; t++)
        sum += req->pair_counts[t];
    if (sum != req->n_pairs) return MB_STATUS_PAIR_COUNT;

    const size_t esz = mb_dtype_size(req->dtype), d = req->d_model;
    size_t out_elems;
    if (__builtin_mul_overflow((size_t)req->n_tokens, d, &out_elems) ||
        out_elems > SIZE_MAX / sizeof(float))
        return MB_STATUS_OVERFLOW;
    mb_status st = mb_cpu_reserve_pairs(be, req->n_pairs);
    if (st != MB_STATUS_OK) return st;
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

    size_t ne = 0;
    st = mb_cpu_map_slots(be, req, &ne);
    if (st != MB_STATUS_OK) return st;

    /* Counting sort of the pairs by expert, tokens ascending within each. */
    size_t *p0 = be->expert_pair0;
    memset(p0, 0, (ne + 1) * sizeof *p0);
    for (uint32_t i = 0; i < req->n_pairs; i++)
        p0[be->slot_to_expert[req->pairs[i].slot] + 1]++;
    for (size_t e = 0; e < ne; e++)
        p0[e + 1] += p0[e];
    {
        uint32_t i = 0;
        for (uint32_t t = 0; t < req->n_tokens; t++)
            for (uint16_t c = 0; c < req->pair_counts[t]; c++, i++) {
                size_t at = p0[be->slot_to_expert[req->pairs[i].slot]]++;
                be->pair_token[at] = t;
                be->pair_gate[at] = req->pairs[i].gate;
            }
    }
    /* The fill advanced each start to the next expert's; shift back. */
    memmove(p0 + 1, p0, ne * sizeof *p0);
    p0[0] = 0;
    for (size_t e = 0; e < ne; e++) {
        const mb_cpu_slot *s = &be->slots[be->expert_slot[e]];
        be->experts[e] = (mb_kcpu_expert){s->gate, s->up, s->down, s->ld_in, s->ld_ff};
        be->slot_to_expert[be->expert_slot[e]] = -1;
    }

    mb_cpu_io io = {req, d * esz, out, direct ? (float *)out : be->out_f32};
    /* f32 activations are read in place when float-aligned. */
    const int act_f32 = req->dtype == MB_DTYPE_F32 && ((uintptr_t)req->act % sizeof(float)) == 0;
    const mb_cpu_slot *s0 = ne ? &be->slots[be->expert_slot[0]] : NULL;
    mb_kcpu_moe_problem p = {
        .wdtype = s0 ? (int)s0->wdtype : 0,
        .d_model = d,
        .d_ff = s0 ? s0->d_ff : 1,
        .n_tokens = req->n_tokens,
        .n_experts = ne,
        .experts = be->experts,
        .expert_pair0 = p0,
        .pair_token = be->pair_token,
        .pair_gate = be->pair_gate,
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
