/* End to end with the coordinator on a GPU (`--device cuda:0`) against the
 * CPU coordinator, in the same run on the same synthetic Qwen3-30B-A3B-shaped
 * model (bf16, --layers of them): a --prompt-token prefill and --gen decode
 * steps (greedy, timed after one untimed decode step that captures the
 * decode graphs) for three expert placements:
 *   gpu   every expert on the coordinator's GPU (in-process CUDA backend,
 *         computed from the coordinator's buffers unless
 *         MB_CUDA_LOCAL_DIRECT=0 sends them through the dispatcher); the
 *         CPU coordinator's peer: one cuda:0 worker;
 *   half  half of each layer's experts there, half on a CPU worker;
 *   cpu   every expert on CPU workers.
 * Per case: prefill and decode tok/s, and a decode step split into the
 * coordinator GPU's busy time (CUDA events), the dispatcher's wait for the
 * experts and the IPC time, with IPC's share of the step, two ways: on the
 * critical path (each dispatch call's wall time less its slowest backend's
 * compute, as bench_e2e measures it; the goal's figure), and summed over
 * backends (pack + send + unpack + the part of each wait the workers did
 * not compute; overlapping waits count once per backend). The dense
 * part's decode time is set against the time its weight bytes take at the
 * device-to-device copy bandwidth measured here (goal >= 70%). Table and
 * JSON. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench/gpu_ceiling.h"
#include "bench/moe_bench.h"
#include "bench/timing.h"
#include "broker/session.h"
#include "broker/synthetic.h"
#include "kernels/cuda/device_query.h"

typedef struct {
    uint32_t layers, prompt, gen, cpu_threads;
    int64_t shm_spin_us; /* the session's --shm-spin; -1: its default */
    mb_dtype payload;    /* the session's --payload-dtype */
    const char *json_path;
    int cpu_coord;  /* also run the CPU coordinator */
    unsigned cases; /* bit i: placement i of gpu, half, cpu */
} bd_args;

typedef struct {
    double prefill_tps, decode_tps, step_ms, dense_ms, wait_ms, ipc_ms, crit_ipc_ms;
    int ok;
} bd_result;

static void bd_usage(FILE *f)
{
    fprintf(f, "usage: bench_e2e_device [--layers N (4)] [--prompt N (1024)] [--gen N (32)]\n"
               "                        [--cpu-threads N (cores/2)] [--shm-spin US (default)] "
               "[--no-cpu-coord]\n"
               "                        [--cases gpu,half,cpu (all)] [--payload f32|f16|bf16 (f32)]\n"
               "                        [--json PATH]\n");
}

static int bd_parse(int argc, char **argv, bd_args *a)
{
    int cores = mb_bench_cpu_count();
    *a = (bd_args){.layers = 4,
                   .prompt = 1024,
                   .gen = 32,
                   .cpu_threads = cores > 2 ? (uint32_t)cores / 2 : 1,
                   .shm_spin_us = -1,
                   .cpu_coord = 1,
                   .cases = 7};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(k, "--no-cpu-coord")) {
            a->cpu_coord = 0;
            continue;
        }
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) {
            bd_usage(stdout);
            exit(0);
        }
        if (!v)
            ok = 0;
        else if (!strcmp(k, "--layers"))
            ok = !mb_bench_parse_u32(v, 1, 48, &a->layers);
        else if (!strcmp(k, "--prompt"))
            ok = !mb_bench_parse_u32(v, 1, 32768, &a->prompt);
        else if (!strcmp(k, "--gen"))
            ok = !mb_bench_parse_u32(v, 1, 4096, &a->gen);
        else if (!strcmp(k, "--cpu-threads"))
            ok = !mb_bench_parse_u32(v, 1, 1024, &a->cpu_threads);
        else if (!strcmp(k, "--shm-spin")) {
            uint32_t us = 0;
            ok = !mb_bench_parse_u32(v, 0, 20000, &us);
            a->shm_spin_us = us;
        }
        else if (!strcmp(k, "--json"))
            a->json_path = v;
        else if (!strcmp(k, "--payload")) {
            ok = mb_dtype_parse(v, &a->payload) == MB_STATUS_OK &&
                 (a->payload == MB_DTYPE_F32 || a->payload == MB_DTYPE_F16 || a->payload == MB_DTYPE_BF16);
        }
        else if (!strcmp(k, "--cases")) {
            static const char *const names[3] = {"gpu", "half", "cpu"};
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            a->cases = 0;
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t && ok;
                 t = strtok_r(NULL, ",", &sv)) {
                int c = 0;
                while (c < 3 && strcmp(t, names[c]) != 0)
                    c++;
                if (c == 3)
                    ok = 0;
                else
                    a->cases |= 1u << c;
            }
            ok = ok && a->cases != 0;
        } else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "bench_e2e_device: bad or missing value for %s\n", k);
            bd_usage(stderr);
            return -1;
        }
        i++;
    }
    return 0;
}

/* Bytes a decode step's dense part reads: every non-expert matrix once
 * (the embedding only a row). */
static uint64_t dense_decode_bytes(const mb_model *m)
{
    uint64_t b = m->lm_head.rows * m->lm_head.cols * mb_dtype_size(m->lm_head.dtype);
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        const mb_layer_weights *L = &m->layers[l];
        const mb_tensor *t[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->router, &L->shared.gate, &L->shared.up,
                                &L->shared.down};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (t[i]->data) b += t[i]->rows * t[i]->cols * mb_dtype_size(t[i]->dtype);
    }
    return b;
}

static uint32_t argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* One case: open, prefill, decode, read the statistics. */
static bd_result bd_case(const bd_args *a, const mb_model *m, const int32_t *prompt, int device, char **workers,
                         size_t n_workers, uint32_t local_experts, const char *name)
{
    bd_result r = {0};
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = workers;
    opt.n_workers = n_workers;
    opt.local_experts = local_experts;
    opt.cuda_device = device;
    opt.threads = a->cpu_threads;
    if (a->shm_spin_us >= 0) { /* as if given on the command line */
        opt.shm_spin_us = (uint32_t)a->shm_spin_us;
        opt.given_mask |= 1ull << MB_OPTION_SHM_SPIN;
    }
    opt.transport = MB_TRANSPORT_SHM;
    opt.payload_dtype = a->payload;
    char err[512];
    mb_session *s = NULL;
    fprintf(stderr, "case %s: opening\n", name);
    mb_status st = mb_session_open(&opt, m, a->prompt + a->gen + 2, MB_SESSION_PROGRESS, &s, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "case %s: %s\n", name, err);
        return r;
    }
    float *logits = malloc(m->cfg.vocab * sizeof *logits);
    int64_t t0 = mb_bench_now_ns();
    st = mb_session_step(s, prompt, a->prompt, NULL, logits, err, sizeof err);
    int64_t t1 = mb_bench_now_ns();
    int32_t tok = (int32_t)argmax(logits, m->cfg.vocab);
    /* One decode step before the clock: it captures and instantiates the
     * decode graphs, which a session does once, not per token. */
    if (st == MB_STATUS_OK) {
        st = mb_session_step(s, &tok, 1, NULL, logits, err, sizeof err);
        tok = (int32_t)argmax(logits, m->cfg.vocab);
    }
    mb_stats_reset(s->stats);
    int64_t t2 = mb_bench_now_ns();
    for (uint32_t g = 0; g < a->gen && st == MB_STATUS_OK; g++) {
        st = mb_session_step(s, &tok, 1, NULL, logits, err, sizeof err);
        tok = (int32_t)argmax(logits, m->cfg.vocab);
    }
    int64_t t3 = mb_bench_now_ns();
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "case %s: step: %s\n", name, err);
    } else {
        mb_stats_steps steps;
        mb_stats_get_steps(s->stats, MB_STATS_PHASE_DECODE, &steps);
        if (getenv("MB_BENCH_STATS")) /* the decode's statistics table, for where IPC time goes */
            mb_stats_print_table(s->stats, stdout);
        uint64_t ipc = 0, local_ns = 0;
        for (uint32_t b = 0; b < mb_stats_n_backends(s->stats); b++) {
            mb_stats_counters c;
            if (mb_stats_get(s->stats, b, MB_STATS_PHASE_DECODE, &c) != MB_STATUS_OK) continue;
            /* Experts computed from the coordinator's buffers: no IPC, and
             * their time is the GPU's, not a wait. */
            if (s->device_local && (int)b == s->local_link) {
                local_ns += c.worker_compute_ns;
                continue;
            }
            uint64_t worker = c.worker_decode_ns + c.worker_compute_ns + c.worker_encode_ns;
            ipc += c.pack_ns + c.send_ns + c.unpack_ns + (c.wait_ns > worker ? c.wait_ns - worker : 0);
        }
        const double n = a->gen;
        r = (bd_result){.prefill_tps = a->prompt / ((double)(t1 - t0) / 1e9),
                        .decode_tps = n / ((double)(t3 - t2) / 1e9),
                        .step_ms = (double)(t3 - t2) / 1e6 / n,
                        .dense_ms = (double)steps.device_ns / 1e6 / n,
                        .wait_ms = (double)(steps.wait_ns + local_ns) / 1e6 / n,
                        .ipc_ms = (double)ipc / 1e6 / n,
                        .crit_ipc_ms =
                            (double)mb_stats_crit_ipc_ns(steps.dispatch_ns, steps.critical_ns) /
                            1e6 / n,
                        .ok = 1};
    }
    free(logits);
    mb_session_close(s);
    return r;
}

static cJSON *bd_json(const bd_result *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", r->ok);
    cJSON_AddNumberToObject(o, "prefill_tok_s", r->prefill_tps);
    cJSON_AddNumberToObject(o, "decode_tok_s", r->decode_tps);
    cJSON_AddNumberToObject(o, "decode_step_ms", r->step_ms);
    cJSON_AddNumberToObject(o, "decode_dense_gpu_ms", r->dense_ms);
    cJSON_AddNumberToObject(o, "decode_expert_wait_ms", r->wait_ms);
    cJSON_AddNumberToObject(o, "decode_ipc_ms", r->ipc_ms);
    cJSON_AddNumberToObject(o, "decode_ipc_share", r->step_ms > 0 ? r->ipc_ms / r->step_ms : 0);
    cJSON_AddNumberToObject(o, "decode_ipc_critical_ms", r->crit_ipc_ms);
    cJSON_AddNumberToObject(o, "decode_ipc_critical_share",
                            r->step_ms > 0 ? r->crit_ipc_ms / r->step_ms : 0);
    return o;
}

int main(int argc, char **argv)
{
    bd_args a;
    if (bd_parse(argc, argv, &a) != 0) return 2;
    if (mb_cuda_device_count() < 1) {
        fprintf(stderr, "bench_e2e_device: no CUDA device\n");
        return 77;
    }
    mb_bench_find_worker();
    mb_model_config cfg;
    mb_synthetic_qwen3_30b_config(&cfg, a.layers);
    mb_model *m = NULL;
    char err[512];
    if (mb_synthetic_create(&cfg, 7, 1, &m, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "bench_e2e_device: %s\n", err);
        return 1;
    }
    int32_t *prompt = malloc(a.prompt * sizeof *prompt);
    uint64_t rng = 42; /* xorshift64: a fixed random prompt */
    for (uint32_t i = 0; i < a.prompt; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        prompt[i] = (int32_t)(rng % cfg.vocab);
    }

    double copy_gbs = 0;
    int ce = mb_gpu_copy_gbs((size_t)1 << 30, 1.0, &copy_gbs);
    const double read_gbs = 2 * copy_gbs; /* a copy reads and writes every byte */
    const uint64_t dense_b = dense_decode_bytes(m);
    const double dense_ideal_ms = read_gbs > 0 ? (double)dense_b / (read_gbs * 1e9) * 1e3 : 0;

    char cpu_spec[64], cpu_half[64];
    snprintf(cpu_spec, sizeof cpu_spec, "cpu,threads=%u", a.cpu_threads);
    snprintf(cpu_half, sizeof cpu_half, "cpu,threads=%u", a.cpu_threads > 1 ? a.cpu_threads / 2 : 1);
    char *cpu_w[] = {cpu_half, cpu_half}, *one_cpu[] = {cpu_spec};
    char *gpu_w[] = {"cuda:0"}, *mixed_w[] = {"cuda:0,weight=1", "cpu,weight=1"};
    char mixed_cpu[80];
    snprintf(mixed_cpu, sizeof mixed_cpu, "cpu,weight=1,threads=%u", a.cpu_threads);
    mixed_w[1] = mixed_cpu;
    const char *names[3] = {"gpu", "half", "cpu"};
    bd_result dev[3], cpu[3];
    memset(cpu, 0, sizeof cpu);
    memset(dev, 0, sizeof dev);
    if (a.cases & 1)
        dev[0] = bd_case(&a, m, prompt, 0, NULL, 0, cfg.n_experts,
                         "cuda coordinator, experts on its GPU");
    if (a.cases & 2)
        dev[1] = bd_case(&a, m, prompt, 0, one_cpu, 1, cfg.n_experts / 2,
                         "cuda coordinator, half on a CPU worker");
    if (a.cases & 4)
        dev[2] = bd_case(&a, m, prompt, 0, cpu_w, 2, 0, "cuda coordinator, experts on CPU workers");
    if (a.cpu_coord) {
        if (a.cases & 1)
            cpu[0] = bd_case(&a, m, prompt, -1, gpu_w, 1, 0, "cpu coordinator, a cuda:0 worker");
        if (a.cases & 2)
            cpu[1] = bd_case(&a, m, prompt, -1, mixed_w, 2, 0,
                             "cpu coordinator, cuda:0 and cpu workers");
        if (a.cases & 4)
            cpu[2] =
                bd_case(&a, m, prompt, -1, cpu_w, 2, 0, "cpu coordinator, experts on CPU workers");
    }

    char dname[128] = "?";
    unsigned long long tot = 0, fr = 0;
    mb_cuda_device_describe(0, dname, sizeof dname, &tot, &fr);
    char spin_text[64] = "default (30 us; 1000 us with the GPU coordinator)";
    if (a.shm_spin_us >= 0) snprintf(spin_text, sizeof spin_text, "%lld us", (long long)a.shm_spin_us);
    printf("bench_e2e_device: %s; Qwen3-30B-A3B shapes, %u layers, bf16; prompt %u, gen %u; CPU threads %u; "
           "shm spin %s; payload %s\n",
           dname, a.layers, a.prompt, a.gen, a.cpu_threads, spin_text, mb_dtype_name(a.payload));
    printf("device copy %.0f GB/s (read-equivalent %.0f GB/s%s); dense bytes per decode token %.1f MiB -> %.3f ms "
           "ideal\n",
           copy_gbs, read_gbs, ce ? ", FAILED" : "", (double)dense_b / (1 << 20), dense_ideal_ms);
    printf("%-6s %-5s %11s %11s %9s %10s %10s %9s %10s %9s %9s\n", "coord", "case", "prefill t/s",
           "decode t/s", "step ms", "dense ms", "expert ms", "crit ipc", "crit share", "ipc sum",
           "sum share");
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "device", dname);
    cJSON_AddNumberToObject(root, "layers", a.layers);
    cJSON_AddNumberToObject(root, "prompt", a.prompt);
    cJSON_AddNumberToObject(root, "gen", a.gen);
    cJSON_AddNumberToObject(root, "shm_spin_us", a.shm_spin_us);
    cJSON_AddStringToObject(root, "payload", mb_dtype_name(a.payload));
    cJSON_AddNumberToObject(root, "copy_gbs", copy_gbs);
    cJSON_AddNumberToObject(root, "dense_decode_bytes", (double)dense_b);
    cJSON_AddNumberToObject(root, "dense_ideal_ms", dense_ideal_ms);
    cJSON *cases = cJSON_AddObjectToObject(root, "cases");
    for (int c = 0; c < 2; c++) {
        const bd_result *r = c == 0 ? dev : cpu;
        if (c == 1 && !a.cpu_coord) break;
        cJSON *co = cJSON_AddObjectToObject(cases, c == 0 ? "cuda" : "cpu");
        for (int i = 0; i < 3; i++) {
            if (!(a.cases & (1u << i))) continue;
            const double k = r[i].step_ms > 0 ? 100 / r[i].step_ms : 0;
            printf("%-6s %-5s %11.1f %11.2f %9.3f %10.3f %10.3f %9.3f %9.2f%% %9.3f %8.1f%%\n",
                   c == 0 ? "cuda" : "cpu", names[i], r[i].prefill_tps, r[i].decode_tps,
                   r[i].step_ms, r[i].dense_ms, r[i].wait_ms, r[i].crit_ipc_ms,
                   k * r[i].crit_ipc_ms, r[i].ipc_ms, k * r[i].ipc_ms);
            cJSON_AddItemToObject(co, names[i], bd_json(&r[i]));
        }
    }
    cJSON *goals = cJSON_AddArrayToObject(root, "goals");
    if (dev[0].ok && dev[0].dense_ms > 0) {
        double share = dense_ideal_ms / dev[0].dense_ms;
        printf("dense decode: %.3f ms on the GPU vs %.3f ms at copy bandwidth: %.1f%% (goal >= 70%%)\n",
               dev[0].dense_ms, dense_ideal_ms, 100 * share);
        mb_bench_goal(goals, "dense_decode_share_of_copy_bw", share, ">= 0.70", share >= 0.70);
    }
    if (dev[2].ok) {
        double share = dev[2].step_ms > 0 ? dev[2].crit_ipc_ms / dev[2].step_ms : 0;
        double summed = dev[2].step_ms > 0 ? dev[2].ipc_ms / dev[2].step_ms : 0;
        printf("ipc share of a decode step, cuda coordinator with CPU workers: %.2f%% on the "
               "critical path "
               "(goal <= 2%%), %.2f%% summed over the workers\n",
               100 * share, 100 * summed);
        mb_bench_goal(goals, "decode_ipc_critical_share_local_workers", share, "<= 0.02",
                      share <= 0.02);
    }
    char *text = cJSON_Print(root);
    int rc = mb_bench_emit_json(text, a.json_path, "bench_e2e_device");
    free(text);
    cJSON_Delete(root);
    free(prompt);
    mb_model_destroy(m);
    /* A case left out by --cases is not a failure. */
    for (int i = 0; i < 3; i++)
        if ((a.cases & (1u << i)) && !dev[i].ok) rc = 1;
    return rc;
}
