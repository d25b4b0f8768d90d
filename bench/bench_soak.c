/* Soak benchmark for failover: a long greedy decode on a synthetic model
 * whose experts live on tcp:// workers this benchmark starts, while a chaos
 * thread kills (SIGKILL) or freezes (SIGSTOP, then kills) a random worker at
 * random times and restarts it on the same port. Every step is checked
 * against an undisturbed run of the same sequence on as many spawned
 * shared-memory CPU workers (the same placement, f32 payload: logits must
 * be bit-identical). Reports tokens lost (goal 0), the time each
 * loss adds to its step, the detection latency (hit to the coordinator
 * noticing) per kind, and rejoins, as a table and JSON. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/moe_bench.h"
#include "broker/failover.h"
#include "broker/session.h"
#include "broker/synthetic.h"

#define SK_MAX_WORKERS 8
#define SK_MAX_HITS 4096

typedef struct {
    uint32_t workers, seq_len, prompt, worker_timeout_ms;
    double seconds, min_gap_s, max_gap_s, stop_share;
    uint64_t seed;
    const char *json_path;
} sk_args;

typedef struct {
    pid_t pid;
    char endpoint[128];
} sk_worker;

typedef struct {
    int kind;         /* SIGKILL or SIGSTOP */
    uint32_t worker;
    uint64_t hit_ns;
} sk_hit;

/* Shared between the decode loop and the chaos thread. */
typedef struct {
    pthread_mutex_t mu;
    sk_worker w[SK_MAX_WORKERS];
    uint32_t n;
    sk_hit hits[SK_MAX_HITS];
    uint32_t n_hits;
    int stop;
    uint64_t rng;
    const sk_args *a;
} sk_chaos;

static uint64_t sk_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double sk_uniform(uint64_t *s, double lo, double hi)
{
    return lo + (hi - lo) * (double)(sk_rand(s) >> 11) / 9007199254740992.0;
}

/* Starts moe-worker on listen; writes the bound endpoint. Returns the pid or -1. */
static pid_t sk_start_worker(const char *listen, char *endpoint, size_t cap)
{
    const char *bin = getenv("MB_WORKER_BIN");
    int fds[2];
    if (!bin || pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], STDOUT_FILENO);
        if (!freopen("/dev/null", "w", stderr)) _exit(127); /* the worker's chatter would garble the report */
        close(fds[0]);
        close(fds[1]);
        execl(bin, bin, "--backend", "cpu", "--listen", listen, "--threads", "1", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[512];
    int ok = 0;
    if (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "listening on ");
        if (p && strlen(p + 13) < cap) {
            snprintf(endpoint, cap, "%s", p + 13);
            endpoint[strcspn(endpoint, "\r\n")] = '\0';
            ok = 1;
        }
    }
    if (f) fclose(f);
    if (!ok) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static void sk_sleep_s(double s)
{
    if (s > 0) usleep((useconds_t)(s * 1e6));
}

/* Hits one random worker, waits, and brings it back on the same port. */
static void *sk_chaos_main(void *arg)
{
    sk_chaos *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int stop = c->stop;
        double gap = sk_uniform(&c->rng, c->a->min_gap_s, c->a->max_gap_s);
        pthread_mutex_unlock(&c->mu);
        if (stop) break;
        sk_sleep_s(gap);
        pthread_mutex_lock(&c->mu);
        if (c->stop || c->n_hits >= SK_MAX_HITS) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        uint32_t i = (uint32_t)(sk_rand(&c->rng) % c->n);
        int kind = sk_uniform(&c->rng, 0, 1) < c->a->stop_share ? SIGSTOP : SIGKILL;
        pid_t pid = c->w[i].pid;
        c->hits[c->n_hits++] = (sk_hit){.kind = kind, .worker = i, .hit_ns = mb_now_ns()};
        kill(pid, kind);
        double down = kind == SIGSTOP ? c->a->worker_timeout_ms / 1000.0 + 1.0 : sk_uniform(&c->rng, 0.2, 1.0);
        pthread_mutex_unlock(&c->mu);
        sk_sleep_s(down);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        char again[128];
        pid_t np = -1;
        for (int tries = 0; tries < 50 && np < 0; tries++) {
            np = sk_start_worker(c->w[i].endpoint, again, sizeof again);
            if (np < 0) usleep(100000);
        }
        pthread_mutex_lock(&c->mu);
        c->w[i].pid = np;
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

static uint32_t sk_argmax(const float *v, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static int sk_cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double sk_median(double *v, uint32_t n)
{
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, sk_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double sk_max(const double *v, uint32_t n)
{
    double m = 0;
    for (uint32_t i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

static void sk_usage(FILE *f)
{
    fprintf(f, "usage: bench_soak [--seconds S] [--workers N] [--seq-len N] [--gap-min S] [--gap-max S]\n"
               "                  [--stop-share F] [--worker-timeout MS] [--seed S] [--json FILE]\n"
               "Decodes for S seconds (default 30) over N tcp workers (default 3) while a random worker\n"
               "is killed every gap-min..gap-max seconds (default 1..3; a share F of the hits, default\n"
               "0.3, are SIGSTOP instead) and restarted; sequences of --seq-len positions (default 256).\n");
}

static int sk_parse(int argc, char **argv, sk_args *a)
{
    *a = (sk_args){.workers = 3, .seq_len = 256, .prompt = 16, .worker_timeout_ms = 1500, .seconds = 30,
                   .min_gap_s = 1, .max_gap_s = 3, .stop_share = 0.3, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) {
            sk_usage(stdout);
            exit(0);
        }
        if (!v) goto bad;
        i++;
        char *end = NULL;
        if (!strcmp(k, "--seconds")) a->seconds = strtod(v, &end);
        else if (!strcmp(k, "--gap-min")) a->min_gap_s = strtod(v, &end);
        else if (!strcmp(k, "--gap-max")) a->max_gap_s = strtod(v, &end);
        else if (!strcmp(k, "--stop-share")) a->stop_share = strtod(v, &end);
        else if (!strcmp(k, "--seed")) a->seed = strtoull(v, &end, 10);
        else if (!strcmp(k, "--json")) a->json_path = v;
        else if (!strcmp(k, "--workers")) {
            if (mb_bench_parse_u32(v, 1, SK_MAX_WORKERS, &a->workers)) goto bad;
        } else if (!strcmp(k, "--seq-len")) {
            if (mb_bench_parse_u32(v, 32, 4096, &a->seq_len)) goto bad;
        } else if (!strcmp(k, "--worker-timeout")) {
            if (mb_bench_parse_u32(v, 50, 60000, &a->worker_timeout_ms)) goto bad;
        } else
            goto bad;
        if (end && *end) goto bad;
    }
    if (a->seconds <= 0 || a->min_gap_s <= 0 || a->max_gap_s < a->min_gap_s || a->stop_share < 0 ||
        a->stop_share > 1)
        goto bad;
    return 0;
bad:
    sk_usage(stderr);
    return -1;
}

int main(int argc, char **argv)
{
    sk_args a;
    if (sk_parse(argc, argv, &a) != 0) return 2;
    mb_bench_find_worker();
    signal(SIGPIPE, SIG_IGN);
    mb_model_config cfg;
    mb_synthetic_default_config(&cfg);
    cfg.n_layers = 4;
    cfg.d_model = 512;
    cfg.n_heads = 8;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.n_experts = 32;
    cfg.top_k = 4;
    cfg.d_ff_expert = 256;
    cfg.vocab = 4096;
    char err[512];
    mb_model *model = NULL;
    if (mb_synthetic_create(&cfg, a.seed, 0, &model, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_soak: %s\n", err);
        return 1;
    }
    sk_chaos chaos = {.n = a.workers, .rng = a.seed * 7919 + 1, .a = &a};
    pthread_mutex_init(&chaos.mu, NULL);
    char specs[SK_MAX_WORKERS][128];
    char *spec_ptrs[SK_MAX_WORKERS];
    for (uint32_t i = 0; i < a.workers; i++) {
        chaos.w[i].pid = sk_start_worker("tcp://127.0.0.1:*", chaos.w[i].endpoint, sizeof chaos.w[i].endpoint);
        if (chaos.w[i].pid < 0) {
            fprintf(stderr, "bench_soak: cannot start moe-worker (MB_WORKER_BIN)\n");
            return 1;
        }
        snprintf(specs[i], sizeof specs[i], "%s", chaos.w[i].endpoint);
        spec_ptrs[i] = specs[i];
    }
    /* The chaos run over the workers, and the reference in-process. */
    mb_options opt, ref_opt;
    mb_options_init(&opt);
    opt.workers = spec_ptrs;
    opt.n_workers = a.workers;
    opt.worker_timeout_ms = a.worker_timeout_ms;
    opt.threads = 1;
    mb_options_init(&ref_opt);
    char ref_spec[] = "cpu,threads=1";
    char *ref_specs[SK_MAX_WORKERS];
    for (uint32_t i = 0; i < a.workers; i++) ref_specs[i] = ref_spec;
    ref_opt.workers = ref_specs;
    ref_opt.n_workers = a.workers;
    ref_opt.transport = MB_TRANSPORT_SHM;
    ref_opt.threads = 1;
    mb_session *s = NULL, *ref = NULL;
    if (mb_session_open(&opt, model, a.seq_len, MB_SESSION_QUIET, &s, err, sizeof err) != MB_STATUS_OK ||
        mb_session_open(&ref_opt, model, a.seq_len, MB_SESSION_QUIET, &ref, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_soak: %s\n", err);
        return 1;
    }
    const uint32_t V = cfg.vocab;
    float *logits = malloc((size_t)V * sizeof *logits), *ref_logits = malloc((size_t)V * sizeof *ref_logits);
    uint32_t cap_steps = 1u << 20;
    double *step_s = malloc(cap_steps * sizeof *step_s);
    uint32_t *losses_before = malloc(cap_steps * sizeof *losses_before);
    if (!logits || !ref_logits || !step_s || !losses_before) return 1;
    pthread_t th;
    pthread_create(&th, NULL, sk_chaos_main, &chaos);

    uint64_t t_end = mb_now_ns() + (uint64_t)(a.seconds * 1e9);
    uint64_t prompt_rng = a.seed;
    uint32_t n_steps = 0, tokens = 0, tokens_lost = 0, logits_diff = 0, sequences = 0, failed = 0;
    int32_t ids[4096];
    while (mb_now_ns() < t_end && !failed && n_steps < cap_steps) {
        /* A new sequence: a random prompt, then greedy decode to seq_len. */
        mb_forward_reset(s->fwd);
        mb_forward_reset(ref->fwd);
        sequences++;
        for (uint32_t i = 0; i < a.prompt; i++) ids[i] = (int32_t)(sk_rand(&prompt_rng) % V);
        for (uint32_t pos = 0; pos < a.seq_len && mb_now_ns() < t_end;) {
            uint32_t n = pos == 0 ? a.prompt : 1;
            uint32_t lost0 = mb_failover_lost_count(s->failover);
            uint64_t t0 = mb_now_ns();
            mb_status st = mb_session_step(s, ids + pos, n, NULL, logits, err, sizeof err);
            uint64_t t1 = mb_now_ns();
            if (st != MB_STATUS_OK) {
                fprintf(stderr, "bench_soak: step failed: %s\n", err);
                failed = 1;
                break;
            }
            if (mb_session_step(ref, ids + pos, n, NULL, ref_logits, err, sizeof err) != MB_STATUS_OK) {
                fprintf(stderr, "bench_soak: reference step failed: %s\n", err);
                failed = 1;
                break;
            }
            step_s[n_steps] = (double)(t1 - t0) / 1e9;
            losses_before[n_steps] = lost0;
            n_steps++;
            pos += n;
            uint32_t next = sk_argmax(ref_logits, V);
            tokens++;
            if (sk_argmax(logits, V) != next) tokens_lost++;
            if (memcmp(logits, ref_logits, (size_t)V * sizeof *logits) != 0) logits_diff++;
            if (pos < a.seq_len) ids[pos] = (int32_t)next;
        }
    }
    pthread_mutex_lock(&chaos.mu);
    chaos.stop = 1;
    pthread_mutex_unlock(&chaos.mu);
    pthread_join(th, NULL);
    if (failed) tokens_lost += 1; /* at least the one the failed step owed */

    /* Figures. A decode step that met a loss is compared with the median
     * decode step; detection latency is hit to the dispatcher's report. */
    uint32_t n_lost = mb_failover_lost_count(s->failover);
    uint32_t n_rejoined = mb_failover_rejoined_count(s->failover);
    double *clean = malloc((n_steps + 1) * sizeof *clean), *added = malloc((n_lost + 1) * sizeof *added);
    double det_kill[SK_MAX_HITS], det_stop[SK_MAX_HITS];
    uint32_t n_clean = 0, n_added = 0, n_dk = 0, n_ds = 0;
    for (uint32_t i = 0; i < n_steps; i++) {
        uint32_t after = i + 1 < n_steps ? losses_before[i + 1] : n_lost;
        if (after == losses_before[i]) clean[n_clean++] = step_s[i];
    }
    double median_step = sk_median(clean, n_clean);
    double added_kill = 0, added_stop = 0;
    uint32_t n_added_kill = 0, n_added_stop = 0;
    for (uint32_t i = 0; i < n_steps; i++) {
        uint32_t after = i + 1 < n_steps ? losses_before[i + 1] : n_lost;
        if (after == losses_before[i]) continue;
        double extra = step_s[i] - median_step;
        added[n_added++] = extra;
        /* The step's losses are hits losses_before[i].. (in order). */
        uint32_t h = losses_before[i];
        if (h < chaos.n_hits && chaos.hits[h].kind == SIGSTOP) {
            added_stop += extra;
            n_added_stop++;
        } else {
            added_kill += extra;
            n_added_kill++;
        }
    }
    added_kill = n_added_kill ? added_kill / n_added_kill : 0;
    added_stop = n_added_stop ? added_stop / n_added_stop : 0;
    /* Hits and losses pair up in order: one worker is down at a time. */
    uint32_t n_pairs = chaos.n_hits < n_lost ? chaos.n_hits : n_lost;
    for (uint32_t i = 0; i < n_pairs; i++) {
        mb_failover_loss l;
        if (mb_failover_get_loss(s->failover, i, &l) != MB_STATUS_OK) continue;
        double d = (double)(l.detected_ns - chaos.hits[i].hit_ns) / 1e9;
        if (chaos.hits[i].kind == SIGKILL) det_kill[n_dk++] = d;
        else det_stop[n_ds++] = d;
    }
    double added_sum = 0;
    for (uint32_t i = 0; i < n_added; i++) added_sum += added[i];
    double added_mean = n_added ? added_sum / n_added : 0;
    double dk_med = sk_median(det_kill, n_dk), dk_max = sk_max(det_kill, n_dk);
    double ds_med = sk_median(det_stop, n_ds), ds_max = sk_max(det_stop, n_ds);
    uint32_t kills = 0;
    for (uint32_t i = 0; i < chaos.n_hits; i++) kills += chaos.hits[i].kind == SIGKILL;

    printf("soak: %.0f s, %u tcp workers, %u sequences, %u tokens, median step %.2f ms\n", a.seconds, a.workers,
           sequences, tokens, median_step * 1e3);
    printf("%-34s %10s\n", "figure", "value");
    printf("%-34s %10u\n", "hits (SIGKILL / SIGSTOP)", chaos.n_hits);
    printf("%-34s %10u / %u\n", "  of which SIGKILL / SIGSTOP", kills, chaos.n_hits - kills);
    printf("%-34s %10u\n", "losses the coordinator saw", n_lost);
    printf("%-34s %10u\n", "rejoins", n_rejoined);
    printf("%-34s %10u\n", "tokens lost (goal 0)", tokens_lost);
    printf("%-34s %10u\n", "positions with different logits", logits_diff);
    printf("%-34s %10.1f\n", "time added per loss, mean ms", added_mean * 1e3);
    printf("%-34s %10.1f / %.1f\n", "  SIGKILL / SIGSTOP, mean ms", added_kill * 1e3, added_stop * 1e3);
    printf("%-34s %10.1f / %.1f\n", "detection SIGKILL median/max ms", dk_med * 1e3, dk_max * 1e3);
    printf("%-34s %10.1f / %.1f\n", "detection SIGSTOP median/max ms", ds_med * 1e3, ds_max * 1e3);

    cJSON *root = cJSON_CreateObject(), *goals = cJSON_CreateObject();
    cJSON *cf = cJSON_AddObjectToObject(root, "config");
    cJSON_AddNumberToObject(cf, "seconds", a.seconds);
    cJSON_AddNumberToObject(cf, "workers", a.workers);
    cJSON_AddNumberToObject(cf, "seq_len", a.seq_len);
    cJSON_AddNumberToObject(cf, "gap_min_s", a.min_gap_s);
    cJSON_AddNumberToObject(cf, "gap_max_s", a.max_gap_s);
    cJSON_AddNumberToObject(cf, "stop_share", a.stop_share);
    cJSON_AddNumberToObject(cf, "worker_timeout_ms", a.worker_timeout_ms);
    cJSON_AddNumberToObject(root, "sequences", sequences);
    cJSON_AddNumberToObject(root, "tokens", tokens);
    cJSON_AddNumberToObject(root, "median_step_ms", median_step * 1e3);
    cJSON_AddNumberToObject(root, "hits", chaos.n_hits);
    cJSON_AddNumberToObject(root, "hits_sigkill", kills);
    cJSON_AddNumberToObject(root, "hits_sigstop", chaos.n_hits - kills);
    cJSON_AddNumberToObject(root, "losses", n_lost);
    cJSON_AddNumberToObject(root, "rejoins", n_rejoined);
    cJSON_AddNumberToObject(root, "tokens_lost", tokens_lost);
    cJSON_AddNumberToObject(root, "positions_with_different_logits", logits_diff);
    cJSON_AddNumberToObject(root, "time_added_per_loss_ms_mean", added_mean * 1e3);
    cJSON_AddNumberToObject(root, "time_added_per_sigkill_loss_ms_mean", added_kill * 1e3);
    cJSON_AddNumberToObject(root, "time_added_per_sigstop_loss_ms_mean", added_stop * 1e3);
    cJSON_AddNumberToObject(root, "detection_sigkill_ms_median", dk_med * 1e3);
    cJSON_AddNumberToObject(root, "detection_sigkill_ms_max", dk_max * 1e3);
    cJSON_AddNumberToObject(root, "detection_sigstop_ms_median", ds_med * 1e3);
    cJSON_AddNumberToObject(root, "detection_sigstop_ms_max", ds_max * 1e3);
    cJSON_AddItemToObject(root, "goals", goals);
    mb_bench_goal(goals, "tokens_lost", tokens_lost, "== 0", tokens_lost == 0 && !failed);
    mb_bench_goal(goals, "positions_with_different_logits", logits_diff, "== 0", logits_diff == 0);
    mb_bench_goal(goals, "detection_sigstop_ms_max", ds_max * 1e3, "< 2000", ds_max < 2.0);
    char *text = cJSON_Print(root);
    printf("\n");
    int rc = (!text || mb_bench_emit_json(text, a.json_path, "bench_soak") != 0) ? 1 : 0;
    free(text);
    cJSON_Delete(root);

    mb_session_close(s);
    mb_session_close(ref);
    for (uint32_t i = 0; i < chaos.n; i++)
        if (chaos.w[i].pid > 0) {
            kill(chaos.w[i].pid, SIGTERM);
            waitpid(chaos.w[i].pid, NULL, 0);
        }
    free(clean);
    free(added);
    free(logits);
    free(ref_logits);
    free(step_s);
    free(losses_before);
    mb_model_destroy(model);
    return rc || tokens_lost || failed || logits_diff;
}
