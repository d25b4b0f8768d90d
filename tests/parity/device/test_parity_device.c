/* The coordinator on a GPU (`--device cuda:0`): every Hugging Face checkpoint
 * under MB_TEST_DATA (transformers fixtures with their float32 reference
 * logits) is prefilled in chunks and decoded teacher-forced, with the dense
 * layers, KV cache and routing on the device and the experts
 *   - on two CPU workers over shared memory, every payload dtype (f16
 *     and bf16 also with the rows converted by the dispatcher instead of
 *     the GPU, MB_CUDA_WIRE=0: logits identical bit for bit);
 *   - on a cuda:0 worker, every payload dtype;
 *   - in-process on the same GPU (--local-experts covering every expert);
 *   - and with decode steps launched directly instead of replayed from
 *     CUDA graphs (MB_CUDA_GRAPHS=0), which must agree with the graphs to
 *     f32 rounding (relative 1e-5: the graphs' attention splits the cache
 *     differently);
 * and every position's logits are compared with transformers' under the
 * bounds the CPU coordinator meets (test_parity_workers: relative to
 * max|reference|, f32 1e-3 with the same argmax everywhere, f16 2e-3, bf16
 * 1e-2), and, for f32 payloads, with the CPU coordinator's logits on the
 * same workers (relative 1e-4: both compute in f32, in different orders).
 * Without a CUDA device, `--device cuda:0` must fail at once with a message
 * saying so; then the test exits 77. With a device or without, a checkpoint
 * whose head_dim the GPU attention does not take is refused when the
 * forward pass is created, naming it. */
#include <math.h>
#include <string.h>

#include "broker/device/forward_cuda.h"
#include "broker/model.h"
#include "broker/safetensors.h"
#include "broker/session.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/device_query.h"
#include "tests/parity/fixtures.h"
#include "tests/testutil.h"

static double rel_diff(const float *got, const float *want, size_t n, uint32_t vocab, uint32_t *argmax_bad)
{
    double max_ref = 0, max_diff = 0;
    *argmax_bad = 0;
    for (size_t t = 0; t < n / vocab; t++) {
        const float *g = got + t * vocab, *r = want + t * vocab;
        uint32_t ag = 0, ar = 0;
        for (uint32_t v = 0; v < vocab; v++) {
            max_ref = fmax(max_ref, fabs(r[v]));
            double d = fabs((double)g[v] - r[v]);
            if (!(d <= max_diff)) max_diff = isnan(d) ? INFINITY : d;
            if (g[v] > g[ag]) ag = v;
            if (r[v] > r[ar]) ar = v;
        }
        *argmax_bad += ag != ar;
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

/* Runs the fixture's sequence (prefill in chunks of 16, then decode one by
 * one) and fills logits[n_tokens][vocab]; 0 on success. */
static int run_seq(const char *what, const mb_model *m, const mb_reference *ref, int device, char **workers,
                   size_t n_workers, uint32_t local_experts, mb_dtype dt, float *logits)
{
    mb_options opt;
    mb_options_init(&opt);
    opt.workers = workers;
    opt.n_workers = n_workers;
    opt.payload_dtype = dt;
    opt.threads = 1;
    opt.chunk = 16;
    opt.cuda_device = device;
    opt.local_experts = local_experts;
    char err[512];
    mb_session *s = NULL;
    mb_status st = mb_session_open(&opt, m, ref->n_tokens, 0, &s, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: session: %s", what, err);
    if (st != MB_STATUS_OK) return -1;
    for (size_t i = 0; i < (size_t)ref->n_tokens * ref->vocab; i++) logits[i] = NAN;
    st = mb_session_step(s, ref->input_ids, ref->prompt_len, logits, NULL, err, sizeof err);
    float *last = malloc(ref->vocab * sizeof *last);
    for (uint32_t pos = ref->prompt_len; st == MB_STATUS_OK && pos < ref->n_tokens; pos++) {
        /* Alternate the two logits outputs: every row, and the last only. */
        float *row = logits + (size_t)pos * ref->vocab;
        if (pos % 2 && last) {
            st = mb_session_step(s, ref->input_ids + pos, 1, NULL, last, err, sizeof err);
            memcpy(row, last, ref->vocab * sizeof *last);
        } else {
            st = mb_session_step(s, ref->input_ids + pos, 1, row, NULL, err, sizeof err);
        }
    }
    free(last);
    CHECK_MSG(st == MB_STATUS_OK, "%s: step: %s", what, err);
    mb_stats_steps steps;
    if (st == MB_STATUS_OK && device >= 0 && mb_stats_get_steps(s->stats, MB_STATS_PHASE_DECODE, &steps) == MB_STATUS_OK)
        CHECK_MSG(steps.device_ns > 0, "%s: no device time recorded", what);
    if (st == MB_STATUS_OK && device >= 0 && local_experts >= m->cfg.n_experts) {
        /* Experts on the coordinator's GPU: computed from its buffers
         * unless MB_CUDA_LOCAL_DIRECT=0, and counted either way: every
         * layer routed top_k pairs for every token. */
        const char *env = getenv("MB_CUDA_LOCAL_DIRECT");
        const int want = !(env && !strcmp(env, "0"));
        CHECK_MSG(s->device_local == want, "%s: local experts %s the coordinator's buffers", what,
                  s->device_local ? "took" : "did not take");
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
            uint64_t pairs = 0;
            for (uint32_t e = 0; e < m->cfg.n_experts; e++) pairs += mb_stats_routed(s->stats, l, e);
            CHECK_MSG(pairs == (uint64_t)ref->n_tokens * m->cfg.top_k, "%s: layer %u counted %llu routed pairs, not %llu",
                      what, l, (unsigned long long)pairs, (unsigned long long)ref->n_tokens * m->cfg.top_k);
        }
        mb_stats_counters c;
        if (want && mb_stats_get(s->stats, (uint32_t)s->local_link, MB_STATS_PHASE_DECODE, &c) == MB_STATUS_OK)
            CHECK_MSG(c.calls > 0 && c.worker_compute_ns > 0, "%s: no local expert time recorded", what);
    }
    mb_session_close(s);
    return st == MB_STATUS_OK ? 0 : -1;
}

static void compare_ref(const char *what, const float *got, const mb_reference *ref, mb_dtype dt)
{
    uint32_t bad = 0;
    double rel = rel_diff(got, ref->logits, (size_t)ref->n_tokens * ref->vocab, ref->vocab, &bad);
    double bound = dt == MB_DTYPE_F32 ? 1e-3 : dt == MB_DTYPE_F16 ? 2e-3 : 1e-2;
    printf("  %-44s vs transformers %.2e (bound %.0e), argmax mismatches %u/%u\n", what, rel, bound, bad,
           ref->n_tokens);
    CHECK_MSG(rel <= bound, "%s: relative error %.3e > %.0e", what, rel, bound);
    if (dt == MB_DTYPE_F32) CHECK_MSG(bad == 0, "%s: %u argmax mismatches", what, bad);
}

/* Without a device the option fails at once and says why. */
static void check_no_device(const mb_model *m)
{
    mb_options opt;
    mb_options_init(&opt);
    opt.cuda_device = 0;
    char *w[] = {"cpu,threads=1"};
    opt.workers = w;
    opt.n_workers = 1;
    char err[512] = "";
    mb_session *s = NULL;
    mb_status st = mb_session_open(&opt, m, 8, 0, &s, err, sizeof err);
    CHECK_MSG(st != MB_STATUS_OK, "--device cuda:0 opened without a device");
    CHECK_MSG(strstr(err, "no CUDA device") != NULL, "message does not say why: %s", err);
    printf("without a device: %s\n", err);
    mb_session_close(s);
}

/* m with a head_dim past MB_KCUDA_MAX_HEAD_DIM: refused at create (before
 * any device call), the message naming it. */
static void check_head_dim(const mb_model *m)
{
    mb_model big = *m;
    big.cfg.head_dim = MB_KCUDA_MAX_HEAD_DIM + 2;
    mb_fwd_cuda *fc = NULL;
    char err[256] = "";
    mb_status st = mb_fwd_cuda_create(&big, 64, 16, 0, 0, &fc, err, sizeof err);
    CHECK_EQ(st, MB_STATUS_UNSUPPORTED);
    CHECK(fc == NULL);
    CHECK_MSG(strstr(err, "head_dim") != NULL, "message does not name head_dim: %s", err);
}

static void run_model(const char *name, const mb_model *m, const mb_reference *ref)
{
    const size_t n = (size_t)ref->n_tokens * ref->vocab;
    float *got = malloc(n * sizeof *got), *cpu = malloc(n * sizeof *cpu);
    REQUIRE(got && cpu);
    char what[400];
    char *cpu_workers[] = {"cpu,threads=1", "cpu,threads=1"}, *gpu_worker[] = {"cuda:0"};
    for (int dt = 0; dt < 3; dt++) {
        snprintf(what, sizeof what, "%s cuda coord, 2 cpu workers %s", name, mb_dtype_name(dt));
        if (run_seq(what, m, ref, 0, cpu_workers, 2, 0, (mb_dtype)dt, got) == 0) compare_ref(what, got, ref, dt);
        if (dt != MB_DTYPE_F32) {
            /* The GPU wrote the routed rows in the payload dtype; the
             * dispatcher encoding f32 rows (MB_CUDA_WIRE=0) must have sent
             * the same bytes, so the logits match bit for bit. */
            setenv("MB_CUDA_WIRE", "0", 1);
            int ok = run_seq("f32 rows", m, ref, 0, cpu_workers, 2, 0, (mb_dtype)dt, cpu) == 0;
            unsetenv("MB_CUDA_WIRE");
            const int same = ok && memcmp(got, cpu, n * sizeof *got) == 0;
            printf("  %-44s rows encoded by the GPU vs by the dispatcher: %s\n", what,
                   same ? "identical" : "DIFFER");
            CHECK_MSG(same, "%s: logits differ when the dispatcher encodes the rows", what);
        }
        if (dt == MB_DTYPE_F32 && run_seq("cpu coord", m, ref, -1, cpu_workers, 2, 0, MB_DTYPE_F32, cpu) == 0) {
            uint32_t bad = 0;
            double rel = rel_diff(got, cpu, n, ref->vocab, &bad);
            printf("  %-44s vs the CPU coordinator %.2e (bound 1e-4), argmax mismatches %u\n", what, rel, bad);
            CHECK_MSG(rel <= 1e-4 && bad == 0, "%s: %.3e from the CPU coordinator, %u argmax", what, rel, bad);
        }
        if (dt == MB_DTYPE_F32) {
            float *direct = cpu; /* the CPU coordinator's logits are done with */
            setenv("MB_CUDA_GRAPHS", "0", 1);
            int ok = run_seq("no graphs", m, ref, 0, cpu_workers, 2, 0, MB_DTYPE_F32, direct) == 0;
            unsetenv("MB_CUDA_GRAPHS");
            uint32_t bad = 0;
            double rel = ok ? rel_diff(direct, got, n, ref->vocab, &bad) : INFINITY;
            printf("  %-44s direct launches vs graphs %.2e (bound 1e-5), argmax mismatches %u\n", what, rel, bad);
            CHECK_MSG(rel <= 1e-5 && bad == 0, "%s: graphs and direct launches differ by %.3e", what, rel);
        }
        snprintf(what, sizeof what, "%s cuda coord, cuda:0 worker %s", name, mb_dtype_name(dt));
        if (run_seq(what, m, ref, 0, gpu_worker, 1, 0, (mb_dtype)dt, got) == 0) compare_ref(what, got, ref, dt);
    }
    snprintf(what, sizeof what, "%s cuda coord, experts on its GPU", name);
    if (run_seq(what, m, ref, 0, NULL, 0, m->cfg.n_experts, MB_DTYPE_F32, got) == 0) {
        compare_ref(what, got, ref, MB_DTYPE_F32);
        /* The same experts through the dispatcher (host copies, the
         * in-process CUDA backend), and from the buffers for decode only:
         * both compute in f32 from the same weights. */
        static const char *const ways[] = {"0", "decode"};
        for (int w = 0; w < 2; w++) {
            char how[440];
            snprintf(how, sizeof how, "%s, MB_CUDA_LOCAL_DIRECT=%s", what, ways[w]);
            setenv("MB_CUDA_LOCAL_DIRECT", ways[w], 1);
            int ok = run_seq(how, m, ref, 0, NULL, 0, m->cfg.n_experts, MB_DTYPE_F32, cpu) == 0;
            unsetenv("MB_CUDA_LOCAL_DIRECT");
            uint32_t bad = 0;
            double rel = ok ? rel_diff(cpu, got, n, ref->vocab, &bad) : INFINITY;
            printf("  %-44s vs from the buffers %.2e (bound 1e-4), argmax mismatches %u\n", how, rel, bad);
            CHECK_MSG(rel <= 1e-4 && bad == 0, "%s: %.3e from the buffers' logits, %u argmax", how, rel, bad);
        }
    }
    free(got);
    free(cpu);
}

/* Without a device: the first fixture checks the failure message. */
static void run_no_device(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    (void)name, (void)ref;
    int *checked = ctx;
    check_head_dim(m);
    if (!*checked) check_no_device(m);
    *checked = 1;
}

static void run_fixture(const char *name, const mb_model *m, const mb_reference *ref, void *ctx)
{
    (void)ctx;
    check_head_dim(m);
    run_model(name, m, ref);
}

int main(void)
{
    const char *data = getenv("MB_TEST_DATA");
    if (!data) MB_TEST_SKIP("MB_TEST_DATA not set");
    if (mb_cuda_device_count() <= 0) {
        int checked = 0;
        mb_test_each_fixture(data, run_no_device, &checked);
        CHECK_MSG(checked, "no checkpoints found under %s", data);
        if (mb_test_failures_) return mb_test_finish("test_parity_device");
        MB_TEST_SKIP("no CUDA device");
    }
    int n_models = mb_test_each_fixture(data, run_fixture, NULL);
    CHECK_MSG(n_models >= 1, "no checkpoints found under %s", data);
    return mb_test_finish("test_parity_device");
}
