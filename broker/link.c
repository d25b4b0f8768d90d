/* Links to backends: spawning local workers, connecting to running ones,
 * wrapping an in-process backend, the HELLO handshake and shutdown. */
#include "broker/link.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backends/worker.h"
#include "protocol/inproc.h"
#include "shm/shm.h"

/* --model-root folders passed to a spawned worker (its own limit is 16). */
#define MB_LINK_MAX_ROOTS 16
/* How long a coordinator keeps asking a worker that answers BUSY: long
 * enough for the previous session to wind down, short enough to fail
 * clearly when another coordinator holds it. */
#define MB_LINK_BUSY_RETRY_NS 3000000000ull

uint64_t mb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ZeroMQ liveness from the worker timeout: ZMTP heartbeats (answered by
 * libzmq's I/O thread, so a worker busy computing still answers) every
 * sixth of the timeout, at most 250 ms. */
static mb_zmq_options mb_link_zmq_options(int64_t worker_timeout_ns)
{
    int timeout_ms = (int)(worker_timeout_ns / 1000000);
    if (timeout_ms < 100) timeout_ms = 100;
    int ivl = timeout_ms / 6;
    mb_zmq_options o = {.heartbeat_ms = ivl > 250 ? 250 : ivl < 20 ? 20 : ivl, .heartbeat_timeout_ms = timeout_ms};
    return o;
}

/* Finds moe-worker: MB_WORKER_BIN, else the folder of this executable. */
static int mb_link_worker_path(char *path, size_t cap)
{
    const char *env = getenv("MB_WORKER_BIN");
    if (env && env[0]) {
        if ((size_t)snprintf(path, cap, "%s", env) >= cap) return -1;
        return 0;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return -1;
    *slash = '\0';
    if ((size_t)snprintf(path, cap, "%s/moe-worker", self) >= cap) return -1;
    return 0;
}

static mb_status mb_link_hello(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap)
{
    unsigned char msg[64] __attribute__((aligned(8)));
    size_t len = 0;
    mb_status st = mb_proto_encode_hello(msg, sizeof msg, l->next_tag++, &len);
    if (st != MB_STATUS_OK) return st;
    st = mb_link_call(l, msg, len, timeout_ns, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    if (l->caps.version != MB_PROTO_VERSION) {
        snprintf(err, err_cap, "%s: protocol version %u, expected %u", l->name, l->caps.version, MB_PROTO_VERSION);
        return MB_STATUS_BAD_VERSION;
    }
    return MB_STATUS_OK;
}

mb_status mb_link_call(mb_link *l, const void *msg, size_t len, int64_t timeout_ns, char *err, size_t err_cap)
{
    mb_proto_header req;
    mb_status st = mb_proto_decode_header(msg, len, &req);
    if (st != MB_STATUS_OK) return st;
    st = mb_transport_send_copy(&l->transport, msg, len, timeout_ns);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "%s: sending failed: %s", l->name, mb_status_str(st));
        return st;
    }
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : mb_now_ns() + (uint64_t)timeout_ns;
    for (;;) {
        uint64_t now = mb_now_ns();
        const void *rep = NULL;
        size_t rlen = 0;
        int64_t left = deadline == UINT64_MAX ? -1 : now >= deadline ? 0 : (int64_t)(deadline - now);
        st = mb_transport_recv(&l->transport, left, &rep, &rlen);
        if (st == MB_STATUS_TIMEOUT) {
            if (mb_now_ns() < deadline) continue;
            snprintf(err, err_cap, "%s: no reply within %.1f s", l->name, (double)timeout_ns / 1e9);
            return MB_STATUS_TIMEOUT;
        }
        if (st != MB_STATUS_OK) {
            snprintf(err, err_cap, "%s: %s", l->name,
                     st == MB_STATUS_PEER_DEAD ? "worker died or hung up" : mb_status_str(st));
            return st;
        }
        mb_proto_header h;
        st = mb_proto_decode_header(rep, rlen, &h);
        if (st == MB_STATUS_OK && h.tag != req.tag) {
            /* A stale reply to an abandoned request: skip it. */
            mb_transport_recv_release(&l->transport);
            continue;
        }
        if (st == MB_STATUS_OK && h.opcode == MB_OP_HELLO_REPLY)
            st = mb_proto_decode_hello_reply(rep, rlen, &l->caps);
        else if (st == MB_STATUS_OK)
            st = (mb_status)h.status;
        mb_transport_recv_release(&l->transport);
        if (st != MB_STATUS_OK) snprintf(err, err_cap, "%s: worker answered: %s", l->name, mb_status_str(st));
        return st;
    }
}

/* Waits until a spawned worker closes its error pipe (it started serving,
 * or it died without a word) or writes why it could not start, as
 * "<mb_status value> <message>"; that status is returned with the message
 * in err. */
static mb_status mb_link_await_start(mb_link *l, int fd, int64_t timeout_ns, char *err, size_t err_cap)
{
    char msg[512];
    size_t got = 0;
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : mb_now_ns() + (uint64_t)timeout_ns;
    for (;;) {
        uint64_t now = mb_now_ns();
        int wait_ms = deadline == UINT64_MAX ? -1 : now >= deadline ? 0 : (int)((deadline - now) / 1000000 + 1);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, wait_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) {
            snprintf(err, err_cap, "%s: worker did not start within %.1f s", l->name, (double)timeout_ns / 1e9);
            return MB_STATUS_TIMEOUT;
        }
        if (r < 0) return MB_STATUS_OK; /* cannot watch: the handshake will tell */
        ssize_t n = read(fd, msg + got, sizeof msg - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) {
            got += (size_t)n;
            if (got < sizeof msg - 1) continue;
        }
        break; /* EOF, error, or a full message */
    }
    if (got == 0) return MB_STATUS_OK;
    msg[got] = '\0';
    msg[strcspn(msg, "\n")] = '\0';
    char *text = NULL;
    long code = strtol(msg, &text, 10);
    if (text == msg || code <= 0 || code >= MB_STATUS_COUNT_) code = MB_STATUS_BACKEND;
    while (*text == ' ')
        text++;
    snprintf(err, err_cap, "%s: worker failed to start: %s", l->name, text);
    return (mb_status)code;
}

/* Frees what l->spawn owns. */
static void mb_link_spawn_forget(mb_link *l)
{
    for (uint32_t i = 0; i < l->spawn.n_roots; i++)
        free(l->spawn.roots[i]);
    free(l->spawn.roots);
    memset(&l->spawn, 0, sizeof l->spawn);
}

/* Keeps what mb_link_respawn needs to start the same worker again. */
static mb_status mb_link_spawn_remember(const mb_link_spec *spec, int index, mb_link *l)
{
    if (strlen(spec->backend) >= sizeof l->spawn.backend) return MB_STATUS_INVALID_ARG;
    snprintf(l->spawn.backend, sizeof l->spawn.backend, "%s", spec->backend);
    l->spawn.device = spec->device;
    l->spawn.index = index;
    l->spawn.threads = spec->threads;
    l->spawn.max_slots = spec->max_slots;
    l->spawn.shm_spin_ns = spec->shm_spin_ns;
    const uint32_t n = spec->n_model_roots < MB_LINK_MAX_ROOTS ? spec->n_model_roots : MB_LINK_MAX_ROOTS;
    if (n == 0) return MB_STATUS_OK;
    l->spawn.roots = calloc(n, sizeof *l->spawn.roots);
    if (!l->spawn.roots) return MB_STATUS_NOMEM;
    for (uint32_t i = 0; i < n; i++) {
        l->spawn.roots[i] = strdup(spec->model_roots[i]);
        if (!l->spawn.roots[i]) return MB_STATUS_NOMEM; /* the caller forgets what was copied */
        l->spawn.n_roots = i + 1;
    }
    return MB_STATUS_OK;
}

mb_status mb_link_spawn(const mb_link_spec *spec, mb_link_kind kind, int index, int64_t timeout_ns, mb_link *out,
                        char *err, size_t err_cap)
{
    mb_link l;
    memset(&l, 0, sizeof l);
    l.kind = kind;
    l.weight = spec->weight > 0 ? spec->weight : 1.0;
    l.same_host = 1;
    l.next_tag = 1;
    l.worker_timeout_ns = spec->worker_timeout_ns > 0 ? spec->worker_timeout_ns : MB_LINK_WORKER_TIMEOUT_NS;
    char bspec[48];
    if (spec->device >= 0) snprintf(bspec, sizeof bspec, "%s:%d", spec->backend, spec->device);
    else snprintf(bspec, sizeof bspec, "%s", spec->backend);
    snprintf(l.name, sizeof l.name, "w%d %s %s", index, bspec, kind == MB_LINK_SPAWNED_SHM ? "shm" : "zmq-ipc");

    char bin[PATH_MAX];
    if (mb_link_worker_path(bin, sizeof bin) != 0 || access(bin, X_OK) != 0) {
        snprintf(err, err_cap, "%s: cannot find moe-worker (set MB_WORKER_BIN)", l.name);
        return MB_STATUS_NOT_FOUND;
    }
    int peer_fd = -1;
    mb_status st;
    char listen[300];
    if (kind == MB_LINK_SPAWNED_SHM) {
        const mb_shm_options so = {.spin_ns = spec->shm_spin_ns};
        st = mb_shm_transport_create(&so, &l.transport, &peer_fd);
        snprintf(listen, sizeof listen, "shm");
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(l.ipc_path, sizeof l.ipc_path, "%s/moe-broker-%d-w%d.sock", tmp && tmp[0] ? tmp : "/tmp",
                 (int)getpid(), index);
        snprintf(listen, sizeof listen, "ipc://%s", l.ipc_path);
        mb_zmq_options zo = mb_link_zmq_options(l.worker_timeout_ns);
        st = mb_zmq_transport_connect(listen, &zo, &l.transport);
    }
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "%s: cannot create the transport: %s", l.name, mb_status_str(st));
        return st;
    }
    /* The worker writes why it could not start into this pipe (and closes
     * it once serving), so the error names the cause, not just a death. */
    int err_pipe[2] = {-1, -1};
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        snprintf(err, err_cap, "%s: pipe failed: %s", l.name, strerror(errno));
        mb_transport_destroy(&l.transport);
        if (peer_fd >= 0) close(peer_fd);
        return MB_STATUS_IO;
    }
    char fd_text[16], threads_text[16], slots_text[16], err_fd_text[16];
    snprintf(fd_text, sizeof fd_text, "%d", peer_fd);
    snprintf(err_fd_text, sizeof err_fd_text, "%d", err_pipe[1]);
    snprintf(threads_text, sizeof threads_text, "%u", spec->threads);
    snprintf(slots_text, sizeof slots_text, "%u", spec->max_slots ? spec->max_slots : 4096u);
    char *argv[24 + 2 * MB_LINK_MAX_ROOTS];
    int argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--backend";
    argv[argc++] = bspec;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    if (!strcmp(spec->backend, "cpu")) {
        /* Thread counts are a CPU backend option. */
        argv[argc++] = "--threads";
        argv[argc++] = threads_text;
    }
    argv[argc++] = "--max-slots";
    argv[argc++] = slots_text;
    argv[argc++] = "--error-fd";
    argv[argc++] = err_fd_text;
    /* Only this coordinator can reach the worker, and it may idle as long
     * as it likes (a chat waiting on its user): whatever
     * MB_WORKER_IDLE_TIMEOUT says for workers started by hand. */
    argv[argc++] = "--idle-timeout";
    argv[argc++] = "0";
    /* The worker reads weight files only below the checkpoint's folders. */
    for (uint32_t i = 0; i < spec->n_model_roots && i < MB_LINK_MAX_ROOTS; i++) {
        argv[argc++] = "--model-root";
        argv[argc++] = (char *)spec->model_roots[i];
    }
    if (kind == MB_LINK_SPAWNED_SHM) {
        argv[argc++] = "--shm-fd";
        argv[argc++] = fd_text;
    } else {
        argv[argc++] = "--once";
    }
    argv[argc] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, err_cap, "%s: fork failed: %s", l.name, strerror(errno));
        mb_transport_destroy(&l.transport);
        if (peer_fd >= 0) close(peer_fd);
        close(err_pipe[0]);
        close(err_pipe[1]);
        return MB_STATUS_IO;
    }
    if (pid == 0) {
        /* Child: die with the coordinator; keep the segment's fd and the
         * error pipe across exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (peer_fd >= 0) fcntl(peer_fd, F_SETFD, 0);
        fcntl(err_pipe[1], F_SETFD, 0);
        execv(bin, argv);
        _exit(127);
    }
    l.pid = pid;
    if (peer_fd >= 0) close(peer_fd);
    close(err_pipe[1]);
    if (kind == MB_LINK_SPAWNED_SHM) {
        mb_shm_transport_set_peer_pid(&l.transport, pid);
        mb_shm_transport_set_peer_timeout(&l.transport, l.worker_timeout_ns);
    }
    uint64_t t_start = mb_now_ns();
    st = mb_link_await_start(&l, err_pipe[0], timeout_ns, err, err_cap);
    close(err_pipe[0]);
    if (st == MB_STATUS_OK) {
        uint64_t spent = mb_now_ns() - t_start;
        int64_t left = timeout_ns < 0 ? -1 : (uint64_t)timeout_ns > spent ? (int64_t)((uint64_t)timeout_ns - spent) : 0;
        st = mb_link_hello(&l, left, err, err_cap);
    }
    if (st == MB_STATUS_OK) {
        st = mb_link_spawn_remember(spec, index, &l);
        if (st != MB_STATUS_OK) snprintf(err, err_cap, "%s: %s", l.name, mb_status_str(st));
    }
    if (st != MB_STATUS_OK) {
        mb_link_close(&l);
        return st;
    }
    *out = l;
    return MB_STATUS_OK;
}

mb_status mb_link_respawn(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap)
{
    if (!l || (l->kind != MB_LINK_SPAWNED_SHM && l->kind != MB_LINK_SPAWNED_ZMQ) || !l->lost)
        return MB_STATUS_INVALID_ARG;
    mb_link_spec spec = {.backend = l->spawn.backend, .device = l->spawn.device, .threads = l->spawn.threads,
                         .weight = l->weight, .max_slots = l->spawn.max_slots,
                         .worker_timeout_ns = l->worker_timeout_ns, .shm_spin_ns = l->spawn.shm_spin_ns,
                         .model_roots = (const char *const *)l->spawn.roots, .n_model_roots = l->spawn.n_roots};
    mb_link fresh;
    mb_status st = mb_link_spawn(&spec, l->kind, l->spawn.index, timeout_ns, &fresh, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    mb_link_spawn_forget(l);
    *l = fresh;
    return MB_STATUS_OK;
}

/* Loads the CURVE keys a REMOTE spec names into l, kept for every
 * (re)connect. */
static mb_status mb_link_curve_keys(const mb_link_spec *spec, mb_link *l, char *err, size_t err_cap)
{
    if (!spec->curve_server_key_file) return MB_STATUS_OK;
    if (!spec->curve_secret_file) {
        snprintf(err, err_cap, "%s: key= needs this coordinator's --curve-secret FILE", l->name);
        return MB_STATUS_CONFIG;
    }
    const char *files[2] = {spec->curve_secret_file, spec->curve_server_key_file};
    char *keys[2] = {l->curve_secret_key, l->curve_server_key};
    for (int i = 0; i < 2; i++) {
        mb_status st = mb_zmq_key_load(files[i], keys[i]);
        if (st != MB_STATUS_OK) {
            snprintf(err, err_cap, "%s: cannot read a CURVE key from %s: %s", l->name, files[i], mb_status_str(st));
            return st == MB_STATUS_FORMAT ? MB_STATUS_CONFIG : st;
        }
    }
    if (!mb_zmq_has_curve()) {
        snprintf(err, err_cap, "%s: this libzmq has no CURVE support", l->name);
        return MB_STATUS_UNSUPPORTED;
    }
    return MB_STATUS_OK;
}

static int mb_link_reap(pid_t pid, int timeout_ms);

/* Splits "tcp://HOST:PORT" (HOST may be "[v6]") into host and port. */
static int mb_link_split_tcp(const char *endpoint, char *host, size_t host_cap, char *port, size_t port_cap)
{
    const char *h = endpoint + 6;
    const char *colon = strrchr(h, ':');
    if (!colon || colon == h) return -1;
    const char *hs = h, *he = colon;
    if (*hs == '[' && he > hs + 1 && he[-1] == ']') {
        hs++;
        he--;
    }
    if ((size_t)(he - hs) >= host_cap || strlen(colon + 1) >= port_cap || !colon[1]) return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    snprintf(port, port_cap, "%s", colon + 1);
    return 0;
}

/* Waits for a non-blocking connect on fd; returns 0 or an errno value
 * (ETIMEDOUT past timeout_ms). */
static int mb_link_connect_wait(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
    if (connect(fd, sa, len) == 0) return 0;
    if (errno != EINPROGRESS && errno != EAGAIN) return errno;
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int r;
    do
        r = poll(&pfd, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r == 0) return ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) return errno ? errno : EIO;
    return soerr;
}

/* Checks that something listens at endpoint before ZeroMQ, which would
 * retry a refused or unresolvable address silently forever. */
static mb_status mb_link_probe(const mb_link *l, const char *endpoint, int64_t timeout_ns, char *err, size_t err_cap)
{
    int timeout_ms = (int)(timeout_ns / 1000000);
    if (timeout_ms < 1) timeout_ms = 1;
    if (!strncmp(endpoint, "ipc://", 6)) {
        const char *path = endpoint + 6;
        struct stat sb;
        if (stat(path, &sb) != 0) {
            snprintf(err, err_cap, "%s: unreachable: no socket file %s (%s; is moe-worker running there?)", l->name,
                     path, strerror(errno));
            return MB_STATUS_NOT_FOUND;
        }
        if (!S_ISSOCK(sb.st_mode)) {
            snprintf(err, err_cap, "%s: unreachable: %s is not a socket", l->name, path);
            return MB_STATUS_NOT_FOUND;
        }
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof sa.sun_path) return MB_STATUS_OK; /* ZeroMQ will say */
        memcpy(sa.sun_path, path, strlen(path) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return MB_STATUS_OK;
        int e = mb_link_connect_wait(fd, (const struct sockaddr *)&sa, sizeof sa, timeout_ms);
        close(fd);
        if (e == ECONNREFUSED) {
            snprintf(err, err_cap, "%s: unreachable: connection refused on %s (a stale socket file: nobody listens)",
                     l->name, path);
            return MB_STATUS_PEER_DEAD;
        }
        return MB_STATUS_OK;
    }
    if (strncmp(endpoint, "tcp://", 6) != 0) return MB_STATUS_OK;
    char host[256], port[32];
    if (mb_link_split_tcp(endpoint, host, sizeof host, port, sizeof port) != 0) return MB_STATUS_OK;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, err_cap, "%s: unreachable: cannot resolve host '%s': %s", l->name, host, gai_strerror(gai));
        return MB_STATUS_NOT_FOUND;
    }
    int e = EHOSTUNREACH;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        e = mb_link_connect_wait(fd, a->ai_addr, a->ai_addrlen, timeout_ms);
        close(fd);
        if (e == 0) break;
    }
    freeaddrinfo(res);
    if (e == 0) return MB_STATUS_OK;
    if (e == ECONNREFUSED)
        snprintf(err, err_cap, "%s: unreachable: connection refused by %s port %s (is moe-worker listening there?)",
                 l->name, host, port);
    else if (e == ETIMEDOUT)
        snprintf(err, err_cap, "%s: unreachable: no answer from %s port %s within %.1f s (--connect-timeout)",
                 l->name, host, port, (double)timeout_ns / 1e9);
    else
        snprintf(err, err_cap, "%s: unreachable: %s port %s: %s", l->name, host, port, strerror(e));
    return e == ETIMEDOUT ? MB_STATUS_TIMEOUT : MB_STATUS_PEER_DEAD;
}

/* Probes, connects and says HELLO until the deadline; l's name and
 * endpoint are set. */
static mb_status mb_link_dial(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap)
{
    uint64_t t0 = mb_now_ns(), deadline = t0 + (uint64_t)timeout_ns;
    /* A worker keeps its socket bound between sessions, but one that had to
     * replace a broken transport, or an older moe-worker, closes it for a
     * moment: a refusal is retried for half a second before it counts, so a
     * refused port still fails within a second. */
    mb_status st;
    for (;;) {
        st = mb_link_probe(l, l->endpoint, timeout_ns, err, err_cap);
        if (st != MB_STATUS_PEER_DEAD || mb_now_ns() - t0 >= 500000000ull || mb_now_ns() >= deadline) break;
        struct timespec pause = {0, 25000000};
        nanosleep(&pause, NULL);
    }
    if (st != MB_STATUS_OK) return st;
    /* A worker still winding down its previous coordinator's session drops
     * the connection once, or answers BUSY for a moment; reconnect until the
     * deadline. */
    mb_zmq_options zo = mb_link_zmq_options(l->worker_timeout_ns);
    if (l->curve_server_key[0]) {
        zo.curve_secret_key = l->curve_secret_key;
        zo.curve_server_key = l->curve_server_key;
    }
    for (;;) {
        st = mb_zmq_transport_connect(l->endpoint, &zo, &l->transport);
        if (st != MB_STATUS_OK) {
            snprintf(err, err_cap, "%s: cannot connect: %s", l->name, mb_status_str(st));
            return st;
        }
        uint64_t now = mb_now_ns();
        st = mb_link_hello(l, now < deadline ? (int64_t)(deadline - now) : 0, err, err_cap);
        if (st == MB_STATUS_OK) return MB_STATUS_OK;
        int refused = mb_zmq_transport_handshake_failed(&l->transport);
        mb_transport_destroy(&l->transport);
        if (refused) {
            snprintf(err, err_cap,
                     "%s: the worker refused the connection (authentication: check ,key=, --curve-secret and "
                     "the worker's --curve-allow)",
                     l->name);
            return MB_STATUS_CONFIG;
        }
        now = mb_now_ns();
        if (st == MB_STATUS_BUSY) {
            if (now < t0 + MB_LINK_BUSY_RETRY_NS && now + 200000000ull < deadline) {
                usleep(200000);
                continue;
            }
            snprintf(err, err_cap, "%s: the worker is busy serving another coordinator", l->name);
            return st;
        }
        if (st != MB_STATUS_PEER_DEAD || now + 100000000ull >= deadline) {
            char why[160];
            snprintf(why, sizeof why, "%s", err);
            snprintf(err, err_cap, "%s: reached, but no moe-worker completed the handshake within %.1f s "
                     "(--connect-timeout): %.100s", l->name, (double)timeout_ns / 1e9,
                     strncmp(why, l->name, strlen(l->name)) ? why : why + strlen(l->name) + 2);
            return st;
        }
        usleep(100000);
    }
}

mb_status mb_link_connect(const mb_link_spec *spec, int index, int64_t timeout_ns, mb_link *out, char *err,
                          size_t err_cap)
{
    mb_link l;
    memset(&l, 0, sizeof l);
    l.kind = MB_LINK_REMOTE;
    l.weight = spec->weight > 0 ? spec->weight : 1.0;
    l.same_host = strncmp(spec->endpoint, "ipc://", 6) == 0;
    l.next_tag = 1;
    l.worker_timeout_ns = spec->worker_timeout_ns > 0 ? spec->worker_timeout_ns : MB_LINK_WORKER_TIMEOUT_NS;
    snprintf(l.endpoint, sizeof l.endpoint, "%s", spec->endpoint);
    snprintf(l.name, sizeof l.name, "w%d %.80s", index, spec->endpoint);
    mb_status st = mb_link_curve_keys(spec, &l, err, err_cap);
    if (st == MB_STATUS_OK)
        st = mb_link_dial(&l, spec->connect_timeout_ns > 0 ? spec->connect_timeout_ns : timeout_ns, err, err_cap);
    if (st != MB_STATUS_OK) {
        explicit_bzero(l.curve_secret_key, sizeof l.curve_secret_key);
        return st;
    }
    snprintf(l.name, sizeof l.name, "w%d %.16s %.60s", index, l.caps.backend, spec->endpoint);
    *out = l;
    return MB_STATUS_OK;
}

mb_status mb_link_reconnect(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap)
{
    if (!l || l->kind != MB_LINK_REMOTE || !l->lost) return MB_STATUS_INVALID_ARG;
    l->next_tag = 1;
    mb_status st = mb_link_dial(l, timeout_ns, err, err_cap);
    if (st == MB_STATUS_OK) l->lost = 0;
    return st;
}

void mb_link_drop(mb_link *l, char *why, size_t why_cap)
{
    snprintf(why, why_cap, "%s", l->kind == MB_LINK_REMOTE ? "connection lost or heartbeats stopped" : "hung up");
    if (l->pid > 0) {
        int status = 0;
        pid_t r = 0;
        /* A worker whose hang-up was seen may still be on its way out. */
        for (int i = 0; i < 50 && r == 0; i++) {
            r = waitpid(l->pid, &status, WNOHANG);
            if (r == 0) usleep(1000);
        }
        if (r == l->pid && WIFSIGNALED(status))
            snprintf(why, why_cap, "died (killed by signal %d)", WTERMSIG(status));
        else if (r == l->pid && WIFEXITED(status))
            snprintf(why, why_cap, "exited with status %d", WEXITSTATUS(status));
        else {
            /* Alive but silent: frozen or hung. It cannot come back. */
            snprintf(why, why_cap, "stopped answering (no heartbeat for %.1f s)", (double)l->worker_timeout_ns / 1e9);
            kill(l->pid, SIGKILL);
            mb_link_reap(l->pid, 1000);
        }
        l->pid = 0;
    }
    mb_transport_destroy(&l->transport);
    if (l->ipc_path[0]) unlink(l->ipc_path);
    l->ipc_path[0] = '\0';
    l->lost = 1;
}

static mb_status mb_link_inproc_handle(void *ctx, const void *msg, size_t len)
{
    return mb_worker_handle(ctx, msg, len);
}

mb_status mb_link_open_inproc(const mb_link_spec *spec, int index, mb_link *out, char *err, size_t err_cap)
{
    mb_link l;
    memset(&l, 0, sizeof l);
    l.kind = MB_LINK_INPROC;
    l.weight = spec->weight > 0 ? spec->weight : 1.0;
    l.same_host = 1;
    l.next_tag = 1;
    snprintf(l.name, sizeof l.name, "local %s", spec->backend);
    const mb_backend_ops *ops = mb_backend_find(spec->backend);
    if (!ops) {
        snprintf(err, err_cap, "%s: backend not built into this binary", l.name);
        return MB_STATUS_NOT_FOUND;
    }
    mb_backend_cpu_options cpu_opt = {.n_threads = (int)spec->threads,
                                      .numa = spec->device >= 0 ? MB_NUMA_BIND : MB_NUMA_DEFAULT};
    mb_backend_config cfg = {.device = spec->device, .max_slots = spec->max_slots ? spec->max_slots : 4096u,
                             .options = !strcmp(spec->backend, "cpu") ? &cpu_opt : NULL};
    mb_status st = mb_backend_open(ops, &cfg, &l.backend);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "%s: cannot open backend %s: %s", l.name, spec->backend,
                 st == MB_STATUS_DEVICE ? "no such device (device unavailable)" : mb_status_str(st));
        return st;
    }
    mb_worker_config *wcfg = calloc(1, sizeof *wcfg);
    if (!wcfg) {
        mb_backend_close(l.backend);
        return MB_STATUS_NOMEM;
    }
    st = mb_inproc_transport_create(&l.transport, &l.handler_end);
    if (st != MB_STATUS_OK) goto fail;
    *out = l; /* the worker config points at out's handler end, so build it there */
    wcfg->backend = out->backend;
    wcfg->transport = &out->handler_end;
    wcfg->name = out->name;
    out->worker_cfg = wcfg;
    st = mb_worker_create(wcfg, &out->worker);
    if (st != MB_STATUS_OK) {
        mb_link_close(out);
        snprintf(err, err_cap, "%s: %s", l.name, mb_status_str(st));
        return st;
    }
    mb_inproc_transport_set_handler(&out->transport, mb_link_inproc_handle, out->worker);
    st = mb_link_hello(out, 0, err, err_cap);
    if (st != MB_STATUS_OK) mb_link_close(out);
    return st;
fail:
    free(wcfg);
    mb_backend_close(l.backend);
    snprintf(err, err_cap, "%s: %s", l.name, mb_status_str(st));
    return st;
}

/* Waits up to timeout_ms for the child to exit; returns 1 once reaped. */
static int mb_link_reap(pid_t pid, int timeout_ms)
{
    for (int waited = 0;; waited++) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) return 1;
        if (waited >= timeout_ms) return 0;
        usleep(1000);
    }
}

void mb_link_close(mb_link *l)
{
    if (!l) return;
    /* SHUTDOWN ends the session: a spawned worker exits, a remote one goes
     * back to waiting for the next coordinator. */
    if ((l->pid > 0 || l->kind == MB_LINK_REMOTE) && !l->lost) {
        if (l->transport.ops) {
            unsigned char msg[MB_PROTO_HEADER_BYTES] __attribute__((aligned(8)));
            size_t len = 0;
            char err[160];
            if (mb_proto_encode_empty(msg, sizeof msg, MB_OP_SHUTDOWN, l->next_tag++, MB_STATUS_OK, &len) ==
                MB_STATUS_OK)
                mb_link_call(l, msg, len, 500000000LL, err, sizeof err);
        }
    }
    if (l->pid > 0) {
        if (!mb_link_reap(l->pid, 1000)) {
            kill(l->pid, SIGKILL);
            mb_link_reap(l->pid, 1000);
        }
        l->pid = 0;
    }
    mb_transport_destroy(&l->transport);
    if (l->worker) mb_worker_destroy(l->worker);
    l->worker = NULL;
    free(l->worker_cfg);
    l->worker_cfg = NULL;
    if (l->backend) mb_backend_close(l->backend);
    l->backend = NULL;
    if (l->ipc_path[0]) unlink(l->ipc_path);
    l->ipc_path[0] = '\0';
    mb_link_spawn_forget(l);
    explicit_bzero(l->curve_secret_key, sizeof l->curve_secret_key);
}
