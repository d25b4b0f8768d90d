/* Layer dispatch benchmark: one or a few layers of Qwen3-30B-A3B expert
 * shapes (128 experts, top-8, d_model 2048, d_ff 768) with random routing,
 * served by two CPU workers over shared memory, in stream, batched and auto
 * mode: a 4248-token prefill in forward-sized chunks and 128 decode steps.
 * It reports calls, payload each way and time per mode, payload per token
 * per backend under an even and a 3:1 placement, the same with one worker
 * made slow, an in-process run as the no-IPC reference, and the machine's
 * read-bandwidth and FMA ceilings measured in the same run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/ceiling.h"
#include "bench/moe_bench.h"
#include "bench/timing.h"
#include "broker/dispatch.h"
#include "broker/link.h"
#include "broker/placement.h"
#include "broker/session.h"
#include "broker/stats.h"
#include "broker/synthetic.h"

#define BD_MAX_LINKS 2
#define BD_MODES 3

typedef enum { BD_SLOW_HOG = 0, BD_SLOW_THREADS = 1 } bd_slow_kind;

typedef struct {
    uint32_t layers, prefill_tokens, decode_steps, chunk, batch_capacity, stream_slice, repeat;
    double budget_s;     /* prefill measured this long at most, then extrapolated */
    double skew;         /* expert popularity skew (0: uniform) */
    uint64_t seed;
    mb_dtype payload;
    int quick;
    int mode_on[BD_MODES];           /* indexed by mb_ipc_mode */
    int even, split, slow, inproc;   /* scenarios */
    bd_slow_kind slow_kind;
    const char *json_path;
} bd_args;

/* The backends of one scenario. */
typedef struct {
    const char *name;
    const char *note;
    mb_link links[BD_MAX_LINKS];
    uint32_t n_links;
    uint32_t threads[BD_MAX_LINKS];
    mb_placement pl;
    char link_name[BD_MAX_LINKS][96]; /* kept after the links close */
    uint32_t experts[BD_MAX_LINKS];    /* experts per layer on each link */
    double weight[BD_MAX_LINKS];
    double ping_us[BD_MAX_LINKS][2];   /* PING round trip median: back to back, after 3 ms idle */
    pid_t hog;        /* CPU hog sharing the slow worker's core, 0 if none */
} bd_setup;

typedef struct {
    mb_ipc_mode mode;
    uint32_t prefill_measured;  /* tokens actually run */
    double prefill_s_measured;  /* mean over repeats */
    double prefill_s_first;     /* the first repeat */
    double scale;               /* prefill_tokens / prefill_measured */
    double cscale;              /* for counters summed over repeats: scale / repeats */
    double coord_cpu_s;         /* the dispatching thread's CPU time in prefill, per repeat, scaled */
    double decode_s;
    double decode_median_ms;    /* per step; robust to other load on the machine */
    mb_stats_counters pre[BD_MAX_LINKS], dec[BD_MAX_LINKS];
    uint32_t slice_pre[BD_MAX_LINKS], slice_dec[BD_MAX_LINKS];
    double max_diff;            /* vs the first mode of the scenario, -1: not compared */
} bd_result;

/* ---- backends ---- */

static void bd_setup_close(bd_setup *s)
{
    mb_bench_hog_stop(s->hog);
    s->hog = 0;
    mb_placement_free(&s->pl);
    for (uint32_t i = 0; i < s->n_links; i++) mb_link_close(&s->links[i]);
}

/* Starts n_links CPU workers over shm (or one in-process backend when
 * inproc), places every expert by the weights and loads them. */
static mb_status bd_setup_open(const mb_model *m, bd_setup *s, uint32_t n_links, const double *weight,
                               const uint32_t *threads, int inproc, char *err, size_t err_cap)
{
    const mb_model_config *c = &m->cfg;
    mb_status st = MB_STATUS_OK;
    for (uint32_t i = 0; i < n_links; i++) {
        mb_link_spec spec = {.backend = "cpu", .device = -1, .threads = threads[i], .weight = weight[i],
                             .max_slots = c->n_layers * c->n_experts};
        s->threads[i] = threads[i];
        st = inproc ? mb_link_open_inproc(&spec, (int)i, &s->links[i], err, err_cap)
                    : mb_link_spawn(&spec, MB_LINK_SPAWNED_SHM, (int)i, 20000000000LL, &s->links[i], err, err_cap);
        if (st != MB_STATUS_OK) goto fail;
        s->n_links++;
    }
    st = mb_placement_plan(c, s->links, s->n_links, inproc ? 0 : -1, inproc ? c->n_experts : 0, 0, &s->pl, err,
                           err_cap);
    if (st != MB_STATUS_OK) goto fail;
    st = mb_experts_load(m, s->links, &s->pl, 0, err, err_cap);
    if (st != MB_STATUS_OK) goto fail;
    for (uint32_t i = 0; i < s->n_links; i++) {
        double p99;
        if (mb_bench_link_ping(&s->links[i], 200, 0, &s->ping_us[i][0], &p99) != MB_STATUS_OK ||
            mb_bench_link_ping(&s->links[i], 50, 3000, &s->ping_us[i][1], &p99) != MB_STATUS_OK)
            s->ping_us[i][0] = s->ping_us[i][1] = -1;
        snprintf(s->link_name[i], sizeof s->link_name[i], "%s", s->links[i].name);
        s->weight[i] = s->links[i].weight;
        for (uint32_t e = 0; e < c->n_experts; e++) s->experts[i] += mb_placement_at(&s->pl, 0, e)->link == i;
    }
    return MB_STATUS_OK;
fail:
    bd_setup_close(s);
    return st;
}

/* ---- the modes, interleaved ---- */

/* One mode's dispatcher in an interleaved run. */
typedef struct {
    mb_stats *stats;
    mb_dispatch *d;
    float *out;               /* [chunk][d_model] */
    uint32_t n_chunks;        /* prefill chunks it runs: fewer once past the budget */
    uint64_t pre_ns;          /* all repeats */
    uint64_t first_ns;        /* the first repeat */
    uint64_t cpu_ns;          /* this thread's CPU time in prefill, all repeats */
    mb_bench_samples steps;   /* decode step times */
} bd_lane;

static uint64_t bd_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Runs every layer for tokens [tok, tok + n) through one lane. */
static mb_status bd_lane_step(bd_lane *ln, const mb_bench_routing *r, uint32_t layers, uint32_t tok, uint32_t n)
{
    mb_status st = MB_STATUS_OK;
    for (uint32_t l = 0; l < layers && st == MB_STATUS_OK; l++) {
        size_t at = ((size_t)l * r->n_total + tok) * r->top_k;
        mb_moe_work w = {.layer = l, .n_tokens = n, .top_k = r->top_k, .decode = n == 1, .expert_ids = r->ids + at,
                         .gate = r->gate + at, .x = r->x + (size_t)tok * r->d_model, .out = ln->out};
        st = mb_dispatch_moe(ln->d, &w);
    }
    return st;
}

/* Runs modes[0..n_modes) on the same workers, interleaved chunk by chunk in
 * prefill and step by step in decode (the first mode to go rotating), so
 * load from other users of the machine falls on every mode alike. A mode
 * whose prefill time passes the budget stops there; its figures are then
 * extrapolated. modes[0] is the reference the others' sums are compared to. */
static mb_status bd_run_modes(const bd_args *a, bd_setup *s, const mb_bench_routing *r, const mb_ipc_mode *modes,
                              uint32_t n_modes, bd_result *res, char *err, size_t err_cap)
{
    bd_lane lanes[BD_MODES];
    memset(lanes, 0, sizeof lanes);
    const char *names[BD_MAX_LINKS];
    for (uint32_t i = 0; i < s->n_links; i++) names[i] = s->links[i].name;
    const size_t D = r->d_model;
    mb_status st = MB_STATUS_OK;
    uint32_t j = 0;
    for (j = 0; j < n_modes && st == MB_STATUS_OK; j++) {
        memset(&res[j], 0, sizeof res[j]);
        res[j].mode = modes[j];
        res[j].max_diff = -1;
        lanes[j].out = aligned_alloc(64, ((size_t)a->chunk * D * sizeof(float) + 63) & ~(size_t)63);
        st = lanes[j].out ? mb_stats_create(s->n_links, names, a->layers, 0, &lanes[j].stats) : MB_STATUS_NOMEM;
        mb_dispatch_config dc = {.links = s->links, .n_links = s->n_links, .placement = &s->pl, .mode = modes[j],
                                 .batch_capacity = a->batch_capacity, .stream_slice = a->stream_slice,
                                 .payload = a->payload, .d_model = r->d_model, .top_k = r->top_k,
                                 .max_tokens = a->chunk, .timeout_ns = 300000000000LL, .stats = lanes[j].stats};
        if (st == MB_STATUS_OK) st = mb_dispatch_create(&dc, &lanes[j].d);
    }
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "cannot set up the dispatchers: %s", mb_status_str(st));
        goto done;
    }
    /* Prefill: chunk-major like the forward pass (every layer of a chunk,
     * then the next chunk). The first repeat fixes how many chunks each mode
     * runs (the budget); times and counters are means over the repeats. */
    const uint32_t n_chunks = (a->prefill_tokens + a->chunk - 1) / a->chunk;
    for (j = 0; j < n_modes; j++) lanes[j].n_chunks = n_chunks;
    uint32_t n = 0;
    for (uint32_t rep = 0; rep < a->repeat; rep++) {
        for (uint32_t c = 0; c < n_chunks; c++) {
            uint32_t tok = c * a->chunk;
            n = a->prefill_tokens - tok < a->chunk ? a->prefill_tokens - tok : a->chunk;
            for (uint32_t k = 0; k < n_modes; k++) {
                j = (k + c + rep) % n_modes;
                if (c >= lanes[j].n_chunks) continue;
                uint64_t t0 = mb_now_ns(), c0 = bd_thread_cpu_ns();
                if ((st = bd_lane_step(&lanes[j], r, a->layers, tok, n)) != MB_STATUS_OK) goto fail;
                lanes[j].pre_ns += mb_now_ns() - t0;
                lanes[j].cpu_ns += bd_thread_cpu_ns() - c0;
                if (rep > 0) continue;
                lanes[j].first_ns = lanes[j].pre_ns;
                res[j].prefill_measured = tok + n;
                if (a->budget_s > 0 && (double)lanes[j].pre_ns * 1e-9 > a->budget_s) lanes[j].n_chunks = c + 1;
            }
        }
    }
    /* The last chunk's sums (last layer): equal across modes up to the order
     * a worker adds its experts in? */
    for (j = 0; j < n_modes; j++) {
        if (lanes[j].n_chunks != n_chunks || lanes[0].n_chunks != n_chunks) continue;
        double md = 0;
        for (size_t i = 0; i < (size_t)n * D; i++) md = fmax(md, fabs((double)lanes[j].out[i] - lanes[0].out[i]));
        res[j].max_diff = md;
    }
    for (uint32_t step = 0; step < a->decode_steps; step++) {
        for (uint32_t k = 0; k < n_modes; k++) {
            j = (k + step) % n_modes;
            int64_t t0 = mb_bench_now_ns();
            if ((st = bd_lane_step(&lanes[j], r, a->layers, a->prefill_tokens + step, 1)) != MB_STATUS_OK) goto fail;
            int64_t dt = mb_bench_now_ns() - t0;
            res[j].decode_s += (double)dt * 1e-9;
            mb_bench_samples_add(&lanes[j].steps, dt);
        }
    }
    for (j = 0; j < n_modes; j++) {
        bd_result *o = &res[j];
        o->prefill_s_first = (double)lanes[j].first_ns * 1e-9;
        o->prefill_s_measured = (double)lanes[j].pre_ns * 1e-9 / a->repeat;
        o->scale = o->prefill_measured ? (double)a->prefill_tokens / o->prefill_measured : 0;
        o->cscale = o->scale / a->repeat;
        o->coord_cpu_s = (double)lanes[j].cpu_ns * 1e-9 * o->cscale;
        o->decode_median_ms = (double)mb_bench_samples_quantile(&lanes[j].steps, 0.5) * 1e-6;
        for (uint32_t i = 0; i < s->n_links; i++) {
            mb_stats_get(lanes[j].stats, i, MB_STATS_PHASE_PREFILL, &o->pre[i]);
            mb_stats_get(lanes[j].stats, i, MB_STATS_PHASE_DECODE, &o->dec[i]);
            o->slice_pre[i] = mb_dispatch_auto_slice(lanes[j].d, i, 0, a->chunk);
            o->slice_dec[i] = mb_dispatch_auto_slice(lanes[j].d, i, 1, 1);
        }
    }
    goto done;
fail:
    snprintf(err, err_cap, "%s: %s", mb_ipc_mode_name((int)modes[j]),
             mb_dispatch_error(lanes[j].d)[0] ? mb_dispatch_error(lanes[j].d) : mb_status_str(st));
done:
    for (j = 0; j < n_modes; j++) {
        mb_dispatch_destroy(lanes[j].d);
        mb_stats_destroy(lanes[j].stats);
        free(lanes[j].out);
        mb_bench_samples_fini(&lanes[j].steps);
    }
    return st;
}

/* ---- reporting ---- */

static double bd_mib(double bytes)
{
    return bytes / (1024.0 * 1024.0);
}

static double bd_prefill_s(const bd_result *r)
{
    return r->prefill_s_measured * r->scale;
}

static double bd_decode_mean_ms(const bd_args *a, const bd_result *r)
{
    return a->decode_steps ? r->decode_s * 1e3 / a->decode_steps : 0;
}

static double bd_calls(const bd_result *r, int decode, uint32_t n_links)
{
    double c = 0;
    for (uint32_t i = 0; i < n_links; i++) c += (double)(decode ? r->dec[i].calls : r->pre[i].calls);
    return decode ? c : c * r->cscale;
}

static void bd_print_row(const bd_args *a, const bd_setup *s, const bd_result *r)
{
    char pre_calls[64] = "", sent[64] = "", recv[64] = "", slices[64] = "", wk[64] = "";
    for (uint32_t i = 0; i < s->n_links; i++) {
        size_t o = strlen(pre_calls);
        snprintf(pre_calls + o, sizeof pre_calls - o, "%s%.0f", i ? "/" : "", (double)r->pre[i].calls * r->cscale);
        o = strlen(sent);
        snprintf(sent + o, sizeof sent - o, "%s%.0f", i ? "/" : "", bd_mib((double)r->pre[i].bytes_sent * r->cscale));
        o = strlen(recv);
        snprintf(recv + o, sizeof recv - o, "%s%.0f", i ? "/" : "",
                 bd_mib((double)r->pre[i].bytes_received * r->cscale));
        o = strlen(wk);
        snprintf(wk + o, sizeof wk - o, "%s%.2f", i ? "/" : "", (double)r->pre[i].worker_compute_ns * 1e-9 * r->cscale);
        o = strlen(slices);
        if (r->mode == MB_IPC_MODE_AUTO)
            snprintf(slices + o, sizeof slices - o, "%s%u", i ? "/" : "", r->slice_pre[i]);
    }
    char pre_s[64];
    if (r->scale > 1.0001)
        snprintf(pre_s, sizeof pre_s, "%.2f*  (%.2f s / %u tok)", bd_prefill_s(r), r->prefill_s_measured,
                 r->prefill_measured);
    else
        snprintf(pre_s, sizeof pre_s, "%.2f", bd_prefill_s(r));
    double dec_sent = 0, dec_recv = 0;
    for (uint32_t i = 0; i < s->n_links; i++) {
        dec_sent += (double)r->dec[i].bytes_sent;
        dec_recv += (double)r->dec[i].bytes_received;
    }
    char diff[16] = "-";
    if (r->max_diff >= 0) snprintf(diff, sizeof diff, "%.1e", r->max_diff);
    printf("%-7s %-8s %15s %13s %11s %-30s %11s %6.2f %6.0f %8.3f %8.3f %7.2f %7.2f %8s %8s\n", s->name,
           mb_ipc_mode_name((int)r->mode), pre_calls, sent, recv, pre_s, wk, r->coord_cpu_s, bd_calls(r, 1, s->n_links),
           bd_mib(dec_sent),
           bd_mib(dec_recv), r->decode_median_ms, bd_decode_mean_ms(a, r), slices[0] ? slices : "-", diff);
}

/* Request bytes per token sent, with and without the 8-byte routing entry
 * per (token, expert) pair, and reply bytes per token. */
static void bd_per_token(const mb_stats_counters *c, double *sent, double *sent_no_pairs, double *recv,
                         double *pairs)
{
    double t = c->tokens ? (double)c->tokens : 1;
    *sent = (double)c->bytes_sent / t;
    *sent_no_pairs = ((double)c->bytes_sent - 8.0 * (double)c->pairs) / t;
    *recv = (double)c->bytes_received / t;
    *pairs = (double)c->pairs / t;
}

static cJSON *bd_counters_json(const mb_stats_counters *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "calls", (double)c->calls);
#define BD_FIELD_(name, doc) cJSON_AddNumberToObject(o, #name, (double)c->name);
    MB_STATS_CALL_FIELDS(BD_FIELD_)
#undef BD_FIELD_
    double s, sn, rv, p;
    bd_per_token(c, &s, &sn, &rv, &p);
    cJSON_AddNumberToObject(o, "bytes_sent_per_token", s);
    cJSON_AddNumberToObject(o, "bytes_sent_per_token_without_pairs", sn);
    cJSON_AddNumberToObject(o, "bytes_received_per_token", rv);
    cJSON_AddNumberToObject(o, "pairs_per_token", p);
    return o;
}

static cJSON *bd_result_json(const bd_args *a, const bd_setup *s, const bd_result *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "scenario", s->name);
    cJSON_AddStringToObject(o, "mode", mb_ipc_mode_name((int)r->mode));
    cJSON *bk = cJSON_AddArrayToObject(o, "backends");
    for (uint32_t i = 0; i < s->n_links; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "name", s->link_name[i]);
        cJSON_AddNumberToObject(b, "threads", s->threads[i]);
        cJSON_AddNumberToObject(b, "weight", s->weight[i]);
        cJSON_AddNumberToObject(b, "experts_per_layer", s->experts[i]);
        cJSON_AddNumberToObject(b, "ping_us_back_to_back", s->ping_us[i][0]);
        cJSON_AddNumberToObject(b, "ping_us_after_3ms_idle", s->ping_us[i][1]);
        cJSON_AddItemToObject(b, "prefill_measured_all_repeats", bd_counters_json(&r->pre[i]));
        cJSON_AddItemToObject(b, "decode", bd_counters_json(&r->dec[i]));
        if (r->mode == MB_IPC_MODE_AUTO) {
            cJSON_AddNumberToObject(b, "auto_slice_prefill", r->slice_pre[i]);
            cJSON_AddNumberToObject(b, "auto_slice_decode", r->slice_dec[i]);
        }
        cJSON_AddItemToArray(bk, b);
    }
    cJSON_AddNumberToObject(o, "prefill_tokens", a->prefill_tokens);
    cJSON_AddNumberToObject(o, "prefill_tokens_measured", r->prefill_measured);
    cJSON_AddNumberToObject(o, "repeats", a->repeat);
    cJSON_AddBoolToObject(o, "prefill_extrapolated", r->scale > 1.0001);
    cJSON_AddNumberToObject(o, "prefill_s_measured", r->prefill_s_measured);
    cJSON_AddNumberToObject(o, "prefill_s_first_repeat_measured", r->prefill_s_first);
    cJSON_AddNumberToObject(o, "prefill_s", bd_prefill_s(r));
    cJSON_AddNumberToObject(o, "prefill_calls", bd_calls(r, 0, s->n_links));
    cJSON_AddNumberToObject(o, "prefill_coordinator_cpu_s", r->coord_cpu_s);
    cJSON_AddNumberToObject(o, "decode_steps", a->decode_steps);
    cJSON_AddNumberToObject(o, "decode_ms_per_step_mean", bd_decode_mean_ms(a, r));
    cJSON_AddNumberToObject(o, "decode_ms_per_step_median", r->decode_median_ms);
    cJSON_AddNumberToObject(o, "decode_calls", bd_calls(r, 1, s->n_links));
    if (r->max_diff >= 0) cJSON_AddNumberToObject(o, "max_abs_diff_vs_first_mode", r->max_diff);
    return o;
}

/* ---- the run ---- */

static void bd_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_dispatch [--layers N] [--prefill-tokens N] [--decode-steps N] [--chunk N]\n"
            "       [--batch-capacity N] [--stream-slice N] [--payload f32|f16|bf16] [--skew S] [--seed S]\n"
            "       [--budget SECONDS] [--modes stream,batched,auto] [--scenarios even,split,slow,inproc]\n"
            "       [--slow hog|threads] [--repeat R] [--quick] [--json FILE]\n"
            "defaults: 1 layer, 4248 prefill tokens in chunks of 512, 128 decode steps, f32 payload,\n"
            "budget 180 s per mode's prefill (past it the rest is extrapolated, marked *), all modes\n"
            "and scenarios; --repeat R runs the prefill R times and reports means (the budget applies to\n"
            "the first). --quick: 512 prefill tokens, 16 decode steps, budget 30 s.\n");
}

static int bd_parse_args(int argc, char **argv, bd_args *a)
{
    *a = (bd_args){.layers = 1, .prefill_tokens = 4248, .decode_steps = 128, .chunk = 512, .batch_capacity = 1024,
                   .stream_slice = 4, .repeat = 1, .budget_s = 180, .seed = 42, .payload = MB_DTYPE_F32,
                   .mode_on = {1, 1, 1}, .even = 1, .split = 1, .slow = 1, .inproc = 1};
    int given_pre = 0, given_dec = 0, given_budget = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(k, "--quick") == 0) {
            a->quick = 1;
            continue;
        }
        if (strcmp(k, "-h") == 0 || strcmp(k, "--help") == 0) {
            bd_usage(stdout);
            exit(0);
        }
        if (!v) ok = 0;
        else if (strcmp(k, "--layers") == 0) ok = !mb_bench_parse_u32(v, 1, 64, &a->layers);
        else if (strcmp(k, "--prefill-tokens") == 0) ok = !mb_bench_parse_u32(v, 1, 1 << 20, &a->prefill_tokens), given_pre = 1;
        else if (strcmp(k, "--decode-steps") == 0) ok = !mb_bench_parse_u32(v, 0, 1 << 20, &a->decode_steps), given_dec = 1;
        else if (strcmp(k, "--repeat") == 0) ok = !mb_bench_parse_u32(v, 1, 100, &a->repeat);
        else if (strcmp(k, "--chunk") == 0) ok = !mb_bench_parse_u32(v, 1, 65536, &a->chunk);
        else if (strcmp(k, "--batch-capacity") == 0) ok = !mb_bench_parse_u32(v, 1, 4096, &a->batch_capacity);
        else if (strcmp(k, "--stream-slice") == 0) ok = !mb_bench_parse_u32(v, 1, 4096, &a->stream_slice);
        else if (strcmp(k, "--payload") == 0) ok = mb_dtype_parse(v, &a->payload) == MB_STATUS_OK;
        else if (strcmp(k, "--skew") == 0) a->skew = atof(v), ok = a->skew >= 0;
        else if (strcmp(k, "--seed") == 0) a->seed = strtoull(v, NULL, 10);
        else if (strcmp(k, "--budget") == 0) a->budget_s = atof(v), ok = a->budget_s >= 0, given_budget = 1;
        else if (strcmp(k, "--json") == 0) a->json_path = v;
        else if (strcmp(k, "--slow") == 0) {
            ok = strcmp(v, "hog") == 0 || strcmp(v, "threads") == 0;
            a->slow_kind = strcmp(v, "threads") == 0 ? BD_SLOW_THREADS : BD_SLOW_HOG;
        } else if (strcmp(k, "--modes") == 0) {
            static const char *const m[] = {"auto", "batched", "stream"}; /* mb_ipc_mode order */
            ok = !mb_bench_parse_list(v, m, BD_MODES, a->mode_on);
        } else if (strcmp(k, "--scenarios") == 0) {
            static const char *const sc[] = {"even", "split", "slow", "inproc"};
            int on[4];
            ok = !mb_bench_parse_list(v, sc, 4, on);
            a->even = on[0], a->split = on[1], a->slow = on[2], a->inproc = on[3];
        } else ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_dispatch: bad or missing value for %s\n", k);
            bd_usage(stderr);
            return -1;
        }
        i++;
    }
    if (a->quick) {
        if (!given_pre) a->prefill_tokens = 512;
        if (!given_dec) a->decode_steps = 16;
        if (!given_budget) a->budget_s = 30;
    }
    return 0;
}

static double bd_t0; /* start of the run, s */

typedef struct {
    bd_setup setup;
    bd_result res[BD_MODES];
    int ran[BD_MODES];
} bd_scenario;

/* Runs the enabled modes on an opened setup, interleaved, batched first
 * (the reference for the comparison of sums). */
static int bd_run_scenario(const bd_args *a, bd_scenario *sc, const mb_bench_routing *r, int only_batched, cJSON *runs)
{
    static const mb_ipc_mode order[] = {MB_IPC_MODE_BATCHED, MB_IPC_MODE_STREAM, MB_IPC_MODE_AUTO};
    mb_ipc_mode modes[BD_MODES];
    bd_result res[BD_MODES];
    uint32_t n = 0;
    for (int i = 0; i < BD_MODES; i++)
        if (a->mode_on[order[i]] && (!only_batched || order[i] == MB_IPC_MODE_BATCHED)) modes[n++] = order[i];
    char err[512];
    fprintf(stderr, "[%6.1f s] %s: running %u mode(s)\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0, sc->setup.name,
            n);
    if (n == 0) return 0;
    if (bd_run_modes(a, &sc->setup, r, modes, n, res, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_dispatch: %s: %s\n", sc->setup.name, err);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        sc->res[modes[i]] = res[i];
        sc->ran[modes[i]] = 1;
        bd_print_row(a, &sc->setup, &res[i]);
        cJSON_AddItemToArray(runs, bd_result_json(a, &sc->setup, &res[i]));
    }
    fflush(stdout);
    return 0;
}

/* ---- goals ---- */

static cJSON *bd_goal(cJSON *goals, const char *name, double value, const char *goal, int met)
{
    cJSON *g = cJSON_CreateObject();
    cJSON_AddNumberToObject(g, "value", value);
    cJSON_AddStringToObject(g, "goal", goal);
    cJSON_AddBoolToObject(g, "met", met);
    cJSON_AddItemToObject(goals, name, g);
    return g;
}

/* Payload per token per backend from batched prefill and decode of the even
 * and 3:1 scenarios: the request without its 8-byte routing entries should
 * not depend on how many experts a backend holds. */
static void bd_goal_bytes(const bd_scenario *sc[], int n, cJSON *goals)
{
    printf("\npayload per token per backend (batched; request bytes include 8 B per (token, expert) pair):\n");
    printf("%-7s %-14s %7s %7s | %9s %9s %9s | %9s %9s %9s\n", "scen.", "backend", "experts", "pairs/t",
           "pre sent", "-pairs", "pre recv", "dec sent", "-pairs", "dec recv");
    double lo = INFINITY, hi = 0, lo_raw = INFINITY, hi_raw = 0;
    for (int k = 0; k < n; k++) {
        const bd_setup *s = &sc[k]->setup;
        const bd_result *r = &sc[k]->res[MB_IPC_MODE_BATCHED];
        for (uint32_t i = 0; i < s->n_links; i++) {
            double ps, pn, pr, pp, ds, dn, dr, dp;
            bd_per_token(&r->pre[i], &ps, &pn, &pr, &pp);
            bd_per_token(&r->dec[i], &ds, &dn, &dr, &dp);
            printf("%-7s %-14s %7u %7.2f | %9.1f %9.1f %9.1f | %9.1f %9.1f %9.1f\n", s->name, s->link_name[i],
                   s->experts[i], pp, ps, pn, pr, ds, dn, dr);
            lo = fmin(lo, pn), hi = fmax(hi, pn), lo_raw = fmin(lo_raw, ps), hi_raw = fmax(hi_raw, ps);
        }
    }
    double spread = lo > 0 ? (hi - lo) / lo : 1, spread_raw = lo_raw > 0 ? (hi_raw - lo_raw) / lo_raw : 1;
    printf("prefill request bytes/token spread over backends: %.3f%% without pair entries, %.3f%% with them\n",
           spread * 100, spread_raw * 100);
    cJSON *g = bd_goal(goals, "prefill_bytes_per_token_spread", spread, "< 0.01 (independent of experts held)",
                       spread < 0.01);
    cJSON_AddNumberToObject(g, "spread_with_pair_entries", spread_raw);
}

/* Auto against the better fixed mode. In decode (one token per step) every
 * mode sends the same messages, so there the check is that the traffic is
 * identical; the time ratio is shown next to the stream/batched difference,
 * which is noise alone. */
static void bd_goal_auto(const bd_args *a, const bd_scenario *sc, cJSON *goals)
{
    const bd_result *r = sc->res;
    if (!sc->ran[MB_IPC_MODE_AUTO] || !sc->ran[MB_IPC_MODE_STREAM] || !sc->ran[MB_IPC_MODE_BATCHED]) return;
    const bd_result *rs = &r[MB_IPC_MODE_STREAM], *rb = &r[MB_IPC_MODE_BATCHED], *ra = &r[MB_IPC_MODE_AUTO];
    double rp = bd_prefill_s(ra) / fmin(bd_prefill_s(rs), bd_prefill_s(rb));
    double rd = ra->decode_median_ms / fmin(rs->decode_median_ms, rb->decode_median_ms);
    double noise = fmax(rs->decode_median_ms, rb->decode_median_ms) / fmin(rs->decode_median_ms, rb->decode_median_ms);
    int same = 1;
    for (uint32_t i = 0; i < sc->setup.n_links; i++)
        for (int m = 0; m < BD_MODES; m++)
            same &= r[m].dec[i].calls == ra->dec[i].calls && r[m].dec[i].bytes_sent == ra->dec[i].bytes_sent;
    int met = rp <= 1.05 && (rd <= 1.05 || same);
    printf("%s: auto / better fixed mode: prefill %.3f (goal <= 1.05): %s; decode: traffic %s in all modes,\n"
           "    median step ratio %.3f (stream vs batched, identical messages: %.3f, i.e. noise)\n",
           sc->setup.name, rp, rp <= 1.05 ? "met" : "NOT met", same ? "identical" : "DIFFERENT", rd, noise);
    for (uint32_t i = 0; i < sc->setup.n_links; i++) {
        const mb_stats_counters *d = &rb->dec[i];
        printf("    %s decode call: wait %.0f us, worker compute %.0f us, so %.0f us round trip and scheduling;"
               " PING %.0f us back to back, %.0f us after 3 ms idle\n", sc->setup.link_name[i],
               (double)d->wait_ns / (double)d->calls * 1e-3, (double)d->worker_compute_ns / (double)d->calls * 1e-3,
               ((double)d->wait_ns - (double)d->worker_compute_ns) / (double)d->calls * 1e-3, sc->setup.ping_us[i][0],
               sc->setup.ping_us[i][1]);
    }
    char name[64];
    snprintf(name, sizeof name, "auto_vs_best_%s", sc->setup.name);
    cJSON *g = bd_goal(goals, name, rp, "prefill <= 1.05; decode traffic identical", met);
    cJSON_AddNumberToObject(g, "prefill_ratio", rp);
    cJSON_AddNumberToObject(g, "decode_median_ratio", rd);
    cJSON_AddNumberToObject(g, "decode_noise_stream_vs_batched", noise);
    cJSON_AddBoolToObject(g, "decode_traffic_identical", same);
}

int main(int argc, char **argv)
{
    bd_args a;
    if (bd_parse_args(argc, argv, &a) != 0) return 2;
    mb_bench_find_worker();
    bd_t0 = (double)mb_bench_now_ns() * 1e-9;
    mb_model_config cfg;
    mb_synthetic_qwen3_30b_config(&cfg, a.layers);
    cfg.vocab = 64; /* the embedding and lm_head play no part here */
    const double expert_gib = (double)mb_expert_bytes(&cfg) * cfg.n_experts * a.layers / (1u << 30);
    fprintf(stderr, "bench_dispatch: %u layer(s) x 128 experts = %.2f GiB of bf16 experts (held twice: the\n"
                    "coordinator's memfd and the workers' copies)\n", a.layers, expert_gib);
    double avail_gib = (double)mb_bench_mem_available() / (1u << 30);
    if (avail_gib > 0 && 2 * expert_gib + 1.0 > avail_gib) {
        fprintf(stderr, "bench_dispatch: needs about %.1f GiB, %.1f GiB available: use fewer --layers\n",
                2 * expert_gib + 1.0, avail_gib);
        return 1;
    }

    mb_bench_ceilings ceil;
    mb_bench_ceilings_measure(2, a.quick, &ceil);
    fprintf(stderr, "[%6.1f s] ceilings measured\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0);
    mb_bench_routing r;
    mb_model *model = NULL;
    char err[512];
    if (mb_bench_routing_make(&r, a.layers, a.prefill_tokens + a.decode_steps, cfg.n_experts, cfg.top_k, cfg.d_model, a.skew, a.seed) != MB_STATUS_OK ||
        mb_synthetic_create(&cfg, a.seed, 0, &model, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_dispatch: cannot build the model or routing\n");
        return 1;
    }
    cJSON *root = cJSON_CreateObject(), *runs = cJSON_CreateArray(), *goals = cJSON_CreateObject();
    cJSON *conf = cJSON_AddObjectToObject(root, "config");
    cJSON_AddStringToObject(root, "bench", "dispatch");
    cJSON_AddNumberToObject(conf, "layers", a.layers);
    cJSON_AddNumberToObject(conf, "d_model", cfg.d_model);
    cJSON_AddNumberToObject(conf, "d_ff", cfg.d_ff_expert);
    cJSON_AddNumberToObject(conf, "n_experts", cfg.n_experts);
    cJSON_AddNumberToObject(conf, "top_k", cfg.top_k);
    cJSON_AddNumberToObject(conf, "prefill_tokens", a.prefill_tokens);
    cJSON_AddNumberToObject(conf, "chunk", a.chunk);
    cJSON_AddNumberToObject(conf, "decode_steps", a.decode_steps);
    cJSON_AddNumberToObject(conf, "batch_capacity", a.batch_capacity);
    cJSON_AddNumberToObject(conf, "stream_slice", a.stream_slice);
    cJSON_AddStringToObject(conf, "payload", mb_dtype_name(a.payload));
    cJSON_AddNumberToObject(conf, "skew", a.skew);
    cJSON_AddNumberToObject(conf, "budget_s", a.budget_s);
    cJSON_AddNumberToObject(conf, "repeat", a.repeat);
    cJSON_AddNumberToObject(conf, "seed", (double)a.seed);
    cJSON_AddStringToObject(conf, "slow", a.slow_kind == BD_SLOW_HOG ? "hog" : "threads");
    cJSON *cj = cJSON_AddObjectToObject(root, "ceilings");
    cJSON_AddNumberToObject(cj, "threads", ceil.n_threads);
    cJSON_AddNumberToObject(cj, "read_gbs", ceil.read_gbs);
    cJSON_AddNumberToObject(cj, "fma_gflops", ceil.fma_gflops);
    cJSON_AddStringToObject(cj, "isa", ceil.isa);
    cJSON_AddItemToObject(root, "runs", runs);
    cJSON_AddItemToObject(root, "goals", goals);

    printf("bench_dispatch: %u layer(s) of Qwen3-30B-A3B experts (128 x top-8, d_model 2048, d_ff 768, bf16), "
           "%s payload;\nprefill %u tokens in chunks of %u, %u decode steps; stream slice %u, batch capacity %u\n"
           "ceilings (2 threads): read %.1f GB/s, FMA %.0f GFLOP/s (%s)\n\n",
           a.layers, mb_dtype_name(a.payload), a.prefill_tokens, a.chunk, a.decode_steps, a.stream_slice,
           a.batch_capacity, ceil.read_gbs, ceil.fma_gflops, ceil.isa);
    printf("%-7s %-8s %15s %13s %11s %-30s %11s %6s %6s %8s %8s %7s %7s %8s %8s\n", "scen.", "mode", "pre calls w0/w1",
           "pre MiB sent", "MiB recv", "prefill s", "compute s", "coordCPU", "d.call", "d.MiB tx", "d.MiB rx", "med ms", "mean ms",
           "auto c", "max|d|");

    static bd_scenario sc[4];
    const double w_even[2] = {1, 1}, w_split[2] = {3, 1}, w_one[1] = {1};
    const uint32_t t_one[2] = {1, 1}, t_fast[2] = {2, 1}, t_inproc[1] = {2};
    int rc = 0, first_cpu, last_cpu;
    mb_bench_cpu_range(&first_cpu, &last_cpu);
    for (int k = 0; k < 4 && rc == 0; k++) {
        bd_setup *s = &sc[k].setup;
        int only_batched = 0;
        mb_status st = MB_STATUS_OK;
        if (k == 0 && a.even) {
            s->name = "even", s->note = "two workers, 1 thread each, experts 1:1";
            st = bd_setup_open(model, s, 2, w_even, t_one, 0, err, sizeof err);
        } else if (k == 1 && a.split) {
            s->name = "split", s->note = "placement weights 3:1";
            st = bd_setup_open(model, s, 2, w_split, t_one, 0, err, sizeof err);
            only_batched = 1;
        } else if (k == 2 && a.slow && a.slow_kind == BD_SLOW_THREADS) {
            s->name = "slow", s->note = "w0 2 threads, w1 1 thread, on 2 shared cores";
            st = bd_setup_open(model, s, 2, w_even, t_fast, 0, err, sizeof err);
        } else if (k == 2 && a.slow) {
            s->name = "slow", s->note = "w0 alone on one core; w1 pinned beside a spinning CPU hog";
            st = bd_setup_open(model, s, 2, w_even, t_one, 0, err, sizeof err);
            if (st == MB_STATUS_OK) {
                int pinned = mb_bench_pin_process(s->links[0].pid, first_cpu) == 0 &&
                             mb_bench_pin_process(s->links[1].pid, last_cpu) == 0;
                s->hog = mb_bench_hog_start(last_cpu);
                if (!pinned || s->hog <= 0) fprintf(stderr, "bench_dispatch: warning: pinning or hog failed\n");
            }
        } else if (k == 3 && a.inproc) {
            s->name = "inproc", s->note = "every expert in-process, 2 threads: no IPC";
            st = bd_setup_open(model, s, 1, w_one, t_inproc, 1, err, sizeof err);
            only_batched = 1;
        } else {
            continue;
        }
        fprintf(stderr, "[%6.1f s] %s: experts loaded\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0, s->name);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "bench_dispatch: %s: %s\n", s->name, err);
            rc = 1;
            break;
        }
        rc = bd_run_scenario(&a, &sc[k], &r, only_batched, runs);
        bd_setup_close(s);
    }
    printf("\n* extrapolated linearly from the measured prefix (in brackets) past the %.0f s budget.\n"
           "prefill figures: means over %u repeat(s).\n"
           "compute s: prefill expert compute the workers report; coordCPU: CPU seconds of the dispatching\n"
           "thread in prefill (in-process: includes its share of the expert compute); med/mean ms: decode step time (all layers);\n"
           "modes run interleaved chunk by chunk and step by step on the same workers; auto c: slice auto would pick now for a %u-token chunk;\n"
           "max|d|: largest difference of the last prefill chunk's sums from the scenario's batched run\n"
           "(expert sums are added in a different order when slices differ).\n", a.budget_s, a.repeat, a.chunk);
    for (int k = 0; k < 4; k++)
        if (sc[k].setup.name) printf("%-7s %s\n", sc[k].setup.name, sc[k].setup.note);

    if (rc == 0) {
        const bd_scenario *ev = &sc[0];
        if (ev->ran[MB_IPC_MODE_STREAM] && ev->ran[MB_IPC_MODE_BATCHED]) {
            double red = 1 - bd_calls(&ev->res[MB_IPC_MODE_BATCHED], 0, 2) / bd_calls(&ev->res[MB_IPC_MODE_STREAM], 0, 2);
            printf("\nprefill calls, batched vs stream: %.2f%% fewer (goal >= 95%%): %s\n", red * 100,
                   red >= 0.95 ? "met" : "NOT met");
            bd_goal(goals, "prefill_calls_reduction_batched_vs_stream", red, ">= 0.95", red >= 0.95);
        }
        const bd_scenario *bs[2];
        int nb = 0;
        for (int k = 0; k < 2; k++)
            if (sc[k].ran[MB_IPC_MODE_BATCHED]) bs[nb++] = &sc[k];
        if (nb) bd_goal_bytes(bs, nb, goals);
        printf("\n");
        bd_goal_auto(&a, &sc[0], goals);
        bd_goal_auto(&a, &sc[2], goals);
        /* Ceilings: decode must read the 8 routed experts' weights per layer
         * and step; prefill must do 6 d_model d_ff flops per pair. */
        double floor_dec_ms = a.layers * 8.0 * (double)mb_expert_bytes(&cfg) / (ceil.read_gbs * 1e9) * 1e3;
        double floor_pre_s = a.layers * (double)a.prefill_tokens * cfg.top_k * 6.0 * cfg.d_model * cfg.d_ff_expert /
                             (ceil.fma_gflops * 1e9);
        printf("\nceilings: decode weight-read floor %.3f ms/step, prefill FMA floor %.2f s\n", floor_dec_ms,
               floor_pre_s);
        for (int k = 0; k < 4; k++) {
            if (!sc[k].ran[MB_IPC_MODE_BATCHED] || k == 1) continue;
            const bd_result *b = &sc[k].res[MB_IPC_MODE_BATCHED];
            printf("  %-7s batched: prefill at %.0f%% of the FMA ceiling, decode at %.0f%% of the read ceiling\n",
                   sc[k].setup.name, 100 * floor_pre_s / bd_prefill_s(b), 100 * floor_dec_ms / b->decode_median_ms);
        }
        cJSON_AddNumberToObject(cj, "decode_floor_ms_per_step", floor_dec_ms);
        cJSON_AddNumberToObject(cj, "prefill_floor_s", floor_pre_s);
    }
    char *text = cJSON_Print(root);
    printf("\n");
    if (!text || mb_bench_emit_json(text, a.json_path, "bench_dispatch") != 0) rc = 1;
    free(text);
    cJSON_Delete(root);
    mb_bench_routing_free(&r);
    mb_synthetic_destroy(model);
    return rc;
}
