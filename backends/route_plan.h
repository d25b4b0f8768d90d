/* The routing plan every backend needs: a table of what each expert slot
 * holds, the checks a request's pairs must pass against it (slot loaded,
 * same layer, same d_model, one shape and weight dtype per layer), and the
 * grouping of a request's pairs by expert (a stable counting sort, tokens
 * ascending within each expert). CPU, CUDA and Vulkan backends share it;
 * a GPU backend validates on the host and groups on the device. Not thread
 * safe: one instance per backend, used by its one caller thread. */
#ifndef MB_BACKENDS_ROUTE_PLAN_H
#define MB_BACKENDS_ROUTE_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"

/* What one slot holds. */
typedef struct {
    uint8_t loaded;
    uint32_t layer;
    uint32_t expert_id;
    uint32_t d_model;
    uint32_t d_ff;
    mb_dtype wdtype[MB_PROTO_MATS]; /* gate, up, down */
} mb_route_slot;

typedef struct {
    uint32_t max_slots;
    mb_route_slot *slots;     /* [max_slots] */
    int32_t *slot_to_expert;  /* [max_slots], -1 outside a plan build */
} mb_route_table;

/* Allocates a table of max_slots empty slots (NOMEM). */
mb_status mb_route_table_init(mb_route_table *t, uint32_t max_slots);
void mb_route_table_fini(mb_route_table *t);

/* Checks that w may go into its slot: slot in range, shapes nonzero, and
 * shapes and dtype equal to any other loaded slot of the same layer
 * (BAD_SHAPE otherwise). Does not modify the table. */
mb_status mb_route_table_check_load(const mb_route_table *t, const mb_expert_weights *w);

/* Records that w's slot now holds w (after the backend stored it). */
void mb_route_table_set(mb_route_table *t, const mb_expert_weights *w);

/* Marks slot empty. */
void mb_route_table_clear(mb_route_table *t, uint32_t slot);

/* Validates req against the table: n_tokens/d_model/n_pairs consistent
 * (pair counts summing to n_pairs: PAIR_COUNT), every pair's slot in range
 * (SLOT_RANGE), loaded with req->layer (NOT_LOADED), d_model equal
 * (BAD_SHAPE). On OK, *d_ff and wdtype[MB_PROTO_MATS] (when not NULL)
 * receive the layer's shape and dtypes (0 and F32 when the request has no
 * pairs). */
mb_status mb_route_validate(const mb_route_table *t, const mb_proto_expert_req *req, uint32_t *d_ff,
                            mb_dtype wdtype[MB_PROTO_MATS]);

/* A request's pairs grouped by expert: expert e (slot expert_slot[e]) owns
 * pairs [expert_pair0[e], expert_pair0[e + 1]) of pair_token / pair_gate,
 * tokens ascending. Scratch grows on demand and is reused. */
typedef struct {
    size_t n_experts;
    uint32_t d_ff;
    mb_dtype wdtype[MB_PROTO_MATS]; /* gate, up, down */
    uint32_t *expert_slot;  /* [cap] */
    size_t *expert_pair0;   /* [cap + 1] */
    uint32_t *pair_token;   /* [cap] */
    float *pair_gate;       /* [cap] */
    size_t cap;
} mb_route_plan;

void mb_route_plan_init(mb_route_plan *p);
void mb_route_plan_fini(mb_route_plan *p);

/* Validates req (as mb_route_validate) and groups its pairs into p.
 * Errors leave the table unchanged. Allocates only when a request has more
 * pairs than any before (NOMEM). */
mb_status mb_route_plan_build(mb_route_table *t, const mb_proto_expert_req *req, mb_route_plan *p);

#endif
