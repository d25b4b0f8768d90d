/* A session is everything a run needs once the model is in memory: the links
 * to backends (spawned, connected or in-process), the placement with every
 * expert loaded where it was placed, statistics, the dispatcher and the
 * forward pass. The run command, the end-to-end benchmark and the
 * integration tests all start one the same way. */
#ifndef MB_BROKER_SESSION_H
#define MB_BROKER_SESSION_H

#include "broker/dispatch.h"
#include "broker/forward.h"
#include "broker/link.h"
#include "broker/model.h"
#include "broker/options.h"
#include "broker/placement.h"
#include "broker/stats.h"
#include "kernels/cpu/pool.h"

typedef struct {
    const mb_model *model;   /* borrowed */
    mb_link *links;          /* [n_links]; never moved (in-process links point into it) */
    uint32_t n_links;
    int local_link;          /* index of the in-process link, -1 when none */
    mb_placement placement;
    mb_stats *stats;
    mb_dispatch *dispatch;
    mb_kcpu_pool *pool;      /* the coordinator's threads */
    mb_forward *fwd;
    uint32_t max_ctx;
    struct mb_failover *failover; /* what a lost worker does (broker/failover.h) */
    int device_local;        /* the GPU coordinator computes its local experts from its own buffers */
} mb_session;

/* Starts the backends opt asks for (opt->workers; none given: two local CPU
 * workers, or none when opt->local_experts covers every expert), places and
 * loads the experts, and builds the forward pass for max_ctx positions.
 * verbosity is one of MB_SESSION_*. On failure err names what
 * failed and everything started is stopped. */
/* How much mb_session_open says on stderr. */
enum {
    MB_SESSION_QUIET = 0,    /* nothing */
    MB_SESSION_INFO = 1,     /* backends started and the placement summary */
    MB_SESSION_PROGRESS = 2, /* also a live loading counter (for terminals) */
};

mb_status mb_session_open(const mb_options *opt, const mb_model *model, uint32_t max_ctx, int verbosity,
                          mb_session **out, char *err, size_t err_cap);

/* Sends every expert's weights to the link the placement names: as a file
 * region when the worker shares this host's files, as bytes otherwise.
 * Blocking; progress on stderr when progress is set. */
mb_status mb_experts_load(const mb_model *m, mb_link *links, const mb_placement *pl, int progress, char *err,
                          size_t err_cap);

/* Loads every expert the placement puts on link group into link to, each in
 * slot_map[its slot] (NULL: the same slot): a failover's in-process
 * fallback, or a rejoining worker. Blocking. */
mb_status mb_experts_load_group(const mb_model *m, const mb_placement *pl, uint32_t group, mb_link *to,
                                const uint32_t *slot_map, char *err, size_t err_cap);

/* Stops the workers and frees everything. NULL is a no-op. */
void mb_session_close(mb_session *s);

/* One forward step with timing recorded in the statistics (and the
 * step-timing file): see mb_forward_step. On failure err carries the
 * dispatcher's message when it has one. */
mb_status mb_session_step(mb_session *s, const int32_t *ids, uint32_t n, float *logits, float *last_logits,
                          char *err, size_t err_cap);

#endif
