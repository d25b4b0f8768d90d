/* Socket plumbing of the ZeroMQ transport: the context and socket with their
 * options, the monitor that turns a dropped connection into PEER_DEAD, the
 * ipc:// socket file's lifetime, and the clock. No message handling here. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "protocol/message.h"
#include "protocol/zmq_impl.h"

#define MB_ZMQ_MONITOR_ENDPOINT "inproc://mb-zmq-monitor"
/* A connector retries every 100-200 ms (libzmq adds jitter) without backing
 * off, so a worker spawned after the coordinator connects is reached as soon
 * as it binds. */
#define MB_ZMQ_RECONNECT_IVL_MS 100
/* ZMTP carries the heartbeat TTL in deciseconds in 16 bits. */
#define MB_ZMQ_MAX_HEARTBEAT_MS 6553500
/* ZMQ_ZAP_ENFORCE_DOMAIN, a draft option: zmq.h declares it only in draft
 * builds. */
#define MB_ZMQ_ZAP_ENFORCE_DOMAIN 93
/* Handshakes the worker closes without a word before a connector gives up
 * (libzmq retries every MB_ZMQ_RECONNECT_IVL_MS). */
#define MB_ZMQ_HANDSHAKE_DROPS 3
#define MB_ZMQ_EVENTS_HANDSHAKE_FAILED                                                              \
    (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

int64_t mb_zmq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t mb_zmq_deadline_ns(int64_t timeout_ns)
{
    if (timeout_ns < 0) return INT64_MAX;
    int64_t now = mb_zmq_now_ns();
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

mb_status mb_zmq_errno_status(int err)
{
    switch (err) {
    case EAGAIN:
        return MB_STATUS_AGAIN;
    case ENOMEM:
        return MB_STATUS_NOMEM;
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENOCOMPATPROTO:
    case ENAMETOOLONG:
    case ENODEV:
        return MB_STATUS_INVALID_ARG;
    case EHOSTUNREACH:
        return MB_STATUS_PEER_DEAD;
    case ETERM:
    case ENOTSOCK:
        return MB_STATUS_CLOSED;
    default:
        return MB_STATUS_IO;
    }
}

static int mb_zmq_set_int(void *sock, int option, int value)
{
    return zmq_setsockopt(sock, option, &value, sizeof value);
}

static void mb_zmq_close_quietly(void **sock)
{
    if (!*sock) return;
    mb_zmq_set_int(*sock, ZMQ_LINGER, 0);
    zmq_close(*sock);
    *sock = NULL;
}

static mb_status mb_zmq_check_options(const mb_zmq_options *opt, size_t *max_bytes, int *hb_ms,
                                      int *hb_timeout_ms, int *send_timeout_ms)
{
    mb_zmq_options o = {0};
    if (opt) o = *opt;
    *max_bytes = o.max_message_bytes ? o.max_message_bytes : MB_ZMQ_DEFAULT_MAX_MESSAGE_BYTES;
    *hb_ms = o.heartbeat_ms ? o.heartbeat_ms : MB_ZMQ_DEFAULT_HEARTBEAT_MS;
    *hb_timeout_ms =
        o.heartbeat_timeout_ms ? o.heartbeat_timeout_ms : MB_ZMQ_DEFAULT_HEARTBEAT_TIMEOUT_MS;
    *send_timeout_ms = o.send_timeout_ms ? o.send_timeout_ms : MB_ZMQ_DEFAULT_SEND_TIMEOUT_MS;
    if (*max_bytes < MB_PROTO_HEADER_BYTES || *max_bytes > (uint64_t)INT64_MAX)
        return MB_STATUS_INVALID_ARG;
    if (*hb_ms < 0 || *hb_ms > MB_ZMQ_MAX_HEARTBEAT_MS) return MB_STATUS_INVALID_ARG;
    if (*hb_timeout_ms < 0 || *hb_timeout_ms > MB_ZMQ_MAX_HEARTBEAT_MS)
        return MB_STATUS_INVALID_ARG;
    if (*send_timeout_ms < 0) return MB_STATUS_INVALID_ARG;
    return MB_STATUS_OK;
}

/* Makes t->sock a CURVE server (ROUTER, with its ZAP handler started) or
 * client (DEALER) when opt asks for it. */
static mb_status mb_zmq_socket_set_curve(mb_zmq_transport *t, int type, const mb_zmq_options *opt)
{
    if (!opt || (!opt->curve_secret_key && !opt->curve_server_key && !opt->curve_allow_file))
        return MB_STATUS_OK;
    const char *sec = opt->curve_secret_key;
    if (!sec || strlen(sec) != MB_ZMQ_KEY_CHARS) return MB_STATUS_INVALID_ARG;
    if (!mb_zmq_has_curve()) return MB_STATUS_UNSUPPORTED;
    if (type == ZMQ_ROUTER) {
        if (!opt->curve_allow_file || opt->curve_server_key) return MB_STATUS_INVALID_ARG;
        /* A handshake asks the handler: it must be there before bind. */
        mb_status st = mb_zmq_zap_start(t->ctx, opt->curve_allow_file, &t->zap);
        if (st != MB_STATUS_OK) return st;
        static const char domain[] = "moe-broker";
        if (mb_zmq_set_int(t->sock, ZMQ_CURVE_SERVER, 1) ||
            zmq_setsockopt(t->sock, ZMQ_CURVE_SECRETKEY, sec, MB_ZMQ_KEY_CHARS) ||
            zmq_setsockopt(t->sock, ZMQ_ZAP_DOMAIN, domain, sizeof domain - 1))
            return MB_STATUS_INVALID_ARG;
        /* Where libzmq has it (a draft option), a missing handler refuses
         * clients instead of admitting them; ours is bound for the
         * transport's life either way. */
        (void)mb_zmq_set_int(t->sock, MB_ZMQ_ZAP_ENFORCE_DOMAIN, 1);
        return MB_STATUS_OK;
    }
    const char *srv = opt->curve_server_key;
    if (!srv || strlen(srv) != MB_ZMQ_KEY_CHARS || opt->curve_allow_file) return MB_STATUS_INVALID_ARG;
    char pub[MB_ZMQ_KEY_CHARS + 1];
    mb_status st = mb_zmq_key_public(sec, pub);
    if (st != MB_STATUS_OK) return st;
    if (zmq_setsockopt(t->sock, ZMQ_CURVE_SERVERKEY, srv, MB_ZMQ_KEY_CHARS) ||
        zmq_setsockopt(t->sock, ZMQ_CURVE_PUBLICKEY, pub, MB_ZMQ_KEY_CHARS) ||
        zmq_setsockopt(t->sock, ZMQ_CURVE_SECRETKEY, sec, MB_ZMQ_KEY_CHARS))
        return MB_STATUS_INVALID_ARG;
    return MB_STATUS_OK;
}

mb_status mb_zmq_socket_open(mb_zmq_transport *t, int type, const mb_zmq_options *opt)
{
    size_t max_bytes;
    int hb_ms, hb_timeout_ms, send_timeout_ms;
    mb_status st = mb_zmq_check_options(opt, &max_bytes, &hb_ms, &hb_timeout_ms, &send_timeout_ms);
    if (st != MB_STATUS_OK) return st;

    t->ctx = zmq_ctx_new();
    if (!t->ctx) return MB_STATUS_NOMEM;
    /* zmq_ctx_term must not wait for unsent messages: a transport that is
     * destroyed has no one left to deliver to. */
    zmq_ctx_set(t->ctx, ZMQ_BLOCKY, 0);
    zmq_ctx_set(t->ctx, ZMQ_IO_THREADS, 1);

    t->sock = zmq_socket(t->ctx, type);
    if (!t->sock) goto fail_errno;
    int64_t maxmsg = (int64_t)max_bytes;
    int hwm = MB_ZMQ_HWM;
    if (mb_zmq_set_int(t->sock, ZMQ_LINGER, 0) || mb_zmq_set_int(t->sock, ZMQ_SNDHWM, hwm) ||
        mb_zmq_set_int(t->sock, ZMQ_RCVHWM, hwm) ||
        zmq_setsockopt(t->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        mb_zmq_set_int(t->sock, ZMQ_HEARTBEAT_IVL, hb_ms) ||
        mb_zmq_set_int(t->sock, ZMQ_HEARTBEAT_TIMEOUT, hb_timeout_ms) ||
        mb_zmq_set_int(t->sock, ZMQ_HEARTBEAT_TTL, hb_timeout_ms) ||
        mb_zmq_set_int(t->sock, ZMQ_RECONNECT_IVL, MB_ZMQ_RECONNECT_IVL_MS) ||
        mb_zmq_set_int(t->sock, ZMQ_RECONNECT_IVL_MAX, 0))
        goto fail_errno;
    st = mb_zmq_socket_set_curve(t, type, opt);
    if (st != MB_STATUS_OK) {
        mb_zmq_socket_close(t);
        return st;
    }
    if (type == ZMQ_ROUTER) {
        /* Sending to a peer that is gone fails (EHOSTUNREACH) instead of
         * vanishing, and a full queue says EAGAIN instead of dropping. */
        if (mb_zmq_set_int(t->sock, ZMQ_ROUTER_MANDATORY, 1)) goto fail_errno;
    } else {
        /* Queue nothing until a connection is up, so a worker that never
         * comes makes send_commit time out rather than pile up messages. */
        if (mb_zmq_set_int(t->sock, ZMQ_IMMEDIATE, 1)) goto fail_errno;
    }
    t->rcvtimeo_ms = -1;

    /* The monitor's queue is unbounded (RCVHWM 0 on our side of the inproc
     * pipe): libzmq's I/O thread may block sending to a full monitor queue,
     * and a peer flooding connections must not stall it. recv drains it. */
    /* A connector also hears of a refused handshake (a CURVE key the
     * worker does not admit, a plain client at a CURVE worker). */
    int events = ZMQ_EVENT_DISCONNECTED;
    if (type == ZMQ_DEALER) events |= MB_ZMQ_EVENTS_HANDSHAKE_FAILED;
    if (zmq_socket_monitor(t->sock, MB_ZMQ_MONITOR_ENDPOINT, events))
        goto fail_errno;
    t->mon = zmq_socket(t->ctx, ZMQ_PAIR);
    if (!t->mon) goto fail_errno;
    if (mb_zmq_set_int(t->mon, ZMQ_LINGER, 0) || mb_zmq_set_int(t->mon, ZMQ_RCVHWM, 0) ||
        zmq_connect(t->mon, MB_ZMQ_MONITOR_ENDPOINT))
        goto fail_errno;

    t->session_hello = opt && opt->session_hello && type == ZMQ_ROUTER;
    t->max_message_bytes = max_bytes;
    t->send_timeout_ms = send_timeout_ms;
    return MB_STATUS_OK;

fail_errno:
    st = mb_zmq_errno_status(zmq_errno());
    if (st == MB_STATUS_AGAIN) st = MB_STATUS_IO;
    mb_zmq_socket_close(t);
    return st;
}

/* The filesystem path of an ipc:// endpoint, or NULL for another transport
 * or an abstract-namespace name (ipc://@name has no file). */
static const char *mb_zmq_ipc_path(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) != 0) return NULL;
    const char *path = endpoint + 6;
    if (path[0] == '@' || path[0] == '\0') return NULL;
    return path;
}

mb_status mb_zmq_ipc_prepare(const char *endpoint)
{
    const char *path = mb_zmq_ipc_path(endpoint);
    if (!path || !strcmp(path, "*")) return MB_STATUS_OK;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return MB_STATUS_INVALID_ARG;
    memcpy(sa.sun_path, path, strlen(path) + 1);

    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? MB_STATUS_OK : MB_STATUS_IO;
    /* libzmq unlinks whatever sits at the path before it binds: never let it
     * delete a file that is not a socket. */
    if (!S_ISSOCK(sb.st_mode)) return MB_STATUS_INVALID_ARG;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return MB_STATUS_IO;
    int rc = connect(fd, (const struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    if (rc == 0) return MB_STATUS_IO; /* a live listener owns it */
    if (err != ECONNREFUSED) return MB_STATUS_IO;
    if (unlink(path) != 0 && errno != ENOENT) return MB_STATUS_IO;
    return MB_STATUS_OK;
}

void mb_zmq_socket_note_bound(mb_zmq_transport *t)
{
    size_t len = sizeof t->endpoint;
    if (zmq_getsockopt(t->sock, ZMQ_LAST_ENDPOINT, t->endpoint, &len) != 0) t->endpoint[0] = '\0';
    t->endpoint[sizeof t->endpoint - 1] = '\0';
    const char *path = mb_zmq_ipc_path(t->endpoint);
    struct stat sb;
    if (!path || strlen(path) >= sizeof t->ipc_path || lstat(path, &sb) != 0 ||
        !S_ISSOCK(sb.st_mode))
        return;
    memcpy(t->ipc_path, path, strlen(path) + 1);
    t->ipc_dev = sb.st_dev;
    t->ipc_ino = sb.st_ino;
    t->ipc_owned = 1;
}

void mb_zmq_socket_close(mb_zmq_transport *t)
{
    /* Stop the monitor before closing its reader: libzmq's I/O thread would
     * otherwise block forever sending an event nobody can receive. */
    if (t->sock && t->mon) zmq_socket_monitor(t->sock, NULL, 0);
    mb_zmq_close_quietly(&t->mon);
    mb_zmq_close_quietly(&t->sock);
    if (t->ctx && t->zap) {
        /* The handler's blocking recv fails with ETERM; it closes its
         * socket and ends, and only then can the context terminate. */
        zmq_ctx_shutdown(t->ctx);
        mb_zmq_zap_join(t->zap);
        t->zap = NULL;
    }
    if (t->ctx) {
        while (zmq_ctx_term(t->ctx) != 0 && zmq_errno() == EINTR) {
        }
        t->ctx = NULL;
    }
    /* libzmq (4.3) leaves the socket file of an explicit ipc:// path behind.
     * Remove it, but only if it is still the file this transport bound, not
     * one someone else bound at the same path since. */
    struct stat sb;
    if (t->ipc_owned && lstat(t->ipc_path, &sb) == 0 && S_ISSOCK(sb.st_mode) &&
        sb.st_dev == t->ipc_dev && sb.st_ino == t->ipc_ino)
        unlink(t->ipc_path);
    t->ipc_owned = 0;
}

void mb_zmq_monitor_drain(mb_zmq_transport *t)
{
    t->recv_since_drain = 0;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, t->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        /* Frame 1: u16 event, u32 value (the connection's descriptor);
         * frame 2: the endpoint, ignored. */
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (const char *)zmq_msg_data(&ev) + 2, 4);
        }
        while (zmq_msg_more(&ev)) {
            zmq_msg_close(&ev);
            zmq_msg_init(&ev);
            if (zmq_msg_recv(&ev, t->mon, 0) < 0) break;
        }
        zmq_msg_close(&ev);
        if (t->role == MB_ZMQ_ROLE_CONNECT && (event & MB_ZMQ_EVENTS_HANDSHAKE_FAILED)) {
            /* The worker said no (AUTH, PROTOCOL: a key it does not admit,
             * CURVE on one side only). A connection closed mid-handshake
             * without a word (NO_DETAIL) is a wrong worker key only when it
             * keeps happening; once it may be a worker between sessions. */
            if (event != ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
                ++t->n_handshake_drops >= MB_ZMQ_HANDSHAKE_DROPS) {
                t->handshake_failed = 1;
                t->peer_dead = 1;
            }
            continue;
        }
        if (event != ZMQ_EVENT_DISCONNECTED) continue;
        /* A connecting socket has one connection, so any drop is the peer.
         * A listener also sees strangers come and go: only the connection
         * its peer's messages came from counts. */
        if (t->role == MB_ZMQ_ROLE_CONNECT || (t->peer_known && (int)value == t->peer_fd))
            t->peer_dead = 1;
    }
}

mb_status mb_zmq_wait_writable(mb_zmq_transport *t, int64_t deadline_ns)
{
    for (;;) {
        zmq_pollitem_t items[2] = {{t->sock, 0, ZMQ_POLLOUT, 0}, {t->mon, 0, ZMQ_POLLIN, 0}};
        long timeout_ms = -1;
        if (deadline_ns != INT64_MAX) {
            int64_t left = deadline_ns - mb_zmq_now_ns();
            if (left <= 0) return MB_STATUS_TIMEOUT;
            timeout_ms = (long)((left + 999999) / 1000000);
        }
        int rc = zmq_poll(items, 2, timeout_ms);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            return mb_zmq_errno_status(zmq_errno());
        }
        if (items[1].revents & ZMQ_POLLIN) mb_zmq_monitor_drain(t);
        if (t->peer_dead) return MB_STATUS_PEER_DEAD;
        if (items[0].revents & ZMQ_POLLOUT) return MB_STATUS_OK;
    }
}
