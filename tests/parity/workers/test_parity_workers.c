/* End-to-end parity with experts on real worker processes: every checkpoint
 * under MB_TEST_DATA (Hugging Face transformers fixtures with their float32
 * reference logits) is prefilled with its prompt and decoded teacher-forced
 * one token at a time, with two CPU workers over shared memory and with one
 * worker over ZeroMQ tcp, in stream, batched and auto modes and every
 * payload dtype; every position's logits are compared with the reference.
 *
 * Bounds, relative to max|reference| over the whole sequence:
 *   f32 payloads:  max |diff| <= 1e-3 and the same argmax at every position;
 *   f16 payloads:  max |diff| <= 2e-3;  bf16 payloads: max |diff| <= 1e-2
 * (seen on the fixtures: at most 2.4e-4 and 1.7e-3).
 * With argument "cuda" (test_parity_workers_cuda) or "vulkan"
 * (test_parity_workers_vulkan, on lavapipe in CI) the same cases run with a
 * cuda:0 or vulkan:0 worker beside a CPU worker over shared memory, and with
 * that worker alone, under the same bounds; without such a device it exits 77.
 * With "mixed" (test_parity_workers_mixed) a cuda:0, a vulkan:0 and a CPU
 * worker each hold a third of the experts (equal weights), and the first
 * case prints the per-backend statistics table; it needs both devices.
 * Rounding activations to 11 (f16) or 8 (bf16) significant bits moves
 * logits by well under these; a wrong expert, a wrong gate weight or a
 * token's sum landing on another position moves them by O(1). */
#include <math.h>
#include <string.h>

#include "backends/backend.h"
#include "broker/model.h"
#include "broker/safetensors.h"
#include "broker/session.h"
#include "tests/integration/worker_util.h"
#include "tests/parity/fixtures.h"
#include "tests/testutil.h"

static void compare(const char *what, const float *got, const mb_reference *ref, mb_dtype dt)
{
    double max_ref = 0, max_diff = 0;
    uint32_t argmax_bad = 0;
    for (uint32_t t = 0; t < ref->n_tokens; t++) {
        const float *g = got + (size_t)t * ref->vocab, *r = ref->logits + (size_t)t * ref->vocab;
        uint32_t ag = 0, ar = 0;
        for (uint32_t v = 0; v < ref->vocab; v++) {
            max_ref = fmax(max_ref, fabs(r[v]));
            double d = fabs((double)g[v] - r[v]);
            if (!(d <= max_diff)) max_diff = isnan(d) ? INFINITY : d;
            if (g[v] > g[ag]) ag = v;
            if (r[v] > r[ar]) ar = v;
        }
        argmax_bad += ag != ar;
    }
    double bound = dt == MB_DTYPE_F32 ? 1e-3 : dt == MB_DTYPE_F16 ? 2e-3 : 1e-2;
    double rel = max_diff / max_ref;
    printf("  %-40s max|diff|/max|ref| = %.2e (bound %.0e), argmax mismatches %u/%u\n", what, rel, bound, argmax_bad,
           ref->n_tokens);
    CHECK_MSG(rel <= bound, "%s: relative error %.3e > %.0e", what, rel, bound);
    if (dt == MB_DTYPE_F32) CHECK_MSG(argmax_bad == 0, "%s: %u argmax mismatches", what, argmax_bad);
}

static void run_case_stats(const char *name, const mb_model *m, const mb_reference *ref, char **workers,
                           size_t n_workers, mb_ipc_mode mode, mb_dtype dt, float *logits, int print_stats)
{
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = workers;
    opt.n_workers = n_workers;
    opt.ipc_mode = mode;
    opt.payload_dtype = dt;
    opt.threads = 1;
    opt.chunk = 16; /* several prefill chunks per prompt */
    char err[512], what[128];
    snprintf(what, sizeof what, "%s %s %s %s", name, workers[0], mb_ipc_mode_name(mode), mb_dtype_name(dt));
    mb_session *s = NULL;
    mb_status st = mb_session_open(&opt, m, ref->n_tokens, 0, &s, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: session: %s", what, err);
    if (st != MB_STATUS_OK) return;
    for (uint32_t i = 0; i < ref->n_tokens * ref->vocab; i++) logits[i] = NAN;
    st = mb_session_step(s, ref->input_ids, ref->prompt_len, logits, NULL, err, sizeof err);
    for (uint32_t pos = ref->prompt_len; st == MB_STATUS_OK && pos < ref->n_tokens; pos++)
        st = mb_session_step(s, ref->input_ids + pos, 1, logits + (size_t)pos * ref->vocab, NULL, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: step: %s", what, err);
    if (st == MB_STATUS_OK) compare(what, logits, ref, dt);
    if (print_stats) mb_stats_print_table(s->stats, stdout);
    mb_session_close(s);
}

static void run_case(const char *name, const mb_model *m, const mb_reference *ref, char **workers, size_t n_workers,
                     mb_ipc_mode mode, mb_dtype dt, float *logits)
{
    run_case_stats(name, m, ref, workers, n_workers, mode, dt, logits, 0);
}

/* Whether a backend of this name opens here (else the test skips). */
static int backend_usable(const char *name)
{
    const mb_backend_ops *ops = mb_backend_find(name);
    if (!ops) return 0;
    mb_backend_config cfg = {.device = 0, .max_slots = 16};
    mb_backend *b = NULL;
    if (mb_backend_open(ops, &cfg, &b) != MB_STATUS_OK) return 0;
    mb_backend_close(b);
    return 1;
}

/* The GPU variant: a gpu:0 worker beside a CPU worker, and alone. */
static void run_gpu(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    const char *gpu = ctx;
    float *logits = malloc((size_t)ref->n_tokens * ref->vocab * sizeof *logits);
    REQUIRE(logits);
    char spec[32];
    snprintf(spec, sizeof spec, "%s:0", gpu);
    char *mixed[] = {spec, "cpu,threads=1"}, *alone[] = {spec};
    for (int mode = 0; mode < 3; mode++)
        for (int dt = 0; dt < 3; dt++) {
            run_case(name, m, ref, mixed, 2, (mb_ipc_mode)mode, (mb_dtype)dt, logits);
            run_case(name, m, ref, alone, 1, (mb_ipc_mode)mode, (mb_dtype)dt, logits);
        }
    free(logits);
}

/* The mixed variant: cuda:0, vulkan:0 and a CPU worker, a third each. */
static void run_mixed(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    (void)ctx;
    float *logits = malloc((size_t)ref->n_tokens * ref->vocab * sizeof *logits);
    REQUIRE(logits);
    char *workers[] = {"cuda:0,weight=1", "vulkan:0,weight=1", "cpu,threads=1,weight=1"};
    int first = 1;
    for (int mode = 0; mode < 3; mode++)
        for (int dt = 0; dt < 3; dt++) {
            run_case_stats(name, m, ref, workers, 3, (mb_ipc_mode)mode, (mb_dtype)dt, logits, first);
            first = 0;
        }
    free(logits);
}

/* The CPU variant: two CPU workers over shared memory, and a tcp worker. */
static void run_cpu(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    (void)ctx;
    float *logits = malloc((size_t)ref->n_tokens * ref->vocab * sizeof *logits);
    REQUIRE(logits);
    char *shm_workers[] = {"cpu,threads=1", "cpu,threads=1"};
    /* A worker started by hand, as on another machine; it serves one
     * coordinator session after another. */
    char ep[256];
    pid_t tcp_pid = mb_test_start_worker("tcp://127.0.0.1:*", 1, ep, sizeof ep);
    CHECK_MSG(tcp_pid > 0, "cannot start a tcp worker");
    char *tcp_workers[] = {ep};
    for (int mode = 0; mode < 3; mode++) {
        for (int dt = 0; dt < 3; dt++) {
            /* Under TSan one dtype per mode (each still met once): a
             * payload's dtype changes the bytes, not the threads. */
            if (MB_TEST_TSAN && dt != mode) continue;
            run_case(name, m, ref, shm_workers, 2, (mb_ipc_mode)mode, (mb_dtype)dt, logits);
            if (tcp_pid > 0) run_case(name, m, ref, tcp_workers, 1, (mb_ipc_mode)mode, (mb_dtype)dt, logits);
        }
    }
    mb_test_stop_worker(tcp_pid);
    free(logits);
}

int main(int argc, char **argv)
{
    const char *data = getenv("MB_TEST_DATA");
    if (!data) MB_TEST_SKIP("MB_TEST_DATA not set");
    const char *gpu = argc > 1 ? argv[1] : NULL;
    const int mixed = gpu && strcmp(gpu, "mixed") == 0;
    if (mixed ? !backend_usable("cuda") || !backend_usable("vulkan") : gpu && !backend_usable(gpu))
        MB_TEST_SKIP("no usable backend for this variant");
    int n_models = mb_test_each_fixture(data, mixed ? run_mixed : gpu ? run_gpu : run_cpu, (void *)gpu);
    CHECK_MSG(n_models >= 1, "no checkpoints found under %s", data);
    return mb_test_finish("test_parity_workers");
}
