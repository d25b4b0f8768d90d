/* Layer dispatch benchmark: one or a few layers of Qwen3-30B-A3B expert
 * shapes (128 experts, top-8, d_model 2048, d_ff 768) with random routing,
 * served by two CPU workers over shared memory, in stream, batched and auto
 * mode: a 4248-token prefill in forward-sized chunks and 128 decode steps.
 * It reports calls, payload each way and time per mode, payload per token
 * per backend under an even and a 3:1 placement, the same with one worker
 * made slow, an in-process run as the no-IPC reference, and the machine's
 * read-bandwidth and FMA ceilings measured in the same run. This file runs
 * the scenarios; dispatch_report.c prints and judges them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/ceiling.h"
#include "bench/dispatch_report.h"
#include "bench/moe_bench.h"
#include "bench/timing.h"
#include "broker/dispatch.h"
#include "broker/link.h"
#include "broker/placement.h"
#include "broker/session.h"
#include "broker/stats.h"
#include "broker/synthetic.h"

/* ---- backends ---- */

static void bd_setup_close(bd_setup *s)
{
    mb_bench_hog_stop(s->hog);
    s->hog = 0;
    mb_placement_free(&s->pl);
    for (uint32_t i = 0; i < s->n_links; i++)
        mb_link_close(&s->links[i]);
}

/* Starts n_links CPU workers over shm (or one in-process backend when
 * inproc), places every expert by the weights and loads them. */
static mb_status bd_setup_open(const mb_model *m, bd_setup *s, uint32_t n_links,
                               const double *weight, const uint32_t *threads, int inproc, char *err,
                               size_t err_cap)
{
    const mb_model_config *c = &m->cfg;
    mb_status st = MB_STATUS_OK;
    for (uint32_t i = 0; i < n_links; i++) {
        mb_link_spec spec = {.backend = "cpu",
                             .device = -1,
                             .threads = threads[i],
                             .weight = weight[i],
                             .max_slots = c->n_layers * c->n_experts};
        s->threads[i] = threads[i];
        st = inproc ? mb_link_open_inproc(&spec, (int)i, &s->links[i], err, err_cap)
                    : mb_link_spawn(&spec, MB_LINK_SPAWNED_SHM, (int)i, 20000000000LL, &s->links[i],
                                    err, err_cap);
        if (st != MB_STATUS_OK) goto fail;
        s->n_links++;
    }
    st = mb_placement_plan(c, s->links, s->n_links, inproc ? 0 : -1, inproc ? c->n_experts : 0, 0,
                           &s->pl, err, err_cap);
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
        for (uint32_t e = 0; e < c->n_experts; e++)
            s->experts[i] += mb_placement_at(&s->pl, 0, e)->link == i;
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
    float *out;             /* [chunk][d_model] */
    uint32_t n_chunks;      /* prefill chunks it runs: fewer once past the budget */
    uint64_t pre_ns;        /* all repeats */
    uint64_t first_ns;      /* the first repeat */
    uint64_t cpu_ns;        /* this thread's CPU time in prefill, all repeats */
    mb_bench_samples steps; /* decode step times */
} bd_lane;

static uint64_t bd_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Runs every layer for tokens [tok, tok + n) through one lane. */
static mb_status bd_lane_step(bd_lane *ln, const mb_bench_routing *r, uint32_t layers, uint32_t tok,
                              uint32_t n)
{
    mb_status st = MB_STATUS_OK;
    for (uint32_t l = 0; l < layers && st == MB_STATUS_OK; l++) {
        size_t at = ((size_t)l * r->n_total + tok) * r->top_k;
        mb_moe_work w = {.layer = l,
                         .n_tokens = n,
                         .top_k = r->top_k,
                         .decode = n == 1,
                         .expert_ids = r->ids + at,
                         .gate = r->gate + at,
                         .x = r->x + (size_t)tok * r->d_model,
                         .out = ln->out};
        st = mb_dispatch_moe(ln->d, &w);
    }
    return st;
}

/* Runs modes[0..n_modes) on the same workers, interleaved chunk by chunk in
 * prefill and step by step in decode (the first mode to go rotating), so
 * load from other users of the machine falls on every mode alike. A mode
 * whose prefill time passes the budget stops there; its figures are then
 * extrapolated. modes[0] is the reference the others' sums are compared to. */
static mb_status bd_run_modes(const bd_args *a, bd_setup *s, const mb_bench_routing *r,
                              const mb_ipc_mode *modes, uint32_t n_modes, bd_result *res, char *err,
                              size_t err_cap)
{
    bd_lane lanes[BD_MODES];
    memset(lanes, 0, sizeof lanes);
    const char *names[BD_MAX_LINKS];
    for (uint32_t i = 0; i < s->n_links; i++)
        names[i] = s->links[i].name;
    const size_t D = r->d_model;
    mb_status st = MB_STATUS_OK;
    uint32_t j = 0;
    for (j = 0; j < n_modes && st == MB_STATUS_OK; j++) {
        memset(&res[j], 0, sizeof res[j]);
        res[j].mode = modes[j];
        res[j].max_diff = -1;
        lanes[j].out = aligned_alloc(64, ((size_t)a->chunk * D * sizeof(float) + 63) & ~(size_t)63);
        st = lanes[j].out ? mb_stats_create(s->n_links, names, a->layers, 0, &lanes[j].stats)
                          : MB_STATUS_NOMEM;
        mb_dispatch_config dc = {.links = s->links,
                                 .n_links = s->n_links,
                                 .placement = &s->pl,
                                 .mode = modes[j],
                                 .batch_capacity = a->batch_capacity,
                                 .stream_slice = a->stream_slice,
                                 .payload = a->payload,
                                 .d_model = r->d_model,
                                 .top_k = r->top_k,
                                 .max_tokens = a->chunk,
                                 .timeout_ns = 300000000000LL,
                                 .stats = lanes[j].stats};
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
    for (j = 0; j < n_modes; j++)
        lanes[j].n_chunks = n_chunks;
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
                if (a->budget_s > 0 && (double)lanes[j].pre_ns * 1e-9 > a->budget_s)
                    lanes[j].n_chunks = c + 1;
            }
        }
    }
    /* The last chunk's sums (last layer): equal across modes up to the order
     * a worker adds its experts in? */
    for (j = 0; j < n_modes; j++) {
        if (lanes[j].n_chunks != n_chunks || lanes[0].n_chunks != n_chunks) continue;
        double md = 0;
        for (size_t i = 0; i < (size_t)n * D; i++)
            md = fmax(md, fabs((double)lanes[j].out[i] - lanes[0].out[i]));
        res[j].max_diff = md;
    }
    for (uint32_t step = 0; step < a->decode_steps; step++) {
        for (uint32_t k = 0; k < n_modes; k++) {
            j = (k + step) % n_modes;
            int64_t t0 = mb_bench_now_ns();
            if ((st = bd_lane_step(&lanes[j], r, a->layers, a->prefill_tokens + step, 1)) !=
                MB_STATUS_OK)
                goto fail;
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

/* ---- the run ---- */

static void bd_usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_dispatch [--layers N] [--prefill-tokens N] [--decode-steps N] [--chunk N]\n"
        "       [--batch-capacity N] [--stream-slice N] [--payload f32|f16|bf16] [--skew S] "
        "[--seed S]\n"
        "       [--budget SECONDS] [--modes stream,batched,auto] [--scenarios "
        "even,split,slow,inproc]\n"
        "       [--slow hog|threads] [--repeat R] [--no-ceilings] [--quick] [--json FILE]\n"
        "defaults: 1 layer, 4248 prefill tokens in chunks of 512, 128 decode steps, f32 payload,\n"
        "budget 180 s per mode's prefill (past it the rest is extrapolated, marked *), all modes\n"
        "and scenarios; --repeat R runs the prefill R times and reports means (the budget applies "
        "to\n"
        "the first). --quick: 512 prefill tokens, 16 decode steps, budget 30 s.\n");
}

static int bd_parse_args(int argc, char **argv, bd_args *a)
{
    *a = (bd_args){.layers = 1,
                   .prefill_tokens = 4248,
                   .decode_steps = 128,
                   .chunk = 512,
                   .batch_capacity = 1024,
                   .stream_slice = 4,
                   .repeat = 1,
                   .budget_s = 180,
                   .seed = 42,
                   .payload = MB_DTYPE_F32,
                   .mode_on = {1, 1, 1},
                   .even = 1,
                   .split = 1,
                   .slow = 1,
                   .inproc = 1};
    int given_pre = 0, given_dec = 0, given_budget = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(k, "--quick") == 0 || strcmp(k, "--no-ceilings") == 0) {
            if (k[2] == 'q')
                a->quick = 1;
            else
                a->no_ceilings = 1;
            continue;
        }
        if (strcmp(k, "-h") == 0 || strcmp(k, "--help") == 0) {
            bd_usage(stdout);
            exit(0);
        }
        if (!v)
            ok = 0;
        else if (strcmp(k, "--layers") == 0)
            ok = !mb_bench_parse_u32(v, 1, 64, &a->layers);
        else if (strcmp(k, "--prefill-tokens") == 0)
            ok = !mb_bench_parse_u32(v, 1, 1 << 20, &a->prefill_tokens), given_pre = 1;
        else if (strcmp(k, "--decode-steps") == 0)
            ok = !mb_bench_parse_u32(v, 0, 1 << 20, &a->decode_steps), given_dec = 1;
        else if (strcmp(k, "--repeat") == 0)
            ok = !mb_bench_parse_u32(v, 1, 100, &a->repeat);
        else if (strcmp(k, "--chunk") == 0)
            ok = !mb_bench_parse_u32(v, 1, 65536, &a->chunk);
        else if (strcmp(k, "--batch-capacity") == 0)
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->batch_capacity);
        else if (strcmp(k, "--stream-slice") == 0)
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->stream_slice);
        else if (strcmp(k, "--payload") == 0)
            ok = mb_dtype_parse(v, &a->payload) == MB_STATUS_OK;
        else if (strcmp(k, "--skew") == 0)
            a->skew = atof(v), ok = a->skew >= 0;
        else if (strcmp(k, "--seed") == 0)
            a->seed = strtoull(v, NULL, 10);
        else if (strcmp(k, "--budget") == 0)
            a->budget_s = atof(v), ok = a->budget_s >= 0, given_budget = 1;
        else if (strcmp(k, "--json") == 0)
            a->json_path = v;
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
        } else
            ok = 0;
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

/* Runs the enabled modes on an opened setup, interleaved, batched first
 * (the reference for the comparison of sums). */
static int bd_run_scenario(const bd_args *a, bd_scenario *sc, const mb_bench_routing *r,
                           int only_batched, cJSON *runs)
{
    static const mb_ipc_mode order[] = {MB_IPC_MODE_BATCHED, MB_IPC_MODE_STREAM, MB_IPC_MODE_AUTO};
    mb_ipc_mode modes[BD_MODES];
    bd_result res[BD_MODES];
    uint32_t n = 0;
    for (int i = 0; i < BD_MODES; i++)
        if (a->mode_on[order[i]] && (!only_batched || order[i] == MB_IPC_MODE_BATCHED))
            modes[n++] = order[i];
    char err[512];
    fprintf(stderr, "[%6.1f s] %s: running %u mode(s)\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0,
            sc->setup.name, n);
    if (n == 0) return 0;
    if (bd_run_modes(a, &sc->setup, r, modes, n, res, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_dispatch: %s: %s\n", sc->setup.name, err);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        sc->res[modes[i]] = res[i];
        sc->ran[modes[i]] = 1;
        mb_bench_dispatch_print_row(a, &sc->setup, &res[i]);
        cJSON_AddItemToArray(runs, mb_bench_dispatch_result_json(a, &sc->setup, &res[i]));
    }
    fflush(stdout);
    return 0;
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
    fprintf(
        stderr,
        "bench_dispatch: %u layer(s) x 128 experts = %.2f GiB of bf16 experts (held twice: the\n"
        "coordinator's memfd and the workers' copies)\n",
        a.layers, expert_gib);
    double avail_gib = (double)mb_bench_mem_available() / (1u << 30);
    if (avail_gib > 0 && 2 * expert_gib + 1.0 > avail_gib) {
        fprintf(stderr,
                "bench_dispatch: needs about %.1f GiB, %.1f GiB available: use fewer --layers\n",
                2 * expert_gib + 1.0, avail_gib);
        return 1;
    }

    mb_bench_ceilings ceil = {.n_threads = 2, .isa = "not measured"};
    if (!a.no_ceilings) mb_bench_ceilings_measure(2, a.quick, &ceil);
    fprintf(stderr, "[%6.1f s] ceilings %s\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0,
            a.no_ceilings ? "skipped" : "measured");
    mb_bench_routing r;
    mb_model *model = NULL;
    char err[512];
    if (mb_bench_routing_make(&r, a.layers, a.prefill_tokens + a.decode_steps, cfg.n_experts,
                              cfg.top_k, cfg.d_model, a.skew, a.seed) != MB_STATUS_OK ||
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

    printf("bench_dispatch: %u layer(s) of Qwen3-30B-A3B experts (128 x top-8, d_model 2048, d_ff "
           "768, bf16), "
           "%s payload;\nprefill %u tokens in chunks of %u, %u decode steps; stream slice %u, "
           "batch capacity %u\n"
           "ceilings (2 threads): read %.1f GB/s, FMA %.0f GFLOP/s (%s)\n\n",
           a.layers, mb_dtype_name(a.payload), a.prefill_tokens, a.chunk, a.decode_steps,
           a.stream_slice, a.batch_capacity, ceil.read_gbs, ceil.fma_gflops, ceil.isa);
    printf("%-7s %-8s %15s %13s %11s %-30s %11s %6s %6s %8s %8s %7s %7s %8s %8s\n", "scen.", "mode",
           "pre calls w0/w1", "pre MiB sent", "MiB recv", "prefill s", "compute s", "coordCPU",
           "d.call", "d.MiB tx", "d.MiB rx", "med ms", "mean ms", "auto c", "max|d|");

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
                if (!pinned || s->hog <= 0)
                    fprintf(stderr, "bench_dispatch: warning: pinning or hog failed\n");
            }
        } else if (k == 3 && a.inproc) {
            s->name = "inproc", s->note = "every expert in-process, 2 threads: no IPC";
            st = bd_setup_open(model, s, 1, w_one, t_inproc, 1, err, sizeof err);
            only_batched = 1;
        } else {
            continue;
        }
        fprintf(stderr, "[%6.1f s] %s: experts loaded\n", (double)mb_bench_now_ns() * 1e-9 - bd_t0,
                s->name);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "bench_dispatch: %s: %s\n", s->name, err);
            rc = 1;
            break;
        }
        rc = bd_run_scenario(&a, &sc[k], &r, only_batched, runs);
        bd_setup_close(s);
    }
    printf(
        "\n* extrapolated linearly from the measured prefix (in brackets) past the %.0f s budget.\n"
        "prefill figures: means over %u repeat(s).\n"
        "compute s: prefill expert compute the workers report; coordCPU: CPU seconds of the "
        "dispatching\n"
        "thread in prefill (in-process: includes its share of the expert compute); med/mean ms: "
        "decode step time (all layers);\n"
        "modes run interleaved chunk by chunk and step by step on the same workers; auto c: slice "
        "auto would pick now for a %u-token chunk;\n"
        "max|d|: largest difference of the last prefill chunk's sums from the scenario's batched "
        "run\n"
        "(expert sums are added in a different order when slices differ).\n",
        a.budget_s, a.repeat, a.chunk);
    for (int k = 0; k < 4; k++)
        if (sc[k].setup.name) printf("%-7s %s\n", sc[k].setup.name, sc[k].setup.note);

    if (rc == 0) mb_bench_dispatch_goals(&a, sc, goals);
    if (rc == 0 && !a.no_ceilings) mb_bench_dispatch_ceilings(&a, &cfg, &ceil, sc, cj);
    char *text = cJSON_Print(root);
    printf("\n");
    if (!text || mb_bench_emit_json(text, a.json_path, "bench_dispatch") != 0) rc = 1;
    free(text);
    cJSON_Delete(root);
    mb_bench_routing_free(&r);
    mb_model_destroy(model);
    return rc;
}
