/* Parity of every backend this build registers (argv[1] names one; none:
 * all of them) against a double-precision reference computed here, in the
 * manner of ggml's test-backend-ops: per token, the sum over its pairs of
 * gate * down(silu(gate_w x) * (up_w x)), from the same dtype-rounded
 * weights and activations the backend sees. Every weight dtype x payload
 * dtype, decode-sized and prefill-sized requests, shapes that are not
 * multiples of 16 or 32, uniform / skewed / sparse / empty routing, through
 * the asynchronous calls (up to caps.max_inflight outstanding, inputs
 * poisoned once CONSUMED) and through mb_backend_run, whose bytes must
 * match; then the request errors, each followed by a correct request.
 * A backend this build lacks, or whose open returns DEVICE, exits 77.
 * With a second argument "registered", every case's activations and
 * outputs come from one shared mapping registered with the backend, as a
 * worker's shared-memory segment is, so that a GPU backend may read and
 * write them in place (the Vulkan backend does where it can import host
 * memory; MB_VULKAN_HOST_IMPORT=0 or always picks the path). The Vulkan
 * backend's prefill GEMM follows MB_VULKAN_COOPMAT (1: cooperative matrices
 * required, so a device without them skips; 0: the portable f32 tiles) and
 * MB_VULKAN_PATH=gemm sends every case through it; its ctests run each.
 *
 * Error metric: max |out - ref| / max |ref| over a request's output (NaN
 * counts as infinite). Bounds by (weight dtype, payload dtype), in
 * bo_bound below, for every backend; in brackets the worst seen on the
 * CPU backend (AVX2) and the CUDA backend (H100); each bound leaves 3x or
 * more over the worse of the two:
 *   f32 weights, f32 payload    1e-5  f32 arithmetic throughout [2.6e-7, 2.0e-7].
 *   16-bit weights, f32 payload 5e-5  a GPU's tensor-core path splits f32
 *                                     activations into two 16-bit halves,
 *                                     about 16 significant bits [3.0e-7, 8.1e-6].
 *   f32/f16 weights, f16 payload 2e-3 f16 activations and output, 11 bits
 *                                     [4.5e-4, 5.1e-4].
 *   bf16 weights, f16 payload   8e-3  tensor cores take both operands in
 *                                     one type: CUDA rounds the f16
 *                                     activations to bf16, 8 bits [4.5e-4, 2.4e-3].
 *   any weights, bf16 payload   1e-2  8 bits throughout [3.5e-3, 3.5e-3].
 * Quantized experts (Q8_0, Q4_K, Q6_K, gate, up and down each its own type,
 * on backends whose caps name the types): random blocks with trained-sized
 * scales, the reference on their exact dequantization (kernels/cpu/quant.c,
 * the CPU backend's), bounds by how a backend computes:
 *   CPU backend, any payload  1.5e-1  activations and the hidden row
 *                                     quantized to 8 bits per block as
 *                                     llama.cpp does (random blocks, signed
 *                                     scales and mins magnify it) [4.2e-2,
 *                                     Q6_K down with an f16 payload].
 *   others, f32 payload         4e-3  f32 weights and activations on the
 *                                     GEMV path; the tensor-core paths round
 *                                     weights to f16 (2^-11 each) [emulator:
 *                                     GEMV 3e-7, tensor cores 6e-4; Vulkan
 *                                     on lavapipe, f32 on both paths: 1.3e-6].
 *   others, f16 payload         5e-3  the same and the f16 output [Vulkan 4.3e-4].
 *   others, bf16 payload        1e-2  as for element weights [Vulkan 3.6e-3].
 * The summary printed at the end gives the worst error per pair of dtypes,
 * to keep these honest. For the CPU emulator of the CUDA kernels
 * (tests/unit/cuda_dense/emu/run.sh): MB_BACKEND_OPS_ONLY=quant runs only
 * the quantized groups and the error checks, MB_BACKEND_OPS_MAX_TOKENS=N
 * skips requests of more tokens (MB_BACKEND_OPS_ONLY=quant also serves the
 * Vulkan backend's forced-path runs). MB_BACKEND_OPS_ONLY=elem leaves the
 * quantized groups out, and MB_BACKEND_OPS_GPU_ONLY=1 skips (77) on a CPU
 * device: for variants (host import, the portable GEMM beside cooperative
 * matrices) that would only repeat the default run on lavapipe's slow
 * shaders. The experts, the reference and the requests are in
 * backend_ops_cases.c. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tests/parity/backends/backend_ops.h"
#include "tests/testutil.h"

/* [weight dtype][payload dtype], indexed by mb_dtype. */
static const double bo_bound[3][3] = {
    /* payload:   f32   f16   bf16 */
    /* w f32  */ {1e-5, 2e-3, 1e-2},
    /* w f16  */ {5e-5, 2e-3, 1e-2},
    /* w bf16 */ {5e-5, 8e-3, 1e-2},
};

#define BO_MAX_SLOTS 512u

static const bo_case_spec bo_small_cases[] = {
    {1, BO_UNIFORM, 0},   {4, BO_UNIFORM, 0},   {16, BO_UNIFORM, 0},  {300, BO_UNIFORM, 0},
    {1100, BO_UNIFORM, 0}, {16, BO_SKEWED, 0},  {300, BO_SKEWED, 0},  {1100, BO_SKEWED, 0},
    {4, BO_SPARSE, 0},    {16, BO_SPARSE, 0},   {300, BO_SPARSE, 0},  {1100, BO_SPARSE, 0},
    {4, BO_EMPTY, 0},
};
static const bo_case_spec bo_odd_cases[] = {
    {1, BO_UNIFORM, 0}, {4, BO_UNIFORM, 0}, {16, BO_UNIFORM, 0}, {16, BO_SPARSE, 0},
    {300, BO_SKEWED, 0},
};
static const bo_case_spec bo_ragged_cases[] = {
    {1, BO_UNIFORM, 0}, {16, BO_UNIFORM, 0}, {300, BO_SPARSE, 0},
};
/* 512 skewed: one expert with 512 rows (8 full row tiles) beside ragged
 * ones, 32 K slices: the GPU tensor-core paths at prefill size. */
static const bo_case_spec bo_large_cases[] = {
    {1, BO_UNIFORM, 0}, {16, BO_UNIFORM, 0}, {64, BO_SKEWED, 0}, {256, BO_UNIFORM, 1}, {512, BO_SKEWED, 1},
};

#define BO_N(a) (sizeof(a) / sizeof((a)[0]))
static const bo_case_spec bo_top8_cases[] = {
    {1, BO_UNIFORM, 0}, {4, BO_UNIFORM, 0}, {16, BO_SKEWED, 0}, {4, BO_SPARSE, 0},
};
static const bo_case_spec bo_top6_cases[] = {
    {1, BO_UNIFORM, 0},
    {2, BO_UNIFORM, 0},
    {16, BO_SKEWED, 0},
};
static const bo_shape bo_shapes[] = {
    {"128x64", 128, 64, 8, 2, 0, 0, bo_small_cases, BO_N(bo_small_cases)},
    {"264x344", 264, 344, 6, 3, 0, 0, bo_odd_cases, BO_N(bo_odd_cases)},
    {"100x52", 100, 52, 5, 2, 0, 1, bo_ragged_cases, BO_N(bo_ragged_cases)},
    {"1024x768", 1024, 768, 8, 2, 1, 0, bo_large_cases, BO_N(bo_large_cases)},
    /* Five to eight experts a token (Qwen3 routes eight): requests of
     * up to 12 pairs, which the CUDA backend's GEMV path computes with the
     * down projection and the combine in one kernel (moe_launch.cu), so
     * that kernel sees each of these counts a token, one and two tokens a
     * request, and (d_model 76) a last block of rows past d_model. */
    {"72x48", 72, 48, 8, 8, 0, 0, bo_top8_cases, BO_N(bo_top8_cases)},
    {"76x48", 76, 48, 8, 7, 0, 0, bo_top8_cases, BO_N(bo_top8_cases)},
    {"72x40", 72, 40, 8, 6, 0, 0, bo_top6_cases, BO_N(bo_top6_cases)},
    {"76x40", 76, 40, 8, 5, 0, 0, bo_top6_cases, BO_N(bo_top6_cases)},
};
#define BO_N_SHAPES BO_N(bo_shapes)

static int bo_heavy_pair(mb_dtype wd, mb_dtype pd)
{
    return wd == pd || (wd == MB_DTYPE_BF16 && pd == MB_DTYPE_F32);
}

/* Quantized experts: shapes of whole 256-blocks, and the type mixes (gate,
 * up, down): each type alone, Q4_K_M's (down in Q6_K), all three apart. */
static const bo_case_spec bo_qsmall_cases[] = {
    {1, BO_UNIFORM, 0}, {4, BO_UNIFORM, 0},   {16, BO_UNIFORM, 0},
    {16, BO_SPARSE, 0}, {300, BO_SKEWED, 0}, {1100, BO_UNIFORM, 1},
};
static const bo_case_spec bo_qlarge_cases[] = {
    {1, BO_UNIFORM, 0}, {16, BO_UNIFORM, 0}, {64, BO_SKEWED, 0}, {256, BO_UNIFORM, 1},
};
static const bo_shape bo_qshapes[] = {
    {"256x512", 256, 512, 8, 2, 0, 0, bo_qsmall_cases, BO_N(bo_qsmall_cases)},
    {"1024x768", 1024, 768, 8, 2, 1, 0, bo_qlarge_cases, BO_N(bo_qlarge_cases)},
};
#define BO_N_QSHAPES BO_N(bo_qshapes)
static const mb_dtype bo_qmixes[][3] = {
    {MB_DTYPE_Q8_0, MB_DTYPE_Q8_0, MB_DTYPE_Q8_0}, {MB_DTYPE_Q4_K, MB_DTYPE_Q4_K, MB_DTYPE_Q4_K},
    {MB_DTYPE_Q6_K, MB_DTYPE_Q6_K, MB_DTYPE_Q6_K}, {MB_DTYPE_Q4_K, MB_DTYPE_Q4_K, MB_DTYPE_Q6_K},
    {MB_DTYPE_Q6_K, MB_DTYPE_Q8_0, MB_DTYPE_Q4_K},
};
#define BO_N_QMIXES BO_N(bo_qmixes)
#define BO_QLAYER0 (3 * BO_N_SHAPES + 3) /* above the error checks' layers */

/* Layers and slots: one layer per (weight dtype, shape), slots in blocks of
 * BO_SLOTS_PER_LAYER; the error checks use two more layers above them, the
 * quantized groups the layers from BO_QLAYER0. */
static uint32_t bo_layer(mb_dtype wd, size_t si)
{
    return (uint32_t)wd * BO_N_SHAPES + (uint32_t)si;
}

/* ---- one backend ---- */

typedef struct {
    const char *name;
    mb_backend *b;
    mb_backend_caps caps;
    double worst[3][3]; /* worst error per (weight dtype, payload dtype); -1: not run */
    double qworst[BO_N_QMIXES][3]; /* the same per quantized mix */
} bo_ctx;

/* Runs every case of shape s (the heavy ones when heavy) on layer, weights
 * ex named wname, in payload pd, against bound; *worst keeps the largest
 * error. */
static void bo_run_group(bo_ctx *x, const bo_shape *s, const bo_expert *ex, uint32_t layer, const char *wname,
                         mb_dtype pd, double bound, int heavy, double *worst, unsigned long long *seed)
{
    bo_case *cs = calloc(s->n_cases, sizeof *cs);
    REQUIRE(cs);
    const char *mt = getenv("MB_BACKEND_OPS_MAX_TOKENS");
    const unsigned long max_tokens = mt ? strtoul(mt, NULL, 10) : 0;
    size_t n = 0;
    for (size_t i = 0; i < s->n_cases; i++)
        if ((!s->cases[i].heavy || heavy) && (!max_tokens || s->cases[i].n_tokens <= max_tokens))
            bo_case_init(&cs[n++], s, ex, layer, pd, &s->cases[i], seed);
    bo_run_async(x->b, x->caps.max_inflight, cs, n);
    bo_run_sync(x->b, cs, n);
    for (size_t i = 0; i < n; i++) {
        bo_case *c = &cs[i];
        c->err = c->ok ? bo_norm_err(&c->req, c->out_async, c->ref) : INFINITY;
        int pass = c->ok && c->err <= bound;
        printf("%-6s %-4s %-4s %s %10.3g %8.0e %s\n", x->name, wname, mb_dtype_name(pd), c->label, c->err, bound,
               pass ? "ok" : "FAIL");
        CHECK_MSG(pass, "%s w %s payload %s %s: err %.3g > %.0e", x->name, wname, mb_dtype_name(pd), c->label,
                  c->err, bound);
        if (c->err > *worst) *worst = c->err;
        bo_case_fini(c);
    }
    fflush(stdout);
    free(cs);
}

/* Loads shape s's experts ex into layer; OK, or the first failure. */
static mb_status bo_load_layer(bo_ctx *x, const bo_shape *s, const bo_expert *ex, uint32_t layer)
{
    for (uint32_t e = 0; e < s->n_experts; e++) {
        mb_status st = bo_load(x->b, &ex[e], layer, bo_slot(layer, e));
        if (st != MB_STATUS_OK) return st;
    }
    return mb_backend_load_finish(x->b);
}

/* Whether the backend computes on the CPU: the cpu backend, a Vulkan
 * device of type CPU (Mesa's lavapipe, which CI runs the shaders on, at
 * under 1 GFLOP/s; its caps.device ends in "(TYPE, Vulkan X.Y)"), or the
 * CPU emulator of the CUDA kernels. */
static int bo_cpu_device(const bo_ctx *x)
{
    return strcmp(x->name, "cpu") == 0 || (strcmp(x->name, "vulkan") == 0 && strstr(x->caps.device, "(CPU, ")) ||
           strstr(x->caps.device, "CPU emulator") != NULL;
}

/* Every shape and dtype pair this backend takes. */
static void bo_parity(bo_ctx *x)
{
    const int is_cpu = bo_cpu_device(x);
    for (int w = 0; w < 3; w++) {
        mb_dtype wd = (mb_dtype)w;
        for (size_t si = 0; si < BO_N_SHAPES; si++) {
            const bo_shape *s = &bo_shapes[si];
            if (s->not_cpu && is_cpu) continue;
            unsigned long long seed = 0xB0E0ull + 977ull * (unsigned long long)(w * 16 + (int)si);
            bo_expert ex[BO_SLOTS_PER_LAYER];
            for (uint32_t e = 0; e < s->n_experts; e++)
                bo_expert_init(&ex[e], wd, s->d_model, s->d_ff, &seed);
            uint32_t layer = bo_layer(wd, si);
            mb_status st = bo_load_layer(x, s, ex, layer);
            if (s->optional && (st == MB_STATUS_BAD_SHAPE || st == MB_STATUS_UNSUPPORTED)) {
                printf("%-6s %-4s      %-8s refused at load (%s): allowed for this shape\n", x->name,
                       mb_dtype_name(wd), s->name, mb_status_name(st));
            } else {
                CHECK_MSG(st == MB_STATUS_OK, "%s: loading %s w %s: %s", x->name, s->name,
                          mb_dtype_name(wd), mb_status_str(st));
                for (int p = 0; p < 3 && st == MB_STATUS_OK; p++) {
                    char why[160];
                    if (mb_backend_caps_check(&x->caps, MB_DTYPE_MASK(wd), (mb_dtype)p, why, sizeof why) !=
                        MB_STATUS_OK) {
                        if (si == 0) printf("%-6s skipped: %s\n", x->name, why);
                        continue;
                    }
                    bo_run_group(x, s, ex, layer, mb_dtype_name(wd), (mb_dtype)p, bo_bound[wd][p],
                                 bo_heavy_pair(wd, (mb_dtype)p), &x->worst[wd][p], &seed);
                }
            }
            for (uint32_t e = 0; e < s->n_experts; e++)
                bo_expert_fini(&ex[e]);
        }
    }
}

/* Quantized groups' bound: 8-bit activations on the CPU backend, f32 ones
 * and f16 tensor-core weights elsewhere (see the top of this file). */
static double bo_qbound(const bo_ctx *x, mb_dtype pd)
{
    if (strcmp(x->name, "cpu") == 0) return 1.5e-1;
    return pd == MB_DTYPE_F32 ? 4e-3 : pd == MB_DTYPE_F16 ? 5e-3 : 1e-2;
}

/* Every quantized mix and payload the backend's caps name; the quantized
 * types they lack must be refused at load, by name in caps_check. */
static void bo_parity_quant(bo_ctx *x)
{
    static const mb_dtype all_q[] = {MB_DTYPE_Q8_0, MB_DTYPE_Q4_0, MB_DTYPE_Q4_K, MB_DTYPE_Q5_K, MB_DTYPE_Q6_K};
    const int is_cpu = bo_cpu_device(x);
    for (size_t i = 0; i < BO_N(all_q); i++) {
        char why[160];
        if (mb_backend_caps_check(&x->caps, MB_DTYPE_MASK(all_q[i]), MB_DTYPE_F32, why, sizeof why) == MB_STATUS_OK)
            continue;
        CHECK_MSG(strstr(why, mb_dtype_name(all_q[i])) != NULL, "%s: refusal does not name %s: %s", x->name,
                  mb_dtype_name(all_q[i]), why);
        unsigned long long seed = 0xF00ull;
        const mb_dtype t3[3] = {all_q[i], all_q[i], all_q[i]};
        bo_expert e;
        bo_expert_init_quant(&e, t3, 256, 256, &seed);
        CHECK_EQ(bo_load(x->b, &e, BO_QLAYER0, bo_slot(BO_QLAYER0, 0)), MB_STATUS_BAD_DTYPE);
        bo_expert_fini(&e);
        printf("%-6s refuses %s experts: %s\n", x->name, mb_dtype_name(all_q[i]), why);
    }
    for (size_t mi = 0; mi < BO_N_QMIXES; mi++) {
        const mb_dtype *wd = bo_qmixes[mi];
        const uint32_t mask = MB_DTYPE_MASK(wd[0]) | MB_DTYPE_MASK(wd[1]) | MB_DTYPE_MASK(wd[2]);
        char wname[32], why[160];
        snprintf(wname, sizeof wname, "%s/%s/%s", mb_dtype_name(wd[0]), mb_dtype_name(wd[1]), mb_dtype_name(wd[2]));
        if (mb_backend_caps_check(&x->caps, mask, MB_DTYPE_F32, why, sizeof why) != MB_STATUS_OK) {
            printf("%-6s %s skipped: %s\n", x->name, wname, why);
            continue;
        }
        for (size_t si = 0; si < BO_N_QSHAPES; si++) {
            const bo_shape *s = &bo_qshapes[si];
            if (s->not_cpu && is_cpu) continue;
            unsigned long long seed = 0x0B0Eull + 1031ull * (unsigned long long)(mi * 16 + si);
            bo_expert ex[BO_SLOTS_PER_LAYER];
            for (uint32_t e = 0; e < s->n_experts; e++)
                bo_expert_init_quant(&ex[e], wd, s->d_model, s->d_ff, &seed);
            const uint32_t layer = BO_QLAYER0 + (uint32_t)(mi * BO_N_QSHAPES + si);
            mb_status st = bo_load_layer(x, s, ex, layer);
            CHECK_MSG(st == MB_STATUS_OK, "%s: loading %s w %s: %s", x->name, s->name, wname, mb_status_str(st));
            for (int p = 0; p < 3 && st == MB_STATUS_OK; p++) {
                if (mb_backend_caps_check(&x->caps, mask, (mb_dtype)p, why, sizeof why) != MB_STATUS_OK) continue;
                bo_run_group(x, s, ex, layer, wname, (mb_dtype)p, bo_qbound(x, (mb_dtype)p), p == MB_DTYPE_F32,
                             &x->qworst[mi][p], &seed);
            }
            for (uint32_t e = 0; e < s->n_experts; e++)
                bo_expert_fini(&ex[e]);
        }
    }
}

/* Expects req to fail with want, through run and through submit (at once,
 * or in its DONE event); nothing stays outstanding. */
static void bo_expect_error(bo_ctx *x, const mb_proto_expert_req *req, mb_status want,
                            const char *what)
{
    size_t bytes = (size_t)req->n_tokens * req->d_model * mb_dtype_size(req->dtype);
    void *out = bo_alloc(bytes);
    mb_status st = mb_backend_run(x->b, req, out, NULL);
    CHECK_MSG(st == want, "%s: %s: run gave %s, expected %s", x->name, what, mb_status_name(st),
              mb_status_name(want));
    const uint64_t tag = 0xE770;
    st = mb_backend_submit(x->b, tag, req);
    while (st == MB_STATUS_OK) {
        mb_backend_event ev;
        st = mb_backend_poll(x->b, BO_POLL_TIMEOUT_NS, &ev);
        REQUIRE(st == MB_STATUS_OK && ev.tag == tag);
        if (ev.kind != MB_BACKEND_EVENT_DONE) continue;
        st = ev.status;
        if (st == MB_STATUS_OK) { /* drain the unexpected success */
            CHECK_EQ(mb_backend_fetch(x->b, tag, out), MB_STATUS_OK);
            break;
        }
    }
    CHECK_MSG(st == want, "%s: %s: submit gave %s, expected %s", x->name, what,
              mb_status_name(st), mb_status_name(want));
    CHECK_EQ(mb_backend_outstanding(x->b), 0);
    printf("%-6s error: %-34s -> %s\n", x->name, what, mb_status_name(st));
    bo_free(out);
}

/* A correct request on layer after an error: the backend must have survived. */
static void bo_expect_recovered(bo_ctx *x, const bo_shape *s, const bo_expert *ex, uint32_t layer,
                                const char *after, unsigned long long *seed)
{
    static const bo_case_spec spec = {16, BO_UNIFORM, 0};
    bo_case c;
    bo_case_init(&c, s, ex, layer, MB_DTYPE_F32, &spec, seed);
    mb_status st = mb_backend_run(x->b, &c.req, c.out_sync, NULL);
    double err = st == MB_STATUS_OK ? bo_norm_err(&c.req, c.out_sync, c.ref) : INFINITY;
    CHECK_MSG(err <= bo_bound[MB_DTYPE_F32][MB_DTYPE_F32], "%s: after %s: run %s, err %.3g",
              x->name, after, mb_status_str(st), err);
    bo_case_fini(&c);
}

/* The request errors, on two fresh layers of the small shape (f32 and bf16
 * weights), each followed by a correct request. */
static void bo_errors(bo_ctx *x)
{
    const bo_shape *s = &bo_shapes[0];
    const uint32_t la = 3 * BO_N_SHAPES, lb = la + 1, unloaded = bo_slot(lb + 1, 0);
    unsigned long long seed = 0xE44ull;
    bo_expert ea[BO_SLOTS_PER_LAYER], eb[BO_SLOTS_PER_LAYER];
    for (uint32_t e = 0; e < s->n_experts; e++) {
        bo_expert_init(&ea[e], MB_DTYPE_F32, s->d_model, s->d_ff, &seed);
        bo_expert_init(&eb[e], MB_DTYPE_BF16, s->d_model, s->d_ff, &seed);
    }
    REQUIRE(bo_load_layer(x, s, ea, la) == MB_STATUS_OK);
    REQUIRE(bo_load_layer(x, s, eb, lb) == MB_STATUS_OK);
    REQUIRE(unloaded < x->caps.max_slots);
    static const bo_case_spec spec = {16, BO_UNIFORM, 0};
    bo_case c;

    bo_case_init(&c, s, NULL, la, MB_DTYPE_F32, &spec, &seed);
    c.pairs[3].slot = unloaded;
    bo_expect_error(x, &c.req, MB_STATUS_NOT_LOADED, "slot not loaded");
    bo_expect_recovered(x, s, ea, la, "slot not loaded", &seed);
    c.pairs[3].slot = bo_slot(lb, 2);
    bo_expect_error(x, &c.req, MB_STATUS_NOT_LOADED, "slot of another layer");
    bo_expect_recovered(x, s, ea, la, "slot of another layer", &seed);
    c.pairs[3].slot = x->caps.max_slots;
    bo_expect_error(x, &c.req, MB_STATUS_SLOT_RANGE, "slot past max_slots");
    bo_expect_recovered(x, s, ea, la, "slot past max_slots", &seed);
    c.pairs[3].slot = bo_slot(la, 1);
    c.req.n_pairs++;
    bo_expect_error(x, &c.req, MB_STATUS_PAIR_COUNT, "pair counts not summing to n_pairs");
    bo_expect_recovered(x, s, ea, la, "pair counts", &seed);
    bo_case_fini(&c);

    /* d_model 8 more than the layer's: act sized for it. */
    bo_shape wide = *s;
    wide.d_model += 8;
    bo_case_init(&c, &wide, NULL, la, MB_DTYPE_F32, &spec, &seed);
    for (uint32_t i = 0; i < c.req.n_pairs; i++)
        c.pairs[i].slot = bo_slot(la, i % s->n_experts);
    bo_expect_error(x, &c.req, MB_STATUS_BAD_SHAPE, "d_model mismatch");
    bo_expect_recovered(x, s, ea, la, "d_model mismatch", &seed);
    bo_case_fini(&c);

    /* A request one token larger than the staging area. */
    const uint64_t cap = x->caps.max_request_bytes, row = (uint64_t)s->d_model * sizeof(float);
    if (cap != 0 && cap / row + 1 <= 1000000) {
        bo_case_spec big = {(uint32_t)(cap / row + 1), BO_UNIFORM, 0};
        bo_case_init(&c, s, NULL, la, MB_DTYPE_F32, &big, &seed);
        bo_expect_error(x, &c.req, MB_STATUS_FULL, "larger than max_request_bytes");
        bo_expect_recovered(x, s, ea, la, "a request too large", &seed);
        bo_case_fini(&c);
    } else if (cap != 0) {
        printf("%-6s error: max_request_bytes %llu too large to test FULL here\n", x->name,
               (unsigned long long)cap);
    }
    for (uint32_t e = 0; e < s->n_experts; e++) {
        bo_expert_fini(&ea[e]);
        bo_expert_fini(&eb[e]);
    }
}

/* One row of the summary: the worst error and bound per payload dtype. */
static void bo_print_worst(const char *name, const double worst[3], const double bound[3])
{
    printf("%-14s", name);
    for (int p = 0; p < 3; p++) {
        char cell[32];
        if (worst[p] < 0)
            snprintf(cell, sizeof cell, "-");
        else
            snprintf(cell, sizeof cell, "%.2e (%.0e)", worst[p], bound[p]);
        printf(" %-20s", cell);
    }
    printf("\n");
}

/* Opens ops' backend and runs everything (in registered host memory when
 * registered): 0 when it ran, 77 when skipped. */
static int bo_test_backend(const mb_backend_ops *ops, bo_ctx *x, int registered)
{
    const mb_backend_cpu_options cpu = {.n_threads = 0, .numa = MB_NUMA_DEFAULT};
    /* A small staging area keeps the FULL request cheap; 4 in flight
     * exercises the tag table beyond the default 2. */
    const mb_backend_gpu_options gpu = {.staging_bytes = 16u << 20, .max_inflight = 4, .progress = 0};
    x->name = ops->name;
    mb_backend_config cfg = {.device = -1, .max_slots = BO_MAX_SLOTS};
    cfg.options = strcmp(ops->name, "cpu") == 0 ? (const void *)&cpu : (const void *)&gpu;
    mb_status st = mb_backend_open(ops, &cfg, &x->b);
    if (st == MB_STATUS_DEVICE) {
        fprintf(stderr, "SKIP: backend %s: no device (%s)\n", ops->name, mb_status_str(st));
        return 77;
    }
    REQUIRE(st == MB_STATUS_OK);
    REQUIRE(mb_backend_caps_get(x->b, &x->caps) == MB_STATUS_OK);
    if (registered) {
        bo_arena.base = mmap(NULL, BO_ARENA_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                             -1, 0);
        REQUIRE(bo_arena.base != MAP_FAILED);
        st = mb_backend_register_host(x->b, bo_arena.base, BO_ARENA_BYTES);
        printf("backend %s: registered host memory %s\n", ops->name,
               st == MB_STATUS_OK ? "accepted" : mb_status_name(st));
        if (st != MB_STATUS_OK) registered = 0;
    }
    if (getenv("MB_BACKEND_OPS_GPU_ONLY") && bo_cpu_device(x)) {
        /* A variant that only differs from the default run on a real GPU. */
        mb_backend_close(x->b);
        x->b = NULL;
        fprintf(stderr, "SKIP: backend %s: %s is a CPU device (MB_BACKEND_OPS_GPU_ONLY)\n", ops->name, x->caps.device);
        return 77;
    }
    REQUIRE(x->caps.max_slots >= BO_MAX_SLOTS && x->caps.max_inflight >= 1);
    printf("backend %s: %s, max_inflight %u, max_request_bytes %llu, %s\n", ops->name,
           x->caps.device, x->caps.max_inflight, (unsigned long long)x->caps.max_request_bytes,
           mb_backend_is_async(x->b) ? "asynchronous" : "synchronous");
    printf("%-6s %-4s %-4s %-8s %5s %-7s %5s %10s %8s\n", "back", "w", "pay", "shape", "tok",
           "routing", "pairs", "err", "bound");
    for (int p = 0; p < 3; p++) {
        for (int w = 0; w < 3; w++)
            x->worst[w][p] = -1;
        for (size_t m = 0; m < BO_N_QMIXES; m++)
            x->qworst[m][p] = -1;
    }
    const char *only = getenv("MB_BACKEND_OPS_ONLY");
    if (!only || strcmp(only, "quant") != 0) bo_parity(x);
    if (!only || strcmp(only, "elem") != 0) bo_parity_quant(x);
    bo_errors(x);
    if (registered) mb_backend_unregister_host(x->b, bo_arena.base);
    mb_backend_close(x->b);
    x->b = NULL;
    if (bo_arena.base) {
        CHECK_EQ(bo_arena.live, 0);
        munmap(bo_arena.base, BO_ARENA_BYTES);
        bo_arena.base = NULL;
    }

    printf("\n%s: worst normalised error (bound) by weight dtype (rows) and payload dtype\n",
           ops->name);
    printf("%-14s %-20s %-20s %-20s\n", "", "f32", "f16", "bf16");
    for (int w = 0; w < 3; w++) {
        const double b[3] = {bo_bound[w][0], bo_bound[w][1], bo_bound[w][2]};
        bo_print_worst(mb_dtype_name(w), x->worst[w], b);
    }
    for (size_t m = 0; m < BO_N_QMIXES; m++) {
        const mb_dtype *wd = bo_qmixes[m];
        const double b[3] = {bo_qbound(x, MB_DTYPE_F32), bo_qbound(x, MB_DTYPE_F16), bo_qbound(x, MB_DTYPE_BF16)};
        char name[32];
        snprintf(name, sizeof name, "%s/%s/%s", mb_dtype_name(wd[0]), mb_dtype_name(wd[1]), mb_dtype_name(wd[2]));
        bo_print_worst(name, x->qworst[m], b);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int ran = 0;
    const int registered = argc > 2 && strcmp(argv[2], "registered") == 0;
    if (argc > 1 && strcmp(argv[1], "all") != 0) {
        const mb_backend_ops *ops = mb_backend_find(argv[1]);
        if (!ops) MB_TEST_SKIP("this build has no %s backend", argv[1]);
        bo_ctx x = {0};
        if (bo_test_backend(ops, &x, registered) == 77) return 77;
        ran = 1;
    } else {
        for (size_t i = 0; i < mb_backend_count(); i++) {
            bo_ctx x = {0};
            ran += bo_test_backend(mb_backend_at(i), &x, registered) == 0;
        }
    }
    if (!ran) MB_TEST_SKIP("no backend could be opened");
    return mb_test_finish("test_backend_ops");
}
