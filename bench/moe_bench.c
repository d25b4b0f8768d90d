/* Shared helpers of the MoE benchmarks (see moe_bench.h). */
#include "bench/moe_bench.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/timing.h"
#include "broker/link.h"
#include "protocol/message.h"

void mb_bench_find_worker(void)
{
    if (getenv("MB_WORKER_BIN")) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return;
    *slash = '\0';
    char path[4200];
    snprintf(path, sizeof path, "%s/../bin/moe-worker", self);
    if (access(path, X_OK) == 0) setenv("MB_WORKER_BIN", path, 0);
}

int mb_bench_parse_u32(const char *text, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < lo || v > hi) return -1;
    *out = (uint32_t)v;
    return 0;
}

int mb_bench_parse_list(const char *text, const char *const *names, int n, int *on)
{
    char buf[256];
    if (strlen(text) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", text);
    for (int i = 0; i < n; i++)
        on[i] = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 0; i < n; i++)
            if (strcmp(tok, names[i]) == 0) on[i] = found = 1;
        if (!found) return -1;
    }
    return 0;
}

int mb_bench_emit_json(const char *text, const char *path, const char *prog)
{
    printf("%s\n", text);
    fflush(stdout);
    if (!path) return 0;
    FILE *f = fopen(path, "w");
    int bad = !f || fprintf(f, "%s\n", text) < 0;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) fprintf(stderr, "%s: cannot write %s: %s\n", prog, path, strerror(errno));
    return bad ? -1 : 0;
}

uint64_t mb_bench_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

void mb_bench_cpu_range(int *first, int *last)
{
    cpu_set_t set;
    *first = *last = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return;
    int seen = 0;
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (!CPU_ISSET(i, &set)) continue;
        if (!seen) *first = i;
        *last = i;
        seen = 1;
    }
}

/* Calls fn(tid, arg) for every thread of process pid; 0 when every call
 * returned 0. */
static int mb_bench_each_thread(pid_t pid, int (*fn)(pid_t, int), int arg)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && fn((pid_t)atoi(e->d_name), arg) != 0)
            rc = -1;
    closedir(d);
    return rc;
}

static int mb_bench_pin_thread(pid_t tid, int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(tid, sizeof set, &set);
}

static int mb_bench_nice_thread(pid_t tid, int nice_value)
{
    return setpriority(PRIO_PROCESS, (id_t)tid, nice_value);
}

int mb_bench_pin_process(pid_t pid, int cpu)
{
    return mb_bench_each_thread(pid, mb_bench_pin_thread, cpu);
}

int mb_bench_nice_process(pid_t pid, int nice_value)
{
    return mb_bench_each_thread(pid, mb_bench_nice_thread, nice_value);
}

pid_t mb_bench_hog_start(int cpu)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid < 0 ? 0 : pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
    for (volatile uint64_t i = 0;; i++) {
    }
}

void mb_bench_hog_stop(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static uint64_t mb_bench_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double mb_bench_uniform(uint64_t *s)
{
    return ((double)(mb_bench_rand(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double mb_bench_normal(uint64_t *s)
{
    return sqrt(-2.0 * log(mb_bench_uniform(s))) * cos(6.283185307179586 * mb_bench_uniform(s));
}

void mb_bench_routing_free(mb_bench_routing *r)
{
    free(r->ids);
    free(r->gate);
    free(r->x);
    memset(r, 0, sizeof *r);
}

mb_status mb_bench_routing_make(mb_bench_routing *r, uint32_t layers, uint32_t n_total,
                                uint32_t n_experts, uint32_t top_k, uint32_t d_model, double skew,
                                uint64_t seed)
{
    memset(r, 0, sizeof *r);
    if (top_k == 0 || top_k > n_experts) return MB_STATUS_INVALID_ARG;
    r->n_total = n_total;
    r->top_k = top_k;
    r->d_model = d_model;
    size_t pairs = (size_t)layers * n_total * top_k;
    r->ids = malloc(pairs * sizeof *r->ids);
    r->gate = malloc(pairs * sizeof *r->gate);
    r->x = malloc((size_t)n_total * d_model * sizeof *r->x);
    double *bias = malloc(n_experts * sizeof *bias), *logit = malloc(n_experts * sizeof *logit);
    if (!r->ids || !r->gate || !r->x || !bias || !logit) {
        free(bias);
        free(logit);
        mb_bench_routing_free(r);
        return MB_STATUS_NOMEM;
    }
    uint64_t s = seed;
    for (uint32_t l = 0; l < layers; l++) {
        for (uint32_t e = 0; e < n_experts; e++)
            bias[e] = -skew * log((double)e + 1.0);
        for (uint32_t e = n_experts - 1; e > 0; e--) { /* which expert is popular */
            uint32_t j = (uint32_t)(mb_bench_rand(&s) % (e + 1));
            double t = bias[e];
            bias[e] = bias[j];
            bias[j] = t;
        }
        for (uint32_t t = 0; t < n_total; t++) {
            for (uint32_t e = 0; e < n_experts; e++)
                logit[e] = bias[e] + mb_bench_normal(&s);
            size_t at = ((size_t)l * n_total + t) * top_k;
            double sum = 0, top = 0;
            for (uint32_t k = 0; k < top_k; k++) {
                uint32_t best = 0;
                for (uint32_t e = 1; e < n_experts; e++)
                    if (logit[e] > logit[best]) best = e;
                if (k == 0) top = logit[best];
                r->ids[at + k] = (int32_t)best;
                r->gate[at + k] = (float)exp(logit[best] - top);
                sum += r->gate[at + k];
                logit[best] = -INFINITY;
            }
            for (uint32_t k = 0; k < top_k; k++)
                r->gate[at + k] = (float)(r->gate[at + k] / sum);
        }
    }
    for (size_t i = 0; i < (size_t)n_total * d_model; i++)
        r->x[i] = (float)(2.0 * mb_bench_uniform(&s) - 1.0);
    free(bias);
    free(logit);
    return MB_STATUS_OK;
}

mb_status mb_bench_link_ping(struct mb_link *l, uint32_t n, uint32_t idle_us, double *median_us,
                             double *p99_us)
{
    unsigned char msg[MB_PROTO_HEADER_BYTES] __attribute__((aligned(8)));
    mb_bench_samples rtt = {0};
    mb_status st = MB_STATUS_OK;
    char err[200];
    for (uint32_t i = 0; i < n && st == MB_STATUS_OK; i++) {
        if (idle_us) usleep(idle_us);
        size_t len = 0;
        st = mb_proto_encode_empty(msg, sizeof msg, MB_OP_PING, l->next_tag++, MB_STATUS_OK, &len);
        int64_t t0 = mb_bench_now_ns();
        if (st == MB_STATUS_OK) st = mb_link_call(l, msg, len, 1000000000LL, err, sizeof err);
        if (st == MB_STATUS_OK) st = mb_bench_samples_add(&rtt, mb_bench_now_ns() - t0);
    }
    if (st == MB_STATUS_OK) {
        *median_us = (double)mb_bench_samples_quantile(&rtt, 0.5) * 1e-3;
        *p99_us = (double)mb_bench_samples_quantile(&rtt, 0.99) * 1e-3;
    }
    mb_bench_samples_fini(&rtt);
    return st;
}

cJSON *mb_bench_counters_json(const mb_stats_counters *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "calls", (double)c->calls);
#define MB_BENCH_FIELD_(name, doc) cJSON_AddNumberToObject(o, #name, (double)c->name);
    MB_STATS_CALL_FIELDS(MB_BENCH_FIELD_)
#undef MB_BENCH_FIELD_
    return o;
}

cJSON *mb_bench_goal(cJSON *goals, const char *name, double value, const char *goal, int met)
{
    cJSON *g = cJSON_CreateObject();
    cJSON_AddNumberToObject(g, "value", value);
    cJSON_AddStringToObject(g, "goal", goal);
    cJSON_AddBoolToObject(g, "met", met);
    cJSON_AddItemToObject(goals, name, g);
    return g;
}
