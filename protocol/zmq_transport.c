/* The ZeroMQ transport (ipc:// and tcp://): a worker's ROUTER serves the one
 * coordinator DEALER whose message reached it first. A message travels as a
 * 32-byte header frame and a body frame; large bodies leave zero-copy from a
 * pooled buffer, and recv reassembles both frames into one aligned buffer.
 * Socket setup, connection events and ipc files live in zmq_socket.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "protocol/message.h"
#include "protocol/zmq_impl.h"

/* What the small send buffer holds: messages whose body is copied. */
#define MB_ZMQ_SMALL_BYTES (MB_PROTO_HEADER_BYTES + MB_ZMQ_COPY_MAX_BYTES)
/* A recv that may not block stops after this many messages from a second
 * coordinator, so a flood cannot keep it from returning. */
#define MB_ZMQ_MAX_FOREIGN_SKIPS 1024
/* recv drains connection events at least this often, in messages. */
#define MB_ZMQ_DRAIN_EVERY 64u

static const mb_transport_ops mb_zmq_ops;

static size_t mb_zmq_round64(size_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

/* ---- sending ---- */

static void mb_zmq_drop_reservation(mb_zmq_transport *t)
{
    if (t->send_buf) mb_zmq_pool_put(t->send_buf);
    t->send_buf = NULL;
    t->reserved_bytes = 0;
}

/* zmq's queue (HWM) decides whether a message fits, and libzmq owns that
 * state: reserve only hands out memory, and the wait for room happens in
 * send_commit, which is where a full queue shows. timeout_ns is kept for it. */
static mb_status mb_zmq_send_reserve(void *impl, size_t bytes, int64_t timeout_ns, void **buf)
{
    mb_zmq_transport *t = impl;
    if (t->reserved_bytes || bytes < MB_PROTO_HEADER_BYTES) return MB_STATUS_INVALID_ARG;
    if (bytes > t->max_message_bytes) return MB_STATUS_FULL;
    if (t->peer_dead || (t->role == MB_ZMQ_ROLE_LISTEN && !t->peer_known))
        return MB_STATUS_PEER_DEAD;
    unsigned char *p = t->small;
    if (bytes > MB_ZMQ_SMALL_BYTES) {
        t->send_buf = mb_zmq_pool_get(t->pool, bytes);
        if (!t->send_buf) return MB_STATUS_NOMEM;
        p = mb_zmq_buf_data(t->send_buf);
    }
    t->reserved_bytes = bytes;
    t->send_timeout_ns = timeout_ns; /* commit starts the clock if it has to wait */
    *buf = p;
    return MB_STATUS_OK;
}

/* Sends one frame that cannot meet a full queue (not a message's first). */
static int mb_zmq_send_frame(void *sock, const void *data, size_t len, int more)
{
    int flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0);
    for (;;) {
        if (zmq_send(sock, data, len, flags) >= 0) return 0;
        if (zmq_errno() != EINTR) return -1;
    }
}

/* Sends a message's first frame, waiting for queue room as long as the
 * reservation's timeout allows. libzmq checks the queue limit on first frames only,
 * so once it is in, the others are too. */
static mb_status mb_zmq_send_first(mb_zmq_transport *t, const void *data, size_t len)
{
    int64_t deadline = 0;
    int have_deadline = 0;
    for (;;) {
        if (zmq_send(t->sock, data, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) return MB_STATUS_OK;
        int err = zmq_errno();
        if (err == EINTR) continue;
        if (err != EAGAIN) {
            mb_status st = mb_zmq_errno_status(err);
            if (st == MB_STATUS_PEER_DEAD) t->peer_dead = 1;
            return st;
        }
        if (!have_deadline) {
            int64_t timeout_ns = t->send_timeout_ns;
            if (timeout_ns < 0) timeout_ns = (int64_t)t->send_timeout_ms * 1000000;
            deadline = mb_zmq_deadline_ns(timeout_ns);
            have_deadline = 1;
        }
        mb_status st = mb_zmq_wait_writable(t, deadline);
        if (st != MB_STATUS_OK) return st;
    }
}

/* Sends msg[bytes] held in b (a pool buffer) or in t->small (b NULL); b is
 * consumed whatever happens. */
static mb_status mb_zmq_send_message(mb_zmq_transport *t, const unsigned char *msg, size_t bytes,
                                     mb_zmq_buf *b)
{
    mb_status st;
    if (t->peer_dead || (t->role == MB_ZMQ_ROLE_LISTEN && !t->peer_known)) {
        st = MB_STATUS_PEER_DEAD;
        goto out;
    }
    if (t->role == MB_ZMQ_ROLE_LISTEN) {
        st = mb_zmq_send_first(t, t->peer_id, t->peer_id_len);
        if (st != MB_STATUS_OK) goto out;
        if (mb_zmq_send_frame(t->sock, msg, MB_PROTO_HEADER_BYTES, 1)) goto broken;
    } else {
        st = mb_zmq_send_first(t, msg, MB_PROTO_HEADER_BYTES);
        if (st != MB_STATUS_OK) goto out;
    }

    size_t body = bytes - MB_PROTO_HEADER_BYTES;
    if (!b || body <= MB_ZMQ_COPY_MAX_BYTES) {
        if (mb_zmq_send_frame(t->sock, msg + MB_PROTO_HEADER_BYTES, body, 0)) goto broken;
        st = MB_STATUS_OK;
        goto out;
    }
    zmq_msg_t frame;
    mb_zmq_pool_hand_over(b);
    if (zmq_msg_init_data(&frame, (void *)(msg + MB_PROTO_HEADER_BYTES), body,
                          mb_zmq_pool_free_frame, b)) {
        /* Out of memory with a message half sent: end it with an empty body
         * (no allocation) so the stream stays framed; the peer's decoder
         * rejects the short message. */
        mb_zmq_send_frame(t->sock, "", 0, 0);
        st = MB_STATUS_NOMEM;
        goto out;
    }
    b = NULL; /* the frame owns it now; libzmq returns it to the pool */
    for (;;) {
        if (zmq_msg_send(&frame, t->sock, ZMQ_DONTWAIT) >= 0) return MB_STATUS_OK;
        if (zmq_errno() != EINTR) break;
    }
    zmq_msg_close(&frame);

broken:
    /* A later frame failed only if the connection went away mid-message;
     * libzmq has rolled the message back. */
    t->peer_dead = 1;
    st = MB_STATUS_PEER_DEAD;
out:
    if (b) mb_zmq_pool_put(b);
    return st;
}

static mb_status mb_zmq_send_commit(void *impl, size_t bytes)
{
    mb_zmq_transport *t = impl;
    if (!t->reserved_bytes) return MB_STATUS_INVALID_ARG;
    if (bytes > t->reserved_bytes || bytes < MB_PROTO_HEADER_BYTES) {
        mb_zmq_drop_reservation(t);
        return MB_STATUS_INVALID_ARG;
    }
    mb_zmq_buf *b = t->send_buf;
    const unsigned char *msg = b ? mb_zmq_buf_data(b) : t->small;
    t->send_buf = NULL;
    t->reserved_bytes = 0;
    return mb_zmq_send_message(t, msg, bytes, b);
}

/* ---- receiving ---- */

static mb_status mb_zmq_rbuf_reserve(mb_zmq_transport *t, size_t bytes)
{
    if (bytes <= t->rbuf_cap) return MB_STATUS_OK;
    /* 1/8 headroom: messages that grow a little at a time (a batch of a few
     * more tokens) do not reallocate each time. bytes <= max_message_bytes
     * <= INT64_MAX, so this cannot overflow. */
    size_t cap = mb_zmq_round64(bytes + bytes / 8);
    unsigned char *p = aligned_alloc(64, cap);
    if (!p) return MB_STATUS_NOMEM;
    free(t->rbuf);
    t->rbuf = p;
    t->rbuf_cap = cap;
    return MB_STATUS_OK;
}

/* The listener's first well-formed message names its coordinator. Connection
 * events already queued are read first: a drop reported there belongs to an
 * earlier connection that may have had the same descriptor number. */
static mb_status mb_zmq_learn_peer(mb_zmq_transport *t, zmq_msg_t *id, zmq_msg_t *header)
{
    size_t len = zmq_msg_size(id);
    if (len == 0 || len > sizeof t->peer_id) return MB_STATUS_PROTOCOL;
    mb_zmq_monitor_drain(t);
    memcpy(t->peer_id, zmq_msg_data(id), len);
    t->peer_id_len = len;
    t->peer_fd = zmq_msg_get(header, ZMQ_SRCFD);
    t->peer_known = 1;
    return MB_STATUS_OK;
}

/* 1 when a 32-byte header frame announces a HELLO: what opens a session. */
static int mb_zmq_is_hello(const zmq_msg_t *header)
{
    if (zmq_msg_size(header) != MB_PROTO_HEADER_BYTES) return 0;
    const unsigned char *p = zmq_msg_data((zmq_msg_t *)header);
    uint32_t magic;
    uint16_t opcode;
    memcpy(&magic, p, sizeof magic);
    memcpy(&opcode, p + 6, sizeof opcode);
    return magic == MB_PROTO_MAGIC && opcode == MB_OP_HELLO;
}

/* Tells a second coordinator, whose HELLO came while a session runs, that
 * this worker is taken. Best effort and never waits: a full queue or a
 * vanished peer loses the answer. */
static void mb_zmq_answer_busy(mb_zmq_transport *t, zmq_msg_t *id, zmq_msg_t *header)
{
    unsigned char reply[MB_PROTO_HEADER_BYTES] __attribute__((aligned(8)));
    uint64_t tag;
    size_t len = 0;
    memcpy(&tag, (const unsigned char *)zmq_msg_data(header) + 8, sizeof tag);
    if (mb_proto_encode_empty(reply, sizeof reply, MB_OP_STATUS, tag, MB_STATUS_BUSY, &len) != MB_STATUS_OK)
        return;
    if (zmq_send(t->sock, zmq_msg_data(id), zmq_msg_size(id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return;
    /* Once the first frame is in, the rest fit (see mb_zmq_send_first). */
    if (mb_zmq_send_frame(t->sock, reply, len, 1) == 0 && mb_zmq_send_frame(t->sock, "", 0, 0) == 0)
        t->n_busy++;
}

/* Receives one whole message (flags: ZMQ_DONTWAIT, or 0 to block up to the
 * socket's RCVTIMEO) and checks its framing: [routing id (listener)] header
 * of exactly 32 bytes, body within max_message_bytes. OK with the message in
 * t->rbuf; AGAIN when none came or it came from a stranger (*foreign set);
 * PROTOCOL, TRUNCATED or NOMEM for a message of the peer that was dropped.
 * A listener without a peer yet takes the sender of the first well-formed
 * message (HELLO with session_hello) as its peer; every other message
 * before it is a stranger's. */
static mb_status mb_zmq_read_message(mb_zmq_transport *t, int flags, size_t *bytes, int *foreign)
{
    enum { MAX_FRAMES = 3 };
    zmq_msg_t f[MAX_FRAMES];
    const size_t want = t->role == MB_ZMQ_ROLE_LISTEN ? 3 : 2;
    size_t n = 0, n_kept = 0;
    *foreign = 0;

    zmq_msg_init(&f[0]);
    if (zmq_msg_recv(&f[0], t->sock, flags) < 0) {
        int err = zmq_errno();
        zmq_msg_close(&f[0]);
        return err == EAGAIN || err == EINTR ? MB_STATUS_AGAIN : mb_zmq_errno_status(err);
    }
    n = n_kept = 1;
    /* The rest of a multipart message is already here: libzmq delivers
     * messages whole. Frames beyond the expected count are counted and
     * discarded. */
    int more = zmq_msg_more(&f[0]);
    while (more) {
        zmq_msg_t scratch, *m = n_kept < MAX_FRAMES ? &f[n_kept] : &scratch;
        zmq_msg_init(m);
        int rc;
        while ((rc = zmq_msg_recv(m, t->sock, 0)) < 0 && zmq_errno() == EINTR) {
        }
        if (rc < 0) {
            zmq_msg_close(m);
            break;
        }
        n++;
        more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(m);
        else
            n_kept++;
    }

    mb_status st = MB_STATUS_OK;
    size_t h = 0;
    const int claiming = t->role == MB_ZMQ_ROLE_LISTEN && !t->peer_known;
    if (t->role == MB_ZMQ_ROLE_LISTEN) {
        h = 1;
        if (t->peer_known && (zmq_msg_size(&f[0]) != t->peer_id_len ||
                              memcmp(zmq_msg_data(&f[0]), t->peer_id, t->peer_id_len) != 0)) {
            if (t->session_hello && n == want && mb_zmq_is_hello(&f[1])) mb_zmq_answer_busy(t, &f[0], &f[1]);
            st = MB_STATUS_AGAIN;
        } else if (claiming && t->session_hello && (n != want || !mb_zmq_is_hello(&f[1]))) {
            st = MB_STATUS_AGAIN;
        }
    }
    if (st != MB_STATUS_OK) {
    } else if (n != want) {
        st = MB_STATUS_PROTOCOL;
    } else if (zmq_msg_size(&f[h]) != MB_PROTO_HEADER_BYTES) {
        st = zmq_msg_size(&f[h]) < MB_PROTO_HEADER_BYTES ? MB_STATUS_TRUNCATED : MB_STATUS_PROTOCOL;
    } else if (zmq_msg_size(&f[h + 1]) > t->max_message_bytes - MB_PROTO_HEADER_BYTES) {
        st = MB_STATUS_PROTOCOL;
    } else {
        size_t body = zmq_msg_size(&f[h + 1]);
        st = mb_zmq_rbuf_reserve(t, MB_PROTO_HEADER_BYTES + body);
        if (st == MB_STATUS_OK && claiming) st = mb_zmq_learn_peer(t, &f[0], &f[h]);
        if (st == MB_STATUS_OK) {
            memcpy(t->rbuf, zmq_msg_data(&f[h]), MB_PROTO_HEADER_BYTES);
            if (body) memcpy(t->rbuf + MB_PROTO_HEADER_BYTES, zmq_msg_data(&f[h + 1]), body);
            *bytes = MB_PROTO_HEADER_BYTES + body;
        }
    }
    if (st != MB_STATUS_OK && (st == MB_STATUS_AGAIN || (claiming && t->session_hello))) {
        /* Not the peer's: a stranger, or (session_hello) someone who has not
         * opened a session. Dropped without an answer or a mark against the
         * session. */
        t->n_foreign++;
        *foreign = 1;
        st = MB_STATUS_AGAIN;
    } else if (st != MB_STATUS_OK) {
        t->n_rejected++;
    }
    for (size_t i = 0; i < n_kept; i++)
        zmq_msg_close(&f[i]);
    return st;
}

static void mb_zmq_set_rcvtimeo(mb_zmq_transport *t, int ms)
{
    if (t->rcvtimeo_ms == ms) return;
    if (zmq_setsockopt(t->sock, ZMQ_RCVTIMEO, &ms, sizeof ms) == 0) t->rcvtimeo_ms = ms;
}

/* Blocks in slices of at most MB_ZMQ_RECV_SLICE_MS inside libzmq's own
 * receive (the cheapest wait it has), reading connection events between
 * slices. Messages that arrived before the peer was lost are still
 * delivered; PEER_DEAD comes once they are gone. */
static mb_status mb_zmq_recv(void *impl, int64_t timeout_ns, const void **buf, size_t *bytes)
{
    mb_zmq_transport *t = impl;
    if (t->holding) return MB_STATUS_INVALID_ARG;
    int64_t deadline = mb_zmq_deadline_ns(timeout_ns);
    unsigned foreign_skips = 0;
    for (;;) {
        int flags = ZMQ_DONTWAIT;
        if (timeout_ns != 0 && !t->peer_dead) {
            int64_t left = deadline == INT64_MAX ? INT64_MAX : deadline - mb_zmq_now_ns();
            if (left > 0) {
                int64_t ms = (left + 999999) / 1000000;
                mb_zmq_set_rcvtimeo(t, ms < MB_ZMQ_RECV_SLICE_MS ? (int)ms : MB_ZMQ_RECV_SLICE_MS);
                flags = 0;
            }
        }
        size_t n = 0;
        int foreign = 0;
        mb_status st = mb_zmq_read_message(t, flags, &n, &foreign);
        if (st == MB_STATUS_OK) {
            if (++t->recv_since_drain >= MB_ZMQ_DRAIN_EVERY) mb_zmq_monitor_drain(t);
            t->holding = 1;
            *buf = t->rbuf;
            *bytes = n;
            return MB_STATUS_OK;
        }
        if (st != MB_STATUS_AGAIN) return st;
        if (foreign) {
            if (flags == ZMQ_DONTWAIT && ++foreign_skips >= MB_ZMQ_MAX_FOREIGN_SKIPS)
                return t->peer_dead ? MB_STATUS_PEER_DEAD : MB_STATUS_TIMEOUT;
            continue;
        }
        if (t->peer_dead) return MB_STATUS_PEER_DEAD;
        mb_zmq_monitor_drain(t);
        if (t->peer_dead) continue; /* one more look for what came before the drop */
        if (flags == ZMQ_DONTWAIT) return MB_STATUS_TIMEOUT;
    }
}

static void mb_zmq_recv_release(void *impl)
{
    mb_zmq_transport *t = impl;
    t->holding = 0;
    if (t->rbuf_cap > MB_ZMQ_RBUF_KEEP_BYTES) {
        free(t->rbuf);
        t->rbuf = NULL;
        t->rbuf_cap = 0;
    }
}

static size_t mb_zmq_max_message_bytes(void *impl)
{
    return ((mb_zmq_transport *)impl)->max_message_bytes;
}

/* ---- lifetime ---- */

static void mb_zmq_free(mb_zmq_transport *t)
{
    mb_zmq_drop_reservation(t);
    /* Terminating the context frees every frame libzmq still holds, which
     * returns their buffers to the pool before the pool is released. */
    mb_zmq_socket_close(t);
    mb_zmq_pool_release(t->pool);
    free(t->small);
    free(t->rbuf);
    free(t);
}

static void mb_zmq_destroy(void *impl)
{
    mb_zmq_free(impl);
}

static const mb_transport_ops mb_zmq_ops = {
    .name = "zmq",
    .send_reserve = mb_zmq_send_reserve,
    .send_commit = mb_zmq_send_commit,
    .recv = mb_zmq_recv,
    .recv_release = mb_zmq_recv_release,
    .max_message_bytes = mb_zmq_max_message_bytes,
    .destroy = mb_zmq_destroy,
};

static mb_status mb_zmq_check_endpoint(const char *endpoint)
{
    if (!endpoint) return MB_STATUS_INVALID_ARG;
    if (strncmp(endpoint, "ipc://", 6) != 0 && strncmp(endpoint, "tcp://", 6) != 0)
        return MB_STATUS_INVALID_ARG;
    size_t len = strlen(endpoint);
    if (len <= 6 || len >= sizeof(((mb_zmq_transport *)0)->endpoint)) return MB_STATUS_INVALID_ARG;
    return MB_STATUS_OK;
}

static mb_status mb_zmq_create(mb_zmq_role role, const char *endpoint, const mb_zmq_options *opt,
                               mb_zmq_transport **out)
{
    mb_zmq_transport *t = calloc(1, sizeof *t);
    if (!t) return MB_STATUS_NOMEM;
    t->role = role;
    t->peer_fd = -1;
    mb_status st = MB_STATUS_NOMEM;
    t->small = aligned_alloc(64, mb_zmq_round64(MB_ZMQ_SMALL_BYTES));
    if (!t->small) goto fail;
    st = mb_zmq_pool_create(&t->pool);
    if (st != MB_STATUS_OK) goto fail;
    st = mb_zmq_socket_open(t, role == MB_ZMQ_ROLE_LISTEN ? ZMQ_ROUTER : ZMQ_DEALER, opt);
    if (st != MB_STATUS_OK) goto fail;
    /* libzmq speaks IPv6 only when asked; a bracketed address asks. */
    int ipv6 = 1;
    if (strchr(endpoint, '[') && zmq_setsockopt(t->sock, ZMQ_IPV6, &ipv6, sizeof ipv6) != 0) {
        st = MB_STATUS_INVALID_ARG;
        goto fail;
    }
    *out = t;
    return MB_STATUS_OK;
fail:
    mb_zmq_free(t);
    return st;
}

/* Creates a listening transport bound to endpoint (both listen calls). */
static mb_status mb_zmq_bound_create(const char *endpoint, const mb_zmq_options *opt, mb_zmq_transport **out)
{
    mb_zmq_transport *t = NULL;
    mb_status st = mb_zmq_create(MB_ZMQ_ROLE_LISTEN, endpoint, opt, &t);
    if (st != MB_STATUS_OK) return st;
    if (zmq_bind(t->sock, endpoint) != 0) {
        st = mb_zmq_errno_status(zmq_errno());
        if (st == MB_STATUS_AGAIN) st = MB_STATUS_IO;
        mb_zmq_free(t);
        return st;
    }
    mb_zmq_socket_note_bound(t);
    *out = t;
    return MB_STATUS_OK;
}

mb_status mb_zmq_transport_listen(const char *endpoint, const mb_zmq_options *opt,
                                  mb_transport *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_zmq_check_endpoint(endpoint);
    if (st != MB_STATUS_OK) return st;
    st = mb_zmq_ipc_prepare(endpoint);
    if (st != MB_STATUS_OK) return st;
    mb_zmq_transport *t = NULL;
    st = mb_zmq_bound_create(endpoint, opt, &t);
    if (st != MB_STATUS_OK) return st;
    out->ops = &mb_zmq_ops;
    out->impl = t;
    return MB_STATUS_OK;
}

mb_status mb_zmq_transport_listen_inproc(const char *endpoint, const mb_zmq_options *opt, mb_transport *out,
                                         void **ctx)
{
    if (!endpoint || !out || !ctx || strncmp(endpoint, "inproc://", 9) != 0 ||
        strlen(endpoint) >= sizeof(((mb_zmq_transport *)0)->endpoint))
        return MB_STATUS_INVALID_ARG;
    mb_zmq_transport *t = NULL;
    mb_status st = mb_zmq_bound_create(endpoint, opt, &t);
    if (st != MB_STATUS_OK) return st;
    *ctx = t->ctx;
    out->ops = &mb_zmq_ops;
    out->impl = t;
    return MB_STATUS_OK;
}

int mb_zmq_endpoint_is_local(const char *endpoint)
{
    if (!endpoint) return 0;
    if (!strncmp(endpoint, "ipc://", 6)) return 1;
    if (strncmp(endpoint, "tcp://", 6) != 0) return 0;
    const char *host = endpoint + 6;
    /* A source address ("tcp://src;dst") is refused rather than parsed. */
    if (strchr(host, ';')) return 0;
    const char *colon = strrchr(host, ':');
    if (!colon) return 0;
    size_t len = (size_t)(colon - host);
    if (len == 9 && !strncmp(host, "localhost", 9)) return 1;
    if (len == 5 && !strncmp(host, "[::1]", 5)) return 1;
    char ip[16];
    if (len == 0 || len >= sizeof ip) return 0;
    memcpy(ip, host, len);
    ip[len] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1) return 0;
    return (ntohl(a.s_addr) >> 24) == 127;
}

mb_status mb_zmq_transport_connect(const char *endpoint, const mb_zmq_options *opt,
                                   mb_transport *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_zmq_check_endpoint(endpoint);
    if (st != MB_STATUS_OK) return st;
    mb_zmq_transport *t = NULL;
    st = mb_zmq_create(MB_ZMQ_ROLE_CONNECT, endpoint, opt, &t);
    if (st != MB_STATUS_OK) return st;
    if (zmq_connect(t->sock, endpoint) != 0) {
        st = mb_zmq_errno_status(zmq_errno());
        if (st == MB_STATUS_AGAIN) st = MB_STATUS_IO;
        mb_zmq_free(t);
        return st;
    }
    memcpy(t->endpoint, endpoint, strlen(endpoint) + 1);
    out->ops = &mb_zmq_ops;
    out->impl = t;
    return MB_STATUS_OK;
}

mb_status mb_zmq_transport_end_session(mb_transport *t)
{
    if (!t || t->ops != &mb_zmq_ops || !t->impl) return MB_STATUS_INVALID_ARG;
    mb_zmq_transport *z = t->impl;
    if (z->role != MB_ZMQ_ROLE_LISTEN || z->holding || z->reserved_bytes) return MB_STATUS_INVALID_ARG;
    /* libzmq cannot drop one peer of a ROUTER; shutting its connection down
     * makes libzmq's I/O thread see the end and close the descriptor itself
     * (shutdown, unlike close, leaves the number allocated to it). Events
     * read first say whether that connection is still the peer's. */
    mb_zmq_monitor_drain(z);
    if (z->peer_known && !z->peer_dead && z->peer_fd >= 0) shutdown(z->peer_fd, SHUT_RDWR);
    z->peer_known = 0;
    z->peer_dead = 0;
    z->peer_id_len = 0;
    z->peer_fd = -1;
    /* The session's last messages (weights, activations) leave with it:
     * the next one starts without a receive buffer, as without experts. */
    free(z->rbuf);
    z->rbuf = NULL;
    z->rbuf_cap = 0;
    return MB_STATUS_OK;
}

int mb_zmq_transport_handshake_failed(const mb_transport *t)
{
    if (!t || t->ops != &mb_zmq_ops || !t->impl) return 0;
    return ((const mb_zmq_transport *)t->impl)->handshake_failed;
}

int mb_zmq_transport_peer_connected(mb_transport *t)
{
    if (!t || t->ops != &mb_zmq_ops || !t->impl) return 0;
    mb_zmq_transport *z = t->impl;
    mb_zmq_monitor_drain(z);
    return !z->peer_dead;
}

mb_status mb_zmq_transport_endpoint(const mb_transport *t, char *buf, size_t cap)
{
    if (!t || t->ops != &mb_zmq_ops || !t->impl || !buf) return MB_STATUS_INVALID_ARG;
    const mb_zmq_transport *z = t->impl;
    size_t len = strlen(z->endpoint);
    if (len >= cap) return MB_STATUS_FULL;
    memcpy(buf, z->endpoint, len + 1);
    return MB_STATUS_OK;
}
