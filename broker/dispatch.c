/* The dispatcher's hot path: bucket routing by link, pack requests in place
 * in each transport, keep a window of requests in flight per link, unpack
 * replies into per-link partial sums, and combine them in link order. A
 * worker may answer a link's requests in any order (an asynchronous backend
 * finishes them as it can): replies are matched by tag, and since each
 * request covers its own tokens, each reply lands in its own rows of the
 * link's partial sums, so the combined result is the same whatever the
 * order. All buffers come from mb_dispatch_create; a call allocates
 * nothing.
 *
 * Failover: per-link state is a lane (the experts placed on that link, and
 * its partial sums), which normally goes to its own link but may be routed
 * to another (mb_dispatch_route). When a link is lost mid-layer, the other
 * lanes' requests in flight are drained, the loss handler reroutes the lost
 * link's lanes, and those lanes' share of the layer is sent again from the
 * start; since partial sums are still combined in lane order, the layer's
 * result does not change. */
#include "broker/dispatch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/message.h"
#include "shm/shm.h"

#define MB_DISPATCH_MAX_WINDOW 8u
#define MB_DISPATCH_MAX_LINKS 64u

/* One request in flight on a link. */
typedef struct {
    int used;
    uint64_t tag;
    uint32_t first; /* index into the link's token list */
    uint32_t n;
    uint32_t n_pairs;
    uint64_t bytes_sent;
    uint64_t pack_ns, send_ns;
    uint64_t committed_ns;
} mb_inflight;

/* Measured costs of one link in one phase, for auto. */
typedef struct {
    double sw, sn, st, snn, snt; /* decaying least-squares sums of (n, service ns) */
    double min_n, max_n;
    double p_ns_per_token;       /* coordinator pack+unpack per token, decaying mean */
    uint32_t samples;
} mb_cost_model;

typedef struct {
    /* Routing bucketed for this link, tokens in increasing order. */
    uint32_t *tok;       /* [max_tokens] token index in the chunk */
    uint16_t *cnt;       /* [max_tokens] pairs of each listed token */
    uint32_t *pair_off;  /* [max_tokens+1] prefix sums of cnt */
    mb_proto_pair *pairs; /* [max_tokens*top_k] */
    uint32_t n_tok;
    float *partial;      /* [max_tokens][d_model] sums for listed tokens */
    /* Pipeline state: requests in flight, in no particular order. */
    mb_inflight win[MB_DISPATCH_MAX_WINDOW];
    uint32_t n_inflight;
    uint32_t next;       /* next listed token to send */
    uint32_t slice;      /* tokens per request this call */
    uint64_t last_reply_ns;
    uint64_t compute_ns;   /* the link's expert compute in this call, as its worker reports it */
    mb_cost_model cost[2]; /* [decode] */
    /* Where the lane goes. */
    mb_link *via;
    const uint32_t *slot_map; /* NULL: the lane's own slots */
} mb_dlink;

struct mb_dispatch {
    mb_dispatch_config cfg;
    mb_dlink *dl;
    uint64_t *mask;      /* [max_tokens] links each token visits */
    uint32_t *order;     /* [n_links] lanes to remote links first, in-process last */
    char err[256];
    mb_link *lost;       /* set with a transport failure: the link that failed */
    const volatile sig_atomic_t *cancel;
    uint64_t acc_dispatch_ns, acc_wait_ns, acc_critical_ns;
};

static void *mb_dispatch_alloc(size_t n, size_t size)
{
    if (n == 0) n = 1;
    if (size && n > SIZE_MAX / size) return NULL;
    size_t bytes = (n * size + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes);
}

void mb_dispatch_destroy(mb_dispatch *d)
{
    if (!d) return;
    if (d->dl) {
        for (uint32_t i = 0; i < d->cfg.n_links; i++) {
            free(d->dl[i].tok);
            free(d->dl[i].cnt);
            free(d->dl[i].pair_off);
            free(d->dl[i].pairs);
            free(d->dl[i].partial);
        }
    }
    free(d->dl);
    free(d->mask);
    free(d->order);
    free(d);
}

mb_status mb_dispatch_create(const mb_dispatch_config *cfg, mb_dispatch **out)
{
    if (!cfg || !out || !cfg->links || !cfg->placement || cfg->n_links == 0) return MB_STATUS_INVALID_ARG;
    if (cfg->n_links > MB_DISPATCH_MAX_LINKS) return MB_STATUS_CONFIG;
    if (cfg->d_model == 0 || cfg->top_k == 0 || cfg->max_tokens == 0 || cfg->top_k > 65535)
        return MB_STATUS_INVALID_ARG;
    if (!mb_dtype_valid(cfg->payload)) return MB_STATUS_BAD_DTYPE;
    mb_dispatch *d = calloc(1, sizeof *d);
    if (!d) return MB_STATUS_NOMEM;
    d->cfg = *cfg;
    if (d->cfg.window == 0) d->cfg.window = 2;
    if (d->cfg.window > MB_DISPATCH_MAX_WINDOW) d->cfg.window = MB_DISPATCH_MAX_WINDOW;
    if (d->cfg.timeout_ns < 0) d->cfg.timeout_ns = 0;
    if (d->cfg.batch_capacity == 0) d->cfg.batch_capacity = 1024;
    if (d->cfg.stream_slice == 0) d->cfg.stream_slice = 4;
    const size_t T = cfg->max_tokens;
    d->dl = calloc(cfg->n_links, sizeof *d->dl);
    d->mask = mb_dispatch_alloc(T, sizeof *d->mask);
    d->order = calloc(cfg->n_links, sizeof *d->order);
    if (!d->dl || !d->mask || !d->order) goto nomem;
    for (uint32_t i = 0; i < cfg->n_links; i++) {
        mb_dlink *l = &d->dl[i];
        l->tok = mb_dispatch_alloc(T, sizeof *l->tok);
        l->cnt = mb_dispatch_alloc(T, sizeof *l->cnt);
        l->pair_off = mb_dispatch_alloc(T + 1, sizeof *l->pair_off);
        l->pairs = mb_dispatch_alloc(T * cfg->top_k, sizeof *l->pairs);
        l->partial = (T > SIZE_MAX / cfg->d_model) ? NULL : mb_dispatch_alloc(T * cfg->d_model, sizeof(float));
        if (!l->tok || !l->cnt || !l->pair_off || !l->pairs || !l->partial) goto nomem;
    }
    for (uint32_t i = 0; i < cfg->n_links; i++)
        d->dl[i].via = &cfg->links[i];
    *out = d;
    return MB_STATUS_OK;
nomem:
    mb_dispatch_destroy(d);
    return MB_STATUS_NOMEM;
}

void mb_dispatch_route(mb_dispatch *d, uint32_t lane, mb_link *via, const uint32_t *slot_map)
{
    if (!d || lane >= d->cfg.n_links || !via) return;
    d->dl[lane].via = via;
    d->dl[lane].slot_map = via == &d->cfg.links[lane] ? NULL : slot_map;
}

mb_link *mb_dispatch_via(const mb_dispatch *d, uint32_t lane)
{
    return d && lane < d->cfg.n_links ? d->dl[lane].via : NULL;
}

void mb_dispatch_set_cancel(mb_dispatch *d, const volatile sig_atomic_t *flag)
{
    if (d) d->cancel = flag;
}

void mb_dispatch_set_error(mb_dispatch *d, const char *msg)
{
    if (d) snprintf(d->err, sizeof d->err, "%s", msg ? msg : "");
}

/* Lanes to remote links first, to in-process ones last: an in-process
 * backend computes while it is sent to, so the others should be busy by
 * then. */
static void mb_dispatch_order(mb_dispatch *d)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < d->cfg.n_links; i++)
        if (d->dl[i].via->kind != MB_LINK_INPROC) d->order[n++] = i;
    for (uint32_t i = 0; i < d->cfg.n_links; i++)
        if (d->dl[i].via->kind == MB_LINK_INPROC) d->order[n++] = i;
}

const char *mb_dispatch_error(const mb_dispatch *d)
{
    return d ? d->err : "";
}

void mb_dispatch_take_times(mb_dispatch *d, uint64_t *dispatch_ns, uint64_t *wait_ns,
                            uint64_t *critical_ns)
{
    if (dispatch_ns) *dispatch_ns = d->acc_dispatch_ns;
    if (wait_ns) *wait_ns = d->acc_wait_ns;
    if (critical_ns) *critical_ns = d->acc_critical_ns;
    d->acc_dispatch_ns = d->acc_wait_ns = d->acc_critical_ns = 0;
}

/* ---- auto: the cost model ---- */

static void mb_cost_add(mb_cost_model *c, double n, double service_ns, double pack_unpack_ns)
{
    const double decay = 0.95;
    c->sw = c->sw * decay + 1;
    c->sn = c->sn * decay + n;
    c->st = c->st * decay + service_ns;
    c->snn = c->snn * decay + n * n;
    c->snt = c->snt * decay + n * service_ns;
    if (c->samples == 0 || n < c->min_n) c->min_n = n;
    if (c->samples == 0 || n > c->max_n) c->max_n = n;
    double p = pack_unpack_ns / (n > 0 ? n : 1);
    c->p_ns_per_token = c->samples == 0 ? p : 0.8 * c->p_ns_per_token + 0.2 * p;
    c->samples++;
}

/* Fits service(n) = alpha + beta n; returns 0 until two sizes were seen. */
static int mb_cost_fit(const mb_cost_model *c, double *alpha, double *beta)
{
    if (c->samples < 2 || c->max_n <= c->min_n) return 0;
    double det = c->sw * c->snn - c->sn * c->sn;
    if (det <= 0) return 0;
    double b = (c->sw * c->snt - c->sn * c->st) / det;
    double a = (c->st - b * c->sn) / c->sw;
    if (b < 0) b = 0;
    if (a < 0) a = 0;
    *alpha = a;
    *beta = b;
    return 1;
}

static uint32_t mb_clamp_u32(double v, uint32_t lo, uint32_t hi)
{
    if (!(v >= lo)) return lo;
    if (v >= hi) return hi;
    return (uint32_t)v;
}

uint32_t mb_dispatch_auto_slice(const mb_dispatch *d, uint32_t link, int decode, uint32_t n_tokens)
{
    const mb_dispatch_config *c = &d->cfg;
    uint32_t hi = c->batch_capacity < n_tokens ? c->batch_capacity : n_tokens;
    uint32_t lo = c->stream_slice < hi ? c->stream_slice : hi;
    if (hi == 0) return 1;
    double alpha, beta;
    const mb_cost_model *m = &d->dl[link].cost[decode ? 1 : 0];
    if (!mb_cost_fit(m, &alpha, &beta)) return 0; /* explore */
    double p = m->p_ns_per_token > 1 ? m->p_ns_per_token : 1;
    uint32_t slice = mb_clamp_u32(sqrt((double)n_tokens * alpha / p), lo, hi);
    /* Slice only for a clear predicted gain: a fit from few, noisy samples
     * tends to underestimate alpha, and every extra call on a CPU backend
     * streams its experts' weights again. */
    double t_full = alpha + (double)n_tokens * (beta + p);
    double t_c = ceil((double)n_tokens / slice) * alpha + (double)n_tokens * beta + (double)slice * p;
    return t_c < 0.8 * t_full ? slice : hi;
}

/* ---- the call ---- */

static void mb_dispatch_bucket(mb_dispatch *d, const mb_moe_work *w)
{
    const mb_dispatch_config *c = &d->cfg;
    for (uint32_t i = 0; i < c->n_links; i++) {
        d->dl[i].n_tok = 0;
        d->dl[i].pair_off[0] = 0;
    }
    const mb_placement *pl = c->placement;
    const mb_place *row = &pl->table[(size_t)w->layer * pl->n_experts];
    for (uint32_t t = 0; t < w->n_tokens; t++) {
        uint64_t mask = 0;
        for (uint32_t k = 0; k < w->top_k; k++) {
            int32_t e = w->expert_ids[(size_t)t * w->top_k + k];
            const mb_place *p = &row[e];
            mb_dlink *l = &d->dl[p->link];
            if (!(mask & (1ull << p->link))) {
                mask |= 1ull << p->link;
                l->tok[l->n_tok] = t;
                l->cnt[l->n_tok] = 0;
                l->pair_off[l->n_tok + 1] = l->pair_off[l->n_tok];
                l->n_tok++;
            }
            uint32_t at = l->pair_off[l->n_tok]++;
            l->cnt[l->n_tok - 1]++;
            l->pairs[at].slot = p->slot;
            l->pairs[at].gate = w->gate[(size_t)t * w->top_k + k];
        }
        d->mask[t] = mask;
    }
}

static mb_status mb_dispatch_send(mb_dispatch *d, uint32_t li, const mb_moe_work *w)
{
    const mb_dispatch_config *c = &d->cfg;
    mb_dlink *l = &d->dl[li];
    mb_link *link = l->via;
    uint32_t first = l->next;
    uint32_t n = l->n_tok - first < l->slice ? l->n_tok - first : l->slice;
    uint32_t n_pairs = l->pair_off[first + n] - l->pair_off[first];
    uint64_t t0 = mb_now_ns();
    size_t bytes = 0;
    mb_status st = mb_proto_expert_req_size(n, c->d_model, c->payload, n_pairs, &bytes);
    void *buf = NULL;
    if (st == MB_STATUS_OK) {
        st = mb_transport_send_reserve(&link->transport, bytes, c->timeout_ns > 0 ? c->timeout_ns : -1, &buf);
        if (st != MB_STATUS_OK) d->lost = link;
    }
    if (st != MB_STATUS_OK) {
        snprintf(d->err, sizeof d->err, "%s: cannot send layer %u work: %s", link->name, w->layer,
                 st == MB_STATUS_PEER_DEAD ? "worker died" : mb_status_str(st));
        return st;
    }
    uint64_t tag = link->next_tag++;
    mb_proto_expert_req_writer wr;
    st = mb_proto_encode_expert_req(buf, bytes, tag, 0, w->layer, n, c->d_model, c->payload, n_pairs, &wr);
    if (st != MB_STATUS_OK) {
        snprintf(d->err, sizeof d->err, "%s: encoding failed: %s", link->name, mb_status_str(st));
        return st;
    }
    memcpy(wr.pair_counts, l->cnt + first, (size_t)n * sizeof *wr.pair_counts);
    memcpy(wr.pairs, l->pairs + l->pair_off[first], (size_t)n_pairs * sizeof *wr.pairs);
    if (l->slot_map)
        for (uint32_t i = 0; i < n_pairs; i++) wr.pairs[i].slot = l->slot_map[wr.pairs[i].slot];
    const size_t row_bytes = (size_t)c->d_model * mb_dtype_size(c->payload);
    if (w->x_wire) /* already in the payload dtype (mb_dispatch_moe checked) */
        for (uint32_t i = 0; i < n; i++)
            memcpy((unsigned char *)wr.act + i * row_bytes,
                   (const unsigned char *)w->x_wire + (size_t)l->tok[first + i] * row_bytes,
                   row_bytes);
    else
        for (uint32_t i = 0; i < n; i++)
            mb_dtype_encode_f32(c->payload, (unsigned char *)wr.act + i * row_bytes,
                                w->x + (size_t)l->tok[first + i] * c->d_model, c->d_model);
    uint64_t t1 = mb_now_ns();
    st = mb_transport_send_commit(&link->transport, wr.bytes);
    uint64_t t2 = mb_now_ns();
    if (st != MB_STATUS_OK) {
        d->lost = link;
        snprintf(d->err, sizeof d->err, "%s: sending layer %u work failed: %s", link->name, w->layer,
                 st == MB_STATUS_PEER_DEAD ? "worker died" : mb_status_str(st));
        return st;
    }
    mb_inflight *f = NULL;
    for (uint32_t i = 0; i < MB_DISPATCH_MAX_WINDOW && !f; i++)
        if (!l->win[i].used) f = &l->win[i];
    /* The caller keeps n_inflight below the window, which fits win. */
    f->used = 1;
    f->tag = tag;
    f->first = first;
    f->n = n;
    f->n_pairs = n_pairs;
    f->bytes_sent = wr.bytes;
    f->pack_ns = t1 - t0;
    f->send_ns = t2 - t1;
    f->committed_ns = t2;
    l->n_inflight++;
    l->next += n;
    return MB_STATUS_OK;
}

/* The in-flight request of link l with tag, or NULL. */
static mb_inflight *mb_dlink_find(mb_dlink *l, uint64_t tag)
{
    for (uint32_t i = 0; i < MB_DISPATCH_MAX_WINDOW; i++)
        if (l->win[i].used && l->win[i].tag == tag) return &l->win[i];
    return NULL;
}

/* The commit time of link l's oldest request in flight (UINT64_MAX: none). */
static uint64_t mb_dlink_oldest_ns(const mb_dlink *l)
{
    uint64_t oldest = UINT64_MAX;
    for (uint32_t i = 0; i < MB_DISPATCH_MAX_WINDOW; i++)
        if (l->win[i].used && l->win[i].committed_ns < oldest) oldest = l->win[i].committed_ns;
    return oldest;
}

/* Unpacks a reply to one of link li's requests in flight, found by tag. */
static mb_status mb_dispatch_unpack(mb_dispatch *d, uint32_t li, const mb_moe_work *w, const void *msg, size_t len,
                                    uint64_t received_ns)
{
    const mb_dispatch_config *c = &d->cfg;
    mb_dlink *l = &d->dl[li];
    mb_link *link = l->via;
    uint64_t t0 = mb_now_ns();
    mb_proto_header h;
    mb_proto_expert_reply r;
    mb_status st = mb_proto_decode_header(msg, len, &h);
    mb_inflight *f = st == MB_STATUS_OK ? mb_dlink_find(l, h.tag) : NULL;
    if (st == MB_STATUS_OK && !f) {
        /* Another lane routed through the same link may own the tag. */
        for (uint32_t j = 0; j < c->n_links && !f; j++) {
            if (j == li || d->dl[j].via != link) continue;
            f = mb_dlink_find(&d->dl[j], h.tag);
            if (f) {
                li = j;
                l = &d->dl[j];
            }
        }
    }
    if (st == MB_STATUS_OK && !f) {
        /* A reply to nothing in flight: a stale or invented tag. */
        snprintf(d->err, sizeof d->err, "%s: layer %u: bad reply: tag %llu matches no request in flight",
                 link->name, w->layer, (unsigned long long)h.tag);
        return MB_STATUS_PROTOCOL;
    }
    if (st == MB_STATUS_OK && h.opcode == MB_OP_STATUS && h.status != MB_STATUS_OK) {
        /* The worker refused the request: pass its reason on intact. */
        snprintf(d->err, sizeof d->err, "%s: layer %u: worker reported: %s", link->name, w->layer,
                 mb_status_str(h.status));
        return (mb_status)h.status;
    }
    if (st == MB_STATUS_OK) st = mb_proto_decode_expert_reply(msg, len, &r);
    if (st == MB_STATUS_OK && (r.n_tokens != f->n || r.d_model != c->d_model || r.dtype != c->payload))
        st = MB_STATUS_PROTOCOL;
    if (st != MB_STATUS_OK) {
        snprintf(d->err, sizeof d->err, "%s: layer %u: bad reply: %s", link->name, w->layer, mb_status_str(st));
        return st;
    }
    mb_dtype_decode_f32(c->payload, l->partial + (size_t)f->first * c->d_model, r.out, (size_t)f->n * c->d_model);
    uint64_t t1 = mb_now_ns();
    /* The worker's own figure, unchecked: saturate rather than wrap. */
    l->compute_ns += r.timings.compute_ns < UINT64_MAX - l->compute_ns ? r.timings.compute_ns
                                                                       : UINT64_MAX - l->compute_ns;
    /* Service time: from when the link could start on this request (its
     * commit, or the previous reply if it was still busy) to its reply. */
    uint64_t start = f->committed_ns > l->last_reply_ns ? f->committed_ns : l->last_reply_ns;
    uint64_t service = received_ns > start ? received_ns - start : 0;
    l->last_reply_ns = received_ns;
    mb_cost_add(&l->cost[w->decode ? 1 : 0], f->n, (double)service, (double)(f->pack_ns + (t1 - t0)));
    if (c->stats) {
        mb_stats_call call = {
            .tokens = f->n,
            .pairs = f->n_pairs,
            .bytes_sent = f->bytes_sent,
            .bytes_received = len,
            .pack_ns = f->pack_ns,
            .send_ns = f->send_ns,
            .wait_ns = received_ns > f->committed_ns ? received_ns - f->committed_ns : 0,
            .unpack_ns = t1 - t0,
            .worker_compute_ns = r.timings.compute_ns,
            .worker_decode_ns = r.timings.decode_ns,
            .worker_encode_ns = r.timings.encode_ns,
        };
        mb_stats_record_call(c->stats, li, w->layer, w->decode ? MB_STATS_PHASE_DECODE : MB_STATS_PHASE_PREFILL, &call);
    }
    f->used = 0;
    l->n_inflight--;
    return MB_STATUS_OK;
}

/* Receives one reply from link li if one is there within timeout_ns.
 * Returns OK with *got set, or a failure naming the link. */
static mb_status mb_dispatch_poll(mb_dispatch *d, uint32_t li, const mb_moe_work *w, int64_t timeout_ns, int *got)
{
    mb_link *link = d->dl[li].via;
    const void *msg = NULL;
    size_t len = 0;
    *got = 0;
    mb_status st = mb_transport_recv(&link->transport, timeout_ns, &msg, &len);
    if (st == MB_STATUS_TIMEOUT) {
        uint64_t oldest = mb_dlink_oldest_ns(&d->dl[li]);
        if (d->cfg.timeout_ns > 0 && oldest != UINT64_MAX && mb_now_ns() - oldest > (uint64_t)d->cfg.timeout_ns) {
            snprintf(d->err, sizeof d->err, "%s: no reply for layer %u within %.3g s", link->name, w->layer,
                     (double)d->cfg.timeout_ns / 1e9);
            d->lost = link;
            return MB_STATUS_TIMEOUT;
        }
        return MB_STATUS_OK;
    }
    if (st != MB_STATUS_OK) {
        d->lost = link;
        snprintf(d->err, sizeof d->err, "%s: %s during layer %u", link->name,
                 st == MB_STATUS_PEER_DEAD ? "worker died or hung up" : mb_status_str(st), w->layer);
        return st;
    }
    uint64_t now = mb_now_ns();
    st = mb_dispatch_unpack(d, li, w, msg, len, now);
    mb_transport_recv_release(&link->transport);
    if (st == MB_STATUS_OK) *got = 1;
    return st;
}

static void mb_dispatch_plan(mb_dispatch *d, uint32_t li, const mb_moe_work *w)
{
    const mb_dispatch_config *c = &d->cfg;
    mb_dlink *l = &d->dl[li];
    uint32_t n = l->n_tok;
    switch (c->mode) {
    case MB_IPC_MODE_STREAM:
        l->slice = c->stream_slice;
        break;
    case MB_IPC_MODE_BATCHED:
        l->slice = c->batch_capacity;
        break;
    default: {
        uint32_t s = mb_dispatch_auto_slice(d, li, w->decode, n);
        /* Exploring: one stream-sized slice first, then the rest batched, so
         * the link's cost is sampled at two sizes. The first request goes
         * out with the small slice; mb_dispatch_moe widens it after. */
        l->slice = s ? s : (c->stream_slice < n ? c->stream_slice : c->batch_capacity);
        break;
    }
    }
    if (l->slice == 0) l->slice = 1;
}

static int mb_dispatch_in(mb_link *const *set, uint32_t n, const mb_link *l)
{
    for (uint32_t i = 0; i < n; i++)
        if (set[i] == l) return 1;
    return 0;
}

static void mb_dlink_restart(mb_dlink *l)
{
    memset(l->win, 0, sizeof l->win);
    l->n_inflight = 0;
    l->next = 0;
    l->last_reply_ns = 0;
    l->compute_ns = 0; /* the lane's share is computed again, elsewhere */
}

/* The expert work of a call that took wall ns: the backends compute side
 * by side, so the slowest worker's compute (its lanes' requests summed,
 * lanes rerouted onto it by failover included); the rest of the wall time
 * (packing, transport, wake-ups, unpacking, the sum) is IPC on the step's
 * critical path. A GPU worker's requests in flight overlap, and a worker
 * may report nonsense, so each lane and the result are capped at wall. */
static uint64_t mb_dispatch_critical_ns(const mb_dispatch *d, uint64_t wall)
{
    uint64_t critical = 0;
    for (uint32_t i = 0; i < d->cfg.n_links; i++) {
        uint64_t worker = 0;
        for (uint32_t j = 0; j < d->cfg.n_links; j++)
            if (d->dl[j].via == d->dl[i].via)
                worker += d->dl[j].compute_ns < wall ? d->dl[j].compute_ns : wall;
        if (worker > critical) critical = worker;
    }
    return critical < wall ? critical : wall;
}

/* d->lost failed during layer w: lets every other lane's requests in flight
 * finish (a link lost meanwhile joins the lost set), asks the loss handler
 * to reroute the lost links' lanes, and restarts those lanes. */
static mb_status mb_dispatch_failover(mb_dispatch *d, const mb_moe_work *w)
{
    const mb_dispatch_config *c = &d->cfg;
    mb_link *lost[MB_DISPATCH_MAX_LINKS + 1];
    char why[MB_DISPATCH_MAX_LINKS + 1][256];
    uint32_t n_lost = 0;
    int hit[MB_DISPATCH_MAX_LINKS] = {0}; /* lanes that went through a lost link */
    mb_status st = MB_STATUS_OK;
    while (d->lost) {
        if (!mb_dispatch_in(lost, n_lost, d->lost) && n_lost <= MB_DISPATCH_MAX_LINKS) {
            memcpy(why[n_lost], d->err, sizeof d->err);
            lost[n_lost++] = d->lost;
        }
        d->lost = NULL;
        for (uint32_t j = 0; j < c->n_links; j++) {
            if (!mb_dispatch_in(lost, n_lost, d->dl[j].via)) continue;
            hit[j] = 1;
            mb_dlink_restart(&d->dl[j]); /* its requests in flight are gone */
        }
        /* Drain the others, so no reply is on its way anywhere while the
         * handler talks to links (loading experts on a fallback). */
        for (uint32_t j = 0; j < c->n_links && !d->lost; j++) {
            while (d->dl[j].n_inflight && !d->lost) {
                int got = 0;
                st = mb_dispatch_poll(d, j, w, 100000000, &got);
                if (st != MB_STATUS_OK && !d->lost) return st;
            }
        }
    }
    for (uint32_t i = 0; i < n_lost; i++) {
        st = c->on_loss(c->loss_ctx, d, lost[i], w, why[i]);
        if (st != MB_STATUS_OK) {
            if (!d->err[0]) memcpy(d->err, why[i], sizeof d->err);
            return st;
        }
    }
    for (uint32_t j = 0; j < c->n_links; j++) {
        if (!hit[j]) continue;
        if (mb_dispatch_in(lost, n_lost, d->dl[j].via) || d->dl[j].via->lost) {
            snprintf(d->err, sizeof d->err, "%.200s (no backend left for its experts)", why[0]);
            return MB_STATUS_PEER_DEAD;
        }
        mb_dlink_restart(&d->dl[j]);
        mb_dispatch_plan(d, j, w);
    }
    mb_dispatch_order(d);
    d->err[0] = '\0';
    return MB_STATUS_OK;
}

mb_status mb_dispatch_moe(void *ctx, const mb_moe_work *w)
{
    mb_dispatch *d = ctx;
    if (!d) return MB_STATUS_INVALID_ARG;
    const mb_dispatch_config *c = &d->cfg;
    if (!w || !w->out || w->n_tokens > c->max_tokens || w->top_k != c->top_k ||
        w->layer >= c->placement->n_layers)
        return MB_STATUS_INVALID_ARG;
    if (w->x_wire ? w->x_wire_dtype != c->payload : !w->x) {
        snprintf(d->err, sizeof d->err, "layer %u: activations in %s, the links carry %s", w->layer,
                 w->x_wire ? mb_dtype_name(w->x_wire_dtype) : "none", mb_dtype_name(c->payload));
        return MB_STATUS_INVALID_ARG;
    }
    for (size_t i = 0; i < (size_t)w->n_tokens * w->top_k; i++)
        if (w->expert_ids[i] < 0 || (uint32_t)w->expert_ids[i] >= c->placement->n_experts)
            return MB_STATUS_INVALID_ARG;
    uint64_t t_start = mb_now_ns();
    uint64_t waited = 0, last_progress_ns = 0, spin_mark = 0;
    /* Once per layer and chunk, however often failover sends it again. */
    mb_stats_record_routing(c->stats, w->layer, w->expert_ids, (size_t)w->n_tokens * w->top_k);
    d->err[0] = '\0';
    d->lost = NULL;
    mb_dispatch_order(d);
    mb_dispatch_bucket(d, w);
    int exploring[MB_DISPATCH_MAX_LINKS];
    for (uint32_t i = 0; i < c->n_links; i++) {
        mb_dlink *l = &d->dl[i];
        l->next = 0;
        memset(l->win, 0, sizeof l->win);
        l->n_inflight = 0;
        l->last_reply_ns = 0;
        l->compute_ns = 0;
        mb_dispatch_plan(d, i, w);
        exploring[i] = c->mode == MB_IPC_MODE_AUTO && mb_dispatch_auto_slice(d, i, w->decode, l->n_tok) == 0;
    }
    mb_status st = MB_STATUS_OK;
    for (;;) {
        if (st != MB_STATUS_OK) {
            /* A link was lost: fail over, or fail. */
            if (!d->lost || !c->on_loss) goto fail;
            for (uint32_t i = 0; i < c->n_links; i++)
                exploring[i] = 0;
            st = mb_dispatch_failover(d, w);
            if (st != MB_STATUS_OK) goto fail;
        }
        int progress = 0, busy = 0;
        for (uint32_t oi = 0; oi < c->n_links; oi++) {
            uint32_t li = d->order[oi];
            mb_dlink *l = &d->dl[li];
            while (l->n_inflight < c->window && l->next < l->n_tok) {
                st = mb_dispatch_send(d, li, w);
                if (st != MB_STATUS_OK) break;
                if (exploring[li]) {
                    l->slice = c->batch_capacity;
                    exploring[li] = 0;
                }
                progress = 1;
            }
            if (st != MB_STATUS_OK) break;
        }
        if (st != MB_STATUS_OK) continue;
        int oldest = -1;
        for (uint32_t oi = 0; oi < c->n_links; oi++) {
            uint32_t li = d->order[oi];
            mb_dlink *l = &d->dl[li];
            if (!l->n_inflight) continue;
            busy = 1;
            int got = 0;
            st = mb_dispatch_poll(d, li, w, 0, &got);
            if (st != MB_STATUS_OK) break;
            if (got) progress = 1;
            else if (l->n_inflight && (oldest < 0 || mb_dlink_oldest_ns(l) < mb_dlink_oldest_ns(&d->dl[oldest])))
                oldest = (int)li;
        }
        if (st != MB_STATUS_OK) continue;
        if (!busy) {
            int all_sent = 1;
            for (uint32_t i = 0; i < c->n_links; i++)
                if (d->dl[i].next < d->dl[i].n_tok) all_sent = 0;
            if (all_sent) break;
            continue;
        }
        if (d->cancel && __atomic_load_n(d->cancel, __ATOMIC_RELAXED)) {
            snprintf(d->err, sizeof d->err, "interrupted during layer %u", w->layer);
            st = MB_STATUS_CLOSED;
            goto fail;
        }
        if (progress) {
            if (spin_mark) waited += mb_now_ns() - spin_mark; /* the polls until this reply */
            last_progress_ns = spin_mark = 0;
        }
        if (!progress && oldest >= 0) {
            /* Nothing moved. Within cfg.poll_spin_ns of the last reply, poll
             * every busy link without blocking (a coordinator whose thread
             * has nothing else to do: a reply is seen within a poll's time,
             * with no futex sleep and wake-up, whichever link sends it);
             * then block on the oldest request: with one link busy, in the
             * transport's own spin-then-sleep wait, with several, in short
             * slices, to serve the others. */
            int n_busy = 0;
            for (uint32_t i = 0; i < c->n_links; i++) n_busy += d->dl[i].n_inflight > 0;
            if (c->poll_spin_ns > 0) {
                const uint64_t now = mb_now_ns();
                if (!last_progress_ns) last_progress_ns = now;
                if (spin_mark) waited += now - spin_mark;
                spin_mark = now;
                if ((int64_t)(now - last_progress_ns) < c->poll_spin_ns) {
                    mb_shm_cpu_relax();
                    continue;
                }
            }
            spin_mark = 0;
            int64_t slice = n_busy > 1 ? 50000 : 100000000;
            uint64_t t0 = mb_now_ns();
            int got = 0;
            st = mb_dispatch_poll(d, (uint32_t)oldest, w, slice, &got);
            waited += mb_now_ns() - t0;
            if (got) last_progress_ns = 0; /* a reply: poll the others again */
        }
    }
    /* Combine: links' partial sums in link order, so the result does not
     * depend on which reply came first (within a link, every token's sum
     * came whole from the one request that carried it). */
    uint32_t cursor[MB_DISPATCH_MAX_LINKS] = {0};
    const size_t D = c->d_model;
    for (uint32_t t = 0; t < w->n_tokens; t++) {
        float *o = w->out + (size_t)t * D;
        uint64_t mask = d->mask[t];
        int first = 1;
        for (uint32_t li = 0; mask; li++, mask >>= 1) {
            if (!(mask & 1)) continue;
            const float *p = d->dl[li].partial + (size_t)cursor[li]++ * D;
            if (first) memcpy(o, p, D * sizeof *o);
            else
                for (size_t j = 0; j < D; j++) o[j] += p[j];
            first = 0;
        }
        if (first) memset(o, 0, D * sizeof *o);
    }
    const uint64_t wall = mb_now_ns() - t_start;
    d->acc_critical_ns += mb_dispatch_critical_ns(d, wall);
    d->acc_dispatch_ns += wall;
    d->acc_wait_ns += waited;
    return MB_STATUS_OK;
fail:
    d->acc_dispatch_ns += mb_now_ns() - t_start;
    d->acc_wait_ns += waited;
    return st;
}
