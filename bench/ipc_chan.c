/* The message helpers of bench/ipc_chan.h and the two channels that hand out
 * contiguous buffers: a project transport (shm or zmq, through the
 * transport interface) and the bare spin ring. Both run the same code
 * around reserve/commit and recv/release, so only the channel differs. */
#include "bench/ipc_chan.h"

#include <stdlib.h>
#include <string.h>

void mb_bench_msg_put_header(void *dst, mb_proto_opcode op, uint64_t tag, size_t bytes)
{
    mb_proto_header h;
    mb_proto_header_init(&h, op, tag, (uint64_t)bytes - MB_PROTO_HEADER_BYTES);
    memcpy(dst, &h, sizeof(h));
}

/* Validates the header at hdr (any alignment) of a message of bytes total. */
static mb_status mb_bench_msg_decode(const void *hdr, size_t bytes, mb_bench_msg_info *info)
{
    /* The header may sit unaligned in a libzmq frame: decode an aligned copy. */
    _Alignas(8) unsigned char raw[MB_PROTO_HEADER_BYTES];
    mb_proto_header h;
    if (bytes < MB_PROTO_HEADER_BYTES) return MB_STATUS_PROTOCOL;
    memcpy(raw, hdr, sizeof(raw));
    mb_status st = mb_proto_decode_header(raw, bytes, &h);
    if (st != MB_STATUS_OK) return st;
    info->op = (mb_proto_opcode)h.opcode;
    info->tag = h.tag;
    info->bytes = bytes;
    info->sum = 0;
    return MB_STATUS_OK;
}

/* One word per cache line: every line of the body crosses to this core. */
static uint64_t mb_bench_msg_touch(const void *body, size_t n)
{
    const unsigned char *p = body;
    uint64_t sum = 0, w;
    for (size_t i = 0; i + 8 <= n; i += 64) {
        memcpy(&w, p + i, 8);
        sum += w;
    }
    return sum;
}

mb_status mb_bench_msg_read(const void *hdr, const void *body, size_t bytes,
                            mb_bench_msg_info *info)
{
    mb_status st = mb_bench_msg_decode(hdr, bytes, info);
    if (st != MB_STATUS_OK) return st;
    info->sum = mb_bench_msg_touch(body, bytes - MB_PROTO_HEADER_BYTES);
    return MB_STATUS_OK;
}

mb_status mb_bench_msg_take_request(const void *hdr, const void *body, size_t bytes,
                                    mb_bench_msg_info *req, mb_bench_reply_plan *plan)
{
    mb_status st = mb_bench_msg_decode(hdr, bytes, req);
    if (st != MB_STATUS_OK) return st;
    plan->quit = 0;
    plan->copy_body = 0;
    plan->bytes = MB_BENCH_ACK_BYTES;
    plan->op = MB_OP_STATUS;
    switch (req->op) {
    case MB_OP_PING:
        plan->op = MB_OP_PONG;
        plan->bytes = bytes;
        plan->copy_body = 1;
        return MB_STATUS_OK;
    case MB_OP_EXPERT_REQ:
        break;
    case MB_OP_SHUTDOWN:
        plan->quit = 1;
        break;
    default:
        return MB_STATUS_PROTOCOL;
    }
    req->sum = mb_bench_msg_touch(body, bytes - MB_PROTO_HEADER_BYTES);
    return MB_STATUS_OK;
}

void mb_bench_chan_destroy(mb_bench_chan *c)
{
    if (!c || !c->ops) return;
    c->ops->destroy(c->impl);
    c->ops = NULL;
    c->impl = NULL;
}

mb_status mb_bench_chan_serve_all(mb_bench_chan *c)
{
    int quit = 0;
    while (!quit) {
        mb_status st = c->ops->serve(c->impl, &quit);
        if (st != MB_STATUS_OK) return st;
    }
    return MB_STATUS_OK;
}

/* ---- channels over contiguous buffers ----
 * The four primitives of a buffer channel; the send/recv/serve logic is
 * written once on top of them. */
typedef struct {
    mb_status (*reserve)(void *impl, size_t bytes, void **buf);
    mb_status (*commit)(void *impl, size_t bytes);
    mb_status (*recv)(void *impl, const void **buf, size_t *bytes);
    void (*release)(void *impl);
} mb_bench_buf_ops;

static mb_status mb_bench_buf_send(const mb_bench_buf_ops *b, void *impl, mb_proto_opcode op,
                                   uint64_t tag, size_t bytes, const void *body)
{
    void *buf;
    mb_status st = b->reserve(impl, bytes, &buf);
    if (st != MB_STATUS_OK) return st;
    mb_bench_msg_put_header(buf, op, tag, bytes);
    memcpy((unsigned char *)buf + MB_PROTO_HEADER_BYTES, body, bytes - MB_PROTO_HEADER_BYTES);
    return b->commit(impl, bytes);
}

static mb_status mb_bench_buf_recv(const mb_bench_buf_ops *b, void *impl, mb_bench_msg_info *info)
{
    const void *buf;
    size_t bytes;
    mb_status st = b->recv(impl, &buf, &bytes);
    if (st != MB_STATUS_OK) return st;
    st = mb_bench_msg_read(buf, (const unsigned char *)buf + MB_PROTO_HEADER_BYTES, bytes, info);
    b->release(impl);
    return st;
}

/* An echo copies the request body straight into the reply's space. */
static mb_status mb_bench_buf_serve(const mb_bench_buf_ops *b, void *impl, int *quit)
{
    const void *in;
    size_t in_bytes;
    mb_status st = b->recv(impl, &in, &in_bytes);
    if (st != MB_STATUS_OK) return st;
    const unsigned char *body = (const unsigned char *)in + MB_PROTO_HEADER_BYTES;
    mb_bench_msg_info req;
    mb_bench_reply_plan plan;
    void *out;
    st = mb_bench_msg_take_request(in, body, in_bytes, &req, &plan);
    if (st == MB_STATUS_OK) st = b->reserve(impl, plan.bytes, &out);
    if (st != MB_STATUS_OK) {
        b->release(impl);
        return st;
    }
    unsigned char *out_body = (unsigned char *)out + MB_PROTO_HEADER_BYTES;
    mb_bench_msg_put_header(out, plan.op, req.tag, plan.bytes);
    if (plan.copy_body)
        memcpy(out_body, body, plan.bytes - MB_PROTO_HEADER_BYTES);
    else
        memset(out_body, 0, plan.bytes - MB_PROTO_HEADER_BYTES);
    b->release(impl);
    *quit = plan.quit;
    return b->commit(impl, plan.bytes);
}

/* ---- a project transport ---- */

static mb_status mb_bench_tr_reserve(void *impl, size_t bytes, void **buf)
{
    return mb_transport_send_reserve(impl, bytes, MB_BENCH_WAIT_NS, buf);
}

static mb_status mb_bench_tr_commit(void *impl, size_t bytes)
{
    return mb_transport_send_commit(impl, bytes);
}

static mb_status mb_bench_tr_recv_raw(void *impl, const void **buf, size_t *bytes)
{
    return mb_transport_recv(impl, MB_BENCH_WAIT_NS, buf, bytes);
}

static void mb_bench_tr_release(void *impl)
{
    mb_transport_recv_release(impl);
}

static const mb_bench_buf_ops mb_bench_tr_buf = {mb_bench_tr_reserve, mb_bench_tr_commit,
                                                 mb_bench_tr_recv_raw, mb_bench_tr_release};

static mb_status mb_bench_tr_send(void *impl, mb_proto_opcode op, uint64_t tag, size_t bytes,
                                  const void *body)
{
    return mb_bench_buf_send(&mb_bench_tr_buf, impl, op, tag, bytes, body);
}

static mb_status mb_bench_tr_recv(void *impl, mb_bench_msg_info *info)
{
    return mb_bench_buf_recv(&mb_bench_tr_buf, impl, info);
}

static mb_status mb_bench_tr_serve(void *impl, int *quit)
{
    return mb_bench_buf_serve(&mb_bench_tr_buf, impl, quit);
}

static void mb_bench_tr_destroy(void *impl)
{
    mb_transport_destroy(impl);
    free(impl);
}

static const mb_bench_chan_ops mb_bench_tr_ops = {mb_bench_tr_send, mb_bench_tr_recv,
                                                  mb_bench_tr_serve, mb_bench_tr_destroy};

mb_status mb_bench_chan_from_transport(mb_transport *t, mb_bench_chan *out)
{
    mb_transport *copy = malloc(sizeof(*copy));
    if (!copy) {
        mb_transport_destroy(t);
        return MB_STATUS_NOMEM;
    }
    *copy = *t;
    t->ops = NULL;
    t->impl = NULL;
    out->ops = &mb_bench_tr_ops;
    out->impl = copy;
    return MB_STATUS_OK;
}

/* ---- the bare spin ring ---- */

static mb_status mb_bench_sp_reserve(void *impl, size_t bytes, void **buf)
{
    return mb_bench_spin_reserve(impl, bytes, buf);
}

static mb_status mb_bench_sp_commit(void *impl, size_t bytes)
{
    mb_bench_spin_commit(impl, bytes);
    return MB_STATUS_OK;
}

static mb_status mb_bench_sp_recv_raw(void *impl, const void **buf, size_t *bytes)
{
    return mb_bench_spin_recv(impl, buf, bytes);
}

static void mb_bench_sp_release(void *impl)
{
    mb_bench_spin_release(impl);
}

static const mb_bench_buf_ops mb_bench_sp_buf = {mb_bench_sp_reserve, mb_bench_sp_commit,
                                                 mb_bench_sp_recv_raw, mb_bench_sp_release};

static mb_status mb_bench_sp_send(void *impl, mb_proto_opcode op, uint64_t tag, size_t bytes,
                                  const void *body)
{
    return mb_bench_buf_send(&mb_bench_sp_buf, impl, op, tag, bytes, body);
}

static mb_status mb_bench_sp_recv(void *impl, mb_bench_msg_info *info)
{
    return mb_bench_buf_recv(&mb_bench_sp_buf, impl, info);
}

static mb_status mb_bench_sp_serve(void *impl, int *quit)
{
    return mb_bench_buf_serve(&mb_bench_sp_buf, impl, quit);
}

static void mb_bench_sp_destroy(void *impl)
{
    mb_bench_spin_end_fini(impl);
    free(impl);
}

static const mb_bench_chan_ops mb_bench_sp_ops = {mb_bench_sp_send, mb_bench_sp_recv,
                                                  mb_bench_sp_serve, mb_bench_sp_destroy};

mb_status mb_bench_chan_from_spin(mb_bench_spin_chan *c, int side, mb_bench_chan *out)
{
    mb_bench_spin_end *e = malloc(sizeof(*e));
    if (!e) return MB_STATUS_NOMEM;
    mb_status st = mb_bench_spin_end_init(e, c, side);
    if (st != MB_STATUS_OK) {
        free(e);
        return st;
    }
    out->ops = &mb_bench_sp_ops;
    out->impl = e;
    return MB_STATUS_OK;
}
