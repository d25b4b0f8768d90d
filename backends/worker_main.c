/* moe-worker: serves expert FFN work for the coordinator over shared memory
 * (spawned by moe-broker, which hands it the segment's fd) or ZeroMQ
 * (ipc:// or tcp://, started by hand, possibly on another machine).
 * Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/worker.h"
#include "backends/worker_internal.h"
#include "kernels/cpu/pool.h"
#include "protocol/message.h"
#include "protocol/transport.h"
#include "shm/shm.h"
#ifdef MB_HAVE_VULKAN
#include "backends/vulkan/vk_devices.h"
#endif
#ifdef MB_HAVE_CUDA
#include "kernels/cuda/device_query.h"
#endif

/* --model-root folders one worker accepts. */
#define MB_WORKER_MAX_ROOTS 16
/* --idle-timeout default for a ZeroMQ worker: long enough for a person to
 * think between chat turns, short enough that a coordinator gone silent
 * frees the worker the same hour. moe-broker starts its own workers with 0. */
#define MB_WORKER_IDLE_TIMEOUT_DEFAULT_S 600.0
#define MB_WORKER_IDLE_TIMEOUT_MAX_S 604800.0 /* a week */

static volatile sig_atomic_t mb_worker_stop;

static void mb_worker_on_signal(int sig)
{
    (void)sig;
    mb_worker_stop = 1;
}

/* Where a failure before serving is reported: the descriptor moe-broker
 * passed with --error-fd, as "<mb_status value> <message>" (it returns that
 * status and quotes the message in its own error), else stderr. */
static int mb_worker_error_fd = -1;

static void mb_worker_fail(mb_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_worker_fail(mb_status status, const char *fmt, ...)
{
    char line[512];
    int at0 = mb_worker_error_fd >= 0 ? snprintf(line, sizeof line, "%d ", (int)status) : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + at0, sizeof line - (size_t)at0, fmt, ap);
    va_end(ap);
    if (mb_worker_error_fd >= 0) {
        size_t n = strlen(line), at = 0;
        while (at < n) {
            ssize_t k = write(mb_worker_error_fd, line + at, n - at);
            if (k <= 0) break;
            at += (size_t)k;
        }
    } else {
        fprintf(stderr, "%s\n", line);
    }
    (void)status;
}

/* Started: moe-broker stops waiting for a failure line. */
static void mb_worker_started(void)
{
    if (mb_worker_error_fd >= 0) close(mb_worker_error_fd);
    mb_worker_error_fd = -1;
}

/* How messages name a backend ("CUDA") and its devices ("CUDA device"). */
static const char *mb_worker_backend_title(const char *backend)
{
    if (!strcmp(backend, "cuda")) return "CUDA";
    if (!strcmp(backend, "vulkan")) return "Vulkan";
    return backend;
}

static const char *mb_worker_device_kind(const char *backend)
{
    if (!strcmp(backend, "cuda")) return "CUDA device";
    if (!strcmp(backend, "vulkan")) return "Vulkan device";
    if (!strcmp(backend, "cpu")) return "such NUMA node";
    return "device";
}

static void mb_worker_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-worker --backend cpu[:NUMA_NODE]|cuda[:N]|vulkan[:N] --listen shm|ipc://PATH|tcp://HOST:PORT\n"
            "                  [--threads N] [--numa default|bind|interleave] [--shm-fd FD]\n"
            "                  [--max-slots N] [--model-root DIR]... [--max-memory BYTES] [--once]\n"
            "                  [--idle-timeout SECONDS]\n"
            "                  [--curve-secret FILE --curve-allow FILE | --insecure]\n"
            "  --backend            backend and device: cpu, cpu:0 (NUMA node 0), cuda:0, vulkan:0\n"
            "  --listen             shm (spawned by moe-broker, with --shm-fd), or a ZeroMQ endpoint\n"
            "  --threads N          cpu: compute threads (default: all CPUs the process may use)\n"
            "  --numa POLICY        cpu: expert weight placement (default: bind when a node is given)\n"
            "  --shm-fd FD          the shared-memory segment's inherited descriptor\n"
            "  --error-fd FD        write a failure to start there instead of stderr (moe-broker passes it)\n"
            "  --max-slots N        expert slots to hold (default 4096)\n"
            "  --model-root DIR     accept weights as regions of files below DIR (repeatable; symlinks\n"
            "                       leading out are refused); without it weights come inline only\n"
            "  --max-memory BYTES   expert weights one session may load, K/M/G/T suffixes (powers of\n"
            "                       1024); default: the backend's free memory when the session starts\n"
            "  --curve-secret FILE  this worker's CURVE secret key (moe-broker keygen DIR)\n"
            "  --curve-allow FILE   the coordinators' public keys it admits, one a line; re-read at\n"
            "                       each connection, so deleting a line revokes that key\n"
            "  --insecure           listen on a non-loopback tcp:// address without CURVE\n"
            "  --idle-timeout S     end a session whose coordinator sends nothing for S seconds while\n"
            "                       no request runs (its experts freed, the next coordinator served);\n"
            "                       0: never; env MB_WORKER_IDLE_TIMEOUT; default 600\n"
            "  --once               over ZeroMQ, exit after one coordinator's session (default: serve the next)\n"
            "  --list-devices       print the CUDA and Vulkan devices (N of cuda:N, vulkan:N) and exit\n"
            "  --version            print the version and exit\n"
            "A ZeroMQ worker serves one coordinator at a time (another is answered BUSY); each\n"
            "session starts with an empty backend. Stop it with SIGTERM or SIGINT.\n");
}

/* --list-devices: the GPU devices this build can use, with their memory. */
static int mb_worker_list_devices(void)
{
    int n = 0;
#ifdef MB_HAVE_CUDA
    const int n_cuda = mb_cuda_device_count();
    for (int i = 0; i < n_cuda; i++) {
        char desc[256];
        unsigned long long total = 0, free_bytes = 0;
        if (mb_cuda_device_describe(i, desc, sizeof desc, &total, &free_bytes) != 0) continue;
        printf("cuda:%d    %s, %.0f MiB (%.0f MiB free)\n", i, desc, total / 1048576.0, free_bytes / 1048576.0);
        n++;
    }
#endif
#ifdef MB_HAVE_VULKAN
    n += mb_vk_devices_print(stdout);
#endif
    if (n == 0) printf("no CUDA or Vulkan device\n");
    return 0;
}

/* BYTES with an optional K/M/G/T suffix (powers of 1024). */
static int mb_worker_parse_bytes(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!s[0] || s[0] == '-' || errno || end == s) return -1;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    case 'T': case 't': shift = 40; break;
    default: return -1;
    }
    if (*end && end[1]) return -1;
    if (shift && v > (UINT64_MAX >> shift)) return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* SECONDS for --idle-timeout / MB_WORKER_IDLE_TIMEOUT: a decimal in
 * [0, a week], fractions allowed. */
static int mb_worker_parse_seconds(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!s[0] || *end || errno || !(v >= 0 && v <= MB_WORKER_IDLE_TIMEOUT_MAX_S)) return -1;
    *out = v;
    return 0;
}

static int mb_worker_parse_int(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* The network side of a ZeroMQ worker: who may connect (CURVE keys) and
 * the options every (re)listen uses. */
typedef struct {
    const char *secret_file, *allow_file;
    int insecure;
    char secret[MB_ZMQ_KEY_CHARS + 1];
    mb_zmq_options zopt;
} mb_worker_net;

/* Checks the authentication options against the endpoint and loads the
 * key. Returns 0, or the exit code after saying why. */
static int mb_worker_net_setup(mb_worker_net *n, const char *listen, const char *tag)
{
    const int zmq = strcmp(listen, "shm") != 0;
    if (!n->secret_file != !n->allow_file) {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: --curve-secret and --curve-allow go together");
        return 2;
    }
    if (n->secret_file && !zmq) {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: --curve-secret applies to ZeroMQ endpoints only");
        return 2;
    }
    if (!n->secret_file) {
        if (zmq && !mb_zmq_endpoint_is_local(listen) && !n->insecure) {
            mb_worker_fail(MB_STATUS_CONFIG,
                           "moe-worker: refusing to listen on %s without authentication: give --curve-secret "
                           "and --curve-allow (keys from moe-broker keygen), or --insecure on a trusted network",
                           listen);
            return 2;
        }
        return 0;
    }
    if (!mb_zmq_has_curve()) {
        mb_worker_fail(MB_STATUS_UNSUPPORTED, "moe-worker: this libzmq has no CURVE support");
        return 2;
    }
    mb_status st = mb_zmq_key_load(n->secret_file, n->secret);
    if (st != MB_STATUS_OK) {
        mb_worker_fail(st, "moe-worker: cannot read a CURVE secret key from %s: %s", n->secret_file,
                       mb_status_str(st));
        return 2;
    }
    char probe[MB_ZMQ_KEY_CHARS + 1];
    if (mb_zmq_key_load(n->allow_file, probe) != MB_STATUS_OK) {
        /* Not fatal later (a file being rewritten admits nobody meanwhile),
         * but at start it is a mistake. */
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: --curve-allow %s lists no public key", n->allow_file);
        return 2;
    }
    n->zopt.curve_secret_key = n->secret;
    n->zopt.curve_allow_file = n->allow_file;
    char pub[MB_ZMQ_KEY_CHARS + 1];
    if (mb_zmq_key_public(n->secret, pub) == MB_STATUS_OK)
        fprintf(stderr, "%s: CURVE on; this worker's public key: %s\n", tag, pub);
    return 0;
}

/* After SHUTDOWN: the reply is queued inside libzmq, and closing the socket
 * (linger 0) would drop it. Waits until the coordinator hangs up, as it
 * does once it has the reply, or MB_WORKER_LINGER_NS passes; whatever else
 * it sends meanwhile is dropped. */
#define MB_WORKER_LINGER_NS 500000000LL
static void mb_worker_linger(mb_transport *t)
{
    const uint64_t deadline = mb_worker_now_ns() + MB_WORKER_LINGER_NS;
    while (!mb_worker_stop) {
        uint64_t now = mb_worker_now_ns();
        if (now >= deadline) return;
        const void *msg = NULL;
        size_t len = 0;
        mb_status st = mb_transport_recv(t, (int64_t)(deadline - now), &msg, &len);
        if (st == MB_STATUS_OK) mb_transport_recv_release(t);
        else if (st != MB_STATUS_PROTOCOL && st != MB_STATUS_TRUNCATED) return;
    }
}

/* 1 when a session that ended with st leaves the worker unable to serve
 * another: a lost device or a broken backend. */
static int mb_worker_fatal(mb_status st)
{
    return st == MB_STATUS_DEVICE || st == MB_STATUS_BACKEND;
}

int main(int argc, char **argv)
{
    const char *backend_spec = "cpu", *listen = NULL, *numa = NULL;
    const char *roots_given[MB_WORKER_MAX_ROOTS];
    unsigned n_roots = 0;
    long threads = 0, shm_fd = -1, max_slots = 4096, error_fd = -1;
    uint64_t max_memory = 0;
    double idle_s = MB_WORKER_IDLE_TIMEOUT_DEFAULT_S;
    const char *idle_env = getenv("MB_WORKER_IDLE_TIMEOUT");
    if (idle_env && mb_worker_parse_seconds(idle_env, &idle_s)) {
        fprintf(stderr, "moe-worker: invalid MB_WORKER_IDLE_TIMEOUT '%s' (seconds, 0..604800)\n", idle_env);
        return 2;
    }
    int once = 0, threads_given = 0, max_memory_given = 0;
    mb_worker_net net;
    memset(&net, 0, sizeof net);
    static const struct option opts[] = {
        {"backend", required_argument, 0, 'b'},      {"listen", required_argument, 0, 'l'},
        {"threads", required_argument, 0, 't'},      {"numa", required_argument, 0, 'n'},
        {"shm-fd", required_argument, 0, 'f'},       {"max-slots", required_argument, 0, 's'},
        {"model-root", required_argument, 0, 'r'},   {"max-memory", required_argument, 0, 'm'},
        {"curve-secret", required_argument, 0, 'S'}, {"curve-allow", required_argument, 0, 'A'},
        {"insecure", no_argument, 0, 'I'},           {"once", no_argument, 0, 'o'},
        {"error-fd", required_argument, 0, 'e'},     {"help", no_argument, 0, 'h'},
        {"list-devices", no_argument, 0, 'D'},       {"version", no_argument, 0, 'V'},
        {"idle-timeout", required_argument, 0, 'i'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "b:l:t:n:f:s:e:oh", opts, NULL)) != -1) {
        switch (c) {
        case 'b': backend_spec = optarg; break;
        case 'l': listen = optarg; break;
        case 'n': numa = optarg; break;
        case 'o': once = 1; break;
        case 'S': net.secret_file = optarg; break;
        case 'A': net.allow_file = optarg; break;
        case 'I': net.insecure = 1; break;
        case 'r':
            if (n_roots == MB_WORKER_MAX_ROOTS) {
                fprintf(stderr, "moe-worker: at most %d --model-root folders\n", MB_WORKER_MAX_ROOTS);
                return 2;
            }
            roots_given[n_roots++] = optarg;
            break;
        case 'i':
            if (mb_worker_parse_seconds(optarg, &idle_s)) {
                fprintf(stderr, "moe-worker: invalid --idle-timeout '%s' (seconds, 0..604800)\n", optarg);
                return 2;
            }
            break;
        case 'm':
            if (mb_worker_parse_bytes(optarg, &max_memory)) {
                fprintf(stderr, "moe-worker: invalid --max-memory '%s' (bytes, K/M/G/T suffixes)\n", optarg);
                return 2;
            }
            max_memory_given = 1;
            break;
        case 't':
            if (mb_worker_parse_int(optarg, 0, 4096, &threads)) {
                fprintf(stderr, "moe-worker: invalid --threads '%s' (0..4096)\n", optarg);
                return 2;
            }
            threads_given = 1;
            break;
        case 'e':
            if (mb_worker_parse_int(optarg, 0, 1 << 20, &error_fd)) {
                fprintf(stderr, "moe-worker: invalid --error-fd '%s'\n", optarg);
                return 2;
            }
            mb_worker_error_fd = (int)error_fd;
            break;
        case 'f':
            if (mb_worker_parse_int(optarg, 0, 1 << 20, &shm_fd)) {
                fprintf(stderr, "moe-worker: invalid --shm-fd '%s'\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (mb_worker_parse_int(optarg, 1, 1 << 20, &max_slots)) {
                fprintf(stderr, "moe-worker: invalid --max-slots '%s' (1..1048576)\n", optarg);
                return 2;
            }
            break;
        case 'h': mb_worker_usage(stdout); return 0;
        case 'D': return mb_worker_list_devices();
        case 'V': printf("moe-worker %s (wire protocol %u)\n", MB_VERSION, MB_PROTO_VERSION); return 0;
        default: mb_worker_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "moe-worker: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (!listen) {
        fprintf(stderr, "moe-worker: --listen is missing: where should the worker wait for a coordinator?\n"
                        "  e.g. moe-worker --backend cpu --listen tcp://127.0.0.1:5555   (then moe-broker run --worker tcp://127.0.0.1:5555;\n"
                        "  other hosts need CURVE keys: --curve-secret and --curve-allow, see moe-broker keygen)\n"
                        "  (moe-broker starts its own local workers with --listen shm; see moe-worker --help)\n");
        return 2;
    }
    char name[32];
    int device = -1;
    if (mb_backend_spec_parse(backend_spec, name, sizeof name, &device) != MB_STATUS_OK) {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: invalid --backend '%s' (cpu, cpu:NODE, cuda:N, vulkan:N)", backend_spec);
        return 2;
    }
    const mb_backend_ops *ops = mb_backend_find(name);
    if (!ops) {
        if (!strcmp(name, "cuda") || !strcmp(name, "vulkan"))
            mb_worker_fail(MB_STATUS_UNSUPPORTED, "moe-worker: this build has no %s backend", mb_worker_backend_title(name));
        else
            mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: unknown backend '%s' (cpu, cuda, vulkan)", name);
        return 2;
    }
    const int is_cpu = !strcmp(name, "cpu");
    if (!is_cpu && (threads_given || numa)) {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: --threads and --numa apply to the cpu backend only");
        return 2;
    }
    mb_backend_cpu_options cpu_opt = {.n_threads = (int)threads,
                                      .numa = device >= 0 ? MB_NUMA_BIND : MB_NUMA_DEFAULT};
    if (numa) {
        if (!strcmp(numa, "default")) cpu_opt.numa = MB_NUMA_DEFAULT;
        else if (!strcmp(numa, "bind")) cpu_opt.numa = MB_NUMA_BIND;
        else if (!strcmp(numa, "interleave")) cpu_opt.numa = MB_NUMA_INTERLEAVE;
        else {
            mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: invalid --numa '%s' (valid: default, bind, interleave)", numa);
            return 2;
        }
    }
    mb_backend_config bcfg = {.device = device, .max_slots = (uint32_t)max_slots,
                              .options = is_cpu ? &cpu_opt : NULL};
    char *roots[MB_WORKER_MAX_ROOTS];
    for (unsigned i = 0; i < n_roots; i++) {
        mb_status rst = mb_worker_root_resolve(roots_given[i], &roots[i]);
        if (rst != MB_STATUS_OK) {
            mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: invalid --model-root '%s': %s", roots_given[i],
                           rst == MB_STATUS_NOT_FOUND ? "no such folder" : "not a folder");
            return 2;
        }
    }

    char tag[96];
    snprintf(tag, sizeof tag, "moe-worker[%s %s]", backend_spec, listen);
    const int is_shm = !strcmp(listen, "shm");
    if (!is_shm && strncmp(listen, "ipc://", 6) && strncmp(listen, "tcp://", 6)) {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: invalid --listen '%s' (valid: shm, ipc://PATH, tcp://HOST:PORT)", listen);
        return 2;
    }
    net.zopt.session_hello = 1;
    int rc = mb_worker_net_setup(&net, listen, tag);
    if (rc) return rc;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mb_worker_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    mb_transport transport = {0};
    mb_status st;
    if (is_shm) {
        if (shm_fd < 0) {
            mb_worker_fail(MB_STATUS_CONFIG, "%s: --listen shm needs --shm-fd (moe-broker passes it)", tag);
            return 2;
        }
        st = mb_shm_transport_attach((int)shm_fd, &transport);
        /* Between requests the pool's threads wait as long as the ring's
         * receive does: a coordinator that asks for a long spin (one on a
         * GPU sends the next layer's request within the dense part's
         * microseconds) should not find them asleep. */
        const int64_t ring_spin_us =
            st == MB_STATUS_OK ? mb_shm_transport_spin_ns(&transport) / 1000 : 0;
        if (ring_spin_us > (int64_t)MB_KCPU_POOL_SPIN_US_DEFAULT)
            cpu_opt.idle_spin_us = (uint32_t)ring_spin_us;
    } else {
        st = mb_zmq_transport_listen(listen, &net.zopt, &transport);
    }
    if (st != MB_STATUS_OK) {
        mb_worker_fail(st, "%s: cannot open the transport: %s", tag, mb_status_str(st));
        return 1;
    }

    mb_backend *backend = NULL;
    st = mb_backend_open(ops, &bcfg, &backend);
    if (st == MB_STATUS_OK && !is_shm) {
        /* Say where we listen (the port when "*" was asked for), once the
         * backend is ready, so scripts can wait for this line. */
        char bound[300];
        if (mb_zmq_transport_endpoint(&transport, bound, sizeof bound) == MB_STATUS_OK) {
            printf("moe-worker: listening on %s\n", bound);
            fflush(stdout);
        }
    }
    if (st == MB_STATUS_DEVICE) {
        mb_worker_fail(st, "%s: cannot open backend %s: no %s (%s)", tag, backend_spec,
                       mb_worker_device_kind(name), mb_status_str(st));
    } else if (st != MB_STATUS_OK) {
        mb_worker_fail(st, "%s: cannot open backend %s: %s", tag, backend_spec, mb_status_str(st));
    }
    if (st != MB_STATUS_OK) {
        mb_transport_destroy(&transport);
        return 1;
    }
    mb_worker_started();
    mb_worker_config wcfg = {.backend = backend, .transport = &transport,
                             .model_roots = (const char *const *)roots, .n_model_roots = n_roots,
                             .idle_timeout_ns = (int64_t)(idle_s * 1e9), .stop = &mb_worker_stop, .name = tag};
    for (;;) {
        wcfg.backend = backend;
        wcfg.max_memory_bytes = max_memory;
        if (!max_memory_given) {
            /* What the host (or the device, when it reports more) can
             * spare as the session starts. A NUMA node's free memory leaves
             * out the page cache the kernel would reclaim, so the host's
             * MemAvailable counts too. */
            mb_backend_caps caps;
            uint64_t dev_free = mb_backend_caps_get(backend, &caps) == MB_STATUS_OK ? caps.mem_free_bytes : 0;
            uint64_t host = mb_worker_mem_available_bytes();
            wcfg.max_memory_bytes = dev_free > host ? dev_free : host;
        }
        st = mb_worker_serve(&wcfg);
        /* A ZeroMQ worker outlives its coordinators: when a session ends
         * (SHUTDOWN, the peer gone or dropped for malformed input), its
         * connection is cut, everything it loaded is freed with the
         * backend, and a fresh backend serves the next. A shared-memory
         * worker, or one started with --once, serves one. */
        if (is_shm || once || mb_worker_stop || mb_worker_fatal(st)) break;
        if (st == MB_STATUS_OK) mb_worker_linger(&transport);
        /* The socket stays bound between sessions, so the endpoint never
         * refuses a connection; a broken transport is replaced instead. */
        mb_status tst = mb_zmq_transport_end_session(&transport);
        char again[300];
        if (tst != MB_STATUS_OK) {
            if (mb_zmq_transport_endpoint(&transport, again, sizeof again) != MB_STATUS_OK) break;
            mb_transport_destroy(&transport);
            tst = mb_zmq_transport_listen(again, &net.zopt, &transport);
            if (tst != MB_STATUS_OK) {
                fprintf(stderr, "%s: cannot listen again: %s\n", tag, mb_status_str(tst));
                break;
            }
        }
        mb_backend_close(backend);
        backend = NULL;
        /* Give the session's freed weights back to the host now: glibc
         * keeps freed heap memory for reuse unless asked. */
        malloc_trim(0);
        if (st == MB_STATUS_OK || st == MB_STATUS_PEER_DEAD)
            fprintf(stderr, "%s: %s; waiting for the next coordinator\n", tag,
                    st == MB_STATUS_OK ? "session ended" : "coordinator gone");
        else if (st == MB_STATUS_TIMEOUT)
            fprintf(stderr, "%s: session ended: the coordinator sent nothing for %g s (--idle-timeout); waiting "
                    "for the next coordinator\n", tag, idle_s);
        else
            fprintf(stderr, "%s: session dropped (%s); waiting for the next coordinator\n", tag, mb_status_str(st));
        st = mb_backend_open(ops, &bcfg, &backend);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "%s: cannot reopen backend %s: %s\n", tag, backend_spec, mb_status_str(st));
            break;
        }
    }
    if (mb_worker_stop) st = MB_STATUS_OK;
    if (backend) mb_backend_close(backend);
    mb_transport_destroy(&transport);
    for (unsigned i = 0; i < n_roots; i++)
        free(roots[i]);
    explicit_bzero(net.secret, sizeof net.secret);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "%s: stopped: %s\n", tag, mb_status_str(st));
        return 1;
    }
    return 0;
}
