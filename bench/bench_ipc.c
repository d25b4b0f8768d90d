/* bench_ipc: round-trip latency and one-way throughput of the project's
 * transports (shm, zmq over ipc:// and tcp://) for 64 B, 8 KiB and 1 MiB
 * messages, each beside its bare baseline measured in the same run and
 * interleaved with it round by round: the shm transport beside a minimal
 * spin ring, the zmq transport beside bare libzmq on the same endpoint kind.
 * Goals: shm round trip <= 2x the spin ring; zmq <= bare libzmq + 10%.
 * Prints a table, then JSON (also written to --json FILE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/ipc_run.h"
#include "bench/timing.h"

#define MB_BENCH_N_SIZES 3
static const size_t mb_bench_sizes[MB_BENCH_N_SIZES] = {64, 8192, 1u << 20};

/* A transport and the baseline it is judged against. */
typedef struct {
    mb_bench_ipc_kind transport, baseline;
    double goal; /* transport / baseline time must stay at or below this */
} mb_bench_pair;

static const mb_bench_pair mb_bench_pairs[] = {
    {MB_BENCH_IPC_SHM, MB_BENCH_IPC_SPIN, 2.0},
    {MB_BENCH_IPC_ZMQ_IPC, MB_BENCH_IPC_ZMQ_BARE_IPC, 1.1},
    {MB_BENCH_IPC_ZMQ_TCP, MB_BENCH_IPC_ZMQ_BARE_TCP, 1.1},
};
#define MB_BENCH_N_PAIRS (sizeof(mb_bench_pairs) / sizeof(mb_bench_pairs[0]))

typedef struct {
    int quick;
    const char *json_path;
    const char *only;    /* a transport name, or NULL for all */
    double seconds;      /* measured time per variant, case and measurement */
    unsigned rounds;     /* alternations of transport and baseline */
    unsigned window;     /* stream: messages in flight */
    int64_t shm_spin_ns; /* the shm transport's spin_ns; 0: its default */
} mb_bench_opts;

/* Where the run happened. */
typedef struct {
    int n_cpus;
    int parent_cpu, child_cpu; /* -1: not pinned */
    double load1, memcpy_gbps;
} mb_bench_env;

/* What one variant measured for one size. */
typedef struct {
    double p50_us, p99_us;
    size_t n_trips;
    double gbps;       /* from the median batch: steady streaming between stalls */
    double gbps_mean;  /* bytes over the whole time, stalls and drains included */
    double msgs_per_s; /* from the median batch */
} mb_bench_figures;

typedef struct {
    const mb_bench_pair *pair;
    size_t bytes;
    mb_bench_figures tr, base;
} mb_bench_result;

static void mb_bench_usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--quick] [--json FILE] [--only shm|zmq_ipc|zmq_tcp] [--seconds S]\n"
            "          [--rounds N] [--window N] [--shm-spin-us N]\n",
            argv0);
}

static int mb_bench_parse(int argc, char **argv, mb_bench_opts *o)
{
    *o = (mb_bench_opts){.seconds = 0.3, .rounds = 3, .window = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            o->quick = 1;
            o->seconds = 0.06;
            o->rounds = 2;
        } else if (!strcmp(a, "--json") && v) {
            o->json_path = v, i++;
        } else if (!strcmp(a, "--only") && v) {
            o->only = v, i++;
        } else if (!strcmp(a, "--seconds") && v) {
            o->seconds = atof(v), i++;
        } else if (!strcmp(a, "--rounds") && v) {
            o->rounds = (unsigned)atoi(v), i++;
        } else if (!strcmp(a, "--window") && v) {
            o->window = (unsigned)atoi(v), i++;
        } else if (!strcmp(a, "--shm-spin-us") && v) {
            o->shm_spin_ns = (int64_t)(atof(v) * 1e3), i++;
        } else {
            return -1;
        }
    }
    if (o->seconds <= 0 || o->seconds > 60 || o->rounds < 1 || o->rounds > 100 || o->window < 1 ||
        o->window > 32 || o->shm_spin_ns < 0 || o->shm_spin_ns > 1000000)
        return -1;
    return 0;
}

/* One variant's measurements of one size, accumulated over the rounds. */
typedef struct {
    mb_bench_samples rtt;
    mb_bench_stream_acc stream;
} mb_bench_acc;

static void mb_bench_acc_finish(mb_bench_acc *a, size_t msg_bytes, mb_bench_figures *f)
{
    f->n_trips = a->rtt.n;
    f->p50_us = (double)mb_bench_samples_quantile(&a->rtt, 0.5) / 1e3;
    f->p99_us = (double)mb_bench_samples_quantile(&a->rtt, 0.99) / 1e3;
    const mb_bench_stream_acc *s = &a->stream;
    f->gbps_mean = s->ns > 0 ? (double)s->bytes / (double)s->ns : 0;
    double batch_ns = (double)mb_bench_samples_quantile(&a->stream.batch, 0.5);
    double batch_msgs = (double)s->batch_msgs;
    if (batch_ns > 0) {
        f->gbps = batch_msgs * (double)msg_bytes / batch_ns;
        f->msgs_per_s = batch_msgs / (batch_ns / 1e9);
    } else { /* too slow for one whole batch: the mean is all there is */
        f->gbps = f->gbps_mean;
        f->msgs_per_s = f->gbps_mean * 1e9 / (double)msg_bytes;
    }
    mb_bench_samples_fini(&a->rtt);
    mb_bench_samples_fini(&a->stream.batch);
}

/* One round of both measurements on one variant, the others parked. */
static mb_status mb_bench_round(mb_bench_ipc_peer *run, mb_bench_ipc_peer *idle,
                                const mb_bench_opts *o, size_t bytes, const void *body,
                                mb_bench_acc *acc)
{
    int64_t run_ns = (int64_t)(o->seconds * 1e9 / o->rounds);
    int64_t warm_ns = run_ns / 8 > 2000000 ? run_ns / 8 : 2000000;
    mb_status st = mb_bench_ipc_peer_park(idle);
    if (st == MB_STATUS_OK) st = mb_bench_ipc_peer_unpark(run);
    if (st == MB_STATUS_OK)
        st = mb_bench_ipc_pingpong(run, bytes, body, warm_ns, run_ns, &acc->rtt);
    /* Enough warm-up messages to touch every page of a 64 MiB ring once. */
    uint64_t warm_msgs = 2 * ((64u << 20) / bytes) < 256 ? 2 * ((64u << 20) / bytes) : 256;
    if (st == MB_STATUS_OK)
        st = mb_bench_ipc_stream(run, bytes, body, o->window, warm_msgs, warm_ns, run_ns,
                                 &acc->stream);
    return st;
}

static mb_status mb_bench_run_pair(const mb_bench_pair *pair, const mb_bench_opts *o,
                                   const mb_bench_env *env, const void *body, mb_bench_result *res)
{
    for (size_t s = 0; s < MB_BENCH_N_SIZES; s++) { /* rows stay valid whatever fails */
        res[s].pair = pair;
        res[s].bytes = mb_bench_sizes[s];
    }
    /* Both children are forked before the parent opens any channel, so
     * neither inherits the other's libzmq threads half-way through a lock. */
    mb_bench_ipc_peer tr = {.pid = -1}, base = {.pid = -1};
    mb_bench_ipc_kind failed_kind = pair->baseline;
    mb_status st = mb_bench_ipc_peer_spawn(pair->baseline, env->child_cpu, o->shm_spin_ns, &base);
    if (st == MB_STATUS_OK) {
        failed_kind = pair->transport;
        st = mb_bench_ipc_peer_spawn(pair->transport, env->child_cpu, o->shm_spin_ns, &tr);
    }
    if (st == MB_STATUS_OK) {
        failed_kind = pair->baseline;
        st = mb_bench_ipc_peer_connect(&base);
    }
    if (st == MB_STATUS_OK) st = mb_bench_ipc_peer_park(&base);
    if (st == MB_STATUS_OK) {
        failed_kind = pair->transport;
        st = mb_bench_ipc_peer_connect(&tr);
    }
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "bench_ipc: cannot start %s: %s\n", mb_bench_ipc_kind_name(failed_kind),
                mb_status_str(st));
        mb_bench_ipc_peer_stop(&tr);
        mb_bench_ipc_peer_stop(&base);
        return st;
    }
    for (size_t s = 0; s < MB_BENCH_N_SIZES && st == MB_STATUS_OK; s++) {
        size_t bytes = mb_bench_sizes[s];
        mb_bench_acc acc_tr = {0}, acc_base = {0};
        /* Batches short enough to fall between scheduler stalls mostly. */
        acc_tr.stream.batch_msgs = acc_base.stream.batch_msgs = 2 * (uint64_t)o->window;
        for (unsigned r = 0; r < o->rounds && st == MB_STATUS_OK; r++) {
            st = mb_bench_round(&base, &tr, o, bytes, body, &acc_base);
            if (st == MB_STATUS_OK) st = mb_bench_round(&tr, &base, o, bytes, body, &acc_tr);
        }
        if (st != MB_STATUS_OK)
            fprintf(stderr, "bench_ipc: %s / %s, %zu B: %s\n",
                    mb_bench_ipc_kind_name(pair->transport), mb_bench_ipc_kind_name(pair->baseline),
                    bytes, mb_status_str(st));
        mb_bench_acc_finish(&acc_tr, bytes, &res[s].tr);
        mb_bench_acc_finish(&acc_base, bytes, &res[s].base);
    }
    mb_status st_tr = mb_bench_ipc_peer_stop(&tr);
    mb_status st_base = mb_bench_ipc_peer_stop(&base);
    if (st_tr != MB_STATUS_OK || st_base != MB_STATUS_OK)
        fprintf(stderr, "bench_ipc: stopping %s: %s, %s: %s\n",
                mb_bench_ipc_kind_name(pair->transport), mb_status_str(st_tr),
                mb_bench_ipc_kind_name(pair->baseline), mb_status_str(st_base));
    if (st == MB_STATUS_OK) st = st_tr != MB_STATUS_OK ? st_tr : st_base;
    return st;
}

static double mb_bench_ratio(double a, double b)
{
    return b > 0 ? a / b : 0;
}

/* "ok" within the goal, "MISS" beyond it, "n/a" when a side has no figure. */
static const char *mb_bench_verdict(double ratio, double goal)
{
    return ratio <= 0 ? "n/a" : ratio <= goal ? "ok" : "MISS";
}

static void mb_bench_size_name(size_t bytes, char *buf, size_t cap)
{
    if (bytes >= (1u << 20))
        snprintf(buf, cap, "%zu MiB", bytes >> 20);
    else if (bytes >= 1024)
        snprintf(buf, cap, "%zu KiB", bytes >> 10);
    else
        snprintf(buf, cap, "%zu B", bytes);
}

static void mb_bench_print_table(const mb_bench_result *res, size_t n)
{
    printf("%-8s %-13s %7s | %8s %8s %6s %5s | %8s %8s | %7s %7s %6s %5s | %7s %7s\n", "case",
           "baseline", "size", "p50 us", "base p50", "ratio", "goal", "p99 us", "base p99", "GB/s",
           "base", "ratio", "goal", "mean", "base");
    for (size_t i = 0; i < n; i++) {
        const mb_bench_result *r = &res[i];
        char size[32];
        mb_bench_size_name(r->bytes, size, sizeof(size));
        double lat = mb_bench_ratio(r->tr.p50_us, r->base.p50_us);
        /* Throughput as time per byte, so both ratios read "x times slower". */
        double tput = mb_bench_ratio(r->base.gbps, r->tr.gbps);
        printf("%-8s %-13s %7s | %8.2f %8.2f %6.2f %5s | %8.2f %8.2f | %7.3f %7.3f %6.2f %5s | "
               "%7.3f %7.3f\n",
               mb_bench_ipc_kind_name(r->pair->transport),
               mb_bench_ipc_kind_name(r->pair->baseline), size, r->tr.p50_us, r->base.p50_us, lat,
               mb_bench_verdict(lat, r->pair->goal), r->tr.p99_us, r->base.p99_us, r->tr.gbps,
               r->base.gbps, tput, mb_bench_verdict(tput, r->pair->goal), r->tr.gbps_mean,
               r->base.gbps_mean);
    }
}

static const char *mb_bench_json_verdict(double ratio, double goal)
{
    return ratio <= 0 ? "null" : ratio <= goal ? "true" : "false";
}

static void mb_bench_json_figures(FILE *f, const char *key, const mb_bench_figures *x)
{
    fprintf(f,
            "\"%s\": {\"rtt_p50_us\": %.3f, \"rtt_p99_us\": %.3f, \"n_round_trips\": %zu, "
            "\"stream_gbps\": %.4f, \"stream_gbps_mean\": %.4f, \"stream_msgs_per_s\": %.0f}",
            key, x->p50_us, x->p99_us, x->n_trips, x->gbps, x->gbps_mean, x->msgs_per_s);
}

static void mb_bench_write_json(FILE *f, const mb_bench_opts *o, const mb_bench_env *env,
                                const mb_bench_result *res, size_t n)
{
    fprintf(f,
            "{\"bench\": \"ipc\", \"quick\": %s, \"cpus\": %d, \"parent_cpu\": %d, "
            "\"child_cpu\": %d, "
            "\"load_avg_1min\": %.2f, \"seconds_per_case\": %.3f, \"rounds\": %u, "
            "\"stream_window\": %u, \"shm_spin_ns\": %lld, \"ceiling\": {\"memcpy_1mib_gbps\": "
            "%.3f},\n \"cases\": [",
            o->quick ? "true" : "false", env->n_cpus, env->parent_cpu, env->child_cpu, env->load1,
            o->seconds, o->rounds, o->window, (long long)o->shm_spin_ns, env->memcpy_gbps);
    for (size_t i = 0; i < n; i++) {
        const mb_bench_result *r = &res[i];
        double lat = mb_bench_ratio(r->tr.p50_us, r->base.p50_us);
        double tput = mb_bench_ratio(r->base.gbps, r->tr.gbps);
        fprintf(f, "%s\n  {\"transport\": \"%s\", \"baseline\": \"%s\", \"bytes\": %zu, ",
                i ? "," : "", mb_bench_ipc_kind_name(r->pair->transport),
                mb_bench_ipc_kind_name(r->pair->baseline), r->bytes);
        mb_bench_json_figures(f, "transport_figures", &r->tr);
        fputs(", ", f);
        mb_bench_json_figures(f, "baseline_figures", &r->base);
        fprintf(f,
                ", \"rtt_ratio\": %.3f, \"stream_time_ratio\": %.3f, \"goal_ratio\": %.2f, "
                "\"rtt_goal_met\": %s, \"stream_goal_met\": %s, \"memcpy_fraction\": %.3f}",
                lat, tput, r->pair->goal, mb_bench_json_verdict(lat, r->pair->goal),
                mb_bench_json_verdict(tput, r->pair->goal),
                mb_bench_ratio(r->tr.gbps, env->memcpy_gbps));
    }
    fputs("\n ]}\n", f);
}

int main(int argc, char **argv)
{
    mb_bench_opts o;
    if (mb_bench_parse(argc, argv, &o) != 0) {
        mb_bench_usage(argv[0]);
        return 2;
    }
    mb_bench_env env = {.n_cpus = mb_bench_cpu_count()};
    double load[1] = {0};
    if (getloadavg(load, 1) == 1) env.load1 = load[0];
    /* The parent on one CPU, every echo child on another: spinning sides
     * must not share a CPU. */
    env.parent_cpu = env.child_cpu = -1;
    if (env.n_cpus >= 2) {
        int parent = mb_bench_cpu_nth(0), child = mb_bench_cpu_nth(1);
        env.parent_cpu = mb_bench_pin_to_cpu(parent);
        env.child_cpu = env.parent_cpu >= 0 ? child : -1;
    }
    if (mb_bench_memcpy_gbps(1u << 20, o.quick ? 20000000 : 100000000, &env.memcpy_gbps) !=
        MB_STATUS_OK)
        return 1;
    if (env.n_cpus < 2)
        fprintf(stderr, "bench_ipc: only 1 CPU: spinning sides share it, figures are "
                        "meaningless for the spin ring and shm\n");

    size_t max_bytes = mb_bench_sizes[MB_BENCH_N_SIZES - 1];
    unsigned char *body = malloc(max_bytes);
    mb_bench_result *res = calloc(MB_BENCH_N_PAIRS * MB_BENCH_N_SIZES, sizeof(*res));
    if (!body || !res) return 1;
    for (size_t i = 0; i < max_bytes; i++)
        body[i] = (unsigned char)(i * 131u + 7u);

    size_t n = 0;
    int failed = 0;
    for (size_t p = 0; p < MB_BENCH_N_PAIRS; p++) {
        const mb_bench_pair *pair = &mb_bench_pairs[p];
        if (o.only && strcmp(o.only, mb_bench_ipc_kind_name(pair->transport)) != 0) continue;
        if (mb_bench_run_pair(pair, &o, &env, body, &res[n]) != MB_STATUS_OK) failed = 1;
        n += MB_BENCH_N_SIZES;
    }

    char spin[32] = "default";
    if (o.shm_spin_ns) snprintf(spin, sizeof(spin), "%.1f us", (double)o.shm_spin_ns / 1e3);
    char pinning[64] = "not pinned";
    if (env.parent_cpu >= 0)
        snprintf(pinning, sizeof(pinning), "parent on CPU %d, echo children on CPU %d",
                 env.parent_cpu, env.child_cpu);
    printf("bench_ipc: %d CPUs (%s), load average %.2f, %.2f s per variant and case in %u "
           "rounds, stream window %u, memcpy 1 MiB %.2f GB/s\n",
           env.n_cpus, pinning, env.load1, o.seconds, o.rounds, o.window, env.memcpy_gbps);
    printf("round trip: ping-pong p50/p99 in us. stream: one way, %u in flight, 64 B acks, GB/s "
           "from the median time of %u acks (mean: over the whole run, stalls included).\n"
           "ratio = transport time / baseline time; goal: shm <= 2.0, zmq <= 1.10. "
           "shm spin: %s\n",
           o.window, 2 * o.window, spin);
    mb_bench_print_table(res, n);
    mb_bench_write_json(stdout, &o, &env, res, n);
    if (o.json_path) {
        FILE *f = fopen(o.json_path, "w");
        if (!f) {
            fprintf(stderr, "bench_ipc: cannot write %s\n", o.json_path);
            failed = 1;
        } else {
            mb_bench_write_json(f, &o, &env, res, n);
            if (fclose(f) != 0) failed = 1;
        }
    }
    free(body);
    free(res);
    return failed;
}
