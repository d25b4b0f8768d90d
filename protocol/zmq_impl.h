/* Private to the ZeroMQ transport (zmq_transport.c, zmq_socket.c,
 * zmq_pool.c): the transport's state, the pool of send buffers that libzmq
 * frees from its own threads, and the socket helpers the files share. */
#ifndef MB_PROTOCOL_ZMQ_IMPL_H
#define MB_PROTOCOL_ZMQ_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol/transport.h"

/* Defaults for mb_zmq_options fields left 0. */
#define MB_ZMQ_DEFAULT_MAX_MESSAGE_BYTES ((size_t)1 << 30)
#define MB_ZMQ_DEFAULT_HEARTBEAT_MS 250
#define MB_ZMQ_DEFAULT_HEARTBEAT_TIMEOUT_MS 1000
#define MB_ZMQ_DEFAULT_SEND_TIMEOUT_MS 5000
/* Queue depth per direction, in messages (ZMQ_SNDHWM / ZMQ_RCVHWM). A
 * reader tells the writer's I/O thread it drained every HWM/2 messages; at 64
 * that command traffic cost ~3% of a small round trip, at 256 it is lost in
 * the noise, and 256 queued messages are far more than the broker keeps in
 * flight. */
#define MB_ZMQ_HWM 256
/* Bodies up to this size are copied into a libzmq message: below it the
 * copy costs less than zmq_msg_init_data's allocation plus the cross-thread
 * return of the buffer. Larger bodies go out zero-copy from a pool buffer. */
#define MB_ZMQ_COPY_MAX_BYTES 8192u
/* A blocked recv wakes this often to read connection events, which bounds
 * how late a lost peer is noticed beyond the heartbeat timeout. */
#define MB_ZMQ_RECV_SLICE_MS 50
/* Receive buffers above this size are freed on release, not kept. */
#define MB_ZMQ_RBUF_KEEP_BYTES ((size_t)64 << 20)

/* ---- send buffer pool (zmq_pool.c) ----
 * Buffers are 64-byte aligned and carry a 64-byte header in front. libzmq
 * frees a zero-copy frame from its I/O thread, so the pool is locked and
 * reference-counted: it lives until its owner and every buffer still inside
 * libzmq have let go. */
typedef struct mb_zmq_pool mb_zmq_pool;
typedef struct mb_zmq_buf {
    mb_zmq_pool *pool;
    struct mb_zmq_buf *next; /* free list link */
    size_t cap;              /* usable bytes after the header */
    atomic_size_t handed;    /* see mb_zmq_pool_hand_over */
    unsigned char pad_[64 - 4 * sizeof(size_t)];
} mb_zmq_buf;

static inline unsigned char *mb_zmq_buf_data(mb_zmq_buf *b)
{
    return (unsigned char *)(b + 1);
}

/* Creates an empty pool owned by the caller. NOMEM. */
mb_status mb_zmq_pool_create(mb_zmq_pool **out);
/* Drops the owner's reference: cached buffers are freed now, the pool itself
 * when the last buffer comes back. Cannot fail. */
void mb_zmq_pool_release(mb_zmq_pool *p);
/* Returns a buffer of at least bytes (a cached one when one fits), or NULL
 * when out of memory. Any thread. */
mb_zmq_buf *mb_zmq_pool_get(mb_zmq_pool *p, size_t bytes);
/* Gives a buffer back (cached or freed). Any thread. */
void mb_zmq_pool_put(mb_zmq_buf *b);
/* Called once the buffer holds the whole message, right before it becomes
 * a zero-copy frame: libzmq carries the frame to the thread that frees it
 * through lock-free pipes ThreadSanitizer cannot see, so this release store
 * and the acquire load in mb_zmq_pool_free_frame state the order those pipes
 * already give (a plain store and load on x86). Cannot fail. */
void mb_zmq_pool_hand_over(mb_zmq_buf *b);
/* zmq_free_fn for frames made with zmq_msg_init_data: hint is the buffer. */
void mb_zmq_pool_free_frame(void *data, void *hint);

/* ---- CURVE authentication (zmq_curve.c) ---- */

/* The ZAP handler thread of one listening transport. */
typedef struct mb_zmq_zap mb_zmq_zap;

/* Binds the handler's socket on inproc://zeromq.zap.01 in ctx (before the
 * transport's own socket binds, so no handshake finds it missing) and starts
 * its thread, which admits the CURVE client keys listed in allow_file
 * (copied). NOMEM, IO when the address is taken. */
mb_status mb_zmq_zap_start(void *ctx, const char *allow_file, mb_zmq_zap **out);

/* Waits for the thread, which ends when ctx shuts down; then frees z.
 * Call after zmq_ctx_shutdown. NULL is a no-op. */
void mb_zmq_zap_join(mb_zmq_zap *z);

/* ---- transport state ---- */

typedef enum { MB_ZMQ_ROLE_LISTEN = 0, MB_ZMQ_ROLE_CONNECT = 1 } mb_zmq_role;

typedef struct {
    mb_zmq_role role;
    void *ctx;  /* one libzmq context per transport: no shared state, fork-safe */
    void *sock; /* ROUTER (listen) or DEALER (connect) */
    void *mon;  /* PAIR receiving sock's DISCONNECTED events */
    mb_zmq_zap *zap; /* listener with CURVE: its ZAP handler, else NULL */
    size_t max_message_bytes;
    int send_timeout_ms;
    int session_hello; /* listener: only a HELLO opens a session; BUSY answers */
    int rcvtimeo_ms;           /* value now set on sock, to skip redundant calls */
    unsigned recv_since_drain; /* messages read since the monitor was drained */

    /* The peer. A listener learns it from the first well-formed message. */
    int peer_known;
    int peer_dead; /* sticky: the channel lost its peer, in-flight work is gone */
    int handshake_failed; /* connector: the worker refused the handshake */
    unsigned n_handshake_drops; /* connector: handshakes closed without a reason */
    unsigned char peer_id[255];
    size_t peer_id_len;
    int peer_fd; /* listener: the peer connection's descriptor in libzmq */

    /* Sending: one reservation at a time, in small or in a pool buffer. */
    mb_zmq_pool *pool;
    mb_zmq_buf *send_buf;
    unsigned char *small;    /* MB_PROTO_HEADER_BYTES + MB_ZMQ_COPY_MAX_BYTES, 64-aligned */
    size_t reserved_bytes;   /* 0: nothing reserved */
    int64_t send_timeout_ns; /* send_reserve's timeout, for send_commit's wait */

    /* Receiving: messages are assembled here, contiguous and 64-aligned. */
    unsigned char *rbuf;
    size_t rbuf_cap;
    int holding;

    /* Listener on an ipc:// path: the socket file we created, for unlink. */
    char ipc_path[128];
    dev_t ipc_dev;
    ino_t ipc_ino;
    int ipc_owned;

    char endpoint[256]; /* bound (wildcards resolved) or connected endpoint */

    uint64_t n_rejected; /* malformed messages dropped */
    uint64_t n_foreign;  /* messages from a second coordinator dropped */
    uint64_t n_busy;     /* HELLOs of a second coordinator answered BUSY */
} mb_zmq_transport;

/* ---- socket helpers (zmq_socket.c) ---- */

/* Monotonic clock in ns. */
int64_t mb_zmq_now_ns(void);
/* now + timeout_ns, INT64_MAX for timeout_ns < 0, saturating. */
int64_t mb_zmq_deadline_ns(int64_t timeout_ns);

/* Maps a libzmq errno to a status. */
mb_status mb_zmq_errno_status(int err);

/* Creates t->ctx, t->sock of type (ZMQ_ROUTER / ZMQ_DEALER) with every
 * option set, and t->mon attached to it. Fills the option-derived fields of
 * t. On failure everything it made is closed again. */
mb_status mb_zmq_socket_open(mb_zmq_transport *t, int type, const mb_zmq_options *opt);

/* Closes the sockets and terminates the context (never hangs: linger 0),
 * then unlinks the ipc socket file this transport created. Cannot fail. */
void mb_zmq_socket_close(mb_zmq_transport *t);

/* Checks an ipc:// endpoint's path before bind: refuses to clobber a file
 * that is not a socket (INVALID_ARG) or a socket someone still listens on
 * (IO), removes a stale socket file. */
mb_status mb_zmq_ipc_prepare(const char *endpoint);

/* After bind: records the resolved endpoint and, for ipc://, the socket
 * file's identity so destroy removes exactly that file. */
void mb_zmq_socket_note_bound(mb_zmq_transport *t);

/* Reads every pending connection event and marks the peer dead when its
 * connection went away. Non-blocking. */
void mb_zmq_monitor_drain(mb_zmq_transport *t);

/* Waits until sock has room for a message (ZMQ_POLLOUT), the peer dies or
 * deadline_ns passes: OK, PEER_DEAD, TIMEOUT. */
mb_status mb_zmq_wait_writable(mb_zmq_transport *t, int64_t deadline_ns);

#endif
