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
    /* Why copies went where they did (mb_placement_add_replicas). */
    int heat_known;         /* groups were served hottest first */
    uint64_t heat_total;    /* routed pairs over every expert, when heat_known */
    uint64_t *heat;         /* [n_links]: routed pairs of the experts placed there (0 without heat) */
    uint32_t *rank;         /* [n_links]: when the group was served (0 first; UINT32_MAX: never, local or empty) */
    uint8_t *short_why;     /* [n_links]: mb_replica_short, when a group has fewer than max_copies copies */
} mb_placement;

/* Why a group has fewer copies than --replicas asked for. */
typedef enum {
    MB_REPLICA_SHORT_NONE = 0,    /* it has them all (or was not to have any) */
    MB_REPLICA_SHORT_MEMORY = 1,  /* other workers lacked memory or slots for the whole group */
    MB_REPLICA_SHORT_WORKERS = 2, /* too few other workers */
} mb_replica_short;

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

/* --replicas: gives every worker's experts (its group) replicas - 1 more
 * homes, each a whole copy of the group on another worker (never the
 * in-process link), where that worker's memory and slots allow; a group
 * that does not fit anywhere has fewer copies (never an error). A copy is
 * the whole group because a lost group is recomputed as one lane whose
 * partial sums keep their order (broker/dispatch.h): split over two
 * backends, a token's sum would be added in another order.
 * Groups are served in rounds, every group's first copy before any
 * group's second, and within a round the hottest group first when heat
 * ([n_layers][n_experts] routed pairs, e.g. mb_hotness counts) is given,
 * else in link order; a copy goes to the first worker after the group's
 * own (wrapping) with room. So when memory runs short, the copies that are
 * missing are those of the coldest groups. Copies take slots after the
 * primary ones, so the primary placement is unchanged. Fills heat, rank
 * and short_why. NOMEM; INVALID_ARG. */
mb_status mb_placement_add_replicas(mb_placement *p, const mb_model_config *cfg, const mb_link *links,
                                    int local_link, uint32_t replicas, const uint64_t *heat);

/* One line on group g's copies and why: "w1's 15 experts (52.1% of the
 * --hotness pairs): copy on w2" or "...: no copy (memory: ...)". Cannot fail. */
void mb_placement_describe_replicas(const mb_placement *p, const mb_link *links, uint32_t g, char *buf,
                                    size_t cap);

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

/* Prints one line per link: experts per layer, slots and GiB placed; with
 * replicas, then one line per group from mb_placement_describe_replicas,
 * in the order the groups were served. */
void mb_placement_print(const mb_placement *p, const mb_link *links, FILE *f);

/* Bytes of one expert's three matrices: cfg->expert_bytes when the loader
 * set it (the largest layer's, types mixed), else three matrices in
 * cfg->dtype. */
uint64_t mb_expert_bytes(const mb_model_config *cfg);

#endif
