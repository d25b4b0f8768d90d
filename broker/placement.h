/* Placement: which link computes each (layer, expert), and in which of that
 * backend's slots the weights live. Every expert of every layer is placed
 * exactly once. */
#ifndef MB_BROKER_PLACEMENT_H
#define MB_BROKER_PLACEMENT_H

#include <stdint.h>
#include <stdio.h>

#include "broker/link.h"
#include "broker/model.h"

typedef struct {
    uint16_t link; /* index into the links array */
    uint32_t slot; /* backend-local slot */
} mb_place;

/* A copy of every expert one link (the group) holds, on another link, so
 * that the group's work can move there without loading anything. */
typedef struct {
    uint16_t link;  /* the link holding the copies */
    uint32_t *slot; /* [primary slots of the group]: the copy's slot on link */
} mb_replica;

typedef struct {
    uint32_t n_layers;
    uint32_t n_experts;
    uint32_t n_links;
    mb_place *table;        /* [n_layers][n_experts] */
    uint32_t *slots_used;   /* [n_links]: slots assigned on each link, copies included */
    uint32_t *primary_slots; /* [n_links]: slots of the experts placed there (0..n-1) */
    uint64_t *bytes_placed; /* [n_links]: expert weight bytes on each link */
    uint32_t max_copies;    /* replicas per group the arrays have room for */
    uint32_t *n_copies;     /* [n_links]: copies of the group placed */
    mb_replica *copies;     /* [n_links][max_copies] */
} mb_placement;

/* Plans a placement over links. local_link (-1 if none) is the in-process
 * link; it takes local_experts experts per layer (0 also when local_budget
 * bytes limits it) before the workers share the rest in proportion to
 * their weights. Each link's share is capped by its reported free memory
 * and its slot count; CONFIG (with a message) when the experts do not fit.
 * Experts of a layer are interleaved over links so that routing load
 * spreads. Allocates out's tables. */
mb_status mb_placement_plan(const mb_model_config *cfg, const mb_link *links, uint32_t n_links, int local_link,
                            uint32_t local_experts, uint64_t local_budget, mb_placement *out, char *err,
                            size_t err_cap);

void mb_placement_free(mb_placement *p);

/* --replicas: gives every worker's experts replicas - 1 more homes, each on
 * the next worker in order (wrapping, never the in-process link), where that
 * worker's memory and slots allow; a group that does not fit somewhere has
 * fewer copies (never an error). Copies take slots after the primary ones,
 * so the primary placement is unchanged. NOMEM; INVALID_ARG. */
mb_status mb_placement_add_replicas(mb_placement *p, const mb_model_config *cfg, const mb_link *links,
                                    int local_link, uint32_t replicas);

/* Checks, before anything is placed or loaded, that every link's backend
 * (its HELLO_REPLY dtype masks) holds expert weights of every dtype in
 * weight_mask (MB_DTYPE_MASK bits: mb_model_expert_dtypes) and takes
 * payloads of payload. BAD_DTYPE with a message naming the worker and each
 * dtype it lacks otherwise. A zero mask (a checkpoint that names no weight
 * dtype) checks the payload only. */
mb_status mb_placement_check_caps(const mb_link *links, uint32_t n_links, uint32_t weight_mask, mb_dtype payload,
                                  char *err, size_t err_cap);

static inline const mb_place *mb_placement_at(const mb_placement *p, uint32_t layer, uint32_t expert)
{
    return &p->table[(size_t)layer * p->n_experts + expert];
}

/* Prints one line per link: experts per layer, slots and GiB placed. */
void mb_placement_print(const mb_placement *p, const mb_link *links, FILE *f);

/* Bytes of one expert's three matrices: cfg->expert_bytes when the loader
 * set it (the largest layer's, types mixed), else three matrices in
 * cfg->dtype. */
uint64_t mb_expert_bytes(const mb_model_config *cfg);

#endif
