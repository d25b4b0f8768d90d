/* End-to-end benchmark, the ancestor PR's experiment: a 4248-token prompt and
 * 128 generated tokens on a synthetic model with Qwen3-30B-A3B shapes, the
 * experts split over two CPU workers on shared memory, in stream, batched
 * and auto mode (one forward pass each over the same workers, run
 * interleaved chunk by chunk and step by step so that other load on the
 * machine falls on every mode alike), then the same with every expert
 * in-process as the no-IPC reference. Prefill seconds, decode tokens/s,
 * IPC calls and payload each way, and the share of decode step time spent
 * in IPC, as a table and JSON. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/moe_bench.h"
#include "bench/timing.h"
#include "broker/session.h"
#include "broker/synthetic.h"

#define BE_MAX_LANES 4
#define BE_MAX_LINKS 8

typedef struct {
    uint32_t layers, prompt, gen, chunk, batch_capacity, stream_slice, repeat, threads, worker_nice, worker_threads,
        workers;
    double budget_s;
    uint64_t seed;
    mb_dtype payload;
    int quick, ref, pin;
    int mode_on[3]; /* indexed by mb_ipc_mode */
    const char *json_path;
    const char *worker_spec; /* every worker's spec; NULL: cpu,threads=worker_threads */
} be_args;

/* One forward pass with its own dispatcher and statistics over a session's
 * links. After the budget its prefill goes on through `fill` (batched,
 * untimed, no statistics), so that its decode still starts at the full
 * context. */
typedef struct {
    const char *name;
    mb_ipc_mode mode;
    mb_stats *stats;
    mb_dispatch *d, *fill;
    int use_fill;
    mb_forward *fwd;
    float *logits;   /* [vocab] */
    int32_t *tokens; /* [gen] generated in the first repeat */
    int32_t next;
    uint32_t n_links;
    uint32_t n_chunks; /* prefill chunks timed */
    uint32_t timed_tokens;
    uint64_t pre_ns, dec_ns; /* over all repeats */
    mb_bench_samples steps;  /* decode step times */
    int same_tokens;         /* generated what the first lane generated */
} be_lane;

static mb_status be_moe(void *ctx, const mb_moe_work *w)
{
    be_lane *ln = ctx;
    return mb_dispatch_moe(ln->use_fill ? ln->fill : ln->d, w);
}

static void be_lane_destroy(be_lane *ln)
{
    mb_forward_destroy(ln->fwd);
    mb_dispatch_destroy(ln->d);
    mb_dispatch_destroy(ln->fill);
    mb_stats_destroy(ln->stats);
    free(ln->logits);
    free(ln->tokens);
    mb_bench_samples_fini(&ln->steps);
    memset(ln, 0, sizeof *ln);
}

static mb_status be_lane_create(const be_args *a, mb_session *s, const mb_model *m,
                                const char *name, mb_ipc_mode mode, be_lane *ln)
{
    memset(ln, 0, sizeof *ln);
    ln->name = name;
    ln->mode = mode;
    ln->n_links = s->n_links < BE_MAX_LINKS ? s->n_links : BE_MAX_LINKS;
    ln->same_tokens = 1;
    const char *names[BE_MAX_LINKS];
    for (uint32_t i = 0; i < s->n_links && i < BE_MAX_LINKS; i++)
        names[i] = s->links[i].name;
    ln->logits = malloc((size_t)m->cfg.vocab * sizeof *ln->logits);
    ln->tokens = calloc(a->gen + 1, sizeof *ln->tokens);
    mb_status st = ln->logits && ln->tokens ? MB_STATUS_OK : MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK) st = mb_stats_create(s->n_links, names, m->cfg.n_layers, 0, &ln->stats);
    mb_dispatch_config dc = {.links = s->links,
                             .n_links = s->n_links,
                             .placement = &s->placement,
                             .mode = mode,
                             .batch_capacity = a->batch_capacity,
                             .stream_slice = a->stream_slice,
                             .payload = a->payload,
                             .d_model = m->cfg.d_model,
                             .top_k = m->cfg.top_k,
                             .max_tokens = a->chunk,
                             .timeout_ns = 300000000000LL,
                             .stats = ln->stats};
    if (st == MB_STATUS_OK) st = mb_dispatch_create(&dc, &ln->d);
    dc.mode = MB_IPC_MODE_BATCHED;
    dc.stats = NULL;
    if (st == MB_STATUS_OK) st = mb_dispatch_create(&dc, &ln->fill);
    if (st == MB_STATUS_OK)
        st = mb_forward_create(m, a->prompt + a->gen, s->pool, be_moe, ln, &ln->fwd);
    if (st == MB_STATUS_OK && a->chunk < MB_FORWARD_CHUNK_DEFAULT)
        st = mb_forward_set_chunk(ln->fwd, a->chunk);
    if (st != MB_STATUS_OK) be_lane_destroy(ln);
    return st;
}

static int32_t be_argmax(const float *v, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return (int32_t)best;
}

/* One timed forward step of lane ln, recorded in its statistics. */
static mb_status be_step(be_lane *ln, const int32_t *ids, uint32_t n, int want_logits, uint64_t *ns)
{
    uint64_t t0 = mb_now_ns();
    mb_status st = mb_forward_step(ln->fwd, ids, n, NULL, want_logits ? ln->logits : NULL);
    uint64_t dt = mb_now_ns() - t0, dispatch_ns = 0, wait_ns = 0, critical_ns = 0;
    mb_dispatch_take_times(ln->d, &dispatch_ns, &wait_ns, &critical_ns);
    if (st == MB_STATUS_OK)
        mb_stats_record_step(ln->stats, n > 1 ? MB_STATS_PHASE_PREFILL : MB_STATS_PHASE_DECODE, n,
                             dt, dispatch_ns, wait_ns, critical_ns);
    *ns = dt;
    return st;
}

/* Runs prompt and generation on every lane, interleaved (the first lane to
 * go rotating per chunk and step), repeat times. */
static mb_status be_run(const be_args *a, be_lane *lanes, uint32_t n_lanes, const int32_t *prompt,
                        uint32_t vocab, char *err, size_t err_cap)
{
    const uint32_t n_chunks = (a->prompt + a->chunk - 1) / a->chunk;
    for (uint32_t j = 0; j < n_lanes; j++)
        lanes[j].n_chunks = n_chunks;
    mb_status st = MB_STATUS_OK;
    uint32_t j = 0;
    for (uint32_t rep = 0; rep < a->repeat; rep++) {
        for (j = 0; j < n_lanes; j++)
            mb_forward_reset(lanes[j].fwd);
        for (uint32_t c = 0; c < n_chunks; c++) {
            uint32_t tok = c * a->chunk,
                     n = a->prompt - tok < a->chunk ? a->prompt - tok : a->chunk;
            for (uint32_t k = 0; k < n_lanes; k++) {
                be_lane *ln = &lanes[j = (k + c + rep) % n_lanes];
                int last = tok + n == a->prompt;
                uint64_t dt = 0;
                if (c >= ln->n_chunks) { /* past the budget: untimed, batched */
                    ln->use_fill = 1;
                    st = mb_forward_step(ln->fwd, prompt + tok, n, NULL, last ? ln->logits : NULL);
                    ln->use_fill = 0;
                    if (st != MB_STATUS_OK) goto fail;
                    continue;
                }
                if ((st = be_step(ln, prompt + tok, n, last, &dt)) != MB_STATUS_OK) goto fail;
                ln->pre_ns += dt;
                if (rep > 0) continue;
                ln->timed_tokens += n;
                if (a->budget_s > 0 && (double)ln->pre_ns * 1e-9 > a->budget_s)
                    ln->n_chunks = c + 1;
            }
        }
        for (j = 0; j < n_lanes; j++)
            lanes[j].next = be_argmax(lanes[j].logits, vocab);
        for (uint32_t step = 0; step < a->gen; step++) {
            for (uint32_t k = 0; k < n_lanes; k++) {
                be_lane *ln = &lanes[j = (k + step + rep) % n_lanes];
                if (rep == 0) ln->tokens[step] = ln->next;
                uint64_t dt = 0;
                if ((st = be_step(ln, &ln->next, 1, 1, &dt)) != MB_STATUS_OK) goto fail;
                ln->dec_ns += dt;
                mb_bench_samples_add(&ln->steps, (int64_t)dt);
                ln->next = be_argmax(ln->logits, vocab);
            }
        }
        fprintf(stderr, "  repeat %u/%u done\n", rep + 1, a->repeat);
    }
    return MB_STATUS_OK;
fail:
    snprintf(err, err_cap, "%s: %s", lanes[j].name,
             mb_dispatch_error(lanes[j].d)[0] ? mb_dispatch_error(lanes[j].d) : mb_status_str(st));
    return st;
}

/* ---- figures ---- */

/* A lane's figures, per repeat, with the prefill extrapolated to the whole
 * prompt when the budget cut it short. */
typedef struct {
    double prefill_s, prefill_s_timed, scale;
    double decode_tok_s, step_ms_median, step_ms_mean;
    mb_stats_counters pre, dec; /* summed over backends, per repeat (prefill scaled) */
    mb_stats_counters dec_b[BE_MAX_LINKS];
    /* Decode, per step in microseconds. */
    double pack_us, send_us, unpack_us, dispatch_us, crit_us, step_us, ipc_share,
        ipc_share_dispatch;
    double prefill_ipc_share; /* the same measure over the timed prefill */
} be_fig;

static void be_counters_add(mb_stats_counters *to, const mb_stats_counters *c, double k)
{
    to->calls += (uint64_t)llround((double)c->calls * k);
#define BE_ADD_(name, doc) to->name += (uint64_t)llround((double)c->name * k);
    MB_STATS_CALL_FIELDS(BE_ADD_)
#undef BE_ADD_
}

/* IPC share of the decode step: the time inside the dispatcher that the
 * slowest backend of each call was not computing,
 *   share = sum over calls of (dispatch wall - max_b worker compute_b) / step time.
 * It holds the coordinator's pack, send and unpack, the transport both ways,
 * the workers' request handling, wake-ups and any wait for a CPU, and the
 * adding of the backends' sums. */
static void be_figures(const be_args *a, const be_lane *ln, be_fig *f)
{
    memset(f, 0, sizeof *f);
    f->prefill_s_timed = (double)ln->pre_ns * 1e-9 / a->repeat;
    f->scale = ln->timed_tokens ? (double)a->prompt / ln->timed_tokens : 0;
    f->prefill_s = f->prefill_s_timed * f->scale;
    uint64_t n_steps = (uint64_t)a->gen * a->repeat;
    f->decode_tok_s = ln->dec_ns ? (double)n_steps / ((double)ln->dec_ns * 1e-9) : 0;
    f->step_ms_mean = n_steps ? (double)ln->dec_ns * 1e-6 / n_steps : 0;
    mb_bench_samples tmp = ln->steps;
    f->step_ms_median = (double)mb_bench_samples_quantile(&tmp, 0.5) * 1e-6;
    for (uint32_t i = 0; i < ln->n_links; i++) {
        mb_stats_counters p, d;
        mb_stats_get(ln->stats, i, MB_STATS_PHASE_PREFILL, &p);
        mb_stats_get(ln->stats, i, MB_STATS_PHASE_DECODE, &d);
        be_counters_add(&f->pre, &p, f->scale / a->repeat);
        be_counters_add(&f->dec, &d, 1.0 / a->repeat);
        f->dec_b[i] = d;
        f->pack_us += (double)d.pack_ns;
        f->send_us += (double)d.send_ns;
        f->unpack_us += (double)d.unpack_ns;
    }
    double steps = n_steps ? (double)n_steps : 1, us = 1e-3 / steps;
    f->pack_us *= us, f->send_us *= us, f->unpack_us *= us;
    /* The timed steps' dispatch calls (untimed prefill chunks go through
     * ln->fill, without statistics). */
    mb_stats_steps pre, dec;
    mb_stats_get_steps(ln->stats, MB_STATS_PHASE_PREFILL, &pre);
    mb_stats_get_steps(ln->stats, MB_STATS_PHASE_DECODE, &dec);
    f->dispatch_us = (double)dec.dispatch_ns * us;
    f->crit_us = (double)dec.critical_ns * us;
    f->step_us = (double)ln->dec_ns * us;
    const double ipc_us = (double)mb_stats_crit_ipc_ns(dec.dispatch_ns, dec.critical_ns) * us;
    f->ipc_share = f->step_us > 0 ? ipc_us / f->step_us : 0;
    f->ipc_share_dispatch = f->dispatch_us > 0 ? ipc_us / f->dispatch_us : 0;
    f->prefill_ipc_share =
        ln->pre_ns
            ? (double)mb_stats_crit_ipc_ns(pre.dispatch_ns, pre.critical_ns) / (double)ln->pre_ns
            : 0;
}

static double be_mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void be_print_row(const be_args *a, const be_lane *ln, const be_fig *f)
{
    char pre[48];
    if (f->scale > 1.0001)
        snprintf(pre, sizeof pre, "%.2f* (%.1f/%u tok)", f->prefill_s, f->prefill_s_timed,
                 ln->timed_tokens);
    else
        snprintf(pre, sizeof pre, "%.2f", f->prefill_s);
    printf("%-8s %-24s %7.1f %8.0f %9.1f %9.1f | %7.2f %7.2f %6.0f %7.2f %7.2f | %6.2f%% %5s\n",
           ln->name, pre, (double)a->prompt / f->prefill_s, (double)f->pre.calls,
           be_mib(f->pre.bytes_sent), be_mib(f->pre.bytes_received), f->decode_tok_s,
           f->step_ms_median, (double)f->dec.calls, be_mib(f->dec.bytes_sent),
           be_mib(f->dec.bytes_received), 100 * f->ipc_share, ln->same_tokens ? "yes" : "NO");
}

static cJSON *be_lane_json(const be_args *a, const be_lane *ln, const be_fig *f)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "mode", ln->name);
    cJSON_AddNumberToObject(o, "prefill_s", f->prefill_s);
    cJSON_AddNumberToObject(o, "prefill_s_timed", f->prefill_s_timed);
    cJSON_AddNumberToObject(o, "prefill_tokens_timed", ln->timed_tokens);
    cJSON_AddBoolToObject(o, "prefill_extrapolated", f->scale > 1.0001);
    cJSON_AddNumberToObject(o, "prefill_tok_s", (double)a->prompt / f->prefill_s);
    cJSON_AddNumberToObject(o, "decode_tok_s", f->decode_tok_s);
    cJSON_AddNumberToObject(o, "decode_step_ms_median", f->step_ms_median);
    cJSON_AddNumberToObject(o, "decode_step_ms_mean", f->step_ms_mean);
    cJSON_AddItemToObject(o, "prefill_ipc_per_run", mb_bench_counters_json(&f->pre));
    cJSON_AddItemToObject(o, "decode_ipc_per_run", mb_bench_counters_json(&f->dec));
    cJSON_AddNumberToObject(o, "prefill_ipc_share_timed", f->prefill_ipc_share);
    cJSON *d = cJSON_AddObjectToObject(o, "decode_ipc_share");
    cJSON_AddStringToObject(d, "definition",
                            "sum over dispatch calls of (dispatch wall - slowest backend's worker "
                            "compute) / decode step time");
    cJSON_AddNumberToObject(d, "share_of_step", f->ipc_share);
    cJSON_AddNumberToObject(d, "share_of_dispatch", f->ipc_share_dispatch);
    cJSON_AddNumberToObject(d, "step_us", f->step_us);
    cJSON_AddNumberToObject(d, "dispatch_us_per_step", f->dispatch_us);
    cJSON_AddNumberToObject(d, "critical_compute_us_per_step", f->crit_us);
    cJSON_AddNumberToObject(d, "pack_us_per_step", f->pack_us);
    cJSON_AddNumberToObject(d, "send_us_per_step", f->send_us);
    cJSON_AddNumberToObject(d, "unpack_us_per_step", f->unpack_us);
    cJSON *bk = cJSON_AddArrayToObject(d, "backends_all_repeats");
    for (uint32_t i = 0; i < ln->n_links && i < BE_MAX_LINKS; i++) {
        cJSON *b = mb_bench_counters_json(&f->dec_b[i]);
        cJSON_AddStringToObject(b, "name", mb_stats_backend_name(ln->stats, i));
        cJSON_AddItemToArray(bk, b);
    }
    cJSON_AddBoolToObject(o, "same_tokens_as_first_mode", ln->same_tokens);
    return o;
}

/* ---- the run ---- */

static void be_usage(FILE *f)
{
    fprintf(f, "usage: bench_e2e [--layers N] [--prompt N] [--gen N] [--modes "
               "stream,batched,auto,inproc]\n"
               "       [--chunk N] [--batch-capacity N] [--stream-slice N] [--payload "
               "f32|f16|bf16] [--threads N]\n"
               "       [--repeat R] [--budget SECONDS] [--seed S] [--workers N] [--pin] "
               "[--worker-nice N] [--worker-threads N] [--worker-spec SPEC] [--quick]\n"
               "       [--json FILE]\n"
               "defaults: 4 layers (about 10 GiB: the coordinator's memfd plus the workers' "
               "copies), a 4248-token\n"
               "prompt in chunks of 512, 128 generated tokens, every mode, f32 payload, "
               "coordinator threads = CPUs,\n"
               "one repeat, a 300 s prefill budget per mode (past it the rest of the prompt runs "
               "batched and\n"
               "untimed and the prefill is extrapolated, marked *). --pin: worker i pinned to the "
               "i-th CPU (the\n"
               "coordinator stays unpinned). --workers N: N CPU workers of 1 thread (default 2). "
               "--worker-nice N: the workers run at nice N (0..19), below the\n"
               "coordinator, so that a worker it wakes does not take its CPU. --quick: 1 layer, "
               "512-token prompt, 16 tokens. --worker-spec SPEC: every worker is SPEC (e.g. cuda:0)\n"
               "instead of a CPU worker.\n");
}

static int be_parse_args(int argc, char **argv, be_args *a)
{
    *a = (be_args){.layers = 4,
                   .prompt = 4248,
                   .gen = 128,
                   .chunk = 512,
                   .batch_capacity = 1024,
                   .stream_slice = 4,
                   .repeat = 1,
                   .workers = 2,
                   .threads = (uint32_t)mb_bench_cpu_count(),
                   .budget_s = 300,
                   .seed = 7,
                   .payload = MB_DTYPE_F32,
                   .ref = 1,
                   .mode_on = {1, 1, 1}};
    int given[3] = {0, 0, 0}; /* layers, prompt, gen */
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(k, "--quick") == 0 || strcmp(k, "--pin") == 0) {
            if (k[2] == 'q')
                a->quick = 1;
            else
                a->pin = 1;
            continue;
        }
        if (strcmp(k, "-h") == 0 || strcmp(k, "--help") == 0) {
            be_usage(stdout);
            exit(0);
        }
        if (!v)
            ok = 0;
        else if (strcmp(k, "--layers") == 0)
            ok = !mb_bench_parse_u32(v, 1, 64, &a->layers), given[0] = 1;
        else if (strcmp(k, "--prompt") == 0)
            ok = !mb_bench_parse_u32(v, 1, 8000, &a->prompt), given[1] = 1;
        else if (strcmp(k, "--gen") == 0)
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->gen), given[2] = 1;
        else if (strcmp(k, "--chunk") == 0)
            ok = !mb_bench_parse_u32(v, 1, MB_FORWARD_CHUNK_DEFAULT, &a->chunk);
        else if (strcmp(k, "--batch-capacity") == 0)
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->batch_capacity);
        else if (strcmp(k, "--stream-slice") == 0)
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->stream_slice);
        else if (strcmp(k, "--threads") == 0)
            ok = !mb_bench_parse_u32(v, 1, 1024, &a->threads);
        else if (strcmp(k, "--worker-spec") == 0)
            a->worker_spec = v;
        else if (strcmp(k, "--workers") == 0)
            ok = !mb_bench_parse_u32(v, 1, BE_MAX_LINKS, &a->workers);
        else if (strcmp(k, "--worker-threads") == 0)
            ok = !mb_bench_parse_u32(v, 1, 1024, &a->worker_threads);
        else if (strcmp(k, "--worker-nice") == 0)
            ok = !mb_bench_parse_u32(v, 0, 19, &a->worker_nice);
        else if (strcmp(k, "--repeat") == 0)
            ok = !mb_bench_parse_u32(v, 1, 100, &a->repeat);
        else if (strcmp(k, "--payload") == 0)
            ok = mb_dtype_parse(v, &a->payload) == MB_STATUS_OK;
        else if (strcmp(k, "--budget") == 0)
            a->budget_s = atof(v), ok = a->budget_s >= 0;
        else if (strcmp(k, "--seed") == 0)
            a->seed = strtoull(v, NULL, 10);
        else if (strcmp(k, "--json") == 0)
            a->json_path = v;
        else if (strcmp(k, "--modes") == 0) {
            static const char *const m[] = {"auto", "batched", "stream",
                                            "inproc"}; /* mb_ipc_mode order */
            int on[4];
            ok = !mb_bench_parse_list(v, m, 4, on);
            a->mode_on[0] = on[0], a->mode_on[1] = on[1], a->mode_on[2] = on[2], a->ref = on[3];
        } else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_e2e: bad or missing value for %s\n", k);
            be_usage(stderr);
            return -1;
        }
        i++;
    }
    if (a->quick) {
        if (!given[0]) a->layers = 1;
        if (!given[1]) a->prompt = 512;
        if (!given[2]) a->gen = 16;
    }
    return 0;
}

/* Opens a session (two CPU workers of 1 thread each on shm, or every expert
 * in-process), runs its lanes and reports them. */
static int be_session_run(const be_args *a, const mb_model *m, const int32_t *prompt, int inproc,
                          be_lane *lanes, uint32_t *n_lanes, be_fig *figs, cJSON *runs,
                          cJSON *pings)
{
    char spec[64];
    if (a->worker_spec)
        snprintf(spec, sizeof spec, "%s", a->worker_spec);
    else
        snprintf(spec, sizeof spec, "cpu,threads=%u", a->worker_threads ? a->worker_threads : 1);
    char *workers[BE_MAX_LINKS];
    for (uint32_t i = 0; i < BE_MAX_LINKS; i++)
        workers[i] = spec;
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = inproc ? NULL : workers;
    opt.n_workers = inproc ? 0 : a->workers;
    opt.local_experts = inproc ? m->cfg.n_experts : 0;
    opt.transport = MB_TRANSPORT_SHM;
    opt.ipc_mode = MB_IPC_MODE_BATCHED;
    opt.batch_capacity = a->batch_capacity;
    opt.stream_slice = a->stream_slice;
    opt.payload_dtype = a->payload;
    opt.threads = a->threads;
    opt.chunk = a->chunk;
    mb_session *s = NULL;
    char err[512];
    mb_status st = mb_session_open(&opt, m, a->prompt + a->gen, isatty(2), &s, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "bench_e2e: cannot open the %s session: %s\n",
                inproc ? "in-process" : "worker", err);
        return -1;
    }
    for (uint32_t i = 0; i < s->n_links && !inproc; i++) {
        int first, last;
        mb_bench_cpu_range(&first, &last);
        int cpu = first + (int)i <= last ? first + (int)i : last;
        if (a->pin && mb_bench_pin_process(s->links[i].pid, cpu) != 0)
            fprintf(stderr, "bench_e2e: warning: cannot pin %s to CPU %d\n", s->links[i].name, cpu);
        if (a->worker_nice && mb_bench_nice_process(s->links[i].pid, (int)a->worker_nice) != 0)
            fprintf(stderr, "bench_e2e: warning: cannot renice %s\n", s->links[i].name);
    }
    /* The transport's own round trip, idle machine permitting: back to back
     * (the worker still spinning) and after 3 ms (asleep, as in decode). */
    for (uint32_t i = 0; i < s->n_links && !inproc; i++) {
        double hot = -1, idle = -1, p99_hot = -1, p99_idle = -1;
        if (mb_bench_link_ping(&s->links[i], 200, 0, &hot, &p99_hot) != MB_STATUS_OK ||
            mb_bench_link_ping(&s->links[i], 50, 3000, &idle, &p99_idle) != MB_STATUS_OK)
            hot = idle = -1;
        fprintf(stderr,
                "%s: PING round trip median %.1f us (p99 %.1f) back to back, %.1f us (p99 %.1f) "
                "after 3 ms idle\n",
                s->links[i].name, hot, p99_hot, idle, p99_idle);
        cJSON *pj = cJSON_CreateObject();
        cJSON_AddStringToObject(pj, "link", s->links[i].name);
        cJSON_AddNumberToObject(pj, "median_us_back_to_back", hot);
        cJSON_AddNumberToObject(pj, "p99_us_back_to_back", p99_hot);
        cJSON_AddNumberToObject(pj, "median_us_after_3ms_idle", idle);
        cJSON_AddNumberToObject(pj, "p99_us_after_3ms_idle", p99_idle);
        cJSON_AddItemToArray(pings, pj);
    }
    static const mb_ipc_mode order[] = {MB_IPC_MODE_BATCHED, MB_IPC_MODE_STREAM, MB_IPC_MODE_AUTO};
    *n_lanes = 0;
    for (int i = 0; i < 3 && st == MB_STATUS_OK; i++) {
        if (inproc ? i > 0 : !a->mode_on[order[i]]) continue;
        st = be_lane_create(a, s, m, inproc ? "inproc" : mb_ipc_mode_name((int)order[i]), order[i],
                            &lanes[*n_lanes]);
        if (st == MB_STATUS_OK) (*n_lanes)++;
    }
    if (st == MB_STATUS_OK)
        st = be_run(a, lanes, *n_lanes, prompt, m->cfg.vocab, err, sizeof err);
    else
        snprintf(err, sizeof err, "cannot set up a forward pass: %s", mb_status_str(st));
    if (st == MB_STATUS_OK) {
        for (uint32_t j = 0; j < *n_lanes; j++) {
            lanes[j].same_tokens =
                memcmp(lanes[j].tokens, lanes[0].tokens, a->gen * sizeof(int32_t)) == 0;
            be_figures(a, &lanes[j], &figs[j]);
            be_print_row(a, &lanes[j], &figs[j]);
            cJSON_AddItemToArray(runs, be_lane_json(a, &lanes[j], &figs[j]));
        }
        fflush(stdout);
    } else {
        fprintf(stderr, "bench_e2e: %s\n", err);
    }
    /* Lanes keep their tokens and figures; their forward passes go now. */
    for (uint32_t j = 0; j < *n_lanes; j++) {
        mb_forward_destroy(lanes[j].fwd);
        mb_dispatch_destroy(lanes[j].d);
        mb_dispatch_destroy(lanes[j].fill);
        lanes[j].fwd = NULL, lanes[j].d = lanes[j].fill = NULL;
    }
    mb_session_close(s);
    return st == MB_STATUS_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    be_args a;
    if (be_parse_args(argc, argv, &a) != 0) return 2;
    mb_bench_find_worker();
    mb_model_config cfg;
    mb_synthetic_qwen3_30b_config(&cfg, a.layers);
    const double gib = 1024.0 * 1024.0 * 1024.0;
    const double expert_gib = (double)mb_expert_bytes(&cfg) * cfg.n_experts * a.layers / gib;
    /* The memfd holds every weight; the workers (or the in-process backend)
     * copy the experts; the embedding and lm_head add 2 x 128 MiB. */
    const double need_gib = 2 * expert_gib + 0.1 * a.layers + 0.5;
    const double avail_gib = (double)mb_bench_mem_available() / gib;
    fprintf(
        stderr,
        "bench_e2e: %u layers: %.2f GiB of experts, about %.1f GiB in all (%.1f GiB available)\n",
        a.layers, expert_gib, need_gib, avail_gib);
    if (avail_gib > 0 && need_gib + 2.0 > avail_gib) {
        fprintf(stderr, "bench_e2e: not enough memory for %u layers: use fewer --layers\n",
                a.layers);
        return 1;
    }
    mb_model *model = NULL;
    char err[512];
    if (mb_synthetic_create(&cfg, a.seed, isatty(2), &model, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_e2e: %s\n", err);
        return 1;
    }
    int32_t *prompt = malloc(a.prompt * sizeof *prompt);
    if (!prompt) return 1;
    uint64_t rs = a.seed * 0x9e3779b97f4a7c15ull + 1;
    for (uint32_t i = 0; i < a.prompt; i++) {
        rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
        prompt[i] = (int32_t)(rs % cfg.vocab);
    }

    cJSON *root = cJSON_CreateObject(), *runs = cJSON_CreateArray(), *goals = cJSON_CreateObject();
    cJSON *pings = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "bench", "e2e");
    cJSON *conf = cJSON_AddObjectToObject(root, "config");
    const struct {
        const char *k;
        double v;
    } cv[] = {{"layers", a.layers},
              {"d_model", cfg.d_model},
              {"n_experts", cfg.n_experts},
              {"top_k", cfg.top_k},
              {"d_ff", cfg.d_ff_expert},
              {"vocab", cfg.vocab},
              {"prompt_tokens", a.prompt},
              {"gen_tokens", a.gen},
              {"chunk", a.chunk},
              {"batch_capacity", a.batch_capacity},
              {"stream_slice", a.stream_slice},
              {"coordinator_threads", a.threads},
              {"worker_threads", a.worker_threads ? a.worker_threads : 1},
              {"repeat", a.repeat},
              {"budget_s", a.budget_s},
              {"seed", (double)a.seed},
              {"expert_gib", expert_gib},
              {"memory_estimate_gib", need_gib}};
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++)
        cJSON_AddNumberToObject(conf, cv[i].k, cv[i].v);
    cJSON_AddStringToObject(conf, "payload", mb_dtype_name(a.payload));
    cJSON_AddNumberToObject(conf, "workers", a.workers);
    cJSON_AddStringToObject(conf, "worker_spec", a.worker_spec ? a.worker_spec : "cpu over shm (threads: worker_threads)");
    cJSON_AddBoolToObject(conf, "workers_pinned", a.pin);
    cJSON_AddNumberToObject(conf, "worker_nice", a.worker_nice);
    cJSON_AddItemToObject(root, "runs", runs);
    cJSON_AddItemToObject(root, "goals", goals);
    cJSON_AddItemToObject(root, "ping", pings);

    printf("bench_e2e: synthetic Qwen3-30B-A3B shapes, %u layers (d_model 2048, 128 experts top-8, "
           "d_ff 768,\n"
           "vocab 32768, bf16; %.1f GiB of experts, ~%.1f GiB resident in all); prompt %u tokens "
           "in chunks of %u,\n"
           "%u generated; experts split over %u CPU worker(s) (%u thread(s) each, shm%s, nice %u), "
           "coordinator %u\n"
           "threads (the in-process reference computes experts on these), %s payload, %u repeat(s)\n\n",
           a.layers, expert_gib, need_gib, a.prompt, a.chunk, a.gen, a.workers,
           a.worker_threads ? a.worker_threads : 1u, a.pin ? ", pinned to CPUs 0 and 1" : "", a.worker_nice, a.threads,
           mb_dtype_name(a.payload), a.repeat);
    printf("%-8s %-24s %7s %8s %9s %9s | %7s %7s %6s %7s %7s | %7s %5s\n", "mode", "prefill s",
           "tok/s", "calls", "MiB tx", "MiB rx", "dec t/s", "med ms", "calls", "MiB tx", "MiB rx",
           "IPC", "same");
    be_lane lanes[BE_MAX_LANES];
    be_fig figs[BE_MAX_LANES];
    memset(lanes, 0, sizeof lanes);
    uint32_t n_lanes = 0, n_ref = 0;
    int rc = 0;
    if (a.mode_on[0] || a.mode_on[1] || a.mode_on[2])
        rc = be_session_run(&a, model, prompt, 0, lanes, &n_lanes, figs, runs, pings);
    if (rc == 0 && a.ref) {
        rc = be_session_run(&a, model, prompt, 1, lanes + n_lanes, &n_ref, figs + n_lanes, runs,
                            pings);
        if (rc == 0 && n_lanes)
            lanes[n_lanes].same_tokens =
                memcmp(lanes[n_lanes].tokens, lanes[0].tokens, a.gen * sizeof(int32_t)) == 0;
    }
    printf("\n* prefill past the %.0f s budget: the rest ran batched and untimed; extrapolated by "
           "tokens\n"
           "  (measured seconds / tokens in brackets). Prefill and decode figures are means over "
           "repeats.\n"
           "IPC: share of decode step time spent in IPC = sum over dispatch calls of (dispatch "
           "wall time -\n"
           "  the slowest backend's worker compute for that call) / decode step time. same: "
           "generated the\n"
           "  same tokens as the first row. med ms: median decode step.\n\n",
           a.budget_s);
    printf("decode, per step (us)  %-8s %8s %8s %8s %10s %10s %10s %10s %8s %8s\n", "mode", "pack",
           "send", "unpack", "dispatch", "crit.comp", "IPC", "step", "of step", "of disp");
    for (uint32_t j = 0; j < n_lanes + n_ref; j++) {
        const be_fig *f = &figs[j];
        printf("                       %-8s %8.1f %8.1f %8.1f %10.1f %10.1f %10.1f %10.1f %7.2f%% "
               "%7.2f%%\n",
               lanes[j].name, f->pack_us, f->send_us, f->unpack_us, f->dispatch_us, f->crit_us,
               f->dispatch_us - f->crit_us, f->step_us, 100 * f->ipc_share,
               100 * f->ipc_share_dispatch);
    }
    printf("(pack/send/unpack: the coordinator's, summed over backends; send includes the time the "
           "coordinator\n"
           " loses the CPU to the worker it wakes; crit.comp: the slowest backend's compute per "
           "call, summed;\n"
           " IPC = dispatch - crit.comp. In-process: the backend computes inside send.)\n");
    int idx[3] = {-1, -1, -1}, iref = n_ref ? (int)n_lanes : -1;
    for (uint32_t j = 0; j < n_lanes; j++)
        idx[lanes[j].mode] = (int)j;
    printf("\n");
    if (rc == 0) {
        double worst = 0;
        for (uint32_t j = 0; j < n_lanes; j++)
            worst = fmax(worst, figs[j].ipc_share);
        if (n_lanes) {
            printf("IPC share of decode step time, worst mode: %.2f%% (goal <= 2%%): %s\n",
                   100 * worst, worst <= 0.02 ? "met" : "NOT met");
            mb_bench_goal(goals, "decode_ipc_share", worst, "<= 0.02", worst <= 0.02);
        }
        int ib = idx[MB_IPC_MODE_BATCHED], is = idx[MB_IPC_MODE_STREAM], ia = idx[MB_IPC_MODE_AUTO];
        if (ib >= 0 && iref >= 0) {
            double r = figs[ib].prefill_s / figs[iref].prefill_s;
            printf("batched prefill / in-process prefill: %.3f (goal <= 1.10): %s\n", r,
                   r <= 1.10 ? "met" : "NOT met");
            mb_bench_goal(goals, "batched_prefill_vs_inprocess", r, "<= 1.10", r <= 1.10);
            double d = figs[ib].step_ms_median / figs[iref].step_ms_median;
            printf(
                "batched decode step / in-process decode step (median): %.3f (for information)\n",
                d);
        }
        if (ia >= 0 && ib >= 0 && is >= 0) {
            double bp = fmin(figs[ib].prefill_s, figs[is].prefill_s);
            double bd = fmin(figs[ib].step_ms_median, figs[is].step_ms_median);
            double rp = figs[ia].prefill_s / bp, rd = figs[ia].step_ms_median / bd;
            /* One token per step: every mode sends the same messages, so in
             * decode the check is identical traffic; the time ratio is shown. */
            int same = figs[ia].dec.calls == figs[ib].dec.calls &&
                       figs[ia].dec.calls == figs[is].dec.calls &&
                       figs[ia].dec.bytes_sent == figs[ib].dec.bytes_sent &&
                       figs[ia].dec.bytes_sent == figs[is].dec.bytes_sent;
            int met = rp <= 1.05 && (rd <= 1.05 || same);
            printf("auto / best fixed mode: prefill %.3f (goal <= 1.05); decode traffic %s, median "
                   "step ratio %.3f: %s\n",
                   rp, same ? "identical" : "DIFFERENT", rd, met ? "met" : "NOT met");
            cJSON *g = mb_bench_goal(goals, "auto_vs_best_fixed", rp,
                                     "prefill <= 1.05; decode traffic identical", met);
            cJSON_AddNumberToObject(g, "prefill_ratio", rp);
            cJSON_AddBoolToObject(g, "decode_traffic_identical", same);
            cJSON_AddNumberToObject(g, "decode_ratio", rd);
        }
        if (ib >= 0 && is >= 0) {
            double red = 1 - (double)figs[ib].pre.calls / (double)figs[is].pre.calls;
            printf("prefill calls, batched vs stream: %.2f%% fewer\n", 100 * red);
        }
    }
    for (uint32_t j = 0; j < n_lanes + n_ref; j++)
        be_lane_destroy(&lanes[j]);
    char *text = cJSON_Print(root);
    printf("\n");
    if (!text || mb_bench_emit_json(text, a.json_path, "bench_e2e") != 0) rc = 1;
    free(text);
    cJSON_Delete(root);
    free(prompt);
    mb_model_destroy(model);
    return rc;
}
