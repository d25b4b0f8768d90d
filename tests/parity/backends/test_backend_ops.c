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
 * shaders. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backends/backend.h"
#include "protocol/dtype.h"
#include "tests/quant_testutil.h"
#include "tests/testutil.h"

/* [weight dtype][payload dtype], indexed by mb_dtype. */
static const double bo_bound[3][3] = {
    /* payload:   f32   f16   bf16 */
    /* w f32  */ {1e-5, 2e-3, 1e-2},
    /* w f16  */ {5e-5, 2e-3, 1e-2},
    /* w bf16 */ {5e-5, 8e-3, 1e-2},
};

#define BO_POLL_TIMEOUT_NS 60000000000LL /* a hung backend fails, not hangs */
#define BO_MAX_SLOTS 512u
#define BO_SLOTS_PER_LAYER 8u

typedef enum { BO_UNIFORM, BO_SKEWED, BO_SPARSE, BO_EMPTY } bo_routing;
static const char *const bo_routing_name[] = {"uniform", "skewed", "sparse", "empty"};

/* A request size and routing; heavy cases run only for some dtype pairs
 * (bo_heavy_pair) to keep the reference's time down. */
typedef struct {
    uint32_t n_tokens;
    bo_routing routing;
    int heavy;
} bo_case_spec;

typedef struct {
    const char *name;
    uint32_t d_model, d_ff, n_experts, top_k;
    int not_cpu;  /* skipped on CPU devices (bo_cpu_device): the reference
                     and the device would be slow */
    int optional; /* a backend may refuse the shape at load (BAD_SHAPE) */
    const bo_case_spec *cases;
    size_t n_cases;
} bo_shape;

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

static uint32_t bo_slot(uint32_t layer, uint32_t e)
{
    return layer * BO_SLOTS_PER_LAYER + e;
}

/* ---- registered host memory ---- */

#define BO_ARENA_BYTES ((size_t)128 << 20)

/* A bump allocator over one shared mapping, emptied whenever nothing in it
 * is live; NULL base: plain malloc. */
static struct {
    uint8_t *base;
    size_t used;
    unsigned live;
} bo_arena;

/* Allocations are 8-aligned, as activations in a message are, and spaced
 * so that most are not 16- or 64-aligned. */
static void *bo_alloc(size_t bytes)
{
    if (!bo_arena.base) {
        void *p = malloc(bytes ? bytes : 1);
        REQUIRE(p);
        return p;
    }
    size_t at = ((bo_arena.used + 7) & ~(size_t)7) + 8;
    REQUIRE(at <= BO_ARENA_BYTES && bytes <= BO_ARENA_BYTES - at);
    bo_arena.used = at + bytes;
    bo_arena.live++;
    return bo_arena.base + at;
}

static void bo_free(void *p)
{
    if (!bo_arena.base || (uint8_t *)p < bo_arena.base || (uint8_t *)p >= bo_arena.base + BO_ARENA_BYTES) {
        free(p);
        return;
    }
    if (--bo_arena.live == 0) bo_arena.used = 0;
}

/* ---- experts and the reference ---- */

typedef struct {
    uint32_t d_model, d_ff;
    mb_dtype wd[3]; /* of gate, up, down: one element dtype, or quantized ones */
    void *w[3];     /* gate, up [d_ff][d_model]; down [d_model][d_ff], in wd */
    double *wr[3];  /* the same values as doubles */
} bo_expert;

static void bo_expert_init(bo_expert *e, mb_dtype wd, uint32_t d_model, uint32_t d_ff,
                           unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    e->wd[0] = e->wd[1] = e->wd[2] = wd;
    size_t n = (size_t)d_model * d_ff;
    float *tmp = malloc(sizeof(float) * n);
    REQUIRE(tmp);
    for (int m = 0; m < 3; m++) {
        float scale = 2.0f / sqrtf((float)(m == 2 ? d_ff : d_model));
        for (size_t i = 0; i < n; i++)
            tmp[i] = mb_test_rand_f32(seed) * scale;
        e->w[m] = malloc(n * mb_dtype_size(wd));
        e->wr[m] = malloc(n * sizeof(double));
        REQUIRE(e->w[m] && e->wr[m]);
        mb_dtype_encode_f32(wd, e->w[m], tmp, n);
        mb_dtype_decode_f32(wd, tmp, e->w[m], n);
        for (size_t i = 0; i < n; i++)
            e->wr[m][i] = tmp[i];
    }
    free(tmp);
}

/* Random quantized blocks of types wd (trained-sized scales) and their
 * exact dequantization. */
static void bo_expert_init_quant(bo_expert *e, const mb_dtype wd[3], uint32_t d_model, uint32_t d_ff,
                                 unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    for (int m = 0; m < 3; m++) {
        const size_t rows = m == 2 ? d_model : d_ff, cols = m == 2 ? d_ff : d_model;
        e->wd[m] = wd[m];
        e->w[m] = mb_test_quant_blocks((int)wd[m], rows * cols / mb_dtype_block_elems(wd[m]), 0, seed);
        e->wr[m] = mb_test_quant_dequant((int)wd[m], e->w[m], rows, cols);
    }
}

static void bo_expert_fini(bo_expert *e)
{
    for (int m = 0; m < 3; m++) {
        free(e->w[m]);
        free(e->wr[m]);
    }
}

static mb_status bo_load(mb_backend *b, const bo_expert *e, uint32_t layer, uint32_t slot)
{
    mb_expert_weights w = {layer, slot, slot, e->d_model, e->d_ff, {e->wd[0], e->wd[1], e->wd[2]},
                           e->w[0], e->w[1], e->w[2]};
    return mb_backend_load_expert(b, &w);
}

/* Four partial sums: the reference stays exact enough and runs a few times
 * faster than one dependent chain. */
static double bo_dot(const double *a, const double *b, size_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* y[d_model] += g * down(silu(gate x) * (up x)); h is scratch [d_ff]. */
static void bo_ref_add(const bo_expert *e, const double *x, double g, double *h, double *y)
{
    size_t dm = e->d_model, df = e->d_ff;
    for (size_t f = 0; f < df; f++) {
        double a = bo_dot(e->wr[0] + f * dm, x, dm), u = bo_dot(e->wr[1] + f * dm, x, dm);
        h[f] = a / (1.0 + exp(-a)) * u;
    }
    for (size_t c = 0; c < dm; c++)
        y[c] += g * bo_dot(e->wr[2] + c * df, h, df);
}

/* ---- cases ---- */

typedef struct {
    char label[80];
    mb_proto_expert_req req;
    uint16_t *counts;
    mb_proto_pair *pairs, *pairs_keep; /* keep: pristine copies to restore */
    void *act, *act_keep;
    double *ref;                       /* [n_tokens][d_model] */
    void *out_async, *out_sync;        /* [n_tokens][d_model] in the payload dtype */
    size_t act_bytes;
    int submitted, consumed, done, ok;
    double err;
} bo_case;

/* Picks k distinct experts of [0, n) into ids, hot first when hot >= 0. */
static void bo_pick(uint32_t *ids, uint32_t k, uint32_t n, int hot, unsigned long long *seed)
{
    uint32_t got = 0;
    if (hot >= 0) ids[got++] = (uint32_t)hot;
    while (got < k) {
        uint32_t e = (uint32_t)(mb_test_rand_u64(seed) % n), dup = 0;
        for (uint32_t i = 0; i < got; i++)
            dup |= ids[i] == e;
        if (!dup) ids[got++] = e;
    }
    /* The hot expert moves to a random position so that request order varies. */
    uint32_t j = (uint32_t)(mb_test_rand_u64(seed) % k), t = ids[0];
    ids[0] = ids[j];
    ids[j] = t;
}

/* Builds a request of layer on experts ex (shape s), in payload pd, and its
 * reference (none when ex is NULL: requests meant to fail). Uniform: top_k random distinct experts a token. Skewed: one
 * expert in every token. Sparse: only the first half of the experts, a
 * third of the tokens without any, others 1..top_k. Empty: no pairs. */
static void bo_case_init(bo_case *c, const bo_shape *s, const bo_expert *ex, uint32_t layer,
                         mb_dtype pd, const bo_case_spec *cs, unsigned long long *seed)
{
    memset(c, 0, sizeof *c);
    uint32_t nt = cs->n_tokens, dm = s->d_model, k = s->top_k;
    size_t n_act = (size_t)nt * dm;
    c->counts = calloc(nt, sizeof *c->counts);
    c->pairs = calloc((size_t)nt * k + 1, sizeof *c->pairs);
    c->pairs_keep = calloc((size_t)nt * k + 1, sizeof *c->pairs_keep);
    c->act_bytes = n_act * mb_dtype_size(pd);
    c->act = bo_alloc(c->act_bytes);
    c->act_keep = malloc(c->act_bytes);
    c->out_async = bo_alloc(c->act_bytes);
    c->out_sync = bo_alloc(c->act_bytes);
    size_t n_ref = ex ? n_act : 1;
    c->ref = calloc(n_ref, sizeof *c->ref);
    double *x = malloc(n_ref * sizeof *x), *h = malloc(s->d_ff * sizeof *h);
    float *tmp = malloc(n_act * sizeof *tmp);
    REQUIRE(c->counts && c->pairs && c->pairs_keep && c->act && c->act_keep && c->out_async &&
            c->out_sync && c->ref && x && h && tmp);
    for (size_t i = 0; i < n_act; i++)
        tmp[i] = mb_test_rand_f32(seed) * 2.0f;
    mb_dtype_encode_f32(pd, c->act, tmp, n_act);
    mb_dtype_decode_f32(pd, tmp, c->act, n_act);
    for (size_t i = 0; ex && i < n_act; i++)
        x[i] = tmp[i];
    memcpy(c->act_keep, c->act, c->act_bytes);

    int hot = cs->routing == BO_SKEWED ? (int)(mb_test_rand_u64(seed) % s->n_experts) : -1;
    uint32_t span = cs->routing == BO_SPARSE ? (s->n_experts + 1) / 2 : s->n_experts;
    uint32_t q = 0, ids[16];
    for (uint32_t t = 0; t < nt; t++) {
        uint32_t n = k;
        if (cs->routing == BO_EMPTY) n = 0;
        if (cs->routing == BO_SPARSE)
            n = t % 3 == 1 ? 0 : 1 + (uint32_t)(mb_test_rand_u64(seed) % (k < span ? k : span));
        c->counts[t] = (uint16_t)n;
        if (n == 0) continue;
        bo_pick(ids, n, span, hot, seed);
        for (uint32_t i = 0; i < n; i++, q++) {
            c->pairs[q].slot = bo_slot(layer, ids[i]);
            c->pairs[q].gate = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
            if (ex)
                bo_ref_add(&ex[ids[i]], x + (size_t)t * dm, c->pairs[q].gate, h,
                           c->ref + (size_t)t * dm);
        }
    }
    memcpy(c->pairs_keep, c->pairs, ((size_t)q + 1) * sizeof *c->pairs);
    c->req = (mb_proto_expert_req){layer, nt, dm, pd, q, c->counts, c->pairs, c->act};
    snprintf(c->label, sizeof c->label, "%-8s %5u %-7s %5u", s->name, nt,
             bo_routing_name[cs->routing], q);
    /* Outputs poisoned with all-ones bytes: NaN in every dtype. */
    memset(c->out_async, 0xff, c->act_bytes);
    memset(c->out_sync, 0xff, c->act_bytes);
    free(x);
    free(h);
    free(tmp);
}

static void bo_case_fini(bo_case *c)
{
    free(c->counts);
    free(c->pairs);
    free(c->pairs_keep);
    bo_free(c->act);
    free(c->act_keep);
    free(c->ref);
    bo_free(c->out_async);
    bo_free(c->out_sync);
}

/* Once CONSUMED, the backend must not read the inputs again: make any late
 * read show as NaN. */
static void bo_case_poison_inputs(bo_case *c)
{
    memset(c->act, 0xff, c->act_bytes);
    for (uint32_t i = 0; i < c->req.n_pairs; i++)
        c->pairs[i].gate = NAN;
}

static void bo_case_restore_inputs(bo_case *c)
{
    memcpy(c->act, c->act_keep, c->act_bytes);
    memcpy(c->pairs, c->pairs_keep, (size_t)c->req.n_pairs * sizeof *c->pairs);
}

/* max |out - ref| / max |ref|; NaN counts as infinite. An all-zero ref
 * (no pairs) must give exact zeros. */
static double bo_norm_err(const mb_proto_expert_req *req, const void *out, const double *ref)
{
    size_t n = (size_t)req->n_tokens * req->d_model;
    float *o = malloc(sizeof(float) * n);
    REQUIRE(o);
    mb_dtype_decode_f32(req->dtype, o, out, n);
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)o[i] - ref[i]);
        if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    free(o);
    return maxref > 0 ? maxdiff / maxref : maxdiff > 0 ? INFINITY : 0;
}

/* ---- the two paths ---- */

/* Submits every case with up to max_inflight outstanding, polls, poisons
 * inputs at CONSUMED, fetches each DONE into out_async. */
static void bo_run_async(mb_backend *b, uint32_t max_inflight, bo_case *cs, size_t n)
{
    size_t next = 0, finished = 0;
    uint32_t outstanding = 0;
    while (finished < n) {
        while (next < n && outstanding < max_inflight) {
            mb_status st = mb_backend_submit(b, next, &cs[next].req);
            if (st == MB_STATUS_AGAIN) break;
            CHECK_MSG(st == MB_STATUS_OK, "%s: submit: %s", cs[next].label, mb_status_str(st));
            if (st == MB_STATUS_OK) {
                cs[next].submitted = 1;
                outstanding++;
            } else {
                finished++;
            }
            next++;
        }
        if (finished == n) break;
        REQUIRE(outstanding > 0); /* AGAIN with nothing outstanding: no progress possible */
        CHECK_EQ(mb_backend_outstanding(b), outstanding);
        mb_backend_event ev;
        mb_status st = mb_backend_poll(b, BO_POLL_TIMEOUT_NS, &ev);
        if (st != MB_STATUS_OK) {
            fprintf(stderr, "poll: %s with %u outstanding\n", mb_status_str(st), outstanding);
            exit(1);
        }
        REQUIRE(ev.tag < next && cs[ev.tag].submitted && !cs[ev.tag].done);
        bo_case *c = &cs[ev.tag];
        if (ev.kind == MB_BACKEND_EVENT_CONSUMED) {
            CHECK_MSG(!c->consumed, "%s: CONSUMED twice", c->label);
            c->consumed = 1;
            bo_case_poison_inputs(c);
            continue;
        }
        REQUIRE(ev.kind == MB_BACKEND_EVENT_DONE);
        if (!c->consumed) bo_case_poison_inputs(c);
        c->consumed = c->done = 1;
        outstanding--;
        finished++;
        CHECK_MSG(ev.status == MB_STATUS_OK, "%s: DONE with %s", c->label, mb_status_str(ev.status));
        if (ev.status != MB_STATUS_OK) continue;
        st = mb_backend_fetch(b, ev.tag, c->out_async);
        CHECK_MSG(st == MB_STATUS_OK, "%s: fetch: %s", c->label, mb_status_str(st));
        c->ok = st == MB_STATUS_OK;
    }
    CHECK_EQ(mb_backend_outstanding(b), 0);
}

/* The same requests through mb_backend_run: identical bytes expected. */
static void bo_run_sync(mb_backend *b, bo_case *cs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bo_case *c = &cs[i];
        bo_case_restore_inputs(c);
        mb_status st = mb_backend_run(b, &c->req, c->out_sync, NULL);
        CHECK_MSG(st == MB_STATUS_OK, "%s: run: %s", c->label, mb_status_str(st));
        if (st != MB_STATUS_OK) c->ok = 0;
        CHECK_MSG(st != MB_STATUS_OK || memcmp(c->out_sync, c->out_async, c->act_bytes) == 0,
                  "%s: run and submit/fetch results differ (not deterministic)", c->label);
    }
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
