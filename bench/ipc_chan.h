/* The IPC benchmark's channels: one small table of operations that every
 * variant under test implements the same way (the project's transports, the
 * bare spin ring, bare libzmq), so the drivers time identical work on each.
 * A message is a valid protocol header (mb_proto_header_init) and a body the
 * sender copies in from its own buffer; the receiver validates the header
 * and reads one word of every cache line of the body. The echo side (serve)
 * answers PING with a PONG of the same size whose body it copies from the
 * request, EXPERT_REQ with a 64-byte STATUS ack, and SHUTDOWN with an ack,
 * after which it stops. */
#ifndef MB_BENCH_IPC_CHAN_H
#define MB_BENCH_IPC_CHAN_H

#include <stddef.h>
#include <stdint.h>

#include "bench/spin_ring.h"
#include "protocol/message.h"
#include "protocol/status.h"
#include "protocol/transport.h"

/* Size of the acks that answer EXPERT_REQ and SHUTDOWN. */
#define MB_BENCH_ACK_BYTES 64u
/* How long a benchmark wait may take before it is called a failure. */
#define MB_BENCH_WAIT_NS (30ll * 1000000000ll)

/* What the receiver learnt from a message. */
typedef struct {
    mb_proto_opcode op;
    uint64_t tag;
    size_t bytes; /* the whole message, header included */
    uint64_t sum; /* of the words read, so the reads cannot be elided */
} mb_bench_msg_info;

typedef struct {
    /* Sends one message of bytes (>= 32): the header for op and tag, then
     * bytes - 32 of body copied from body. Blocks while the channel is full. */
    mb_status (*send)(void *impl, mb_proto_opcode op, uint64_t tag, size_t bytes, const void *body);
    /* Waits for the next message, validates its header, reads its body and
     * hands the space back. PROTOCOL for a malformed message. */
    mb_status (*recv)(void *impl, mb_bench_msg_info *info);
    /* Echo side: waits for one request and answers it (see the file
     * comment); *quit becomes 1 after SHUTDOWN. */
    mb_status (*serve)(void *impl, int *quit);
    /* Frees everything. Cannot fail. */
    void (*destroy)(void *impl);
} mb_bench_chan_ops;

typedef struct {
    const mb_bench_chan_ops *ops;
    void *impl;
} mb_bench_chan;

/* Wraps a transport (shm or zmq); the channel takes ownership of *t, also on
 * failure. NOMEM. */
mb_status mb_bench_chan_from_transport(mb_transport *t, mb_bench_chan *out);

/* Side 0 or 1 of a spin ring channel; c stays owned by the caller and must
 * outlive the channel. INVALID_ARG, NOMEM. */
mb_status mb_bench_chan_from_spin(mb_bench_spin_chan *c, int side, mb_bench_chan *out);

/* Bare libzmq: a ROUTER bound to endpoint (wildcards allowed), its resolved
 * address written to bound[cap]; and a DEALER connected to it. Messages are
 * two frames (header, body), as the transport sends them. IO on failure. */
mb_status mb_bench_chan_zmq_listen(const char *endpoint, mb_bench_chan *out, char *bound,
                                   size_t cap);
mb_status mb_bench_chan_zmq_connect(const char *endpoint, mb_bench_chan *out);

/* Frees the channel (NULL ops allowed). Cannot fail. */
void mb_bench_chan_destroy(mb_bench_chan *c);

/* Serves requests until SHUTDOWN (OK) or a failure. Blocks. */
mb_status mb_bench_chan_serve_all(mb_bench_chan *c);

/* ---- helpers for channel implementations ---- */

/* Writes the header of a message of bytes total into dst[32]. */
void mb_bench_msg_put_header(void *dst, mb_proto_opcode op, uint64_t tag, size_t bytes);

/* Validates the header at hdr (any alignment) for a message of bytes total
 * and reads body[bytes - 32]: one 8-byte word per cache line. PROTOCOL or
 * the decoder's status for a bad header. */
mb_status mb_bench_msg_read(const void *hdr, const void *body, size_t bytes,
                            mb_bench_msg_info *info);

/* What the echo side answers to a request. */
typedef struct {
    mb_proto_opcode op; /* PONG or STATUS */
    size_t bytes;       /* the reply's total size */
    int copy_body;      /* 1: the reply's body is a copy of the request's */
    int quit;           /* 1: serving stops after this reply */
} mb_bench_reply_plan;

/* Echo side: validates the request's header, plans the reply and, when the
 * reply does not copy the body (whose copy reads it anyway), reads the body
 * as mb_bench_msg_read does. PROTOCOL for an opcode that is not a request of
 * this benchmark, or the decoder's status for a bad header. */
mb_status mb_bench_msg_take_request(const void *hdr, const void *body, size_t bytes,
                                    mb_bench_msg_info *req, mb_bench_reply_plan *plan);

#endif
