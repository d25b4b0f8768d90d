/* Benchmark of the CPU expert backend through the public backend interface
 * (payload decode, grouping, FFN kernels, encode): Qwen3-30B-A3B and
 * Mixtral-8x7B expert shapes in decode and prefill, each reported with its
 * ratio to the read bandwidth (decode: weights streamed) and to the peak FMA
 * throughput (prefill) measured in the same run. Prints a table, and JSON
 * with --json FILE.
 *
 *   bench_expert_cpu [--quick] [--threads N] [--json FILE] [--model qwen|mixtral|all]
 *                    [--decode 1,4,16] [--prefill 512,4248] [--reps N]
 * Defaults: decode 1,4,16; prefill 512 and 4248 (Qwen) or 512 (Mixtral);
 * --quick: fewer repetitions, smaller ceiling buffers, prefill 128.
 *                    [--payload bf16|f16|f32] [--numa default|bind|interleave] [--node N]
 *                    [--isa auto|avx512|avx2|scalar]
 *                    [--weights bf16|q8_0|q4_0|q4_k|q5_k|q6_k] [--qpath auto|dots|tiles]
 * --qpath: how quantized experts compute (kernels/cpu/expert_ffn.h): each
 * expert's choice by type and pairs (auto), integer dots against 8-bit
 * activations, or f32 GEMM tiles over dequantized weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_rand.h"

#include "backends/backend.h"
#include "bench/ceiling.h"
#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/gemm.h"
#include "protocol/dtype.h"

typedef struct {
    const char *name;
    uint32_t d_model, d_ff, n_experts, top_k;
    uint32_t prefill[2]; /* default prefill token counts (0: none) */
} mb_model_shape;

static const mb_model_shape mb_models[] = {
    {"qwen3-30b-a3b", 2048, 768, 128, 8, {512, 4248}},
    {"mixtral-8x7b", 4096, 14336, 8, 2, {512, 0}},
};

typedef struct {
    const char *model;
    const char *phase;
    uint32_t n_tokens;
    uint32_t n_pairs;
    double best_s, median_s;
    double weight_bytes; /* distinct experts touched per call, averaged */
    double gbs, gflops, bw_ratio, fma_ratio;
    /* Median over calls of the call's rate divided by its ceiling measured
     * right after it (read bandwidth for decode, FMA for prefill): robust
     * to the machine's bandwidth drifting during the run. */
    double paired_ratio;
    /* Decode: GB/s over the best read bandwidth seen anywhere in the run
     * (the ceiling at the start and every probe): a ceiling measured while
     * neighbours loaded the machine cannot inflate it. */
    double best_read_ratio;
    double cold_median_s; /* decode: median first call after an idle probe */
} mb_result;

typedef struct {
    int quick, threads, reps, node;
    int qpath; /* MB_KCPU_QPATH_* */
    const char *json, *model, *isa;
    mb_dtype payload;
    mb_numa_policy numa;
    uint32_t decode[8], n_decode;
    uint32_t prefill[8], n_prefill;
    int prefill_default; /* use each model's own prefill sizes */
} mb_opts;

static unsigned long long mb_rng = 0x9E3779B97F4A7C15ull;

static uint64_t mb_rand(void)
{
    return mb_bench_rand(&mb_rng);
}

static float mb_randf(void)
{
    return mb_bench_randf(&mb_rng);
}

static uint32_t mb_parse_list(const char *s, uint32_t *out, uint32_t cap)
{
    uint32_t n = 0;
    while (*s && n < cap) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s) break;
        if (v > 0 && v <= 65536) out[n++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Expert weight type (--weights): bf16, f16, or a quantized type. */
static mb_dtype mb_bench_wdtype = MB_DTYPE_BF16;

/* Bytes per weight element of mb_bench_wdtype (fractional when quantized). */
static double mb_bench_elem_bytes(void)
{
    return (double)mb_dtype_block_bytes(mb_bench_wdtype) / mb_dtype_block_elems(mb_bench_wdtype);
}

static void mb_usage(void)
{
    fprintf(
        stderr,
        "usage: bench_expert_cpu [--quick] [--threads N] [--json FILE] [--model qwen|mixtral|all]\n"
        "  [--decode 1,4,16] [--prefill 512,4248] [--reps N] [--payload bf16|f16|f32]\n"
        "  [--weights bf16|q8_0|q4_0|q4_k|q5_k|q6_k] [--qpath auto|dots|tiles]\n"
        "  [--numa default|bind|interleave] [--node N] [--isa auto|avx512|avx2|scalar]\n");
    exit(2);
}

static void mb_parse_opts(int argc, char **argv, mb_opts *o)
{
    memset(o, 0, sizeof *o);
    o->node = -1;
    o->model = "all";
    o->isa = "auto";
    o->payload = MB_DTYPE_BF16;
    int decode_set = 0, prefill_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick"))
            o->quick = 1;
        else if (!strcmp(a, "--threads") && v)
            o->threads = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && v)
            o->reps = atoi(argv[++i]);
        else if (!strcmp(a, "--node") && v)
            o->node = atoi(argv[++i]);
        else if (!strcmp(a, "--json") && v)
            o->json = argv[++i];
        else if (!strcmp(a, "--model") && v)
            o->model = argv[++i];
        else if (!strcmp(a, "--isa") && v)
            o->isa = argv[++i];
        else if (!strcmp(a, "--qpath") && v) {
            const char *q = argv[++i];
            if (!strcmp(q, "auto"))
                o->qpath = MB_KCPU_QPATH_AUTO;
            else if (!strcmp(q, "dots"))
                o->qpath = MB_KCPU_QPATH_DOTS;
            else if (!strcmp(q, "tiles"))
                o->qpath = MB_KCPU_QPATH_TILES;
            else
                mb_usage();
        }
        else if (!strcmp(a, "--weights") && v) {
            const char *name = argv[++i];
            int found = 0;
            for (int d = 0; d < MB_DTYPE_COUNT_ && !found; d++)
                if (!strcmp(name, mb_dtype_name(d)) && (d == MB_DTYPE_BF16 || mb_dtype_is_quant(d))) {
                    mb_bench_wdtype = (mb_dtype)d;
                    found = 1;
                }
            if (!found) mb_usage();
        } else if (!strcmp(a, "--payload") && v) {
            if (mb_dtype_parse(argv[++i], &o->payload) != MB_STATUS_OK) mb_usage();
        } else if (!strcmp(a, "--numa") && v) {
            const char *p = argv[++i];
            o->numa = !strcmp(p, "bind")         ? MB_NUMA_BIND
                      : !strcmp(p, "interleave") ? MB_NUMA_INTERLEAVE
                                                 : MB_NUMA_DEFAULT;
        } else if (!strcmp(a, "--decode") && v) {
            o->n_decode = mb_parse_list(argv[++i], o->decode, 8);
            decode_set = 1;
        } else if (!strcmp(a, "--prefill") && v) {
            o->n_prefill = mb_parse_list(argv[++i], o->prefill, 8);
            prefill_set = 1;
        } else
            mb_usage();
    }
    if (!decode_set) {
        o->decode[0] = 1, o->decode[1] = 4, o->decode[2] = 16;
        o->n_decode = 3;
    }
    if (!prefill_set && o->quick) {
        o->prefill[0] = 128;
        o->n_prefill = 1;
    }
    o->prefill_default = !prefill_set && !o->quick;
}

/* A request with random top-k routing over the layer's experts. */
/* The highest read bandwidth measured in this run (ceiling and probes). */
static double mb_read_best_gbs;

typedef struct {
    mb_proto_expert_req req;
    uint16_t *counts;
    mb_proto_pair *pairs;
    void *act;
    double weight_bytes;
} mb_bench_req;

static int mb_req_make(mb_bench_req *r, const mb_model_shape *m, uint32_t n_tokens,
                       mb_dtype payload)
{
    uint32_t n_pairs = n_tokens * m->top_k;
    size_t n_act = (size_t)n_tokens * m->d_model;
    r->counts = malloc(sizeof *r->counts * n_tokens);
    r->pairs = malloc(sizeof *r->pairs * n_pairs);
    r->act = malloc(n_act * mb_dtype_size(payload));
    float *tmp = malloc(sizeof(float) * n_act);
    uint8_t *used = calloc(m->n_experts, 1);
    if (!r->counts || !r->pairs || !r->act || !tmp || !used) return -1;
    for (size_t i = 0; i < n_act; i++)
        tmp[i] = mb_randf();
    mb_dtype_encode_f32(payload, r->act, tmp, n_act);
    uint32_t q = 0, distinct = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        r->counts[t] = (uint16_t)m->top_k;
        uint8_t pick[256] = {0};
        for (uint32_t i = 0; i < m->top_k; i++) {
            uint32_t e;
            do
                e = (uint32_t)(mb_rand() % m->n_experts);
            while (pick[e]);
            pick[e] = 1;
            if (!used[e]) distinct++;
            used[e] = 1;
            r->pairs[q++] = (mb_proto_pair){e, 1.0f / (float)m->top_k};
        }
    }
    r->weight_bytes = (double)distinct * 3.0 * m->d_model * m->d_ff * mb_bench_elem_bytes();
    r->req = (mb_proto_expert_req){0,       n_tokens,  m->d_model, payload,
                                   n_pairs, r->counts, r->pairs,   r->act};
    free(tmp);
    free(used);
    return 0;
}

static void mb_req_free(mb_bench_req *r)
{
    free(r->counts);
    free(r->pairs);
    free(r->act);
}

static int mb_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs one case: n_reqs different routings, reps calls in all. */
static int mb_run_case(mb_backend *b, const mb_model_shape *m, const char *phase, uint32_t n_tokens,
                       int reps, const mb_opts *o, const mb_bench_ceilings *c,
                       mb_bench_reader *probe, mb_result *res)
{
    enum { N_REQS = 8 };
    int n_reqs = reps < N_REQS ? reps : N_REQS;
    mb_bench_req reqs[N_REQS];
    memset(reqs, 0, sizeof reqs);
    size_t out_bytes = (size_t)n_tokens * m->d_model * mb_dtype_size(o->payload);
    void *out = malloc(out_bytes);
    double *times = calloc((size_t)reps, sizeof *times);
    double *paired = calloc((size_t)reps, sizeof *paired);
    double *cold = calloc((size_t)reps, sizeof *cold);
    const int is_decode = strcmp(phase, "decode") == 0;
    int rc = -1;
    if (!out || !times || !paired || !cold) goto done;
    for (int i = 0; i < n_reqs; i++)
        if (mb_req_make(&reqs[i], m, n_tokens, o->payload) != 0) goto done;
    /* Warm-up: grows the backend's scratch. */
    if (mb_backend_run(b, &reqs[0].req, out, NULL) != MB_STATUS_OK) goto done;
    /* Decode: windows of MB_WINDOW calls back to back (the pool's workers
     * stay awake, as within one forward pass), each after a probe of the
     * read ceiling; the first call after the probe is timed apart as the
     * "cold" call (workers may have gone to sleep). Prefill: one call, then
     * an FMA probe. */
    enum { MB_WINDOW = 4 };
    const int per_window = is_decode ? MB_WINDOW : 1;
    const int n_windows = (reps + per_window - 1) / per_window;
    double bytes = 0;
    int r = 0;
    for (int wi = 0; wi < n_windows; wi++) {
        double ceil = 0;
        if (is_decode && probe) {
            ceil = mb_bench_reader_gbs(probe);
            if (ceil > mb_read_best_gbs) mb_read_best_gbs = ceil;
            double t0 = mb_bench_now();
            mb_status st = mb_backend_run(b, &reqs[(size_t)wi % (size_t)n_reqs].req, out, NULL);
            cold[wi] = mb_bench_now() - t0;
            if (st != MB_STATUS_OK) goto fail;
        }
        double win_bytes = 0, win_s = 0;
        for (int j = 0; j < per_window && r < reps; j++, r++) {
            const mb_bench_req *q = &reqs[r % n_reqs];
            double t0 = mb_bench_now();
            mb_status st = mb_backend_run(b, &q->req, out, NULL);
            times[r] = mb_bench_now() - t0;
            if (st != MB_STATUS_OK) goto fail;
            bytes += q->weight_bytes;
            win_bytes += q->weight_bytes;
            win_s += times[r];
        }
        if (!is_decode) {
            ceil = mb_bench_fma_gflops(c->n_threads, 0.05);
            double gf = 2.0 * 3.0 * m->d_model * m->d_ff * n_tokens * m->top_k / win_s * 1e-9;
            paired[wi] = ceil > 0 ? gf / ceil : 0;
        } else {
            paired[wi] = ceil > 0 ? win_bytes / win_s * 1e-9 / ceil : 0;
        }
    }
    qsort(paired, (size_t)n_windows, sizeof *paired, mb_cmp_double);
    res->paired_ratio = paired[n_windows / 2];
    if (is_decode && probe) {
        qsort(cold, (size_t)n_windows, sizeof *cold, mb_cmp_double);
        res->cold_median_s = cold[n_windows / 2];
    }
    qsort(times, (size_t)reps, sizeof *times, mb_cmp_double);
    res->model = m->name;
    res->phase = phase;
    res->n_tokens = n_tokens;
    res->n_pairs = n_tokens * m->top_k;
    res->best_s = times[0];
    res->median_s = times[reps / 2];
    res->weight_bytes = bytes / reps;
    res->gbs = res->weight_bytes / res->best_s * 1e-9;
    res->gflops = 2.0 * 3.0 * m->d_model * m->d_ff * res->n_pairs / res->best_s * 1e-9;
    res->bw_ratio = c->read_gbs > 0 ? res->gbs / c->read_gbs : 0;
    res->fma_ratio = c->fma_gflops > 0 ? res->gflops / c->fma_gflops : 0;
    rc = 0;
done:
    for (int i = 0; i < n_reqs; i++)
        mb_req_free(&reqs[i]);
    free(out);
    free(times);
    free(paired);
    free(cold);
    return rc;
fail:
    fprintf(stderr, "run failed\n");
    goto done;
}

/* Loads one layer: every slot gets a copy of the same random expert (the
 * backend copies, so slots are distinct memory). */
static int mb_load_layer_quant(mb_backend *b, const mb_model_shape *m)
{
    const size_t be = mb_dtype_block_elems(mb_bench_wdtype), bb = mb_dtype_block_bytes(mb_bench_wdtype);
    const size_t bytes = (size_t)m->d_model * m->d_ff / be * bb;
    unsigned char *w[3];
    for (int i = 0; i < 3; i++) {
        if (!(w[i] = malloc(bytes))) return -1;
        for (size_t j = 0; j < bytes; j++)
            w[i][j] = (unsigned char)(mb_randf() * 127.0f);
        /* Small f16 scales (2^-10) in every block so values stay sane. */
        for (size_t blk = 0; blk < bytes / bb; blk++) {
            const uint16_t d = 0x1400;
            memcpy(w[i] + blk * bb + (mb_bench_wdtype == MB_DTYPE_Q6_K ? 208 : 0), &d, 2);
        }
    }
    int rc = 0;
    for (uint32_t e = 0; e < m->n_experts && rc == 0; e++) {
        const mb_dtype wd = mb_bench_wdtype;
        mb_expert_weights ew = {0, e, e, m->d_model, m->d_ff, {wd, wd, wd}, w[0], w[1], w[2]};
        mb_status st = mb_backend_load_expert(b, &ew);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "load_expert: %s\n", mb_status_str(st));
            rc = -1;
        }
    }
    for (int i = 0; i < 3; i++)
        free(w[i]);
    return rc;
}

static int mb_load_layer(mb_backend *b, const mb_model_shape *m)
{
    if (mb_dtype_is_quant(mb_bench_wdtype)) return mb_load_layer_quant(b, m);
    size_t n = (size_t)m->d_model * m->d_ff;
    uint16_t *w[3];
    float *tmp = malloc(sizeof(float) * 4096);
    if (!tmp) return -1;
    for (int i = 0; i < 3; i++) {
        w[i] = malloc(n * 2);
        if (!w[i]) return -1;
        float scale = 1.0f / sqrtf((float)(i == 2 ? m->d_ff : m->d_model));
        for (size_t j = 0; j < n; j += 4096) {
            size_t len = n - j < 4096 ? n - j : 4096;
            for (size_t q = 0; q < len; q++)
                tmp[q] = mb_randf() * scale;
            mb_dtype_encode_f32(MB_DTYPE_BF16, w[i] + j, tmp, len);
        }
    }
    int rc = 0;
    for (uint32_t e = 0; e < m->n_experts && rc == 0; e++) {
        const mb_dtype wd = MB_DTYPE_BF16;
        mb_expert_weights ew = {0, e, e, m->d_model, m->d_ff, {wd, wd, wd}, w[0], w[1], w[2]};
        mb_status st = mb_backend_load_expert(b, &ew);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "load_expert: %s\n", mb_status_str(st));
            rc = -1;
        }
    }
    for (int i = 0; i < 3; i++)
        free(w[i]);
    free(tmp);
    return rc;
}

/* Decode rows again, against the best read bandwidth of the whole run. */
static void mb_print_summary(const mb_result *res, int n)
{
    printf("\nbest read bandwidth in this run (start ceiling and probes): %.1f GB/s\n",
           mb_read_best_gbs);
    printf("%-14s %-8s %6s %10s %9s %9s %10s %8s\n", "model", "phase", "tokens", "best_ms", "GB/s",
           "%readBW", "%bestRead", "%paired");
    for (int i = 0; i < n; i++) {
        const mb_result *r = &res[i];
        if (strcmp(r->phase, "decode") != 0) continue;
        printf("%-14s %-8s %6u %10.3f %9.1f %9.1f %10.1f %8.1f\n", r->model, r->phase, r->n_tokens,
               r->best_s * 1e3, r->gbs, r->bw_ratio * 100, r->best_read_ratio * 100,
               r->paired_ratio * 100);
    }
}

static void mb_print_row(const mb_result *r)
{
    printf("%-14s %-8s %6u %6u %10.3f %10.3f %9.3f %9.1f %8.1f %9.1f %8.1f %8.1f\n", r->model,
           r->phase, r->n_tokens, r->n_pairs, r->best_s * 1e3, r->median_s * 1e3,
           r->cold_median_s * 1e3, r->gbs, r->bw_ratio * 100, r->gflops, r->fma_ratio * 100,
           r->paired_ratio * 100);
    fflush(stdout);
}

static const char *mb_qpath_name(int q)
{
    return q == MB_KCPU_QPATH_DOTS ? "dots" : q == MB_KCPU_QPATH_TILES ? "tiles" : "auto";
}

static void mb_write_json(const char *path, const mb_opts *o, const mb_bench_ceilings *c,
                          const char *device, const mb_result *res, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return;
    }
    fprintf(f, "{\n  \"bench\": \"expert_cpu\",\n  \"device\": \"%s\",\n  \"isa\": \"%s\",\n",
            device, mb_kcpu_isa_name());
    fprintf(f, "  \"payload\": \"%s\",\n  \"weights\": \"%s\",\n  \"qpath\": \"%s\",\n",
            mb_dtype_name(o->payload), mb_dtype_name(mb_bench_wdtype), mb_qpath_name(o->qpath));
    fprintf(f,
            "  \"ceilings\": {\"threads\": %d, \"read_gbs\": %.3f, \"memcpy_gbs\": %.3f, "
            "\"fma_gflops\": %.3f, "
            "\"fma_gflops_thread\": %.3f, \"read_best_gbs\": %.3f},\n",
            c->n_threads, c->read_gbs, c->memcpy_gbs, c->fma_gflops, c->fma_gflops_thread,
            mb_read_best_gbs);
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < n; i++) {
        const mb_result *r = &res[i];
        fprintf(f,
                "    {\"model\": \"%s\", \"phase\": \"%s\", \"tokens\": %u, \"pairs\": %u, "
                "\"best_ms\": %.4f, "
                "\"median_ms\": %.4f, \"weight_bytes\": %.0f, \"gbs\": %.3f, \"gflops\": %.3f, "
                "\"read_bw_ratio\": %.4f, \"best_read_ratio\": %.4f, \"fma_ratio\": %.4f, "
                "\"paired_ratio\": %.4f, "
                "\"cold_median_ms\": %.4f}%s\n",
                r->model, r->phase, r->n_tokens, r->n_pairs, r->best_s * 1e3, r->median_s * 1e3,
                r->weight_bytes, r->gbs, r->gflops, r->bw_ratio, r->best_read_ratio, r->fma_ratio,
                r->paired_ratio,
                r->cold_median_s * 1e3, i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
}

int main(int argc, char **argv)
{
    mb_opts o;
    mb_parse_opts(argc, argv, &o);
    if (mb_kcpu_force_isa(o.isa) != 0) {
        fprintf(stderr, "isa %s not available\n", o.isa);
        return 1;
    }
    mb_kcpu_moe_force_qpath(o.qpath);
    const mb_backend_ops *ops = mb_backend_find("cpu");
    mb_backend_cpu_options cpu_opt = {.n_threads = o.threads, .numa = o.numa};
    mb_backend_config cfg = {.device = o.node, .max_slots = 256, .options = &cpu_opt};
    mb_backend *b = NULL;
    mb_status st = mb_backend_open(ops, &cfg, &b);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "open: %s\n", mb_status_str(st));
        return 1;
    }
    mb_backend_caps caps;
    mb_backend_caps_get(b, &caps);
    mb_bench_ceilings c;
    mb_bench_ceilings_measure((int)caps.n_threads, o.quick, &c);
    mb_read_best_gbs = c.read_gbs;
    /* 256 MiB: far past the caches, a few ms per probe. */
    mb_bench_reader *probe = mb_bench_reader_create((int)caps.n_threads, 256u << 20);
    printf("device: %s\n", caps.device);
    printf("ceilings (%d threads, %s): read %.1f GB/s, memcpy %.1f GB/s, FMA %.1f GFLOP/s (%.1f "
           "per thread)\n",
           c.n_threads, c.isa, c.read_gbs, c.memcpy_gbs, c.fma_gflops, c.fma_gflops_thread);
    printf("payload %s, weights %s", mb_dtype_name(o.payload), mb_dtype_name(mb_bench_wdtype));
    if (mb_dtype_is_quant(mb_bench_wdtype)) printf(", quantized experts by %s", mb_qpath_name(o.qpath));
    printf("\n\n");
    printf("%-14s %-8s %6s %6s %10s %10s %9s %9s %8s %9s %8s %8s\n", "model", "phase", "tokens",
           "pairs", "best_ms", "median_ms", "cold_ms", "GB/s", "%readBW", "GFLOP/s", "%FMA",
           "%paired");

    mb_result res[64];
    int n_res = 0, rc = 0;
    for (size_t mi = 0; mi < sizeof mb_models / sizeof mb_models[0]; mi++) {
        const mb_model_shape *m = &mb_models[mi];
        if (strcmp(o.model, "all") != 0 && strncmp(m->name, o.model, strlen(o.model)) != 0)
            continue;
        /* A fresh backend per model so the other model's weights are freed. */
        if (n_res > 0) {
            mb_backend_close(b);
            b = NULL;
            if (mb_backend_open(ops, &cfg, &b) != MB_STATUS_OK) return 1;
        }
        if (mb_load_layer(b, m) != 0) {
            rc = 1;
            break;
        }
        for (uint32_t i = 0; i < o.n_decode && n_res < 64; i++) {
            int reps = o.reps ? o.reps : (o.quick ? 10 : 40);
            if (mb_run_case(b, m, "decode", o.decode[i], reps, &o, &c, probe, &res[n_res]) == 0)
                mb_print_row(&res[n_res++]);
            else
                rc = 1;
        }
        const uint32_t *pf = o.prefill_default ? m->prefill : o.prefill;
        uint32_t n_pf = o.prefill_default ? 2 : o.n_prefill;
        for (uint32_t i = 0; i < n_pf && pf[i] && n_res < 64; i++) {
            int reps = o.reps ? (o.reps < 3 ? o.reps : 3) : (o.quick ? 1 : 3);
            if (mb_run_case(b, m, "prefill", pf[i], reps, &o, &c, probe, &res[n_res]) == 0)
                mb_print_row(&res[n_res++]);
            else
                rc = 1;
        }
    }
    printf(
        "\ndecode: GB/s = expert weight bytes touched per call / best time; goal >= 70%% of read "
        "BW.\n"
        "prefill: GFLOP/s = 6 * d_model * d_ff * pairs / best time; goal >= 50%% of peak FMA.\n");
    for (int i = 0; i < n_res; i++)
        res[i].best_read_ratio = mb_read_best_gbs > 0 ? res[i].gbs / mb_read_best_gbs : 0;
    mb_print_summary(res, n_res);
    if (o.json) mb_write_json(o.json, &o, &c, caps.device, res, n_res);
    mb_backend_close(b);
    return rc;
}
