/* Failover: what the coordinator does when a worker is lost mid-run. The
 * dispatcher notices (a death, a hang-up, a stopped heartbeat) and calls
 * mb_failover_on_loss; that drops the worker and sends each of its lanes to
 * a replica that holds the same experts (--replicas) or to an in-process CPU
 * backend loaded from the mapped checkpoint, so the interrupted layer is
 * recomputed and the run goes on with the same tokens. Between steps,
 * mb_failover_between_steps reconnects lost tcp/ipc workers, starts lost
 * spawned workers again, and gives them their experts back. Every loss and rejoin is told on stderr and recorded
 * in the statistics. */
#ifndef MB_BROKER_FAILOVER_H
#define MB_BROKER_FAILOVER_H

#include "broker/dispatch.h"
#include "broker/session.h"

typedef struct mb_failover mb_failover;

/* Creates the failover state for s (borrowed; s->links, placement and
 * model must be set; dispatch and stats may come later). policy is
 * mb_on_worker_loss; verbose: say on stderr what happens. */
mb_status mb_failover_create(mb_session *s, int policy, int verbose, mb_failover **out);

/* Frees it, closing an in-process fallback it opened. NULL is a no-op. */
void mb_failover_destroy(mb_failover *f);

/* mb_dispatch_loss_fn; ctx is the mb_failover. */
mb_status mb_failover_on_loss(void *ctx, mb_dispatch *d, mb_link *link, const mb_moe_work *w, const char *what);

/* Between steps (nothing in flight): tries to reconnect lost tcp:// and
 * ipc:// workers and to start lost spawned workers again (with a backoff,
 * each try bounded by a timeout; a spawned worker's first try comes at the
 * first step after its loss) and, when one answers, reloads its experts and
 * routes its lane back to it. A failed try is not an error. */
void mb_failover_between_steps(mb_failover *f);

/* One loss as the coordinator saw it (monotonic mb_now_ns times). */
typedef struct {
    uint32_t link;         /* the lost link's index */
    uint64_t detected_ns;  /* when the dispatcher reported it */
    uint64_t rerouted_ns;  /* when its lanes had a new home */
} mb_failover_loss;

/* The i-th loss (0-based, in order); INVALID_ARG past the last. Only the
 * first 1024 are kept. */
mb_status mb_failover_get_loss(const mb_failover *f, uint32_t i, mb_failover_loss *out);

/* Workers lost and workers rejoined so far. */
uint32_t mb_failover_lost_count(const mb_failover *f);
uint32_t mb_failover_rejoined_count(const mb_failover *f);

#endif
