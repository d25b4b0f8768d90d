/* The transport ops over one segment: each endpoint produces on one ring and
 * consumes the other, waits through doorbells, and treats the peer's death,
 * its hang-up and any failed validation as terminal (CORRUPT is sticky). */
#include "shm/shm.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "shm/doorbell.h"
#include "shm/ring.h"
#include "shm/segment.h"

/* Longest spin the adaptive rule in mb_shm_recv may choose. */
#define MB_SHM_ADAPTIVE_SPIN_CAP_NS 400000
/* The process check (a pidfd poll, or kill and /proc where there is no
 * pidfd) runs at most this often: a caller polling with timeout 0 (the
 * dispatcher's spin over its links) would otherwise make a system call or
 * more per poll. A death is still seen within this much more. */
#define MB_SHM_PEER_CHECK_NS 100000

/* MB_SHM_STATS's buckets of a receive wait: under 10 us, 100 us, 1 ms,
 * 10 ms, longer. */
#define MB_SHM_WAIT_BUCKETS 5

typedef struct {
    mb_shm_segment seg;
    mb_shm_ring tx; /* we produce: requests (coordinator) or replies (worker) */
    mb_shm_ring rx; /* we consume */
    mb_shm_state *state;
    int side; /* MB_SHM_SIDE_* */
    mb_shm_peer peer;
    int64_t spin_ns;
    int64_t recv_wait_avg_ns; /* decaying mean of recent receive waits (local) */
    /* MB_SHM_STATS=1: receive waits counted by length, printed at close (to
     * see whether a side sleeps past its spin between messages). */
    int wait_report;
    uint64_t waits[MB_SHM_WAIT_BUCKETS];
    int64_t wait_past_spin_ns; /* summed over waits longer than the spin */
    int corrupt; /* sticky: the segment failed validation once */
    int64_t peer_checked_ns; /* when the process check last said alive (0: never) */

    /* Coordinator side: the worker's heartbeat as last seen. */
    int64_t peer_timeout_ns; /* 0: heartbeats not watched */
    uint64_t beat_seen;      /* counter value last read */
    int64_t beat_seen_ns;    /* when it was last seen to change */
    int silent;              /* sticky: the heartbeat stopped for peer_timeout_ns */

    /* Worker side: the heartbeat thread. */
    pthread_t beat_thread;
    pthread_mutex_t beat_mu;
    pthread_cond_t beat_cv;
    int beat_running, beat_stop;

    /* Arguments and results of the operation being waited for. */
    size_t want_bytes;
    void *res_buf;
    const void *rx_buf;
    size_t rx_bytes;
} mb_shm_transport;

static int mb_shm_peer_closed(const mb_shm_transport *t)
{
    /* acquire: whatever the peer published before it hung up is visible after. */
    return atomic_load_explicit(&t->state->closed[1 - t->side], memory_order_acquire) != 0;
}

/* PEER_DEAD once the worker's heartbeat has not moved for peer_timeout_ns
 * (sticky). A counter still at 0 is a worker not yet started: its death is
 * the pidfd's business, its slowness the spawner's. */
static mb_status mb_shm_check_heartbeat(mb_shm_transport *t, int64_t now)
{
    if (t->silent) return MB_STATUS_PEER_DEAD;
    if (t->peer_timeout_ns <= 0) return MB_STATUS_OK;
    /* relaxed: only the value's change matters, it publishes nothing. */
    uint64_t beat =
        atomic_load_explicit(&t->state->heartbeat[MB_SHM_SIDE_WORKER], memory_order_relaxed);
    if (beat != t->beat_seen) {
        t->beat_seen = beat;
        t->beat_seen_ns = now;
        return MB_STATUS_OK;
    }
    if (beat != 0 && now - t->beat_seen_ns > t->peer_timeout_ns) {
        t->silent = 1;
        return MB_STATUS_PEER_DEAD;
    }
    return MB_STATUS_OK;
}

static mb_status mb_shm_alive(void *ctx)
{
    mb_shm_transport *t = ctx;
    if (t->corrupt) return MB_STATUS_CORRUPT;
    if (mb_shm_peer_closed(t)) return MB_STATUS_PEER_DEAD;
    const int64_t now = mb_shm_now_ns();
    if (!t->peer_checked_ns || now - t->peer_checked_ns >= MB_SHM_PEER_CHECK_NS) {
        mb_status st = mb_shm_peer_check(&t->peer);
        if (st != MB_STATUS_OK) return st;
        t->peer_checked_ns = now;
    }
    return mb_shm_check_heartbeat(t, now);
}

/* Worker side: bumps our heartbeat every MB_SHM_HEARTBEAT_NS until destroy.
 * A thread of its own, so that a long request does not stop the beat. */
static void *mb_shm_beat_main(void *arg)
{
    mb_shm_transport *t = arg;
    pthread_mutex_lock(&t->beat_mu);
    while (!t->beat_stop) {
        atomic_fetch_add_explicit(&t->state->heartbeat[t->side], 1, memory_order_relaxed);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += MB_SHM_HEARTBEAT_NS;
        if (ts.tv_nsec >= 1000000000l) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000l;
        }
        while (!t->beat_stop && pthread_cond_timedwait(&t->beat_cv, &t->beat_mu, &ts) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&t->beat_mu);
    return NULL;
}

static mb_status mb_shm_beat_start(mb_shm_transport *t)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return MB_STATUS_NOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&t->beat_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) return MB_STATUS_NOMEM;
    if (pthread_mutex_init(&t->beat_mu, NULL) != 0) {
        pthread_cond_destroy(&t->beat_cv);
        return MB_STATUS_NOMEM;
    }
    if (pthread_create(&t->beat_thread, NULL, mb_shm_beat_main, t) != 0) {
        pthread_mutex_destroy(&t->beat_mu);
        pthread_cond_destroy(&t->beat_cv);
        return MB_STATUS_IO;
    }
    t->beat_running = 1;
    return MB_STATUS_OK;
}

static void mb_shm_beat_stop(mb_shm_transport *t)
{
    if (!t->beat_running) return;
    pthread_mutex_lock(&t->beat_mu);
    t->beat_stop = 1;
    pthread_cond_signal(&t->beat_cv);
    pthread_mutex_unlock(&t->beat_mu);
    pthread_join(t->beat_thread, NULL);
    pthread_mutex_destroy(&t->beat_mu);
    pthread_cond_destroy(&t->beat_cv);
    t->beat_running = 0;
}

static mb_status mb_shm_try_reserve(void *ctx)
{
    mb_shm_transport *t = ctx;
    mb_status st = mb_shm_ring_reserve(&t->tx, t->want_bytes, &t->res_buf);
    if (st == MB_STATUS_CORRUPT) t->corrupt = 1;
    return st;
}

static mb_status mb_shm_try_peek(void *ctx)
{
    mb_shm_transport *t = ctx;
    mb_status st = mb_shm_ring_peek(&t->rx, &t->rx_buf, &t->rx_bytes);
    if (st == MB_STATUS_CORRUPT) t->corrupt = 1;
    return st;
}

static mb_status mb_shm_send_reserve(void *impl, size_t bytes, int64_t timeout_ns, void **buf)
{
    mb_shm_transport *t = impl;
    if (t->corrupt) return MB_STATUS_CORRUPT;
    if (t->tx.reserving || bytes < MB_SHM_MIN_MESSAGE_BYTES) return MB_STATUS_INVALID_ARG;
    if (bytes > t->tx.payload_bytes) return MB_STATUS_FULL;
    if (mb_shm_peer_closed(t)) return MB_STATUS_PEER_DEAD;
    t->want_bytes = bytes;
    mb_status st = mb_shm_bell_wait(&t->tx.ctrl->space, mb_shm_try_reserve, mb_shm_alive, t,
                                    timeout_ns, t->spin_ns);
    if (st != MB_STATUS_OK) return st;
    *buf = t->res_buf;
    return MB_STATUS_OK;
}

static mb_status mb_shm_send_commit(void *impl, size_t bytes)
{
    mb_shm_transport *t = impl;
    if (!t->tx.reserving || bytes < MB_SHM_MIN_MESSAGE_BYTES || bytes > t->tx.res_bytes)
        return MB_STATUS_INVALID_ARG;
    if (t->corrupt) return MB_STATUS_CORRUPT;
    mb_shm_ring_commit(&t->tx, bytes);
    mb_shm_bell_ring(&t->tx.ctrl->data);
    return MB_STATUS_OK;
}

static mb_status mb_shm_recv(void *impl, int64_t timeout_ns, const void **buf, size_t *bytes)
{
    mb_shm_transport *t = impl;
    if (t->corrupt) return MB_STATUS_CORRUPT;
    if (t->rx.holding) return MB_STATUS_INVALID_ARG; /* one message at a time */
    /* Spin longer when replies have lately come a little after the base
     * spin (a large transfer): a futex sleep and wake costs more than such a
     * wait. Long waits (expert compute) keep the base spin and sleep. */
    int64_t spin = t->spin_ns;
    if (spin > 0 && 2 * t->recv_wait_avg_ns > spin && 2 * t->recv_wait_avg_ns <= MB_SHM_ADAPTIVE_SPIN_CAP_NS)
        spin = 2 * t->recv_wait_avg_ns;
    int64_t t0 = mb_shm_now_ns();
    mb_status st = mb_shm_bell_wait(&t->rx.ctrl->data, mb_shm_try_peek, mb_shm_alive, t, timeout_ns, spin);
    if (st != MB_STATUS_OK) return st;
    if (timeout_ns != 0) {
        const int64_t waited = mb_shm_now_ns() - t0;
        t->recv_wait_avg_ns += (waited - t->recv_wait_avg_ns) / 4;
        if (t->wait_report) {
            int b = 0;
            for (int64_t edge = 10000; b < MB_SHM_WAIT_BUCKETS - 1 && waited >= edge; edge *= 10)
                b++;
            t->waits[b]++;
            if (waited > spin) t->wait_past_spin_ns += waited - spin;
        }
    }
    *buf = t->rx_buf;
    *bytes = t->rx_bytes;
    return MB_STATUS_OK;
}

static void mb_shm_recv_release(void *impl)
{
    mb_shm_transport *t = impl;
    if (!t->rx.holding) return;
    mb_shm_ring_release(&t->rx);
    mb_shm_bell_ring(&t->rx.ctrl->space);
}

static size_t mb_shm_max_message_bytes(void *impl)
{
    mb_shm_transport *t = impl;
    return (size_t)t->tx.payload_bytes;
}

/* Frees what mb_shm_transport_open built; t may be partly built. */
static void mb_shm_free(mb_shm_transport *t)
{
    mb_shm_beat_stop(t);
    mb_shm_ring_fini(&t->tx);
    mb_shm_ring_fini(&t->rx);
    mb_shm_peer_fini(&t->peer);
    mb_shm_segment_unmap(&t->seg);
    free(t);
}

static void mb_shm_destroy(void *impl)
{
    mb_shm_transport *t = impl;
    if (t->wait_report)
        fprintf(
            stderr,
            "shm stats (pid %d, %s): receive waits <10us %llu, <100us %llu, <1ms %llu, <10ms %llu, "
            "longer %llu; spin %lld us, %.3f ms waited past it\n",
            (int)getpid(), t->side == MB_SHM_SIDE_COORDINATOR ? "coordinator" : "worker",
            (unsigned long long)t->waits[0], (unsigned long long)t->waits[1],
            (unsigned long long)t->waits[2], (unsigned long long)t->waits[3],
            (unsigned long long)t->waits[4], (long long)(t->spin_ns / 1000),
            t->wait_past_spin_ns / 1e6);
    /* release: everything we published is visible to a peer that sees the flag. */
    atomic_store_explicit(&t->state->closed[t->side], 1, memory_order_release);
    /* Wake the peer wherever it may sleep on us, so it sees the hang-up now. */
    mb_shm_bell_ring(&t->tx.ctrl->data);
    mb_shm_bell_ring(&t->rx.ctrl->space);
    mb_shm_free(t);
}

static mb_status mb_shm_shared_memory(void *impl, void **base, size_t *bytes)
{
    mb_shm_transport *t = impl;
    *base = t->seg.base;
    *bytes = t->seg.bytes;
    return MB_STATUS_OK;
}

static const mb_transport_ops mb_shm_ops = {
    .name = "shm",
    .send_reserve = mb_shm_send_reserve,
    .send_commit = mb_shm_send_commit,
    .recv = mb_shm_recv,
    .recv_release = mb_shm_recv_release,
    .max_message_bytes = mb_shm_max_message_bytes,
    .destroy = mb_shm_destroy,
    .shared_memory = mb_shm_shared_memory,
};

/* Builds the endpoint of side on a mapped segment; takes the mapping, also
 * on failure. */
static mb_status mb_shm_transport_open(mb_shm_segment *seg, int side, mb_transport *out,
                                       mb_shm_transport **tp)
{
    mb_shm_transport *t = calloc(1, sizeof(*t));
    if (!t) {
        mb_shm_segment_unmap(seg);
        return MB_STATUS_NOMEM;
    }
    t->seg = *seg;
    t->side = side;
    t->spin_ns = (int64_t)seg->hdr.spin_ns;
    const char *report = getenv("MB_SHM_STATS");
    t->wait_report = report && report[0] == '1';
    t->state = mb_shm_segment_state(&t->seg);
    mb_shm_peer_init(&t->peer);
    int tx = side == MB_SHM_SIDE_COORDINATOR ? MB_SHM_RING_REQUEST : MB_SHM_RING_REPLY;
    mb_status st = mb_shm_ring_init(&t->tx, &t->seg, &t->seg.hdr.ring[tx]);
    if (st == MB_STATUS_OK) st = mb_shm_ring_init(&t->rx, &t->seg, &t->seg.hdr.ring[1 - tx]);
    if (st != MB_STATUS_OK) {
        mb_shm_free(t);
        return st;
    }
    out->ops = &mb_shm_ops;
    out->impl = t;
    *tp = t;
    return MB_STATUS_OK;
}

static mb_status mb_shm_ring_bytes(uint64_t v, uint64_t *out)
{
    if (v == 0) v = MB_SHM_DEFAULT_RING_BYTES;
    if (v % 8 != 0 || v < MB_SHM_MIN_RING_BYTES || v > MB_SHM_MAX_RING_BYTES)
        return MB_STATUS_INVALID_ARG;
    *out = v;
    return MB_STATUS_OK;
}

mb_status mb_shm_transport_create(const mb_shm_options *opt, mb_transport *out, int *fd_for_peer)
{
    static const mb_shm_options defaults = {0};
    if (!out || !fd_for_peer) return MB_STATUS_INVALID_ARG;
    if (!opt) opt = &defaults;
    uint32_t n_slots = opt->n_slots ? opt->n_slots : MB_SHM_DEFAULT_SLOTS;
    if (n_slots < MB_SHM_MIN_SLOTS || n_slots > MB_SHM_MAX_SLOTS || (n_slots & (n_slots - 1)) != 0)
        return MB_STATUS_INVALID_ARG;
    uint64_t req = 0, rep = 0;
    if (mb_shm_ring_bytes(opt->request_bytes, &req) != MB_STATUS_OK ||
        mb_shm_ring_bytes(opt->reply_bytes, &rep) != MB_STATUS_OK)
        return MB_STATUS_INVALID_ARG;
    if (opt->spin_ns > (int64_t)MB_SHM_MAX_SPIN_NS) return MB_STATUS_INVALID_ARG;
    uint64_t spin = opt->spin_ns == 0  ? MB_SHM_DEFAULT_SPIN_NS
                    : opt->spin_ns < 0 ? 0
                                       : (uint64_t)opt->spin_ns;

    mb_shm_header hdr;
    mb_status st = mb_shm_layout_compute(n_slots, req, rep, spin, getpid(), &hdr);
    if (st != MB_STATUS_OK) return st;
    mb_shm_segment seg;
    int fd = -1;
    st = mb_shm_segment_create(&hdr, opt->peer_fd_inheritable, &seg, &fd);
    if (st != MB_STATUS_OK) return st;
    mb_shm_transport *t = NULL;
    st = mb_shm_transport_open(&seg, MB_SHM_SIDE_COORDINATOR, out, &t);
    if (st != MB_STATUS_OK) {
        close(fd);
        return st;
    }
    *fd_for_peer = fd;
    return MB_STATUS_OK;
}

mb_status mb_shm_transport_set_peer_pid(mb_transport *t, pid_t pid)
{
    if (!t || t->ops != &mb_shm_ops || !t->impl) return MB_STATUS_INVALID_ARG;
    mb_shm_transport *s = t->impl;
    if (s->side != MB_SHM_SIDE_COORDINATOR) return MB_STATUS_INVALID_ARG;
    return mb_shm_peer_watch(&s->peer, pid);
}

mb_status mb_shm_transport_set_peer_timeout(mb_transport *t, int64_t timeout_ns)
{
    if (!t || t->ops != &mb_shm_ops || !t->impl || timeout_ns < 0) return MB_STATUS_INVALID_ARG;
    mb_shm_transport *s = t->impl;
    if (s->side != MB_SHM_SIDE_COORDINATOR) return MB_STATUS_INVALID_ARG;
    s->peer_timeout_ns = timeout_ns;
    s->beat_seen = atomic_load_explicit(&s->state->heartbeat[MB_SHM_SIDE_WORKER], memory_order_relaxed);
    s->beat_seen_ns = mb_shm_now_ns();
    return MB_STATUS_OK;
}

int64_t mb_shm_transport_spin_ns(const mb_transport *t)
{
    if (!t || t->ops != &mb_shm_ops || !t->impl) return -1;
    return ((const mb_shm_transport *)t->impl)->spin_ns;
}

mb_status mb_shm_transport_attach(int fd, mb_transport *out)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_shm_segment seg;
    mb_status st = mb_shm_segment_attach(fd, &seg);
    if (st != MB_STATUS_OK) return st;
    pid_t creator = (pid_t)seg.hdr.creator_pid;
    mb_transport tr;
    mb_shm_transport *t = NULL;
    st = mb_shm_transport_open(&seg, MB_SHM_SIDE_WORKER, &tr, &t);
    if (st != MB_STATUS_OK) return st;
    st = mb_shm_peer_watch(&t->peer, creator);
    if (st == MB_STATUS_OK) st = mb_shm_beat_start(t);
    if (st != MB_STATUS_OK) {
        mb_shm_free(t);
        return st;
    }
    *out = tr;
    return MB_STATUS_OK;
}
