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

/* ---- ZeroMQ (ipc:// and tcp://) ---- */

typedef struct {
    size_t max_message_bytes; /* ZMQ_MAXMSGSIZE; 0: 1 GiB */
    int heartbeat_ms;         /* ZMTP heartbeat interval; 0: 250 */
    int heartbeat_timeout_ms; /* peer declared dead after this; 0: 1000 */
} mb_zmq_options;

/* Worker side: binds endpoint ("ipc:///path", "tcp://host:port") and waits
 * for one coordinator. Non-blocking: the peer is accepted on first recv. */
mb_status mb_zmq_transport_listen(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

/* Coordinator side: connects to a listening worker. Non-blocking. */
mb_status mb_zmq_transport_connect(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

#endif
