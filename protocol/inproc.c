/* In-process loopback transport: one request buffer and a FIFO of reply
 * buffers, all grown on demand and reused, so steady-state traffic allocates
 * nothing. Without a handler, requests queue in a second FIFO for recv on
 * the handler end. Single-threaded by design. */
#include "protocol/inproc.h"

#include <stdlib.h>
#include <string.h>

#define MB_INPROC_QUEUE 64u /* power of two */

typedef struct {
    void *data;
    size_t cap;
    size_t len;
} mb_inproc_buf;

typedef struct {
    mb_inproc_buf req;
    mb_inproc_buf replies[MB_INPROC_QUEUE];
    uint64_t head, tail; /* replies[head..tail) are queued */
    int reply_reserved;
    int holding;         /* the caller holds replies[head] from recv */
    /* Queue mode (no handler): requests[rq_head..rq_tail) wait for the
     * handler end's recv. */
    mb_inproc_buf requests[MB_INPROC_QUEUE];
    uint64_t rq_head, rq_tail;
    int rq_holding;      /* the handler end holds requests[rq_head] */
    mb_inproc_handler fn;
    void *ctx;
} mb_inproc;

static mb_status mb_inproc_grow(mb_inproc_buf *b, size_t bytes)
{
    if (bytes <= b->cap) return MB_STATUS_OK;
    size_t cap = bytes < 4096 ? 4096 : bytes;
    if (cap > SIZE_MAX - 63) return MB_STATUS_OVERFLOW;
    cap = (cap + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, cap);
    if (!p) return MB_STATUS_NOMEM;
    free(b->data);
    b->data = p;
    b->cap = cap;
    return MB_STATUS_OK;
}

static mb_status mb_inproc_caller_reserve(void *impl, size_t bytes, int64_t timeout_ns, void **buf)
{
    mb_inproc *q = impl;
    mb_inproc_buf *b = &q->req;
    if (!q->fn) {
        if (q->rq_tail - q->rq_head == MB_INPROC_QUEUE) return MB_STATUS_FULL;
        b = &q->requests[q->rq_tail & (MB_INPROC_QUEUE - 1)];
    }
    mb_status st = mb_inproc_grow(b, bytes);
    if (st != MB_STATUS_OK) return st;
    *buf = b->data;
    return MB_STATUS_OK;
}

static mb_status mb_inproc_caller_commit(void *impl, size_t bytes)
{
    mb_inproc *q = impl;
    if (!q->fn) {
        mb_inproc_buf *b = &q->requests[q->rq_tail & (MB_INPROC_QUEUE - 1)];
        if (q->rq_tail - q->rq_head == MB_INPROC_QUEUE || bytes > b->cap) return MB_STATUS_INVALID_ARG;
        b->len = bytes;
        q->rq_tail++;
        return MB_STATUS_OK;
    }
    if (bytes > q->req.cap) return MB_STATUS_INVALID_ARG;
    return q->fn(q->ctx, q->req.data, bytes);
}

static mb_status mb_inproc_caller_recv(void *impl, int64_t timeout_ns, const void **buf, size_t *bytes)
{
    mb_inproc *q = impl;
    if (q->holding) return MB_STATUS_INVALID_ARG;
    /* The handler ran synchronously: a reply that is not here never comes. */
    if (q->head == q->tail) return MB_STATUS_TIMEOUT;
    mb_inproc_buf *b = &q->replies[q->head & (MB_INPROC_QUEUE - 1)];
    *buf = b->data;
    *bytes = b->len;
    q->holding = 1;
    return MB_STATUS_OK;
}

static void mb_inproc_caller_release(void *impl)
{
    mb_inproc *q = impl;
    if (!q->holding) return;
    q->holding = 0;
    q->head++;
}

static mb_status mb_inproc_handler_reserve(void *impl, size_t bytes, int64_t timeout_ns, void **buf)
{
    mb_inproc *q = impl;
    if (q->tail - q->head == MB_INPROC_QUEUE) return MB_STATUS_FULL;
    mb_inproc_buf *b = &q->replies[q->tail & (MB_INPROC_QUEUE - 1)];
    mb_status st = mb_inproc_grow(b, bytes);
    if (st != MB_STATUS_OK) return st;
    q->reply_reserved = 1;
    *buf = b->data;
    return MB_STATUS_OK;
}

static mb_status mb_inproc_handler_commit(void *impl, size_t bytes)
{
    mb_inproc *q = impl;
    mb_inproc_buf *b = &q->replies[q->tail & (MB_INPROC_QUEUE - 1)];
    if (!q->reply_reserved || bytes > b->cap) return MB_STATUS_INVALID_ARG;
    q->reply_reserved = 0;
    b->len = bytes;
    q->tail++;
    return MB_STATUS_OK;
}

static mb_status mb_inproc_handler_recv(void *impl, int64_t timeout_ns, const void **buf, size_t *bytes)
{
    mb_inproc *q = impl;
    if (q->fn) return MB_STATUS_UNSUPPORTED; /* requests go to the handler */
    if (q->rq_holding) return MB_STATUS_INVALID_ARG;
    /* Single-threaded: a request that is not queued now never comes. */
    if (q->rq_head == q->rq_tail) return MB_STATUS_TIMEOUT;
    mb_inproc_buf *b = &q->requests[q->rq_head & (MB_INPROC_QUEUE - 1)];
    *buf = b->data;
    *bytes = b->len;
    q->rq_holding = 1;
    return MB_STATUS_OK;
}

static void mb_inproc_handler_release(void *impl)
{
    mb_inproc *q = impl;
    if (!q->rq_holding) return;
    /* Scribble over the released request, as a peer reusing its slot would:
     * a reader that held on past release sees garbage, not stale data. */
    mb_inproc_buf *b = &q->requests[q->rq_head & (MB_INPROC_QUEUE - 1)];
    memset(b->data, 0xdd, b->len);
    q->rq_holding = 0;
    q->rq_head++;
}

static size_t mb_inproc_max_bytes(void *impl)
{
    return (size_t)1 << 34;
}

static void mb_inproc_destroy(void *impl)
{
    mb_inproc *q = impl;
    free(q->req.data);
    for (unsigned i = 0; i < MB_INPROC_QUEUE; i++) {
        free(q->replies[i].data);
        free(q->requests[i].data);
    }
    free(q);
}

static void mb_inproc_handler_destroy(void *impl)
{
}

static const mb_transport_ops mb_inproc_caller_ops = {
    .name = "inproc",
    .send_reserve = mb_inproc_caller_reserve,
    .send_commit = mb_inproc_caller_commit,
    .recv = mb_inproc_caller_recv,
    .recv_release = mb_inproc_caller_release,
    .max_message_bytes = mb_inproc_max_bytes,
    .destroy = mb_inproc_destroy,
};

static const mb_transport_ops mb_inproc_handler_ops = {
    .name = "inproc",
    .send_reserve = mb_inproc_handler_reserve,
    .send_commit = mb_inproc_handler_commit,
    .recv = mb_inproc_handler_recv,
    .recv_release = mb_inproc_handler_release,
    .max_message_bytes = mb_inproc_max_bytes,
    .destroy = mb_inproc_handler_destroy,
};

mb_status mb_inproc_transport_create(mb_transport *caller_end, mb_transport *handler_end)
{
    if (!caller_end || !handler_end) return MB_STATUS_INVALID_ARG;
    mb_inproc *q = calloc(1, sizeof *q);
    if (!q) return MB_STATUS_NOMEM;
    caller_end->ops = &mb_inproc_caller_ops;
    caller_end->impl = q;
    handler_end->ops = &mb_inproc_handler_ops;
    handler_end->impl = q;
    return MB_STATUS_OK;
}

void mb_inproc_transport_set_handler(mb_transport *caller_end, mb_inproc_handler fn, void *ctx)
{
    if (!caller_end || !caller_end->impl || caller_end->ops != &mb_inproc_caller_ops) return;
    mb_inproc *q = caller_end->impl;
    q->fn = fn;
    q->ctx = ctx;
}
