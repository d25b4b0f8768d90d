/* The dispatcher: turns one layer's routing into expert requests for every
 * link holding a routed expert, keeps them all in flight at once, and adds
 * the gate-weighted sums that come back. It is the mb_moe_fn the forward
 * pass calls per layer and chunk.
 *
 * Per link, each token's activations travel once however many of its experts
 * that link holds, and tokens with none there are not sent. Links' partial
 * sums are added in link order, so results do not depend on reply timing.
 *
 * Modes:
 *  - stream:  slices of at most stream_slice tokens, pipelined (window of
 *             requests in flight per link).
 *  - batched: chunks of at most batch_capacity tokens (one call per link per
 *             layer when the chunk fits).
 *  - auto:    per link and per phase, the slice size c that minimises the
 *             modelled time  T(c) = ceil(N/c) * alpha + N * beta + c * p,
 *             where alpha and beta are fitted (least squares, decaying) to
 *             the measured service time of that link's calls (alpha: fixed
 *             cost of a call, i.e. transport round trip plus the weights a
 *             call streams; beta: cost per token) and p is the
 *             coordinator's measured pack+unpack cost per token (what a
 *             large slice leaves unoverlapped). So c* = sqrt(N alpha / p),
 *             clamped to [stream_slice, batch_capacity], and taken only when it
 *             beats one call for the whole chunk by 20%. Until a link has
 *             samples of two sizes in a phase, auto sends the first slice of
 *             a layer at stream size and the rest batched, to measure both. */
#ifndef MB_BROKER_DISPATCH_H
#define MB_BROKER_DISPATCH_H

#include <signal.h>
#include <stdint.h>

#include "broker/forward.h"
#include "broker/link.h"
#include "broker/options.h"
#include "broker/placement.h"
#include "broker/stats.h"

typedef struct mb_dispatch mb_dispatch;

/* Called when link stops answering in the middle of a layer (it died, hung
 * up, its heartbeat stopped, or a reply missed cfg.timeout_ns), once every
 * other link's requests in flight are answered, so nothing else is moving.
 * The handler drops the link and routes every lane that went through it
 * elsewhere with mb_dispatch_route (a lane it leaves there fails the layer);
 * then the dispatcher sends those lanes' share of the layer again. what is
 * the dispatcher's message naming the link. OK to go on; any other status
 * fails the layer with that status (the message in mb_dispatch_error, which
 * the handler may set with mb_dispatch_set_error). */
typedef mb_status (*mb_dispatch_loss_fn)(void *ctx, mb_dispatch *d, mb_link *link, const mb_moe_work *w,
                                        const char *what);

typedef struct {
    mb_link *links;               /* [n_links], borrowed */
    uint32_t n_links;
    const mb_placement *placement; /* borrowed */
    mb_ipc_mode mode;
    uint32_t batch_capacity;      /* 1..4096 */
    uint32_t stream_slice;        /* 1..4096 */
    mb_dtype payload;             /* activations and sums on the wire */
    uint32_t d_model;
    uint32_t top_k;
    uint32_t max_tokens;          /* largest n_tokens a call may bring */
    uint32_t window;              /* requests in flight per link, 0: 2 */
    int64_t timeout_ns;           /* per request; 0: none, liveness is the transport's heartbeat */
    mb_stats *stats;              /* may be NULL */
    /* How long the dispatcher polls every busy link without blocking,
     * after the last reply, before it blocks on the oldest request (0: at
     * once). A reply is then seen within a poll's time whichever link
     * sends it, with no sleep and wake-up; for a coordinator whose thread
     * has nothing else to do while the experts run (on a GPU). */
    int64_t poll_spin_ns;
    mb_dispatch_loss_fn on_loss;  /* NULL: a lost link fails the layer */
    void *loss_ctx;
} mb_dispatch_config;

/* Allocates every buffer the dispatcher needs for max_tokens, so calls
 * allocate nothing. cfg's pointers are borrowed. */
mb_status mb_dispatch_create(const mb_dispatch_config *cfg, mb_dispatch **out);
void mb_dispatch_destroy(mb_dispatch *d);

/* mb_moe_fn: computes w->out for one layer's routed tokens. On failure the
 * message (naming the worker) is in mb_dispatch_error. ctx is the dispatcher. */
mb_status mb_dispatch_moe(void *ctx, const mb_moe_work *w);

/* Lanes: lane i carries the experts the placement puts on link i, and its
 * partial sums are added in lane order whatever computes them. By default
 * lane i goes to links[i]; this sends it to via instead (a replica, the
 * in-process fallback), with the lane's slots translated through
 * slot_map[slot of links[i]] (NULL: the same slots). Results stay
 * bit-identical when via computes like links[i] would (f32 on CPU backends).
 * Between calls or from the loss handler. Borrowed pointers. */
void mb_dispatch_route(mb_dispatch *d, uint32_t lane, mb_link *via, const uint32_t *slot_map);

/* The link lane goes to now. */
mb_link *mb_dispatch_via(const mb_dispatch *d, uint32_t lane);

/* While *flag is non-zero (a signal handler sets it, possibly on another
 * thread, with an atomic store: it is read with an atomic load), calls fail
 * with CLOSED ("interrupted") within about 100 ms instead of waiting for
 * their replies. NULL: never. */
void mb_dispatch_set_cancel(mb_dispatch *d, const volatile sig_atomic_t *flag);

/* Sets the message mb_dispatch_error returns (for loss handlers). */
void mb_dispatch_set_error(mb_dispatch *d, const char *msg);

/* The last failure's message, "" if none. */
const char *mb_dispatch_error(const mb_dispatch *d);

/* For per-step timing, since the last take (ns; any pointer may be NULL):
 * the calls' whole duration, the part spent blocked waiting for replies,
 * and the slowest backend's expert compute of each successful call (as its
 * worker reports it), summed over calls. dispatch - critical is the IPC on
 * the step's critical path. Resets all three. */
void mb_dispatch_take_times(mb_dispatch *d, uint64_t *dispatch_ns, uint64_t *wait_ns,
                            uint64_t *critical_ns);

/* Slice size auto would pick now for link and phase for n tokens (tests and
 * the statistics report). */
uint32_t mb_dispatch_auto_slice(const mb_dispatch *d, uint32_t link, int decode, uint32_t n_tokens);

#endif
