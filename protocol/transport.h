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

    /* Optional: the one mapping that every received message and every
     * reserved send buffer lies in (a shared-memory segment), valid until
     * destroy, so a worker can register it with its backend for the device
     * to read requests and write replies in place. NULL: messages live in
     * private buffers that move (the wrapper returns UNSUPPORTED). */
    mb_status (*shared_memory)(void *impl, void **base, size_t *bytes);
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
/* The transport's shared mapping (see the member); UNSUPPORTED when it has
 * none. Writes *base and *bytes only on success. */
mb_status mb_transport_shared_memory(mb_transport *t, void **base, size_t *bytes);

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
 * worker learns its coordinator from the first well-formed message (with
 * session_hello: the first well-formed HELLO, anything else from a stranger
 * being dropped unanswered, so a peer that connects and only pings claims
 * nothing). Later it drops messages from any other peer (with session_hello
 * answering a stranger's HELLO with a STATUS of BUSY); until a coordinator
 * is known its sends return PEER_DEAD (nobody to answer). A lost peer (connection dropped, or ZMTP
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
    /* CURVE authentication and encryption: keys are z85 text (40
     * characters, see mb_zmq_key_load); all NULL: plain ZMTP. A listener
     * given curve_secret_key (its own) must be given curve_allow_file too:
     * it admits only clients whose public key that file lists (one z85 key a
     * line, '#' comments), read again at every handshake, so deleting a line
     * revokes the key for new connections. Refused clients get no reply
     * and leave no state: libzmq closes them during the handshake. A
     * connector given curve_server_key (the worker's public key) must be
     * given curve_secret_key (its own); its public key is derived. */
    const char *curve_secret_key;
    const char *curve_server_key;
    const char *curve_allow_file;
    int session_hello; /* listener: a session opens with a protocol HELLO (above) */
} mb_zmq_options;

/* ---- CURVE keys ---- */
#define MB_ZMQ_KEY_CHARS 40

/* 1 when the libzmq in use has CURVE (built with libsodium). */
int mb_zmq_has_curve(void);

/* Reads a key file: its first line that is not blank or a '#' comment must
 * be a 40-character z85 key, written NUL-terminated into key. NOT_FOUND, IO,
 * FORMAT (not a key). */
mb_status mb_zmq_key_load(const char *path, char key[MB_ZMQ_KEY_CHARS + 1]);

/* Derives the public key of a z85 secret key. INVALID_ARG, UNSUPPORTED
 * (no CURVE). */
mb_status mb_zmq_key_public(const char *secret, char pub[MB_ZMQ_KEY_CHARS + 1]);

/* Writes a new keypair into dir (created 0700 when missing): secret.key
 * (mode 0600) and public.key. Never overwrites: CONFIG when either exists.
 * UNSUPPORTED without CURVE, IO; err says why. */
mb_status mb_zmq_keygen(const char *dir, char *err, size_t err_cap);

/* 1 when endpoint can only be reached from this host: ipc://, or tcp:// on
 * a loopback address (127.0.0.0/8, ::1, localhost). A wildcard ("*",
 * 0.0.0.0, ::), another address or an interface name is not. */
int mb_zmq_endpoint_is_local(const char *endpoint);

/* Worker side: binds endpoint ("ipc:///path", "tcp://host:port"; a port of
 * "*" picks a free one, see mb_zmq_transport_endpoint) and waits for one
 * coordinator. Non-blocking: the peer is accepted on first recv. opt may be
 * NULL (defaults). For ipc:// a stale socket file at the path is replaced; a
 * path that holds another kind of file is refused (INVALID_ARG) and one a
 * live process listens on is refused (IO); destroy removes the socket file.
 * INVALID_ARG for a bad endpoint or option, IO when the address is taken. */
mb_status mb_zmq_transport_listen(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

/* For tests and fuzzing: a listener bound to an inproc:// endpoint inside
 * its own libzmq context, which is returned in *ctx (borrowed: valid until
 * the transport is destroyed) so a test peer can connect from it. */
mb_status mb_zmq_transport_listen_inproc(const char *endpoint, const mb_zmq_options *opt, mb_transport *out,
                                         void **ctx);

/* Coordinator side: connects to a listening worker. Non-blocking: the
 * connection comes up in the background (and is retried until it does); the
 * first send_commit waits for it. opt may be NULL. INVALID_ARG for a bad
 * endpoint or option. */
mb_status mb_zmq_transport_connect(const char *endpoint, const mb_zmq_options *opt, mb_transport *out);

/* Listener: ends the current session without closing the socket, so the
 * endpoint stays reachable between sessions. The coordinator's connection
 * is cut (it may connect again, as a stranger), the transport forgets it,
 * and the next well-formed HELLO (or message, without session_hello) opens
 * a new session; messages of the old peer still queued count as a
 * stranger's. The receive buffer is freed. INVALID_ARG for a connector, or
 * while a received message or a reservation is held. */
mb_status mb_zmq_transport_end_session(mb_transport *t);

/* 1 when a connector's handshake was refused: the worker does not admit its
 * CURVE key, or one side uses CURVE and the other does not. The transport
 * reports PEER_DEAD then. 0 for anything else. */
int mb_zmq_transport_handshake_failed(const mb_transport *t);

/* Connector, between requests: 0 once the connection to the peer has
 * dropped (the worker ended the session or died), 1 while it holds. Reads
 * connection events only, never a message; does not block. */
int mb_zmq_transport_peer_connected(mb_transport *t);

/* Writes the transport's endpoint, NUL-terminated, into buf (cap bytes): for
 * a listener the address it is bound to with wildcards resolved
 * ("tcp://127.0.0.1:41234"), for a connector the one it connects to.
 * INVALID_ARG when t is not a ZeroMQ transport, FULL when cap is too small. */
mb_status mb_zmq_transport_endpoint(const mb_transport *t, char *buf, size_t cap);

#endif
