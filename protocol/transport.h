/* The transport interface: one message-oriented, bidirectional channel
 * between the coordinator and one worker. Implemented by the shared-memory
 * ring (shm/), ZeroMQ (protocol/zmq_transport.c) and used identically on both
 * ends. Messages are whole protocol messages (header + body), contiguous and
 * 8-byte aligned. Several requests may be in flight: a sender may commit
 * several messages before reading any reply. One thread per endpoint. */
#ifndef MB_PROTOCOL_TRANSPORT_H
#define MB_PROTOCOL_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

typedef struct mb_transport_ops {
    const char *name; /* "shm", "zmq" */

    /* Reserves bytes of contiguous, 8-aligned space for the next outgoing
     * message and returns it in *buf so the caller encodes in place. Blocks
     * up to timeout_ns (< 0: forever) while the channel is full; FULL if the
     * message can never fit, TIMEOUT, PEER_DEAD. One reservation at a time. */
    mb_status (*send_reserve)(void *impl, size_t bytes, int64_t timeout_ns, void **buf);

    /* Publishes the reserved message, bytes <= the reserved size. Wakes the
     * peer if it sleeps. Does not wait for the peer. */
    mb_status (*send_commit)(void *impl, size_t bytes);

    /* Waits up to timeout_ns (< 0: forever, 0: poll) for the next incoming
     * message; *buf stays valid, 8-aligned and unchanged until recv_release.
     * TIMEOUT when none came, PEER_DEAD when the peer exited or hung up,
     * CORRUPT when shared state failed validation. One message at a time. */
    mb_status (*recv)(void *impl, int64_t timeout_ns, const void **buf, size_t *bytes);

    /* Returns the received message's space to the transport. */
    void (*recv_release)(void *impl);

    /* Largest message this channel carries. */
    size_t (*max_message_bytes)(void *impl);

    /* Closes the channel and frees everything (unlinks files it created).
     * Cannot fail. */
    void (*destroy)(void *impl);
} mb_transport_ops;

typedef struct {
    const mb_transport_ops *ops;
    void *impl;
} mb_transport;

/* Wrappers: argument checks, then the table member. The single place where
 * tests inject faults. */
mb_status mb_transport_send_reserve(mb_transport *t, size_t bytes, int64_t timeout_ns, void **buf);
mb_status mb_transport_send_commit(mb_transport *t, size_t bytes);
mb_status mb_transport_recv(mb_transport *t, int64_t timeout_ns, const void **buf, size_t *bytes);
void mb_transport_recv_release(mb_transport *t);
size_t mb_transport_max_message_bytes(mb_transport *t);
void mb_transport_destroy(mb_transport *t);

/* Copies a ready message (len bytes) through reserve + commit. */
mb_status mb_transport_send_copy(mb_transport *t, const void *msg, size_t len, int64_t timeout_ns);

/* ---- ZeroMQ (ipc:// and tcp://) ----
 * One worker (ROUTER, binds) serves one coordinator (DEALER, connects). Each
 * message travels as two frames, the 32-byte header and the body (possibly
 * empty), so messages are at least MB_PROTO_HEADER_BYTES long: send_reserve
 * refuses smaller ones (INVALID_ARG). Large bodies go out zero-copy; recv
 * copies the two frames into one 64-aligned buffer. A malformed message (frame
 * count, header frame not 32 bytes, too long) makes recv return PROTOCOL or
 * TRUNCATED; it is dropped and the channel keeps serving, except a frame
 * past max_message_bytes, on which libzmq drops the sender's connection. The
 * worker learns its coordinator from the first well-formed message and
 * silently drops messages from any other; until then its sends return
 * PEER_DEAD (nobody to answer). A lost peer (connection dropped, or ZMTP
 * heartbeats unanswered for heartbeat_timeout_ms) makes recv and send return
 * PEER_DEAD, for good: in-flight work on the lost connection is gone.
 * send_commit may wait for queue room (the connection not up yet, or 256
 * messages queued) up to the timeout given to send_reserve, or
 * send_timeout_ms when that was < 0; it returns TIMEOUT or PEER_DEAD then,
 * and the reservation is gone either way. Each transport has its own libzmq
 * context, so a forked child may open its own (but must not use or destroy
 * its parent's). */

typedef struct {
    size_t max_message_bytes; /* ZMQ_MAXMSGSIZE; 0: 1 GiB */
    int heartbeat_ms;         /* ZMTP heartbeat interval; 0: 250 */
    int heartbeat_timeout_ms; /* peer declared dead after this; 0: 1000. Must
                                 exceed the transfer time of the largest
                                 message: ZMTP counts only whole messages. */
    int send_timeout_ms;      /* send_commit's bound when send_reserve had no
                                 timeout; 0: 5000 */
} mb_zmq_options;

/* Worker side: binds endpoint ("ipc:///path", "tcp://host:port"; a port of
 * "*" picks a free one, see mb_zmq_transport_endpoint) and waits for one
 * coordinator. Non-blocking: the peer is accepted on first recv. opt may be
 * NULL (defaults). For ipc:// a stale socket file at the path is replaced; a
 * path that holds another kind of file is refused (INVALID_ARG) and one a
 * live process listens on is refused (IO); destroy removes the socket file.
 * INVALID_ARG for a bad endpoint or option, IO when the address is taken. */
mb_status mb_zmq_transport_listen(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

/* Coordinator side: connects to a listening worker. Non-blocking: the
 * connection comes up in the background (and is retried until it does); the
 * first send_commit waits for it. opt may be NULL. INVALID_ARG for a bad
 * endpoint or option. */
mb_status mb_zmq_transport_connect(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

/* Writes the transport's endpoint, NUL-terminated, into buf (cap bytes): for
 * a listener the address it is bound to with wildcards resolved
 * ("tcp://127.0.0.1:41234"), for a connector the one it connects to.
 * INVALID_ARG when t is not a ZeroMQ transport, FULL when cap is too small. */
mb_status mb_zmq_transport_endpoint(const mb_transport *t, char *buf, size_t cap);

#endif
