/* GGUF checkpoints with their experts on worker processes, against
 * llama.cpp's logits (tests/data/gguf/<fixture>/reference.safetensors):
 * prefill the prompt, decode the rest teacher-forced, with two CPU workers
 * over shared memory (spawned on this host, so LOAD_EXPERT names regions of
 * the GGUF file and the workers map it), with one worker over ZeroMQ tcp
 * started by hand (no --model-root, so the blocks travel inline), and with
 * every expert in-process. The q4_k_m fixtures mix types inside one expert
 * (Q6_K down beside Q4_K gate/up in the last layer), which only a
 * per-matrix dtype on the wire carries.
 *
 * A CUDA or Vulkan worker, where one opens, runs a quantized fixture when
 * its caps name every expert type (both take Q8_0, Q4_K and Q6_K), meeting
 * the same bounds against llama.cpp; otherwise it must be refused before
 * any load with a message naming the quantized types it lacks. With
 * --gpu NAME first, only that GPU worker runs (its own ctest, labelled by
 * backend), and the test exits 77 when the backend does not open here;
 * without it, the CPU cases run and GPU workers only where they are
 * refused.
 *
 * Bounds: each run meets the in-process bounds against llama.cpp
 * (gguf_compare.h), and the workers' logits equal the in-process run's to
 * MB_GGUF_WORKER_BOUND of max|reference| (same kernels, f32 payloads: only
 * the order of the gate-weighted sums over workers may differ).
 * Usage: test_parity_gguf_workers [--gpu cuda|vulkan] [fixture ...]. */
#include <math.h>
#include <string.h>

#include "broker/session.h"
#include "tests/integration/worker_util.h"
#include "tests/parity/gguf/gguf_compare.h"
#include "tests/testutil.h"

#define MB_GGUF_WORKER_BOUND 1e-5

/* Runs the reference's tokens through a session with these workers (none:
 * every expert in-process) into logits[n_tokens][vocab]. */
static mb_status run_session(const char *what, const mb_model *m, const mb_reference *ref, char **workers,
                             size_t n_workers, float *logits)
{
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = workers;
    opt.n_workers = n_workers;
    opt.local_experts = n_workers ? 0 : m->cfg.n_experts;
    opt.payload_dtype = MB_DTYPE_F32;
    opt.threads = 1;
    opt.chunk = 16; /* several prefill chunks per prompt */
    char err[512] = "";
    mb_session *s = NULL;
    mb_status st = mb_session_open(&opt, m, ref->n_tokens, 0, &s, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: session: %s", what, err);
    if (st != MB_STATUS_OK) return st;
    for (size_t i = 0; i < (size_t)ref->n_tokens * ref->vocab; i++)
        logits[i] = NAN;
    st = mb_session_step(s, ref->input_ids, ref->prompt_len, logits, NULL, err, sizeof err);
    for (uint32_t pos = ref->prompt_len; st == MB_STATUS_OK && pos < ref->n_tokens; pos++)
        st = mb_session_step(s, ref->input_ids + pos, 1, logits + (size_t)pos * ref->vocab, NULL, err,
                             sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: step: %s", what, err);
    mb_session_close(s);
    return st;
}

/* max |a - b| / max |ref| over the sequence. */
static double rel_max_diff(const float *a, const float *b, const mb_reference *ref)
{
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < (size_t)ref->n_tokens * ref->vocab; i++) {
        const double d = fabs((double)a[i] - b[i]);
        max_diff = !(d <= max_diff) ? (isnan(d) ? INFINITY : d) : max_diff;
        max_ref = fmax(max_ref, fabs(ref->logits[i]));
    }
    return max_diff / max_ref;
}

/* Whether a backend of this name opens here; *caps receives its caps. */
static int backend_usable(const char *name, mb_backend_caps *caps)
{
    const mb_backend_ops *ops = mb_backend_find(name);
    mb_backend_config cfg = {.device = 0, .max_slots = 16};
    mb_backend *b = NULL;
    if (!ops || mb_backend_open(ops, &cfg, &b) != MB_STATUS_OK) return 0;
    const int ok = mb_backend_caps_get(b, caps) == MB_STATUS_OK;
    mb_backend_close(b);
    return ok;
}

/* What main was asked to run. */
typedef struct {
    const char *tcp_endpoint; /* NULL: no tcp worker */
    const char *gpu;          /* --gpu NAME: that GPU worker only; NULL: the CPU cases */
} run_opts;

/* A GPU worker runs a quantized model whose every expert type its caps
 * name, within the bounds against llama.cpp (its own arithmetic: f32
 * activations, no 8-bit quantization, so not compared with the in-process
 * run), when run (only names that GPU; NULL: none runs); otherwise it is
 * refused at placement, naming each type it lacks. */
static void check_gpu_workers(const char *name, const mb_model *m, const mb_reference *ref, float *logits,
                              const char *only)
{
    const uint32_t types = mb_model_expert_dtypes(m);
    if (!(types & MB_DTYPE_MASK_QUANT)) return;
    static const char *const gpus[] = {"cuda", "vulkan"};
    for (size_t g = 0; g < 2; g++) {
        mb_backend_caps caps;
        if (only && strcmp(only, gpus[g]) != 0) continue;
        if (!backend_usable(gpus[g], &caps)) continue;
        char spec[32], err[512] = "", what[256];
        snprintf(spec, sizeof spec, "%s:0", gpus[g]);
        if (!(types & ~caps.weight_dtype_mask)) {
            if (!only) continue; /* its own ctest runs it */
            char *gpu_workers[] = {spec};
            snprintf(what, sizeof what, "%s 1 %s worker", name, spec);
            if (run_session(what, m, ref, gpu_workers, 1, logits) == MB_STATUS_OK)
                mb_gguf_compare(what, logits, ref->logits, ref->n_tokens, ref->vocab);
            continue;
        }
        char *workers[] = {spec};
        mb_options opt;
        mb_options_init(&opt);
        opt.workers = workers;
        opt.n_workers = 1;
        mb_session *s = NULL;
        mb_status st = mb_session_open(&opt, m, ref->n_tokens, 0, &s, err, sizeof err);
        printf("%s on %s: %s: %s\n", name, spec, mb_status_name(st), err);
        CHECK_MSG(st == MB_STATUS_BAD_DTYPE, "%s on %s: %s", name, spec, mb_status_name(st));
        if (st == MB_STATUS_OK) mb_session_close(s);
        for (int d = 0; d < MB_DTYPE_COUNT_; d++)
            if (types & MB_DTYPE_MASK(d) & MB_DTYPE_MASK_QUANT & ~caps.weight_dtype_mask)
                CHECK_MSG(strstr(err, mb_dtype_name((mb_dtype)d)) && strstr(err, "weights"),
                          "%s on %s: the refusal does not name %s: %s", name, spec, mb_dtype_name((mb_dtype)d),
                          err);
    }
}

static void run_fixture(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    const run_opts *o = ctx;
    const size_t n = (size_t)ref->n_tokens * ref->vocab;
    float *local = malloc(n * sizeof *local), *logits = malloc(n * sizeof *logits);
    REQUIRE(local && logits);
    if (o->gpu) {
        check_gpu_workers(name, m, ref, logits, o->gpu);
        free(local);
        free(logits);
        return;
    }

    char what[256];
    snprintf(what, sizeof what, "%s in-process", name);
    const int have_local = run_session(what, m, ref, NULL, 0, local) == MB_STATUS_OK;
    if (have_local) mb_gguf_compare(what, local, ref->logits, ref->n_tokens, ref->vocab);

    char *shm_workers[] = {"cpu,threads=1", "cpu,threads=1"};
    char *tcp_workers[] = {(char *)o->tcp_endpoint};
    struct {
        const char *label;
        char **workers;
        size_t n;
    } cases[] = {{"2 shm workers (file-mapped)", shm_workers, 2}, {"1 zmq tcp worker (inline)", tcp_workers, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!cases[i].workers[0]) continue;
        snprintf(what, sizeof what, "%s %s", name, cases[i].label);
        if (run_session(what, m, ref, cases[i].workers, cases[i].n, logits) != MB_STATUS_OK) continue;
        mb_gguf_compare(what, logits, ref->logits, ref->n_tokens, ref->vocab);
        if (!have_local) continue;
        const double rel = rel_max_diff(logits, local, ref);
        printf("%s: max|diff| vs in-process %.2e of max|ref|\n", what, rel);
        CHECK_MSG(rel <= MB_GGUF_WORKER_BOUND, "%s: %.3e from the in-process run", what, rel);
    }
    check_gpu_workers(name, m, ref, logits, NULL);
    free(local);
    free(logits);
}

int main(int argc, char **argv)
{
    run_opts o = {NULL, NULL};
    if (argc > 2 && strcmp(argv[1], "--gpu") == 0) {
        o.gpu = argv[2];
        mb_backend_caps caps;
        if (!backend_usable(o.gpu, &caps)) MB_TEST_SKIP("no %s backend or device here", o.gpu);
        argv[2] = argv[0];
        mb_gguf_for_fixtures(argc - 2, argv + 2, run_fixture, &o);
        return mb_test_finish("test_parity_gguf_workers");
    }
    /* A worker started by hand, as on another machine; it serves one
     * coordinator session after another. */
    char ep[256] = "";
    pid_t tcp_pid = mb_test_start_worker("tcp://127.0.0.1:*", 1, ep, sizeof ep);
    CHECK_MSG(tcp_pid > 0, "cannot start a tcp worker");
    o.tcp_endpoint = tcp_pid > 0 ? ep : NULL;
    mb_gguf_for_fixtures(argc, argv, run_fixture, &o);
    mb_test_stop_worker(tcp_pid);
    return mb_test_finish("test_parity_gguf_workers");
}
