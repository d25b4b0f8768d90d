/* moe-worker: serves expert FFN work for the coordinator over shared memory
 * (spawned by moe-broker, which hands it the segment's fd) or ZeroMQ
 * (ipc:// or tcp://, started by hand, possibly on another machine).
 * Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage. */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/worker.h"
#include "protocol/message.h"
#include "protocol/transport.h"
#include "shm/shm.h"
#ifdef MB_HAVE_VULKAN
#include "backends/vulkan/vk_devices.h"
#endif
#ifdef MB_HAVE_CUDA
#include "kernels/cuda/device_query.h"
#endif

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
            "                  [--max-slots N] [--allow-file-weights] [--once]\n"
            "  --backend            backend and device: cpu, cpu:0 (NUMA node 0), cuda:0, vulkan:0\n"
            "  --listen             shm (spawned by moe-broker, with --shm-fd), or a ZeroMQ endpoint\n"
            "  --threads N          cpu: compute threads (default: all CPUs the process may use)\n"
            "  --numa POLICY        cpu: expert weight placement (default: bind when a node is given)\n"
            "  --shm-fd FD          the shared-memory segment's inherited descriptor\n"
            "  --error-fd FD        write a failure to start there instead of stderr (moe-broker passes it)\n"
            "  --max-slots N        expert slots to hold (default 4096)\n"
            "  --allow-file-weights accept weights as file regions over tcp:// too (same filesystem)\n"
            "  --once               over ZeroMQ, exit after one coordinator's session (default: serve the next)\n"
            "  --list-devices       print the CUDA and Vulkan devices (N of cuda:N, vulkan:N) and exit\n"
            "  --version            print the version and exit\n"
            "Stop a ZeroMQ worker with SIGTERM or SIGINT.\n");
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

static int mb_worker_parse_int(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *backend_spec = "cpu", *listen = NULL, *numa = NULL;
    long threads = 0, shm_fd = -1, max_slots = 4096, error_fd = -1;
    int allow_files = 0, once = 0, threads_given = 0;
    static const struct option opts[] = {
        {"backend", required_argument, 0, 'b'}, {"listen", required_argument, 0, 'l'},
        {"threads", required_argument, 0, 't'}, {"numa", required_argument, 0, 'n'},
        {"shm-fd", required_argument, 0, 'f'},  {"max-slots", required_argument, 0, 's'},
        {"allow-file-weights", no_argument, 0, 'a'}, {"once", no_argument, 0, 'o'},
        {"error-fd", required_argument, 0, 'e'},    {"help", no_argument, 0, 'h'},
        {"list-devices", no_argument, 0, 'D'}, {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "b:l:t:n:f:s:e:aoh", opts, NULL)) != -1) {
        switch (c) {
        case 'b': backend_spec = optarg; break;
        case 'l': listen = optarg; break;
        case 'n': numa = optarg; break;
        case 'a': allow_files = 1; break;
        case 'o': once = 1; break;
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
                        "  e.g. moe-worker --backend cpu --listen tcp://0.0.0.0:5555   (then moe-broker run --worker tcp://HOST:5555)\n"
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

    char tag[96];
    snprintf(tag, sizeof tag, "moe-worker[%s %s]", backend_spec, listen);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mb_worker_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    mb_transport transport = {0};
    mb_status st;
    int allow_file_weights = 1;
    if (!strcmp(listen, "shm")) {
        if (shm_fd < 0) {
            mb_worker_fail(MB_STATUS_CONFIG, "%s: --listen shm needs --shm-fd (moe-broker passes it)", tag);
            return 2;
        }
        st = mb_shm_transport_attach((int)shm_fd, &transport);
    } else if (!strncmp(listen, "ipc://", 6) || !strncmp(listen, "tcp://", 6)) {
        st = mb_zmq_transport_listen(listen, NULL, &transport);
        allow_file_weights = allow_files || !strncmp(listen, "ipc://", 6);
    } else {
        mb_worker_fail(MB_STATUS_CONFIG, "moe-worker: invalid --listen '%s' (valid: shm, ipc://PATH, tcp://HOST:PORT)", listen);
        return 2;
    }
    if (st != MB_STATUS_OK) {
        mb_worker_fail(st, "%s: cannot open the transport: %s", tag, mb_status_str(st));
        return 1;
    }

    mb_backend *backend = NULL;
    st = mb_backend_open(ops, &bcfg, &backend);
    if (st == MB_STATUS_OK && strcmp(listen, "shm") != 0) {
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
                             .allow_file_weights = allow_file_weights, .stop = &mb_worker_stop, .name = tag};
    for (;;) {
        st = mb_worker_serve(&wcfg);
        /* A ZeroMQ worker outlives its coordinators: when one ends its
         * session (SHUTDOWN) or goes away, it listens again on the same
         * endpoint for the next, which loads its own experts. A
         * shared-memory worker, or one started with --once, serves one. */
        if ((st != MB_STATUS_PEER_DEAD && st != MB_STATUS_OK) || !strcmp(listen, "shm") || once || mb_worker_stop)
            break;
        char again[300];
        if (mb_zmq_transport_endpoint(&transport, again, sizeof again) != MB_STATUS_OK) break;
        mb_transport_destroy(&transport);
        fprintf(stderr, "%s: %s; listening again on %s\n", tag,
                st == MB_STATUS_OK ? "session ended" : "coordinator gone", again);
        st = mb_zmq_transport_listen(again, NULL, &transport);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "%s: cannot listen again: %s\n", tag, mb_status_str(st));
            mb_backend_close(backend);
            return 1;
        }
    }
    if (st == MB_STATUS_PEER_DEAD && mb_worker_stop) st = MB_STATUS_OK;
    mb_backend_close(backend);
    mb_transport_destroy(&transport);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "%s: stopped: %s\n", tag, mb_status_str(st));
        return 1;
    }
    return 0;
}
