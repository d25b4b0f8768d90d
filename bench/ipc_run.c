/* Echo children and timing loops of bench/ipc_run.h. A child opens its end
 * after the fork, serves, and leaves with _exit so it never runs the
 * parent's cleanup; the parent connects only once every child is forked. */
#include "bench/ipc_run.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"

#define MB_BENCH_ENDPOINT_BYTES 256
/* Round trips per call whatever the time, so slow cases still give figures. */
#define MB_BENCH_MIN_WARM_TRIPS 2u
#define MB_BENCH_MIN_TRIPS 10u

const char *mb_bench_ipc_kind_name(mb_bench_ipc_kind kind)
{
    static const char *const names[MB_BENCH_IPC_KIND_COUNT_] = {
        "spin_ring", "shm", "zmq_bare_ipc", "zmq_ipc", "zmq_bare_tcp", "zmq_tcp"};
    return (unsigned)kind < MB_BENCH_IPC_KIND_COUNT_ ? names[kind] : "?";
}

static int mb_bench_ipc_is_bare(mb_bench_ipc_kind kind)
{
    return kind == MB_BENCH_IPC_ZMQ_BARE_IPC || kind == MB_BENCH_IPC_ZMQ_BARE_TCP;
}

static int mb_bench_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int mb_bench_read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The child's side of a ZeroMQ variant: listens, reports the bound
 * endpoint through the pipe (empty on failure). */
static mb_status mb_bench_child_zmq(mb_bench_ipc_kind kind, const char *endpoint, int report_fd,
                                    mb_bench_chan *out)
{
    char bound[MB_BENCH_ENDPOINT_BYTES] = {0};
    mb_status st;
    if (mb_bench_ipc_is_bare(kind)) {
        st = mb_bench_chan_zmq_listen(endpoint, out, bound, sizeof(bound));
    } else {
        mb_transport t;
        st = mb_zmq_transport_listen(endpoint, NULL, &t);
        if (st == MB_STATUS_OK) {
            st = mb_zmq_transport_endpoint(&t, bound, sizeof(bound));
            if (st != MB_STATUS_OK)
                mb_transport_destroy(&t);
            else
                st = mb_bench_chan_from_transport(&t, out);
        }
    }
    if (st != MB_STATUS_OK) memset(bound, 0, sizeof(bound));
    if (mb_bench_write_all(report_fd, bound, sizeof(bound)) != 0 && st == MB_STATUS_OK) {
        mb_bench_chan_destroy(out);
        st = MB_STATUS_IO;
    }
    return st;
}

static int mb_bench_ipc_is_transport(mb_bench_ipc_kind kind)
{
    return kind == MB_BENCH_IPC_SHM || kind == MB_BENCH_IPC_ZMQ_IPC || kind == MB_BENCH_IPC_ZMQ_TCP;
}

/* Runs in the forked child; never returns. */
static void mb_bench_child_main(mb_bench_ipc_kind kind, int child_cpu, mb_bench_spin_chan *spin,
                                int shm_fd, const char *endpoint, int report_fd)
{
    if (child_cpu >= 0) mb_bench_pin_to_cpu(child_cpu);
    mb_bench_chan c = {0};
    mb_status st;
    if (kind == MB_BENCH_IPC_SPIN) {
        st = mb_bench_chan_from_spin(spin, 1, &c);
    } else if (kind == MB_BENCH_IPC_SHM) {
        mb_transport t;
        st = mb_shm_transport_attach(shm_fd, &t);
        close(shm_fd);
        if (st == MB_STATUS_OK) st = mb_bench_chan_from_transport(&t, &c);
    } else {
        st = mb_bench_child_zmq(kind, endpoint, report_fd, &c);
    }
    if (report_fd >= 0) close(report_fd);
    if (st == MB_STATUS_OK) {
        st = mb_bench_chan_serve_all(&c);
        /* A transport may drop a reply still queued when it is destroyed
         * (the ZeroMQ one lingers 0 ms): wait until the parent hung up. */
        mb_bench_msg_info info;
        if (st == MB_STATUS_OK && mb_bench_ipc_is_transport(kind) &&
            c.ops->recv(c.impl, &info) != MB_STATUS_PEER_DEAD)
            st = MB_STATUS_PROTOCOL;
        mb_bench_chan_destroy(&c);
    }
    if (st != MB_STATUS_OK)
        fprintf(stderr, "bench_ipc: %s echo child: %s\n", mb_bench_ipc_kind_name(kind),
                mb_status_str(st));
    _exit(st == MB_STATUS_OK ? 0 : 1);
}

/* The parent's end for a ZeroMQ child: reads the endpoint it bound. */
static mb_status mb_bench_parent_zmq(mb_bench_ipc_kind kind, int report_fd, mb_bench_chan *out)
{
    char bound[MB_BENCH_ENDPOINT_BYTES];
    if (mb_bench_read_all(report_fd, bound, sizeof(bound)) != 0) return MB_STATUS_IO;
    bound[sizeof(bound) - 1] = '\0';
    if (!bound[0]) return MB_STATUS_IO;
    if (mb_bench_ipc_is_bare(kind)) return mb_bench_chan_zmq_connect(bound, out);
    mb_transport t;
    mb_status st = mb_zmq_transport_connect(bound, NULL, &t);
    if (st != MB_STATUS_OK) return st;
    return mb_bench_chan_from_transport(&t, out);
}

/* Frees what the parent holds for p and reaps the child (killed first
 * when kill_child). Returns the child's wait status, or -1. */
static int mb_bench_ipc_peer_release(mb_bench_ipc_peer *p, int kill_child)
{
    mb_bench_chan_destroy(&p->chan);
    mb_transport_destroy(&p->shm);
    if (p->report_fd >= 0) close(p->report_fd);
    p->report_fd = -1;
    int status = -1;
    if (p->pid > 0) {
        if (kill_child) kill(p->pid, SIGKILL);
        pid_t r;
        while ((r = waitpid(p->pid, &status, 0)) < 0 && errno == EINTR) {
        }
        if (r != p->pid) status = -1;
    }
    p->pid = -1;
    mb_bench_spin_chan_destroy(p->spin);
    p->spin = NULL;
    /* A bare libzmq listener may leave its socket file behind. */
    if (p->ipc_path[0]) unlink(p->ipc_path);
    p->ipc_path[0] = '\0';
    return status;
}

mb_status mb_bench_ipc_peer_spawn(mb_bench_ipc_kind kind, int child_cpu, int64_t shm_spin_ns,
                                  mb_bench_ipc_peer *out)
{
    mb_bench_ipc_peer p = {
        .kind = kind, .pid = -1, .report_fd = -1, .park_when_idle = kind == MB_BENCH_IPC_SPIN};
    int shm_fd = -1, pipe_fd[2] = {-1, -1};
    char endpoint[MB_BENCH_ENDPOINT_BYTES] = "tcp://127.0.0.1:*";
    mb_status st = MB_STATUS_OK;

    if (kind == MB_BENCH_IPC_SPIN) {
        st = mb_bench_spin_chan_create(MB_SHM_DEFAULT_SLOTS, MB_SHM_DEFAULT_RING_BYTES, &p.spin);
    } else if (kind == MB_BENCH_IPC_SHM) {
        mb_shm_options opt = {.spin_ns = shm_spin_ns};
        st = mb_shm_transport_create(&opt, &p.shm, &shm_fd);
    } else {
        if (kind == MB_BENCH_IPC_ZMQ_BARE_IPC || kind == MB_BENCH_IPC_ZMQ_IPC) {
            snprintf(p.ipc_path, sizeof(p.ipc_path), "/tmp/mb-bench-ipc-%d-%d.sock", (int)getpid(),
                     (int)kind);
            snprintf(endpoint, sizeof(endpoint), "ipc://%s", p.ipc_path);
        }
        if (pipe(pipe_fd) != 0) st = MB_STATUS_IO;
    }
    if (st != MB_STATUS_OK) goto fail;

    fflush(NULL);
    p.pid = fork();
    if (p.pid < 0) {
        st = MB_STATUS_IO;
        goto fail;
    }
    if (p.pid == 0) {
        if (pipe_fd[0] >= 0) close(pipe_fd[0]);
        mb_bench_child_main(kind, child_cpu, p.spin, shm_fd, endpoint, pipe_fd[1]);
    }
    if (shm_fd >= 0) close(shm_fd);
    if (pipe_fd[1] >= 0) close(pipe_fd[1]);
    p.report_fd = pipe_fd[0];
    *out = p;
    return MB_STATUS_OK;

fail:
    if (shm_fd >= 0) close(shm_fd);
    for (int i = 0; i < 2; i++)
        if (pipe_fd[i] >= 0) close(pipe_fd[i]);
    mb_bench_ipc_peer_release(&p, 1);
    return st;
}

mb_status mb_bench_ipc_peer_connect(mb_bench_ipc_peer *p)
{
    mb_status st;
    if (p->kind == MB_BENCH_IPC_SPIN) {
        st = mb_bench_chan_from_spin(p->spin, 0, &p->chan);
    } else if (p->kind == MB_BENCH_IPC_SHM) {
        st = mb_shm_transport_set_peer_pid(&p->shm, p->pid);
        if (st == MB_STATUS_OK) st = mb_bench_chan_from_transport(&p->shm, &p->chan);
    } else {
        st = mb_bench_parent_zmq(p->kind, p->report_fd, &p->chan);
        close(p->report_fd);
        p->report_fd = -1;
    }
    if (st != MB_STATUS_OK) mb_bench_ipc_peer_release(p, 1);
    return st;
}

mb_status mb_bench_ipc_peer_park(mb_bench_ipc_peer *p)
{
    if (!p->park_when_idle || p->parked) return MB_STATUS_OK;
    if (kill(p->pid, SIGSTOP) != 0) return MB_STATUS_IO;
    int status;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WUNTRACED)) < 0 && errno == EINTR) {
    }
    if (r != p->pid || !WIFSTOPPED(status)) return MB_STATUS_IO;
    p->parked = 1;
    return MB_STATUS_OK;
}

mb_status mb_bench_ipc_peer_unpark(mb_bench_ipc_peer *p)
{
    if (!p->parked) return MB_STATUS_OK;
    if (kill(p->pid, SIGCONT) != 0) return MB_STATUS_IO;
    p->parked = 0;
    return MB_STATUS_OK;
}

mb_status mb_bench_ipc_peer_stop(mb_bench_ipc_peer *p)
{
    if (p->pid <= 0) return MB_STATUS_OK;
    mb_status st = p->chan.ops ? mb_bench_ipc_peer_unpark(p) : MB_STATUS_INVALID_ARG;
    static const unsigned char empty[MB_BENCH_ACK_BYTES] = {0};
    mb_bench_msg_info info;
    if (st == MB_STATUS_OK)
        st = p->chan.ops->send(p->chan.impl, MB_OP_SHUTDOWN, p->tag++, MB_BENCH_ACK_BYTES, empty);
    if (st == MB_STATUS_OK) st = p->chan.ops->recv(p->chan.impl, &info);
    /* Hanging up first lets a transport child see PEER_DEAD and leave. */
    int status = mb_bench_ipc_peer_release(p, st != MB_STATUS_OK);
    if (st == MB_STATUS_OK && (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0))
        st = MB_STATUS_PEER_DEAD;
    return st;
}

/* Receives the reply to tag and checks it is what was asked for. */
static mb_status mb_bench_ipc_expect(mb_bench_ipc_peer *p, uint64_t tag, mb_proto_opcode op,
                                     size_t bytes)
{
    mb_bench_msg_info info;
    mb_status st = p->chan.ops->recv(p->chan.impl, &info);
    if (st != MB_STATUS_OK) return st;
    if (info.tag != tag || info.op != op || info.bytes != bytes) return MB_STATUS_PROTOCOL;
    return MB_STATUS_OK;
}

/* One PING and its PONG; *ns is the round trip. */
static mb_status mb_bench_ipc_trip(mb_bench_ipc_peer *p, size_t bytes, const void *body,
                                   int64_t *ns)
{
    int64_t t0 = mb_bench_now_ns();
    uint64_t tag = p->tag++;
    mb_status st = p->chan.ops->send(p->chan.impl, MB_OP_PING, tag, bytes, body);
    if (st == MB_STATUS_OK) st = mb_bench_ipc_expect(p, tag, MB_OP_PONG, bytes);
    *ns = mb_bench_now_ns() - t0;
    return st;
}

mb_status mb_bench_ipc_pingpong(mb_bench_ipc_peer *p, size_t bytes, const void *body,
                                int64_t warm_ns, int64_t run_ns, mb_bench_samples *out)
{
    int64_t ns;
    int64_t start = mb_bench_now_ns();
    for (unsigned n = 0; n < MB_BENCH_MIN_WARM_TRIPS || mb_bench_now_ns() - start < warm_ns; n++) {
        mb_status st = mb_bench_ipc_trip(p, bytes, body, &ns);
        if (st != MB_STATUS_OK) return st;
    }
    start = mb_bench_now_ns();
    for (unsigned n = 0; n < MB_BENCH_MIN_TRIPS || mb_bench_now_ns() - start < run_ns; n++) {
        mb_status st = mb_bench_ipc_trip(p, bytes, body, &ns);
        if (st == MB_STATUS_OK) st = mb_bench_samples_add(out, ns);
        if (st != MB_STATUS_OK) return st;
    }
    return MB_STATUS_OK;
}

/* One stream of at least min_msgs messages lasting about run_ns; batch
 * (NULL during warm-up) gets the time between every batch_msgs-th ack. */
static mb_status mb_bench_ipc_stream_once(mb_bench_ipc_peer *p, size_t bytes, const void *body,
                                          unsigned window, uint64_t min_msgs, int64_t run_ns,
                                          uint64_t batch_msgs, mb_bench_samples *batch,
                                          uint64_t *n_acked, int64_t *ns)
{
    const mb_bench_chan_ops *ops = p->chan.ops;
    uint64_t sent = 0, acked = 0, first = p->tag;
    int sending = 1;
    int64_t t0 = mb_bench_now_ns(), t_batch = t0;
    for (;;) {
        while (sending && sent - acked < window) {
            mb_status st = ops->send(p->chan.impl, MB_OP_EXPERT_REQ, first + sent, bytes, body);
            if (st != MB_STATUS_OK) return st;
            sent++;
        }
        if (acked == sent) break;
        mb_status st = mb_bench_ipc_expect(p, first + acked, MB_OP_STATUS, MB_BENCH_ACK_BYTES);
        if (st != MB_STATUS_OK) return st;
        acked++;
        int64_t now = mb_bench_now_ns();
        /* Batches while the window is full: the drain would read as slow. */
        if (batch && sending && acked % batch_msgs == 0) {
            st = mb_bench_samples_add(batch, now - t_batch);
            if (st != MB_STATUS_OK) return st;
            t_batch = now;
        }
        if (sending && sent >= min_msgs && now - t0 >= run_ns) sending = 0;
    }
    *ns = mb_bench_now_ns() - t0;
    *n_acked = acked;
    p->tag = first + sent;
    return MB_STATUS_OK;
}

mb_status mb_bench_ipc_stream(mb_bench_ipc_peer *p, size_t bytes, const void *body, unsigned window,
                              uint64_t warm_msgs, int64_t warm_ns, int64_t run_ns,
                              mb_bench_stream_acc *acc)
{
    uint64_t n = 0;
    int64_t t = 0;
    if (acc->batch_msgs == 0) return MB_STATUS_INVALID_ARG;
    mb_status st = mb_bench_ipc_stream_once(p, bytes, body, window, warm_msgs, warm_ns,
                                            acc->batch_msgs, NULL, &n, &t);
    if (st == MB_STATUS_OK)
        st = mb_bench_ipc_stream_once(p, bytes, body, window, 2 * acc->batch_msgs + window, run_ns,
                                      acc->batch_msgs, &acc->batch, &n, &t);
    if (st != MB_STATUS_OK) return st;
    acc->bytes += n * bytes;
    acc->ns += t;
    return MB_STATUS_OK;
}
