/* The worker's serving loop. A synchronous backend runs each request inline
 * (mb_worker_handle: the reply reserved in the send buffer, the backend
 * writing its sums straight into it). An asynchronous backend is pipelined:
 * a request is submitted, its receive slot is released once the backend
 * reports its inputs consumed, and the next request is received while the
 * backend still computes; each DONE becomes a reply fetched straight into
 * the send buffer. The backend knows requests by worker-unique tags, since
 * a peer's tags may repeat from one session to the next. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/worker_internal.h"
#include "protocol/message.h"

#define MB_WORKER_POLL_NS 100000000LL      /* re-check the stop flag every 100 ms */
#define MB_WORKER_BACKEND_POLL_NS 50000LL  /* backend wait between transport polls */
#define MB_WORKER_CONSUME_POLL_NS 10000000LL /* backend wait while a request's inputs are held */
#define MB_WORKER_DRAIN_NS 10000000000ULL  /* abandoning: wait this long for the backend */

/* Tags the backend sees: unique for the process, across workers and
 * sessions sharing one backend. */
static uint64_t mb_worker_wtag_counter;

static uint64_t mb_worker_wtag_new(void)
{
    return __atomic_add_fetch(&mb_worker_wtag_counter, 1, __ATOMIC_RELAXED);
}

static mb_worker_pending *mb_worker_pending_find(mb_worker *w, uint64_t wtag)
{
    for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT; i++)
        if (w->pending[i].used && w->pending[i].wtag == wtag) return &w->pending[i];
    return NULL;
}

static void mb_worker_pending_drop(mb_worker *w, mb_worker_pending *p)
{
    p->used = 0;
    w->n_pending--;
}

/* Turns a DONE into its reply: the sums fetched straight into the send
 * buffer, or a STATUS with the request's error. Returns transport failures
 * only. */
static mb_status mb_worker_reply_done(mb_worker *w, mb_worker_pending *p, const mb_backend_event *ev)
{
    const uint64_t tag = p->peer_tag;
    if (ev->status != MB_STATUS_OK) {
        /* The wrapper forgot the tag already. */
        mb_worker_pending_drop(w, p);
        mb_status st = mb_worker_reply_empty(w, MB_OP_STATUS, tag, ev->status);
        /* A lost device fails every later request too: stop serving (the
         * caller got this request's DEVICE first). */
        return st == MB_STATUS_OK && ev->status == MB_STATUS_DEVICE ? MB_STATUS_DEVICE : st;
    }
    void *buf = NULL;
    mb_status st = mb_transport_send_reserve(w->cfg->transport, p->reply_bytes, -1, &buf);
    if (st != MB_STATUS_OK) return st; /* the request stays pending: abandoned on exit */
    void *out = NULL;
    size_t enc_bytes = 0;
    st = mb_proto_encode_expert_reply(buf, p->reply_bytes, tag, p->n_tokens, p->d_model, p->dtype, &out, &enc_bytes);
    uint64_t t0 = mb_worker_now_ns();
    mb_status fst = mb_backend_fetch(w->cfg->backend, p->wtag, out);
    if (st == MB_STATUS_OK) st = fst;
    mb_worker_pending_drop(w, p);
    if (st != MB_STATUS_OK) {
        /* The reservation is at least a header long: reuse it for the error. */
        mb_proto_encode_empty(buf, p->reply_bytes, MB_OP_STATUS, tag, st, &enc_bytes);
        return mb_transport_send_commit(w->cfg->transport, enc_bytes);
    }
    mb_proto_timings tm = {
        .decode_ns = p->decode_ns, .compute_ns = ev->compute_ns, .encode_ns = mb_worker_now_ns() - t0};
    mb_proto_expert_reply_set_timings(buf, &tm);
    return mb_transport_send_commit(w->cfg->transport, enc_bytes);
}

/* Waits up to timeout_ns for one backend event and acts on it. OK when one
 * was handled or none came; a backend or transport failure otherwise. */
static mb_status mb_worker_poll_backend(mb_worker *w, int64_t timeout_ns)
{
    mb_backend_event ev;
    mb_status st = mb_backend_poll(w->cfg->backend, timeout_ns, &ev);
    if (st == MB_STATUS_TIMEOUT) return MB_STATUS_OK;
    if (st != MB_STATUS_OK) return st;
    mb_worker_pending *p = mb_worker_pending_find(w, ev.tag);
    if (!p) return MB_STATUS_OK; /* a request of an earlier caller of this backend */
    p->consumed = 1;
    if (ev.kind != MB_BACKEND_EVENT_DONE) return MB_STATUS_OK;
    return mb_worker_reply_done(w, p, &ev);
}

/* Decodes an EXPERT_REQ and submits it under a fresh tag; waits while the
 * backend is full. *pending receives the request's entry, or NULL when it
 * was answered at once (a malformed request, a submit error). */
static mb_status mb_worker_submit(mb_worker *w, const void *msg, size_t len, uint64_t tag,
                                  mb_worker_pending **pending)
{
    const mb_worker_config *cfg = w->cfg;
    *pending = NULL;
    uint64_t t0 = mb_worker_now_ns();
    mb_proto_expert_req req;
    mb_status st = mb_proto_decode_expert_req(msg, len, &w->limits, &req);
    if (st == MB_STATUS_OK) st = mb_worker_snapshot_pairs(w, &req);
    size_t reply_bytes = 0;
    if (st == MB_STATUS_OK) st = mb_proto_expert_reply_size(req.n_tokens, req.d_model, req.dtype, &reply_bytes);
    /* A reply that can never fit is refused before any work is done. */
    if (st == MB_STATUS_OK && reply_bytes > mb_transport_max_message_bytes(cfg->transport)) st = MB_STATUS_FULL;
    if (st != MB_STATUS_OK) return mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
    mb_worker_pending *p = NULL;
    const uint64_t wtag = mb_worker_wtag_new();
    for (;;) {
        for (uint32_t i = 0; i < MB_BACKEND_MAX_INFLIGHT && !p; i++)
            if (!w->pending[i].used) p = &w->pending[i];
        st = p ? mb_backend_submit(cfg->backend, wtag, &req) : MB_STATUS_AGAIN;
        if (st != MB_STATUS_AGAIN) break;
        /* Full: a DONE frees room. */
        if (cfg->stop && *cfg->stop) return MB_STATUS_CLOSED;
        st = mb_worker_poll_backend(w, MB_WORKER_CONSUME_POLL_NS);
        if (st != MB_STATUS_OK) return st;
    }
    if (st != MB_STATUS_OK) {
        mb_status rst = mb_worker_reply_empty(w, MB_OP_STATUS, tag, st);
        return rst == MB_STATUS_OK && st == MB_STATUS_DEVICE ? MB_STATUS_DEVICE : rst;
    }
    *p = (mb_worker_pending){
        .used = 1, .wtag = wtag, .peer_tag = tag, .n_tokens = req.n_tokens, .d_model = req.d_model,
        .dtype = req.dtype, .reply_bytes = reply_bytes, .decode_ns = mb_worker_now_ns() - t0,
    };
    w->n_pending++;
    *pending = p;
    return MB_STATUS_OK;
}

/* Pipelined EXPERT_REQ: returns once the request's inputs are consumed (or
 * it was answered), so the caller may release the receive slot. */
static mb_status mb_worker_on_expert_req_async(mb_worker *w, const void *msg, size_t len, uint64_t tag)
{
    mb_worker_pending *p = NULL;
    mb_status st = mb_worker_submit(w, msg, len, tag, &p);
    if (st != MB_STATUS_OK || !p) return st;
    const uint64_t wtag = p->wtag;
    /* Its activations and pairs are in memory the backend still reads.
     * Other requests' events are handled meanwhile; a DONE of this one
     * implies CONSUMED (and drops the entry). */
    for (;;) {
        p = mb_worker_pending_find(w, wtag);
        if (!p || p->consumed) return MB_STATUS_OK;
        if (w->cfg->stop && *w->cfg->stop) return MB_STATUS_CLOSED;
        st = mb_worker_poll_backend(w, MB_WORKER_CONSUME_POLL_NS);
        if (st != MB_STATUS_OK) return st;
    }
}

/* Answers every pending request (before a message that must see the
 * backend idle: a load, HELLO, SHUTDOWN). */
static mb_status mb_worker_finish_pending(mb_worker *w)
{
    while (w->n_pending) {
        if (w->cfg->stop && *w->cfg->stop) return MB_STATUS_CLOSED;
        mb_status st = mb_worker_poll_backend(w, MB_WORKER_CONSUME_POLL_NS);
        if (st != MB_STATUS_OK) return st;
    }
    return MB_STATUS_OK;
}

/* Leaving: waits (bounded) for requests nobody will read and discards their
 * results, so the backend is idle for the next session. */
static void mb_worker_abandon_pending(mb_worker *w)
{
    const uint64_t deadline = mb_worker_now_ns() + MB_WORKER_DRAIN_NS;
    void *scratch = NULL;
    size_t scratch_cap = 0;
    while (w->n_pending && mb_worker_now_ns() < deadline) {
        mb_backend_event ev;
        mb_status st = mb_backend_poll(w->cfg->backend, MB_WORKER_CONSUME_POLL_NS, &ev);
        if (st == MB_STATUS_TIMEOUT) continue;
        if (st != MB_STATUS_OK) break;
        mb_worker_pending *p = mb_worker_pending_find(w, ev.tag);
        if (!p || ev.kind != MB_BACKEND_EVENT_DONE) continue;
        if (ev.status == MB_STATUS_OK) {
            if (p->reply_bytes > scratch_cap) {
                free(scratch);
                scratch = malloc(p->reply_bytes);
                scratch_cap = scratch ? p->reply_bytes : 0;
            }
            /* Without room the tag stays with the backend until close. */
            if (scratch) (void)mb_backend_fetch(w->cfg->backend, p->wtag, scratch);
        }
        mb_worker_pending_drop(w, p);
    }
    free(scratch);
}

/* Handles one received message; for an asynchronous backend an EXPERT_REQ
 * enters the pipeline and anything else waits for it to drain first. */
static mb_status mb_worker_dispatch(mb_worker *w, const void *msg, size_t len)
{
    if (!mb_backend_is_async(w->cfg->backend)) return mb_worker_handle(w, msg, len);
    mb_proto_header h;
    if (mb_proto_decode_header(msg, len, &h) == MB_STATUS_OK) {
        if (h.opcode == MB_OP_EXPERT_REQ) return mb_worker_on_expert_req_async(w, msg, len, h.tag);
        if (h.opcode != MB_OP_PING) {
            mb_status st = mb_worker_finish_pending(w);
            if (st != MB_STATUS_OK) return st;
        }
    }
    return mb_worker_handle(w, msg, len);
}

/* 1 when the session has been silent for cfg->idle_timeout_ns: nothing
 * received since last_ns (0: no message yet, so no session to end) and
 * nothing left in the backend, which a long request would still hold. */
static int mb_worker_idle(const mb_worker *w, uint64_t last_ns)
{
    const int64_t limit = w->cfg->idle_timeout_ns;
    return limit > 0 && last_ns && !w->n_pending && mb_worker_now_ns() - last_ns >= (uint64_t)limit;
}

mb_status mb_worker_serve(const mb_worker_config *cfg)
{
    mb_worker *w = NULL;
    mb_status st = mb_worker_create(cfg, &w);
    if (st != MB_STATUS_OK) return st;
    int bad = 0;
    uint64_t last_ns = 0; /* the peer's last message or the backend's last work */
    for (;;) {
        if (cfg->stop && *cfg->stop) {
            st = MB_STATUS_OK;
            break;
        }
        /* With requests in the backend, alternate between the transport
         * (no wait) and the backend (a short wait), so the next request is
         * received while the backend computes. */
        const void *msg = NULL;
        size_t len = 0;
        st = mb_transport_recv(cfg->transport, w->n_pending ? 0 : MB_WORKER_POLL_NS, &msg, &len);
        if (st == MB_STATUS_TIMEOUT) {
            if (w->n_pending) {
                /* Work in the backend keeps the session busy, however
                 * long it runs. */
                st = mb_worker_poll_backend(w, MB_WORKER_BACKEND_POLL_NS);
                if (st != MB_STATUS_OK) break;
                last_ns = mb_worker_now_ns();
            }
            if (mb_worker_idle(w, last_ns)) {
                st = MB_STATUS_TIMEOUT;
                break;
            }
            continue;
        }
        last_ns = mb_worker_now_ns();
        if (st == MB_STATUS_CORRUPT || st == MB_STATUS_PROTOCOL || st == MB_STATUS_TRUNCATED) {
            fprintf(stderr, "%s: dropped a malformed message: %s\n", cfg->name ? cfg->name : "moe-worker",
                    mb_status_str(st));
            if (++bad >= MB_WORKER_MAX_BAD_IN_A_ROW) {
                st = MB_STATUS_PROTOCOL;
                break;
            }
            continue;
        }
        if (st != MB_STATUS_OK) break;
        bad = 0;
        st = mb_worker_dispatch(w, msg, len);
        mb_transport_recv_release(cfg->transport);
        last_ns = mb_worker_now_ns(); /* an inline request may have run long */
        if (st == MB_STATUS_CLOSED) {
            st = MB_STATUS_OK;
            break;
        }
        if (st != MB_STATUS_OK) break;
    }
    mb_worker_abandon_pending(w);
    mb_worker_destroy(w);
    return st;
}
