/* libFuzzer target for the ZeroMQ transport's frame handling on the worker
 * side: a listener with sessions (session_hello) over inproc://, and two
 * peers (DEALER sockets in its context) sending whatever multipart messages
 * the input describes, interleaved with the listener's recv and replies and
 * the end of a session (the peer's connection cut, the socket kept). The
 * input is a list of operations: a peer sends 1-4 frames (header-shaped
 * frames are built from a few bytes so the HELLO that opens a session, a
 * second coordinator's HELLO and the peer's later messages are all
 * reachable), the listener receives and echoes, a peer drains its replies.
 * Checked: recv returns only whole, 64-aligned messages of 32 bytes or more
 * within the size limit; once a session is open, a stranger never gets
 * anything but a BUSY STATUS; nothing leaks or crashes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "protocol/message.h"
#include "protocol/transport.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_MAX_BYTES 4096 /* the listener's max_message_bytes */
#define FZ_MAX_OPS 64

typedef struct {
    const uint8_t *p;
    size_t left;
} fz_in;

static uint32_t fz_u(fz_in *in, int n)
{
    uint32_t v = 0;
    for (int i = 0; i < n && in->left; i++, in->left--, in->p++)
        v |= (uint32_t)*in->p << (8 * i);
    return v;
}

/* One frame: raw bytes, or a 32-byte protocol header with a chosen opcode,
 * status and body_bytes. */
static size_t fz_frame(fz_in *in, unsigned char *buf, size_t cap)
{
    unsigned kind = fz_u(in, 1);
    if (kind & 1) {
        mb_proto_header h = {.magic = MB_PROTO_MAGIC, .version = MB_PROTO_VERSION};
        h.opcode = (uint16_t)(fz_u(in, 1) % 11);
        h.tag = fz_u(in, 1);
        h.status = (uint16_t)(fz_u(in, 1) % 3);
        h.body_bytes = fz_u(in, 2);
        memcpy(buf, &h, sizeof h);
        return sizeof h;
    }
    size_t n = (kind >> 1) & 1 ? fz_u(in, 2) % cap : fz_u(in, 1) % 64;
    if (n > in->left) n = in->left;
    memcpy(buf, in->p, n);
    in->p += n;
    in->left -= n;
    return n;
}

/* A peer's replies: only ever complete [header][body] pairs; a peer that
 * never opened the session may get only a BUSY STATUS. */
static void fz_drain(void *sock, int is_peer)
{
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return;
        }
        if (zmq_msg_size(&f) != MB_PROTO_HEADER_BYTES || !zmq_msg_more(&f)) abort();
        mb_proto_header h;
        memcpy(&h, zmq_msg_data(&f), sizeof h);
        if (!is_peer && (h.opcode != MB_OP_STATUS || h.status != MB_STATUS_BUSY)) abort();
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0 || zmq_msg_more(&f)) abort();
        zmq_msg_close(&f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char frame[FZ_MAX_BYTES + 64];
    mb_zmq_options opt = {.max_message_bytes = FZ_MAX_BYTES, .session_hello = 1};
    mb_transport t;
    void *ctx = NULL;
    if (mb_zmq_transport_listen_inproc("inproc://fuzz", &opt, &t, &ctx) != MB_STATUS_OK) abort();
    void *peer[2];
    for (int i = 0; i < 2; i++) {
        peer[i] = zmq_socket(ctx, ZMQ_DEALER);
        int zero = 0;
        zmq_setsockopt(peer[i], ZMQ_LINGER, &zero, sizeof zero);
        if (!peer[i] || zmq_connect(peer[i], "inproc://fuzz") != 0) abort();
    }
    /* Which peer the listener took: learnt from whom its replies reach. */
    int session = -1, ended = 0;
    fz_in in = {data, size};
    for (unsigned op = 0; op < FZ_MAX_OPS && in.left; op++) {
        unsigned code = fz_u(&in, 1);
        switch (code % 4) {
        case 0:
        case 1: { /* a peer sends 1..4 frames */
            void *s = peer[code % 2];
            unsigned n_frames = 1 + (code >> 2) % 4;
            for (unsigned i = 0; i < n_frames; i++) {
                size_t n = fz_frame(&in, frame, FZ_MAX_BYTES + 64);
                zmq_send(s, frame, n, ZMQ_DONTWAIT | (i + 1 < n_frames ? ZMQ_SNDMORE : 0));
            }
            break;
        }
        case 2: { /* the listener receives one and echoes it */
            const void *msg = NULL;
            size_t bytes = 0;
            mb_status st = mb_transport_recv(&t, 0, &msg, &bytes);
            if (st != MB_STATUS_OK) break;
            if (bytes < MB_PROTO_HEADER_BYTES || bytes > FZ_MAX_BYTES || ((uintptr_t)msg & 63)) abort();
            void *buf = NULL;
            if (mb_transport_send_reserve(&t, bytes, 0, &buf) == MB_STATUS_OK) {
                memcpy(buf, msg, bytes);
                /* A reply status is any 16-bit value; the peer checks framing. */
                mb_transport_send_commit(&t, bytes);
            }
            mb_transport_recv_release(&t);
            break;
        }
        default: { /* the peers read what came back; maybe the session ends */
            if ((code >> 2) % 8 == 7) {
                /* Which peer a later reply belongs to is no longer
                 * checked: queued replies of the old session may still
                 * arrive. */
                if (mb_zmq_transport_end_session(&t) != MB_STATUS_OK) abort();
                ended = 1;
            }
            for (int i = 0; i < 2; i++) {
                zmq_pollitem_t it = {peer[i], 0, ZMQ_POLLIN, 0};
                if (session < 0 && zmq_poll(&it, 1, 0) == 1) {
                    /* The first reply that is not a BUSY names the session. */
                    zmq_msg_t f;
                    zmq_msg_init(&f);
                    if (zmq_msg_recv(&f, peer[i], 0) < 0 || zmq_msg_size(&f) != MB_PROTO_HEADER_BYTES) abort();
                    mb_proto_header h;
                    memcpy(&h, zmq_msg_data(&f), sizeof h);
                    zmq_msg_close(&f);
                    zmq_msg_init(&f);
                    if (zmq_msg_recv(&f, peer[i], 0) < 0) abort();
                    zmq_msg_close(&f);
                    if (!(h.opcode == MB_OP_STATUS && h.status == MB_STATUS_BUSY)) session = i;
                }
                fz_drain(peer[i], ended || session < 0 || session == i);
            }
            break;
        }
        }
    }
    for (int i = 0; i < 2; i++)
        zmq_close(peer[i]);
    mb_transport_destroy(&t);
    return 0;
}
