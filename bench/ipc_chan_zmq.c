/* The bare libzmq baseline channel: what the ZeroMQ transport would be with
 * nothing of its own. A ROUTER (echo side) and a DEALER with the transport's
 * queue depth, messages as two frames (header, body) built with
 * zmq_msg_init_size and filled in place, received with zmq_msg_recv and
 * read in place. No monitor, no heartbeats, no pooled zero-copy buffers, no
 * reassembly copy: those are what the comparison charges to the transport. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "bench/ipc_chan.h"

/* The transport's ZMQ_SNDHWM / ZMQ_RCVHWM (protocol/zmq_impl.h). */
#define MB_BENCH_ZMQ_HWM 64

typedef struct {
    void *ctx;
    void *sock;
} mb_bench_zmq;

static void mb_bench_zmq_free(mb_bench_zmq *z)
{
    if (z->sock) zmq_close(z->sock);
    if (z->ctx) zmq_ctx_term(z->ctx);
    free(z);
}

/* Sends a message's frames: the routing id (ROUTER only, consumed), the
 * header, the body filled from body or zeroed (body NULL). */
static mb_status mb_bench_zmq_send_frames(mb_bench_zmq *z, zmq_msg_t *id, mb_proto_opcode op,
                                          uint64_t tag, size_t bytes, const void *body)
{
    zmq_msg_t h, b;
    size_t n = bytes - MB_PROTO_HEADER_BYTES;
    if (zmq_msg_init_size(&h, MB_PROTO_HEADER_BYTES)) return MB_STATUS_NOMEM;
    if (zmq_msg_init_size(&b, n)) {
        zmq_msg_close(&h);
        return MB_STATUS_NOMEM;
    }
    mb_bench_msg_put_header(zmq_msg_data(&h), op, tag, bytes);
    if (body)
        memcpy(zmq_msg_data(&b), body, n);
    else
        memset(zmq_msg_data(&b), 0, n);
    if (id && zmq_msg_send(id, z->sock, ZMQ_SNDMORE) < 0) goto fail;
    if (zmq_msg_send(&h, z->sock, ZMQ_SNDMORE) < 0) goto fail;
    if (zmq_msg_send(&b, z->sock, 0) < 0) goto fail;
    return MB_STATUS_OK;
fail:
    zmq_msg_close(&h);
    zmq_msg_close(&b);
    return MB_STATUS_IO;
}

/* Receives want frames into f; PROTOCOL when the count differs, TIMEOUT
 * when nothing came within the receive timeout. On success the caller
 * closes f[0..want). */
static mb_status mb_bench_zmq_recv_frames(mb_bench_zmq *z, zmq_msg_t *f, int want)
{
    int n = 0, more = 1;
    mb_status st = MB_STATUS_OK;
    while (more) {
        zmq_msg_t scratch, *m = n < want ? &f[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, z->sock, 0) < 0) {
            zmq_msg_close(m);
            st = n == 0 && zmq_errno() == EAGAIN ? MB_STATUS_TIMEOUT : MB_STATUS_IO;
            break;
        }
        more = zmq_msg_more(m);
        if (m == &scratch) zmq_msg_close(m);
        n++;
    }
    if (st == MB_STATUS_OK && n != want) st = MB_STATUS_PROTOCOL;
    if (st != MB_STATUS_OK)
        for (int i = 0; i < n && i < want; i++)
            zmq_msg_close(&f[i]);
    return st;
}

static mb_status mb_bench_zmq_send(void *impl, mb_proto_opcode op, uint64_t tag, size_t bytes,
                                   const void *body)
{
    return mb_bench_zmq_send_frames(impl, NULL, op, tag, bytes, body);
}

static mb_status mb_bench_zmq_recv(void *impl, mb_bench_msg_info *info)
{
    mb_bench_zmq *z = impl;
    zmq_msg_t f[2];
    mb_status st = mb_bench_zmq_recv_frames(z, f, 2);
    if (st != MB_STATUS_OK) return st;
    if (zmq_msg_size(&f[0]) != MB_PROTO_HEADER_BYTES)
        st = MB_STATUS_PROTOCOL;
    else
        st = mb_bench_msg_read(zmq_msg_data(&f[0]), zmq_msg_data(&f[1]),
                               MB_PROTO_HEADER_BYTES + zmq_msg_size(&f[1]), info);
    zmq_msg_close(&f[0]);
    zmq_msg_close(&f[1]);
    return st;
}

static mb_status mb_bench_zmq_serve(void *impl, int *quit)
{
    mb_bench_zmq *z = impl;
    zmq_msg_t f[3]; /* routing id, header, body */
    mb_status st = mb_bench_zmq_recv_frames(z, f, 3);
    if (st != MB_STATUS_OK) return st;
    mb_bench_msg_info req;
    mb_bench_reply_plan plan;
    if (zmq_msg_size(&f[1]) != MB_PROTO_HEADER_BYTES)
        st = MB_STATUS_PROTOCOL;
    else
        st = mb_bench_msg_take_request(zmq_msg_data(&f[1]), zmq_msg_data(&f[2]),
                                       MB_PROTO_HEADER_BYTES + zmq_msg_size(&f[2]), &req, &plan);
    if (st == MB_STATUS_OK) {
        st = mb_bench_zmq_send_frames(z, &f[0], plan.op, req.tag, plan.bytes,
                                      plan.copy_body ? zmq_msg_data(&f[2]) : NULL);
        *quit = plan.quit;
    }
    for (int i = 0; i < 3; i++)
        zmq_msg_close(&f[i]); /* a sent id is empty now */
    return st;
}

static void mb_bench_zmq_destroy(void *impl)
{
    mb_bench_zmq_free(impl);
}

static const mb_bench_chan_ops mb_bench_zmq_ops = {mb_bench_zmq_send, mb_bench_zmq_recv,
                                                   mb_bench_zmq_serve, mb_bench_zmq_destroy};

static mb_status mb_bench_zmq_open(int type, mb_bench_zmq **out)
{
    mb_bench_zmq *z = calloc(1, sizeof(*z));
    if (!z) return MB_STATUS_NOMEM;
    z->ctx = zmq_ctx_new();
    if (!z->ctx) goto fail;
    z->sock = zmq_socket(z->ctx, type);
    if (!z->sock) goto fail;
    /* Linger so that the echo side's last ack leaves before its context
     * ends; the parent hangs up only after it got that ack. */
    int linger = 1000, hwm = MB_BENCH_ZMQ_HWM, timeo = (int)(MB_BENCH_WAIT_NS / 1000000);
    if (zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof(linger)) ||
        zmq_setsockopt(z->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(z->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(z->sock, ZMQ_RCVTIMEO, &timeo, sizeof(timeo)) ||
        zmq_setsockopt(z->sock, ZMQ_SNDTIMEO, &timeo, sizeof(timeo)))
        goto fail;
    *out = z;
    return MB_STATUS_OK;
fail:
    mb_bench_zmq_free(z);
    return MB_STATUS_IO;
}

mb_status mb_bench_chan_zmq_listen(const char *endpoint, mb_bench_chan *out, char *bound,
                                   size_t cap)
{
    mb_bench_zmq *z;
    mb_status st = mb_bench_zmq_open(ZMQ_ROUTER, &z);
    if (st != MB_STATUS_OK) return st;
    size_t len = cap;
    if (zmq_bind(z->sock, endpoint) || zmq_getsockopt(z->sock, ZMQ_LAST_ENDPOINT, bound, &len)) {
        mb_bench_zmq_free(z);
        return MB_STATUS_IO;
    }
    out->ops = &mb_bench_zmq_ops;
    out->impl = z;
    return MB_STATUS_OK;
}

mb_status mb_bench_chan_zmq_connect(const char *endpoint, mb_bench_chan *out)
{
    mb_bench_zmq *z;
    mb_status st = mb_bench_zmq_open(ZMQ_DEALER, &z);
    if (st != MB_STATUS_OK) return st;
    if (zmq_connect(z->sock, endpoint)) {
        mb_bench_zmq_free(z);
        return MB_STATUS_IO;
    }
    out->ops = &mb_bench_zmq_ops;
    out->impl = z;
    return MB_STATUS_OK;
}
