/* The routing plan shared by every backend: the slot table, the checks a
 * load and a request must pass against it, and the stable counting sort
 * that groups a request's pairs by expert. A request costs time linear in
 * its pairs and tokens, never in the table's size: slot_to_expert is kept
 * at -1 between builds and only the entries a build touched are reset. */
#include "backends/route_plan.h"

#include <stdlib.h>
#include <string.h>

mb_status mb_route_table_init(mb_route_table *t, uint32_t max_slots)
{
    if (!t) return MB_STATUS_INVALID_ARG;
    memset(t, 0, sizeof *t);
    size_t n = max_slots ? max_slots : 1;
    t->slots = calloc(n, sizeof *t->slots);
    t->slot_to_expert = malloc(n * sizeof *t->slot_to_expert);
    if (!t->slots || !t->slot_to_expert) {
        mb_route_table_fini(t);
        return MB_STATUS_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        t->slot_to_expert[i] = -1;
    t->max_slots = max_slots;
    return MB_STATUS_OK;
}

void mb_route_table_fini(mb_route_table *t)
{
    if (!t) return;
    free(t->slots);
    free(t->slot_to_expert);
    memset(t, 0, sizeof *t);
}

/* Whether two slots' dtypes differ in any matrix. */
static int mb_route_dtypes_differ(const mb_dtype *a, const mb_dtype *b)
{
    return memcmp(a, b, MB_PROTO_MATS * sizeof *a) != 0;
}

/* Whether loaded slot o disagrees with w in shape or dtype. */
static int mb_route_slot_differs(const mb_route_slot *o, const mb_expert_weights *w)
{
    return o->d_model != w->d_model || o->d_ff != w->d_ff || mb_route_dtypes_differ(o->wdtype, w->wdtype);
}

mb_status mb_route_table_check_load(const mb_route_table *t, const mb_expert_weights *w)
{
    if (!t || !w) return MB_STATUS_INVALID_ARG;
    if (w->slot >= t->max_slots) return MB_STATUS_SLOT_RANGE;
    if (w->d_model == 0 || w->d_ff == 0) return MB_STATUS_BAD_SHAPE;
    for (int i = 0; i < MB_PROTO_MATS; i++)
        if (!mb_dtype_weight_valid(w->wdtype[i])) return MB_STATUS_BAD_DTYPE;
    /* All loaded slots of a layer agree, so the first other one found
     * decides. Placement gives a layer neighbouring slots: look down from
     * w's slot first, then up, so the search usually stops at once. */
    for (uint32_t i = w->slot; i-- > 0;) {
        const mb_route_slot *o = &t->slots[i];
        if (o->loaded && o->layer == w->layer) return mb_route_slot_differs(o, w) ? MB_STATUS_BAD_SHAPE : MB_STATUS_OK;
    }
    for (uint32_t i = w->slot + 1; i < t->max_slots; i++) {
        const mb_route_slot *o = &t->slots[i];
        if (o->loaded && o->layer == w->layer) return mb_route_slot_differs(o, w) ? MB_STATUS_BAD_SHAPE : MB_STATUS_OK;
    }
    return MB_STATUS_OK;
}

void mb_route_table_set(mb_route_table *t, const mb_expert_weights *w)
{
    if (!t || !w || w->slot >= t->max_slots) return;
    mb_route_slot *s = &t->slots[w->slot];
    *s = (mb_route_slot){
        .loaded = 1,
        .layer = w->layer,
        .expert_id = w->expert_id,
        .d_model = w->d_model,
        .d_ff = w->d_ff,
    };
    memcpy(s->wdtype, w->wdtype, sizeof s->wdtype);
}

void mb_route_table_clear(mb_route_table *t, uint32_t slot)
{
    if (!t || slot >= t->max_slots) return;
    memset(&t->slots[slot], 0, sizeof t->slots[slot]);
}

/* The request-level checks: counts consistent with n_pairs and the shape.
 * OK with *empty set when there is no work (no tokens, or d_model 0 and no
 * pairs: nothing to compute). */
static mb_status mb_route_check_counts(const mb_proto_expert_req *req, int *empty)
{
    *empty = 0;
    if (req->n_tokens == 0 || req->d_model == 0) {
        if (req->n_pairs != 0) return req->n_tokens == 0 ? MB_STATUS_PAIR_COUNT : MB_STATUS_BAD_SHAPE;
        *empty = 1;
        return MB_STATUS_OK;
    }
    if (!req->pair_counts || (req->n_pairs && !req->pairs)) return MB_STATUS_INVALID_ARG;
    uint64_t sum = 0;
    for (uint32_t tok = 0; tok < req->n_tokens; tok++)
        sum += req->pair_counts[tok];
    return sum == req->n_pairs ? MB_STATUS_OK : MB_STATUS_PAIR_COUNT;
}

/* Checks slot s against req and the layer's first slot seen (NULL: none). */
static mb_status mb_route_check_slot(const mb_route_table *t, uint32_t slot, const mb_proto_expert_req *req,
                                     const mb_route_slot *first)
{
    if (slot >= t->max_slots) return MB_STATUS_SLOT_RANGE;
    const mb_route_slot *s = &t->slots[slot];
    if (!s->loaded || s->layer != req->layer) return MB_STATUS_NOT_LOADED;
    if (s->d_model != req->d_model) return MB_STATUS_BAD_SHAPE;
    /* check_load keeps a layer's slots alike; check anyway, since backends
     * run a layer's experts as one problem. */
    if (first && (s->d_ff != first->d_ff || mb_route_dtypes_differ(s->wdtype, first->wdtype)))
        return MB_STATUS_BAD_SHAPE;
    return MB_STATUS_OK;
}

/* The layer's dtypes from its first slot seen, all F32 without one. */
static void mb_route_dtypes_of(const mb_route_slot *first, mb_dtype *wdtype)
{
    for (int i = 0; i < MB_PROTO_MATS; i++)
        wdtype[i] = first ? first->wdtype[i] : MB_DTYPE_F32;
}

mb_status mb_route_validate(const mb_route_table *t, const mb_proto_expert_req *req, uint32_t *d_ff,
                            mb_dtype wdtype[MB_PROTO_MATS])
{
    if (!t || !req) return MB_STATUS_INVALID_ARG;
    int empty = 0;
    mb_status st = mb_route_check_counts(req, &empty);
    if (st != MB_STATUS_OK) return st;
    const mb_route_slot *first = NULL;
    for (uint32_t i = 0; i < req->n_pairs && !empty; i++) {
        st = mb_route_check_slot(t, req->pairs[i].slot, req, first);
        if (st != MB_STATUS_OK) return st;
        if (!first) first = &t->slots[req->pairs[i].slot];
    }
    if (d_ff) *d_ff = first ? first->d_ff : 0;
    if (wdtype) mb_route_dtypes_of(first, wdtype);
    return MB_STATUS_OK;
}

void mb_route_plan_init(mb_route_plan *p)
{
    if (p) memset(p, 0, sizeof *p);
}

void mb_route_plan_fini(mb_route_plan *p)
{
    if (!p) return;
    free(p->expert_slot);
    free(p->expert_pair0);
    free(p->pair_token);
    free(p->pair_gate);
    memset(p, 0, sizeof *p);
}

/* Grows the plan's arrays to hold n pairs (and n experts). */
static mb_status mb_route_plan_reserve(mb_route_plan *p, size_t n)
{
    if (n == 0) n = 1; /* expert_pair0 always needs one entry */
    if (n <= p->cap) return MB_STATUS_OK;
    size_t cap = p->cap ? p->cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *es = realloc(p->expert_slot, cap * sizeof *es);
    if (es) p->expert_slot = es;
    size_t *p0 = realloc(p->expert_pair0, (cap + 1) * sizeof *p0);
    if (p0) p->expert_pair0 = p0;
    uint32_t *pt = realloc(p->pair_token, cap * sizeof *pt);
    if (pt) p->pair_token = pt;
    float *pg = realloc(p->pair_gate, cap * sizeof *pg);
    if (pg) p->pair_gate = pg;
    if (!es || !p0 || !pt || !pg) return MB_STATUS_NOMEM;
    p->cap = cap;
    return MB_STATUS_OK;
}

mb_status mb_route_plan_build(mb_route_table *t, const mb_proto_expert_req *req, mb_route_plan *p)
{
    if (!t || !req || !p) return MB_STATUS_INVALID_ARG;
    int empty = 0;
    mb_status st = mb_route_check_counts(req, &empty);
    if (st != MB_STATUS_OK) return st;
    const uint32_t n_pairs = empty ? 0 : req->n_pairs;
    st = mb_route_plan_reserve(p, n_pairs);
    if (st != MB_STATUS_OK) return st;

    /* Give each active slot a dense expert index in first-seen order,
     * checking it on first sight; on failure undo every mapping made. */
    size_t ne = 0;
    const mb_route_slot *first = NULL;
    for (uint32_t i = 0; i < n_pairs; i++) {
        uint32_t slot = req->pairs[i].slot;
        if (slot < t->max_slots && t->slot_to_expert[slot] >= 0) continue;
        st = mb_route_check_slot(t, slot, req, first);
        if (st != MB_STATUS_OK) {
            for (size_t e = 0; e < ne; e++)
                t->slot_to_expert[p->expert_slot[e]] = -1;
            return st;
        }
        if (!first) first = &t->slots[slot];
        t->slot_to_expert[slot] = (int32_t)ne;
        p->expert_slot[ne++] = slot;
    }

    /* Counting sort of the pairs by expert, tokens ascending within each. */
    size_t *p0 = p->expert_pair0;
    memset(p0, 0, (ne + 1) * sizeof *p0);
    for (uint32_t i = 0; i < n_pairs; i++)
        p0[t->slot_to_expert[req->pairs[i].slot] + 1]++;
    for (size_t e = 0; e < ne; e++)
        p0[e + 1] += p0[e];
    if (n_pairs) {
        uint32_t i = 0;
        for (uint32_t tok = 0; tok < req->n_tokens; tok++)
            for (uint16_t c = 0; c < req->pair_counts[tok]; c++, i++) {
                size_t at = p0[t->slot_to_expert[req->pairs[i].slot]]++;
                p->pair_token[at] = tok;
                p->pair_gate[at] = req->pairs[i].gate;
            }
    }
    /* The fill advanced each start to the next expert's; shift back. */
    memmove(p0 + 1, p0, ne * sizeof *p0);
    p0[0] = 0;
    for (size_t e = 0; e < ne; e++)
        t->slot_to_expert[p->expert_slot[e]] = -1;
    p->n_experts = ne;
    p->d_ff = first ? first->d_ff : 0;
    mb_route_dtypes_of(first, p->wdtype);
    return MB_STATUS_OK;
}
