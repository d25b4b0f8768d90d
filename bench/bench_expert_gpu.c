/* Benchmark of the CUDA expert FFN on Qwen3-30B-A3B (d_model 2048, d_ff 768,
 * 128 experts, top-8) and Mixtral-8x7B (4096, 14336, 8 experts, top-2)
 * shapes with random bf16 weights and bf16 payloads, at three depths:
 *   kernel: kernels/cuda/moe.h alone, inputs already on the device, timed
 *           with events between requests queued back to back behind a spin
 *           kernel (device time, not launch latency), for each path (AUTO,
 *           GEMV, GEMM);
 *   backend: mb_backend_run in this process (pinned staging, H2D, the
 *           kernels, D2H, completion), host clock;
 *   worker: one EXPERT_REQ round trip to a spawned moe-worker over shared
 *           memory (decode sizes), host clock.
 * Ceilings measured in the same run on the same device (gpu_ceiling.h):
 *   copy: cudaMemcpy device to device of 1 GiB. Reported as bytes copied/s
 *         and as traffic (2 x bytes/s, every byte read and written); decode
 *         ratios use the traffic figure, since a kernel streaming weights
 *         only reads and HBM's bandwidth is shared by reads and writes.
 *   gemm: cuBLAS bf16 GEMM, f32 compute, per model at M=4096, N=1536,
 *         K=2048 (Qwen) and M=4096, N=14336, K=4096 (Mixtral).
 * Decode: GB/s = median over requests of the bytes of the distinct experts
 * it routes to / its time; goal >= 80% of copy traffic at 1 token. Prefill: TFLOP/s = 6 *
 * pairs * d_model * d_ff / median time; goal >= 65% of cuBLAS. Worker
 * round trip: goal <= 1.5x the kernel time at 1 token. Routing: top-k
 * distinct experts per token, uniform, seeded. Exits 77 without a device.
 *
 *   bench_expert_gpu [--backend cuda[:N]|vulkan[:N]] [--json FILE] [--budget SECONDS]
 *                    [--models qwen3,mixtral] [--decode 1,4,16,64]
 *                    [--prefill 512,4096,16384] [--no-worker] [--register-host]
 *                    [--weights bf16,q8_0,q4_k,q6_k]
 * --weights (default bf16) adds cases with quantized experts (random
 * blocks, all three matrices of the type): kernel-only ones in the device
 * layout, whose decode GB/s and share of copy traffic count the quantized
 * bytes of the distinct experts routed to, and the backend depth with the
 * blocks loaded as a GGUF file holds them (so --backend vulkan times the
 * Vulkan backend's quantized kernels against CUDA's). The worker depth and
 * the phase split run with bf16 weights only; the goals are bf16's.
 * The budget (default 90 s) is shared out among the cases; a case runs at
 * least 5 repetitions, and a path whose smaller size already overran its
 * share skips the larger ones. The time outside the GEMMs (routing,
 * combine) is split out at the smallest decode size from phase marks.
 * --backend vulkan[:N] also runs the backend and worker depths on that
 * Vulkan device, each row with its throughput relative to the CUDA
 * backend's at the same depth and size (goal >= 0.8 at 1 and 4096 tokens);
 * kernel-only cases are CUDA's. --register-host registers the backend
 * depth's activations and outputs with the backend (mb_backend_register_host,
 * as a worker registers its shared segment), so a backend that can import
 * host memory (Vulkan with VK_EXT_external_memory_host, from 256 KiB of
 * activations; MB_VULKAN_HOST_IMPORT=0 turns it off) reads and writes them
 * in place instead of copying them through staging. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "bench/expert_gpu_report.h"
#include "bench/expert_gpu_route.h"
#include "bench/expert_gpu_weights.h"
#include "bench/gpu_ceiling.h"
#include "bench/gpu_device.h"
#include "bench/moe_bench.h"
#include "bench/timing.h"
#include "bench/worker_rtt.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/moe.h"
#include "protocol/dtype.h"

static const mb_egpu_model eg_models[] = {
    {"qwen3", "qwen3-30b-a3b", 2048, 768, 128, 8, 4096, 1536, 2048},
    {"mixtral", "mixtral-8x7b", 4096, 14336, 8, 2, 4096, 14336, 4096},
};
#define MB_EGPU_N_MODELS 2
#define EG_MAX_SIZES 8
#define EG_N_ROUTES 8    /* distinct routings a case cycles through */
#define EG_BATCH 32      /* requests queued behind one spin */
#define EG_MAX_REPS 400

typedef struct {
    int device;        /* the CUDA device (kernel, backend and worker cases) */
    char other[16];    /* "vulkan": also measured at the backend and worker depths, beside CUDA */
    int other_device;
    const char *json;
    double budget_s;
    int model_on[MB_EGPU_N_MODELS];
    uint32_t decode[EG_MAX_SIZES], n_decode;
    uint32_t prefill[EG_MAX_SIZES], n_prefill;
    int worker;
    int register_host; /* register the backend depth's activations and outputs */
    int weights[4], n_weights; /* MB_KCUDA_* of the weight types to run */
} eg_opts;

static const char *const eg_path_name[] = {"auto", "gemv", "gemm", "cublas"};
#define EG_N_PATHS 4

/* Kernel time of model m at n_tokens by AUTO, for the ratios; 0 if none. */
static double eg_kernel_auto_s(const mb_egpu_run *run, const mb_egpu_model *m, const char *weights,
                               uint32_t n_tokens)
{
    for (int i = 0; i < run->n_k; i++)
        if (run->k[i].m == m && run->k[i].n_tokens == n_tokens && !strcmp(run->k[i].path, "auto") &&
            !strcmp(run->k[i].weights, weights))
            return run->k[i].median_s;
    return 0;
}

static int eg_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- weights ---- */

/* One expert's bf16 gate | up | down, random, scaled like a trained layer;
 * a 4 MiB random block tiled over it keeps the setup fast. */
static uint16_t *eg_expert_make(const mb_egpu_model *m)
{
    const size_t n = (size_t)3 * m->d_model * m->d_ff, block = (size_t)2 << 20;
    uint16_t *w = malloc(n * 2);
    float *tmp = malloc(block * sizeof *tmp);
    if (!w || !tmp) {
        free(w);
        free(tmp);
        return NULL;
    }
    const float scale = 1.0f / sqrtf((float)m->d_model);
    for (size_t i = 0; i < block; i++)
        tmp[i] = ((float)(mb_egpu_rand() >> 40) * 0x1p-23f - 1.0f) * scale;
    for (size_t i = 0; i < n; i += block)
        mb_dtype_encode_f32(MB_DTYPE_BF16, w + i, tmp, n - i < block ? n - i : block);
    free(tmp);
    return w;
}

/* Page-aligned memory (whole pages), so that it can be registered with a
 * backend whole; free() releases it. */
static void *eg_page_alloc(size_t bytes)
{
    return aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
}

/* Random bf16 activations for up to n_tokens. */
static uint16_t *eg_act_make(uint32_t n_tokens, uint32_t d_model)
{
    const size_t n = (size_t)n_tokens * d_model;
    uint16_t *a = eg_page_alloc(n * 2);
    float *tmp = malloc(4096 * sizeof *tmp);
    if (!a || !tmp) {
        free(a);
        free(tmp);
        return NULL;
    }
    for (size_t i = 0; i < 4096; i++)
        tmp[i] = (float)(mb_egpu_rand() >> 40) * 0x1p-23f - 1.0f;
    for (size_t i = 0; i < n; i += 4096)
        mb_dtype_encode_f32(MB_DTYPE_BF16, a + i, tmp, n - i < 4096 ? n - i : 4096);
    free(tmp);
    return a;
}

/* ---- kernel only ---- */

/* Device state of one model's kernel runs with one weight type. */
typedef struct {
    const mb_egpu_model *m;
    const mb_egpu_weights *w;
    void *stream;
    mb_kcuda_moe_ws *ws;
    mb_gpu_marks *marks; /* [EG_BATCH + 1] */
    mb_kcuda_expert *slots_host; /* [n_experts] */
    void *d_weights, *d_slots, *d_act, *d_out;
} eg_kdev;

static int eg_check(int err, const char *what)
{
    if (err) fprintf(stderr, "bench_expert_gpu: %s: %s\n", what, mb_kcuda_error_str(err));
    return err;
}

static void eg_kdev_fini(eg_kdev *d)
{
    if (d->stream) mb_gpu_stream_sync(d->stream);
    mb_kcuda_moe_ws_destroy(d->ws);
    mb_gpu_marks_destroy(d->marks);
    mb_gpu_stream_destroy(d->stream);
    mb_gpu_free(d->d_weights);
    mb_gpu_free(d->d_slots);
    mb_gpu_free(d->d_act);
    mb_gpu_free(d->d_out);
    free(d->slots_host);
    memset(d, 0, sizeof *d);
}

/* Uploads every expert slot (copies of w), the slot table and act. */
static int eg_kdev_init(eg_kdev *d, const mb_egpu_model *m, const mb_egpu_weights *w, const uint16_t *act,
                        uint32_t max_tokens)
{
    memset(d, 0, sizeof *d);
    d->m = m;
    d->w = w;
    const size_t eb = w->span;
    const size_t act_bytes = (size_t)max_tokens * m->d_model * 2;
    mb_kcuda_expert *slots = calloc(m->n_experts, sizeof *slots);
    int e = slots ? 0 : 2 /* cudaErrorMemoryAllocation */;
    d->slots_host = slots; /* kept for the cuBLAS path's host plan */
    if (!e) e = eg_check(mb_gpu_stream_create(&d->stream), "stream");
    if (!e) e = eg_check(mb_kcuda_moe_ws_create(m->n_experts, &d->ws), "workspace");
    if (!e) e = eg_check(mb_gpu_marks_create(EG_BATCH + 1, &d->marks), "events");
    if (!e) e = eg_check(mb_gpu_alloc(&d->d_weights, eb * m->n_experts), "weights");
    for (uint32_t x = 0; !e && x < m->n_experts; x++) {
        char *base = (char *)d->d_weights + eb * x;
        slots[x] = (mb_kcuda_expert){base + w->off[0], base + w->off[1], base + w->off[2]};
        e = eg_check(mb_gpu_upload(base, w->host, eb), "weight upload");
    }
    if (!e) e = eg_check(mb_gpu_alloc(&d->d_slots, sizeof *slots * m->n_experts), "slots");
    if (!e) e = eg_check(mb_gpu_upload(d->d_slots, slots, sizeof *slots * m->n_experts), "slots");
    if (!e) e = eg_check(mb_gpu_alloc(&d->d_act, act_bytes), "activations");
    if (!e) e = eg_check(mb_gpu_upload(d->d_act, act, act_bytes), "activations");
    if (!e) e = eg_check(mb_gpu_alloc(&d->d_out, act_bytes), "output");
    if (e) eg_kdev_fini(d);
    return e;
}

/* Times the kernels of n_tokens on path, cycling through the routings:
 * a first request alone (*t1_s), then reps in batches queued behind a spin
 * kernel. Returns 0 or a CUDA error code. */
static int eg_kernel_case(eg_kdev *d, const mb_egpu_route *routes, mb_kcuda_path path, double budget_s,
                          mb_egpu_kres *res, double *t1_s)
{
    const mb_egpu_model *m = d->m;
    const uint32_t n_tokens = routes[0].n_tokens;
    mb_kcuda_moe_problem p[EG_N_ROUTES];
    int e = 0;
    for (int r = 0; r < EG_N_ROUTES && !e; r++) {
        p[r] = (mb_kcuda_moe_problem){
            .n_tokens = n_tokens, .n_pairs = routes[r].n_pairs, .d_model = m->d_model,
            .d_ff = m->d_ff, .max_slots = m->n_experts, .layer_experts = m->n_experts,
            .payload = MB_KCUDA_BF16, .wdtype = d->w->wdtype, .wdtype_up = d->w->wdtype,
            .wdtype_down = d->w->wdtype, .path = path,
            .slots = d->d_slots, .act = d->d_act, .pair_counts = routes[r].d_counts,
            .pairs = routes[r].d_pairs, .out = d->d_out, .plan_experts = routes[r].plan_n,
            .plan_slot = routes[r].plan_slot, .plan_count = routes[r].plan_count, .plan_dev = routes[r].d_plan,
            .slots_host = d->slots_host};
        e = eg_check(mb_kcuda_moe_ws_reserve(d->ws, &p[r]), "workspace reserve");
    }
    /* The first request, timed alone (it also warms the device up). */
    if (!e) e = mb_gpu_marks_record(d->marks, 0, d->stream);
    if (!e) e = eg_check(mb_kcuda_moe_enqueue(d->ws, &p[0], d->stream), "enqueue");
    if (!e) e = mb_gpu_marks_record(d->marks, 1, d->stream);
    if (!e) e = eg_check(mb_gpu_stream_sync(d->stream), "first request");
    if (!e) e = mb_gpu_marks_elapsed_s(d->marks, 0, 1, t1_s);
    if (e) return e;
    int reps = (int)(budget_s / (*t1_s > 1e-6 ? *t1_s : 1e-6));
    reps = reps < 5 ? 5 : reps > EG_MAX_REPS ? EG_MAX_REPS : reps;
    /* Per request: its time and its weight stream rate (the routings touch
     * different numbers of distinct experts). */
    double *times = malloc(sizeof *times * (size_t)reps), bytes = 0;
    double *rates = malloc(sizeof *rates * (size_t)reps);
    if (!times || !rates) {
        free(times);
        free(rates);
        return 2;
    }
    const double eb = (double)d->w->bytes; /* quantized bytes for quantized weights */
    for (int done = 0; done < reps && !e;) {
        const int nb = reps - done < EG_BATCH ? reps - done : EG_BATCH;
        /* Short requests: hold the stream until the batch is queued. */
        if (*t1_s < 5e-4) e = mb_gpu_spin(d->stream, 50.0 + 40.0 * nb);
        if (!e) e = mb_gpu_marks_record(d->marks, 0, d->stream);
        for (int j = 0; j < nb && !e; j++) {
            e = mb_kcuda_moe_enqueue(d->ws, &p[(done + j) % EG_N_ROUTES], d->stream);
            if (!e) e = mb_gpu_marks_record(d->marks, (size_t)j + 1, d->stream);
        }
        if (!e) e = mb_gpu_stream_sync(d->stream);
        for (int j = 0; j < nb && !e; j++) {
            e = mb_gpu_marks_elapsed_s(d->marks, (size_t)j, (size_t)j + 1, &times[done + j]);
            const double b = routes[(done + j) % EG_N_ROUTES].n_distinct * eb;
            bytes += b;
            rates[done + j] = b / times[done + j];
        }
        done += nb;
    }
    if (!e) {
        res->reps = reps;
        res->weight_bytes = bytes / reps;
        qsort(times, (size_t)reps, sizeof *times, eg_cmp_double);
        res->best_s = times[0];
        res->median_s = times[reps / 2];
        res->n_tokens = n_tokens;
        res->n_pairs = routes[0].n_pairs;
        res->path = eg_path_name[path];
        res->weights = d->w->name;
        res->taken = eg_path_name[mb_kcuda_moe_path(&p[0])];
        qsort(rates, (size_t)reps, sizeof *rates, eg_cmp_double);
        res->gbs = rates[reps / 2] * 1e-9;
        res->tflops = 6.0 * res->n_pairs * m->d_model * m->d_ff / res->median_s * 1e-12;
    }
    eg_check(e, "timed requests");
    free(times);
    free(rates);
    return e;
}

/* Splits AUTO's request at n_tokens into routing bookkeeping (route and
 * convert), expert GEMMs/GEMVs, and the combine, from events inside the
 * request: reps queued back to back behind a spin kernel, medians. */
#define EG_PHASE_REPS 64
static int eg_phase_split(eg_kdev *d, const mb_egpu_route *routes, double out_us[3])
{
    const mb_egpu_model *m = d->m;
    mb_gpu_marks *mk = NULL;
    int e = eg_check(mb_gpu_marks_create(4 * EG_PHASE_REPS, &mk), "events");
    double t[3][EG_PHASE_REPS];
    for (int r = 0; r < EG_PHASE_REPS && !e; r++) {
        const mb_egpu_route *ro = &routes[r % EG_N_ROUTES];
        mb_kcuda_moe_problem p = {
            .n_tokens = ro->n_tokens, .n_pairs = ro->n_pairs, .d_model = m->d_model, .d_ff = m->d_ff,
            .max_slots = m->n_experts, .layer_experts = m->n_experts, .payload = MB_KCUDA_BF16,
            .wdtype = d->w->wdtype, .wdtype_up = d->w->wdtype, .wdtype_down = d->w->wdtype,
            .path = MB_KCUDA_PATH_AUTO, .slots = d->d_slots, .act = d->d_act,
            .pair_counts = ro->d_counts, .pairs = ro->d_pairs, .out = d->d_out, .plan_experts = ro->plan_n,
            .plan_slot = ro->plan_slot, .plan_count = ro->plan_count, .plan_dev = ro->d_plan,
            .slots_host = d->slots_host,
            .phase_marks = {mb_gpu_marks_event(mk, 4 * (size_t)r + 1), mb_gpu_marks_event(mk, 4 * (size_t)r + 2)}};
        if (r == 0) e = mb_gpu_spin(d->stream, 60.0 * EG_PHASE_REPS);
        if (!e) e = mb_gpu_marks_record(mk, 4 * (size_t)r, d->stream);
        if (!e) e = eg_check(mb_kcuda_moe_enqueue(d->ws, &p, d->stream), "enqueue");
        if (!e) e = mb_gpu_marks_record(mk, 4 * (size_t)r + 3, d->stream);
    }
    if (!e) e = mb_gpu_stream_sync(d->stream);
    for (int r = 0; r < EG_PHASE_REPS && !e; r++)
        for (int k = 0; k < 3 && !e; k++)
            e = mb_gpu_marks_elapsed_s(mk, 4 * (size_t)r + k, 4 * (size_t)r + k + 1, &t[k][r]);
    for (int k = 0; k < 3 && !e; k++) {
        qsort(t[k], EG_PHASE_REPS, sizeof t[k][0], eg_cmp_double);
        out_us[k] = t[k][EG_PHASE_REPS / 2] * 1e6;
    }
    mb_gpu_marks_destroy(mk);
    return e;
}

/* ---- backend and worker (host clock) ---- */

/* Sizes of one model's run and their routings. */
typedef struct {
    uint32_t tokens[2 * EG_MAX_SIZES];
    int is_decode[2 * EG_MAX_SIZES];
    mb_egpu_route routes[2 * EG_MAX_SIZES][EG_N_ROUTES];
    int n;
} eg_sizes;

static void eg_req_of(const mb_egpu_model *m, const mb_egpu_route *r, const uint16_t *act,
                      mb_proto_expert_req *req)
{
    *req = (mb_proto_expert_req){0, r->n_tokens, m->d_model, MB_DTYPE_BF16, r->n_pairs,
                                 r->counts, r->pairs, act};
}

/* Fills a host-side result from samples (sorted here). */
static void eg_hres_fill(mb_egpu_hres *h, const mb_egpu_model *m, const char *what,
                         const char *weights, uint32_t n_tokens, double *s, double *compute,
                         int reps, const mb_egpu_run *run)
{
    qsort(s, (size_t)reps, sizeof *s, eg_cmp_double);
    h->m = m;
    h->what = what;
    h->weights = weights;
    h->n_tokens = n_tokens;
    h->reps = reps;
    h->median_s = s[reps / 2];
    h->p99_s = s[(int)((reps - 1) * 0.99)];
    if (compute) {
        qsort(compute, (size_t)reps, sizeof *compute, eg_cmp_double);
        h->compute_s = compute[reps / 2];
    }
    h->kernel_s = eg_kernel_auto_s(run, m, weights, n_tokens);
    h->ratio = h->kernel_s > 0 ? h->median_s / h->kernel_s : 0;
}

/* For another backend's row: vs_cuda = the CUDA row of the same model,
 * weights, depth and size, median time over this row's (its relative
 * throughput). */
static void eg_vs_cuda(mb_egpu_hres *h, const mb_egpu_run *run, const char *cuda_what)
{
    h->vs_cuda = 0;
    if (!strcmp(h->what, cuda_what)) return;
    for (int i = 0; i < run->n_h; i++) {
        const mb_egpu_hres *c = &run->h[i];
        if (c->m == h->m && c->n_tokens == h->n_tokens && !strcmp(c->what, cuda_what) &&
            !strcmp(c->weights, h->weights) && h->median_s > 0)
            h->vs_cuda = c->median_s / h->median_s;
    }
}

/* mb_backend_run of every size in this process, on backend:device, every
 * expert holding w's matrices (loaded as a checkpoint's). */
static int eg_backend_cases(const eg_opts *o, const char *backend, int device, const char *what,
                            const mb_egpu_model *m, const mb_egpu_weights *w, const uint16_t *act,
                            const eg_sizes *sz, uint32_t max_tokens, double budget_s,
                            mb_egpu_run *run)
{
    const mb_backend_ops *ops = mb_backend_find(backend);
    if (!ops) {
        fprintf(stderr, "bench_expert_gpu: this build has no %s backend\n", backend);
        return -1;
    }
    const size_t io_bytes = (size_t)max_tokens * m->d_model * 2;
    const mb_backend_gpu_options gpu = {
        .staging_bytes = (uint64_t)max_tokens * (m->d_model * 2 + m->top_k * 8 + 2) + (4u << 20),
        .max_inflight = 2,
        .progress = 0};
    mb_backend_config cfg = {.device = device, .max_slots = m->n_experts, .options = &gpu};
    mb_backend *b = NULL;
    mb_status st = mb_backend_open(ops, &cfg, &b);
    if (st == MB_STATUS_OK)
        st = mb_backend_reserve_layer(b, 0, 0, m->n_experts, m->d_model, m->d_ff,
                                      (mb_dtype)w->wdtype);
    for (uint32_t x = 0; x < m->n_experts && st == MB_STATUS_OK; x++) {
        const mb_dtype wd = (mb_dtype)w->wdtype;
        const char *raw = (const char *)w->raw;
        mb_expert_weights ew = {0,
                                x,
                                x,
                                m->d_model,
                                m->d_ff,
                                {wd, wd, wd},
                                raw + w->raw_off[0],
                                raw + w->raw_off[1],
                                raw + w->raw_off[2]};
        st = mb_backend_load_expert(b, &ew);
    }
    if (st == MB_STATUS_OK) st = mb_backend_load_finish(b);
    void *out = eg_page_alloc(io_bytes);
    double *s = malloc(sizeof *s * EG_MAX_REPS), *c = malloc(sizeof *c * EG_MAX_REPS);
    if (!out || !s || !c) st = MB_STATUS_NOMEM;
    int reg_act = 0, reg_out = 0;
    if (st == MB_STATUS_OK && o->register_host) {
        reg_act = mb_backend_register_host(b, (void *)act, io_bytes) == MB_STATUS_OK;
        reg_out = mb_backend_register_host(b, out, io_bytes) == MB_STATUS_OK;
        printf("%s: activations and outputs registered with the backend: %s\n", what,
               reg_act && reg_out ? "yes" : "declined");
    }
    for (int i = 0; i < sz->n && st == MB_STATUS_OK && run->n_h < 64; i++) {
        mb_proto_expert_req req[EG_N_ROUTES];
        for (int r = 0; r < EG_N_ROUTES; r++)
            eg_req_of(m, &sz->routes[i][r], act, &req[r]);
        int64_t t0 = mb_bench_now_ns();
        st = mb_backend_run(b, &req[0], out, NULL); /* warm-up: grows staging */
        double t1 = (double)(mb_bench_now_ns() - t0) * 1e-9;
        int reps = (int)(budget_s / (t1 > 1e-6 ? t1 : 1e-6));
        reps = reps < 5 ? 5 : reps > EG_MAX_REPS ? EG_MAX_REPS : reps;
        for (int r = 0; r < reps && st == MB_STATUS_OK; r++) {
            uint64_t ns = 0;
            t0 = mb_bench_now_ns();
            st = mb_backend_run(b, &req[r % EG_N_ROUTES], out, &ns);
            s[r] = (double)(mb_bench_now_ns() - t0) * 1e-9;
            c[r] = (double)ns * 1e-9;
        }
        if (st != MB_STATUS_OK) break;
        eg_hres_fill(&run->h[run->n_h], m, what, w->name, sz->tokens[i], s, c, reps, run);
        eg_vs_cuda(&run->h[run->n_h], run, "backend");
        mb_egpu_print_host(&run->h[run->n_h++]);
    }
    if (st != MB_STATUS_OK) fprintf(stderr, "bench_expert_gpu: %s: %s\n", what, mb_status_str(st));
    if (reg_act) mb_backend_unregister_host(b, (void *)act);
    if (reg_out) mb_backend_unregister_host(b, out);
    free(out);
    free(s);
    free(c);
    if (b) mb_backend_close(b);
    return st == MB_STATUS_OK ? 0 : -1;
}

/* EXPERT_REQ round trips to a spawned worker at the decode sizes. */
static int eg_worker_cases(const char *backend, int device, const char *what, const mb_egpu_model *m,
                           const uint16_t *expert, const uint16_t *act, const eg_sizes *sz, double budget_s,
                           mb_egpu_run *run)
{
    const size_t per = (size_t)m->d_model * m->d_ff;
    char err[256];
    mb_bench_worker w;
    mb_status st = mb_bench_worker_start(&w, backend, device, 0, m->n_experts, m->d_model, m->d_ff,
                                         expert, expert + per, expert + 2 * per, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "bench_expert_gpu: worker: %s\n", err);
        return -1;
    }
    double *s = malloc(sizeof *s * EG_MAX_REPS), *c = malloc(sizeof *c * EG_MAX_REPS);
    if (!s || !c) st = MB_STATUS_NOMEM;
    for (int i = 0; i < sz->n && st == MB_STATUS_OK && run->n_h < 64; i++) {
        if (!sz->is_decode[i]) continue;
        mb_proto_expert_req req[EG_N_ROUTES];
        for (int r = 0; r < EG_N_ROUTES; r++)
            eg_req_of(m, &sz->routes[i][r], act, &req[r]);
        int64_t ns = 0;
        uint64_t compute_ns = 0;
        for (int r = 0; r < 3 && st == MB_STATUS_OK; r++) /* warm-up */
            st = mb_bench_worker_rtt(&w, &req[r], &ns, &compute_ns);
        double t1 = (double)ns * 1e-9;
        int reps = (int)(budget_s / (t1 > 1e-6 ? t1 : 1e-6));
        reps = reps < 20 ? 20 : reps > EG_MAX_REPS ? EG_MAX_REPS : reps;
        for (int r = 0; r < reps && st == MB_STATUS_OK; r++) {
            st = mb_bench_worker_rtt(&w, &req[r % EG_N_ROUTES], &ns, &compute_ns);
            s[r] = (double)ns * 1e-9;
            c[r] = (double)compute_ns * 1e-9;
        }
        if (st != MB_STATUS_OK) break;
        eg_hres_fill(&run->h[run->n_h], m, what, "bf16", sz->tokens[i], s, c, reps, run);
        eg_vs_cuda(&run->h[run->n_h], run, "worker");
        mb_egpu_print_host(&run->h[run->n_h++]);
    }
    if (st != MB_STATUS_OK) fprintf(stderr, "bench_expert_gpu: %s: %s\n", what, mb_status_str(st));
    free(s);
    free(c);
    mb_bench_worker_stop(&w);
    return st == MB_STATUS_OK ? 0 : -1;
}

/* ---- one model ---- */

/* Kernel-only cases of every size and path on d's weights; with phases,
 * also the split of AUTO's smallest decode request. 0 or -1. */
static int eg_kernel_cases(eg_kdev *d, const eg_sizes *sz, int mi, double case_budget_s, int phases,
                           mb_egpu_run *run)
{
    const mb_egpu_model *m = d->m;
    int rc = 0;
    /* Per path: the first-request time and size of the last case run,
     * to skip sizes that would overrun the case's share of the budget. */
    double last_t1[EG_N_PATHS] = {0};
    uint32_t last_n[EG_N_PATHS] = {1, 1, 1, 1};
    for (int i = 0; i < sz->n && rc == 0; i++)
        for (int p = 0; p < EG_N_PATHS && rc == 0 && run->n_k < MB_EGPU_MAX_KERNEL_CASES; p++) {
            double est = last_t1[p] * sz->tokens[i] / last_n[p];
            if (est > 2 * case_budget_s) {
                printf("%-14s %-7s %6u %7s %-4s skipped: about %.2f s a request, over its "
                       "budget\n",
                       m->name, sz->is_decode[i] ? "decode" : "prefill", sz->tokens[i], "",
                       eg_path_name[p], est);
                continue;
            }
            mb_egpu_kres *k = &run->k[run->n_k];
            memset(k, 0, sizeof *k);
            k->m = m;
            k->phase = sz->is_decode[i] ? "decode" : "prefill";
            double t1 = 0;
            if (eg_kernel_case(d, sz->routes[i], (mb_kcuda_path)p, case_budget_s, k, &t1)) {
                rc = -1;
                break;
            }
            last_t1[p] = t1;
            last_n[p] = sz->tokens[i];
            k->copy_ratio = run->copy_gbs > 0 ? k->gbs / (2 * run->copy_gbs) : 0;
            k->gemm_ratio =
                run->gemm_tflops[mi] > 0 ? k->tflops / run->gemm_tflops[mi] : 0;
            mb_egpu_print_kernel(k);
            run->n_k++;
        }
    /* Time outside the GEMMs at the smallest decode size. */
    for (int i = 0; i < sz->n && rc == 0 && phases; i++) {
        if (!sz->is_decode[i]) continue;
        double us[3];
        if (eg_phase_split(d, sz->routes[i], us) == 0) {
            const double all = us[0] + us[1] + us[2];
            printf("%-14s phases at %u token(s), auto: routing %.1f us, expert GEMMs %.1f us, combine "
                   "%.1f us: outside the GEMMs %.1f%% of %.1f us (goal <= 20%%)\n",
                   m->name, sz->tokens[i], us[0], us[1], us[2], all > 0 ? 100.0 * (us[0] + us[2]) / all : 0,
                   all);
            run->phase_us[mi][0] = us[0];
            run->phase_us[mi][1] = us[1];
            run->phase_us[mi][2] = us[2];
            run->phase_tokens[mi] = sz->tokens[i];
        }
        break;
    }
    return rc;
}


static int eg_model_run(const eg_opts *o, int mi, double case_budget_s, mb_egpu_run *run)
{
    const mb_egpu_model *m = &eg_models[mi];
    eg_sizes *sz = calloc(1, sizeof *sz);
    if (!sz) return -1;
    uint32_t max_tokens = 1;
    for (uint32_t i = 0; i < o->n_decode + o->n_prefill; i++) {
        int dec = i < o->n_decode;
        sz->tokens[sz->n] = dec ? o->decode[i] : o->prefill[i - o->n_decode];
        sz->is_decode[sz->n] = dec;
        if (sz->tokens[sz->n] > max_tokens) max_tokens = sz->tokens[sz->n];
        sz->n++;
    }
    uint16_t *expert = eg_expert_make(m), *act = eg_act_make(max_tokens, m->d_model);
    int rc = expert && act ? 0 : -1;
    for (int i = 0; i < sz->n && rc == 0; i++)
        for (int r = 0; r < EG_N_ROUTES && rc == 0; r++)
            rc = mb_egpu_route_make(&sz->routes[i][r], m, sz->tokens[i]);
    if (rc) fprintf(stderr, "bench_expert_gpu: out of memory building %s's requests\n", m->name);

    /* Kernel cases and the backend depth (CUDA, and the other backend in
     * the same run) for each weight type; the worker depth with bf16
     * weights only. */
    int has_bf16 = 0;
    for (int wi = 0; wi < o->n_weights && rc == 0; wi++) {
        mb_egpu_weights w;
        if (o->weights[wi] == MB_KCUDA_BF16) {
            const size_t per = (size_t)m->d_model * m->d_ff * 2;
            has_bf16 = 1;
            w = (mb_egpu_weights){
                MB_KCUDA_BF16,     "bf16", expert, 3 * per, 3 * per, {0, per, 2 * per}, expert,
                {0, per, 2 * per}, NULL};
        } else if (mb_egpu_weights_make(&w, m, o->weights[wi]) != 0) {
            fprintf(stderr, "bench_expert_gpu: cannot make %s's %s experts\n", m->name,
                    mb_dtype_name(o->weights[wi]));
            rc = -1;
            break;
        }
        eg_kdev d;
        rc = eg_kdev_init(&d, m, &w, act, max_tokens) ? -1 : 0;
        if (rc == 0) {
            mb_egpu_print_kernel_header();
            rc = eg_kernel_cases(&d, sz, mi, case_budget_s, w.wdtype == MB_KCUDA_BF16, run);
            eg_kdev_fini(&d);
        }
        if (rc == 0) {
            mb_egpu_print_host_header();
            rc = eg_backend_cases(o, "cuda", o->device, "backend", m, &w, act, sz, max_tokens,
                                  case_budget_s, run);
            if (rc == 0 && o->other[0])
                rc = eg_backend_cases(o, o->other, o->other_device, "vulkan-backend", m, &w, act,
                                      sz, max_tokens, case_budget_s, run);
        }
        if (w.wdtype != MB_KCUDA_BF16) mb_egpu_weights_free(&w);
    }
    if (rc == 0 && has_bf16 && o->worker) mb_egpu_print_host_header();
    if (rc == 0 && has_bf16 && o->worker) rc = eg_worker_cases("cuda", o->device, "worker", m, expert, act, sz, case_budget_s, run);
    if (rc == 0 && has_bf16 && o->worker && o->other[0])
        rc = eg_worker_cases(o->other, o->other_device, "vulkan-worker", m, expert, act, sz, case_budget_s, run);
    for (int i = 0; i < sz->n; i++)
        for (int r = 0; r < EG_N_ROUTES; r++)
            mb_egpu_route_free(&sz->routes[i][r]);
    free(sz);
    free(expert);
    free(act);
    return rc;
}

/* ---- options ---- */

static uint32_t eg_parse_sizes(const char *s, uint32_t *out)
{
    uint32_t n = 0;
    while (*s && n < EG_MAX_SIZES) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > 65536) return 0;
        out[n++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static void eg_usage(void)
{
    fprintf(stderr, "usage: bench_expert_gpu [--backend cuda[:N]|vulkan[:N]] [--json FILE] [--budget SECONDS]\n"
                    "  [--models qwen3,mixtral] [--decode 1,4,16,64] [--prefill 512,4096,16384]\n"
                    "  [--no-worker] [--register-host] [--weights bf16,q8_0,q4_k,q6_k]\n");
    exit(2);
}

static void eg_parse_opts(int argc, char **argv, eg_opts *o)
{
    static const uint32_t dec[] = {1, 4, 16, 64}, pre[] = {512, 4096, 16384};
    memset(o, 0, sizeof *o);
    o->budget_s = 90;
    o->worker = 1;
    o->model_on[0] = o->model_on[1] = 1;
    memcpy(o->decode, dec, sizeof dec);
    o->n_decode = 4;
    memcpy(o->prefill, pre, sizeof pre);
    o->n_prefill = 3;
    o->weights[0] = MB_KCUDA_BF16;
    o->n_weights = 1;
    static const char *const keys[MB_EGPU_N_MODELS] = {"qwen3", "mixtral"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-worker")) {
            o->worker = 0;
            continue;
        }
        if (!strcmp(a, "--register-host")) {
            o->register_host = 1;
            continue;
        }
        if (!v) eg_usage();
        i++;
        if (!strcmp(a, "--backend")) {
            char name[16];
            if (mb_backend_spec_parse(v, name, sizeof name, &o->device) != MB_STATUS_OK) eg_usage();
            if (!strcmp(name, "vulkan")) {
                /* Vulkan is measured beside the CUDA backend on device 0 of each. */
                snprintf(o->other, sizeof o->other, "vulkan");
                o->other_device = o->device < 0 ? 0 : o->device;
                o->device = 0;
            } else if (strcmp(name, "cuda") != 0) {
                fprintf(stderr, "bench_expert_gpu: backend %s: cuda and vulkan are measured\n", name);
                exit(2);
            }
            if (o->device < 0) o->device = 0;
        } else if (!strcmp(a, "--json")) {
            o->json = v;
        } else if (!strcmp(a, "--budget")) {
            o->budget_s = atof(v);
            if (!(o->budget_s > 0)) eg_usage();
        } else if (!strcmp(a, "--models")) {
            if (mb_bench_parse_list(v, keys, MB_EGPU_N_MODELS, o->model_on) != 0) eg_usage();
        } else if (!strcmp(a, "--decode")) {
            if (!(o->n_decode = eg_parse_sizes(v, o->decode))) eg_usage();
        } else if (!strcmp(a, "--prefill")) {
            if (!(o->n_prefill = eg_parse_sizes(v, o->prefill))) eg_usage();
        } else if (!strcmp(a, "--weights")) {
            char list[64];
            snprintf(list, sizeof list, "%s", v);
            o->n_weights = 0;
            for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                const int wd = mb_egpu_weights_parse(t);
                if (wd < 0 || o->n_weights == 4) eg_usage();
                o->weights[o->n_weights++] = wd;
            }
            if (!o->n_weights) eg_usage();
        } else {
            eg_usage();
        }
    }
}

int main(int argc, char **argv)
{
    eg_opts o;
    eg_parse_opts(argc, argv, &o);
    mb_bench_find_worker();
    const int n_dev = mb_cuda_device_count();
    if (n_dev <= o.device) {
        fprintf(stderr, "bench_expert_gpu: no CUDA device %d (the driver reports %d): skipping\n",
                o.device, n_dev);
        return 77;
    }
    char device[160];
    unsigned long long mem_total = 0, mem_free = 0;
    if (mb_cuda_device_describe(o.device, device, sizeof device, &mem_total, &mem_free) != 0)
        snprintf(device, sizeof device, "CUDA device %d", o.device);
    if (eg_check(mb_gpu_set_device(o.device), "set device")) return 1;
    printf("device: %s, %.1f GiB\n", device, (double)mem_total / (1u << 30));

    mb_egpu_run *run = calloc(1, sizeof *run);
    if (!run) return 1;
    if (eg_check(mb_gpu_copy_gbs((size_t)1 << 30, 1.0, &run->copy_gbs), "copy ceiling")) return 1;
    printf("ceilings: D2D copy %.0f GB/s copied = %.0f GB/s traffic (decode %% is of traffic)\n",
           run->copy_gbs, 2 * run->copy_gbs);
    int n_models = 0;
    for (int mi = 0; mi < MB_EGPU_N_MODELS; mi++) {
        if (!o.model_on[mi]) continue;
        n_models++;
        const mb_egpu_model *m = &eg_models[mi];
        int e = mb_gpu_gemm_tflops(m->gemm_m, m->gemm_n, m->gemm_k, 1.0, &run->gemm_tflops[mi],
                                   run->gemm_note, sizeof run->gemm_note);
        if (e > 0) eg_check(e, "cuBLAS ceiling");
        printf("ceilings: cuBLAS bf16 GEMM M=%d N=%d K=%d: %.1f TFLOP/s%s%s\n", m->gemm_m, m->gemm_n,
               m->gemm_k, run->gemm_tflops[mi], e ? " -- " : "", e ? run->gemm_note : "");
    }
    /* The budget: kernel cases (4 paths a size) get about 60%, the rest the
     * backend and worker runs. */
    const int n_sizes = (int)(o.n_decode + o.n_prefill);
    const double case_budget_s = 0.6 * o.budget_s / (n_models * n_sizes * 3 * o.n_weights);
    int rc = 0;
    for (int mi = 0; mi < MB_EGPU_N_MODELS && rc == 0; mi++)
        if (o.model_on[mi]) rc = eg_model_run(&o, mi, case_budget_s, run);
    printf("\ndecode: GB/s = median of (bytes of the distinct experts routed to / device time), quantized "
           "bytes for quantized weights; goal >= 80%% of copy traffic at 1 token (bf16).\n"
           "prefill: TFLOP/s = 6 * pairs * d_model * d_ff / median device time; goal >= 65%% of "
           "cuBLAS.\n"
           "backend: mb_backend_run in process; worker: EXPERT_REQ round trip over shm; xkernel = "
           "median / kernel median (auto); goal <= 1.5 for the worker at 1 token.\n"
           "not measured: time outside the GEMMs (route, combine): moe.h has no per-phase hook.\n");
    if (o.json) mb_egpu_write_json(o.json, device, eg_models, o.model_on, run);
    free(run);
    return rc ? 1 : 0;
}
