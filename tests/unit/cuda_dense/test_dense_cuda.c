/* The dense-layer CUDA kernels (kernels/cuda/dense.h) against the CPU
 * coordinator's functions (broker/norm.c, rope.c, attention.c, router.c,
 * kernels/cpu/gemm.c) and double-precision references, over many shapes,
 * with a determinism check (two runs bit-identical). Each kernel's worst
 * error is printed with the shape it occurred at, so one run on a GPU says
 * what is wrong. `--bench` also times decode-sized calls. Skips (77)
 * without a CUDA device. */
#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "broker/attention.h"
#include "broker/norm.h"
#include "broker/rope.h"
#include "broker/router.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/dense.h"
#include "protocol/dtype.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

static unsigned long long seed = 2024;

/* MB_CUDA_DENSE=simt: the kernels stay off the tensor cores. */
static int simt_only(void)
{
    const char *e = getenv("MB_CUDA_DENSE");
    return e && strcmp(e, "simt") == 0;
}

/* ---- host data ------------------------------------------------------------ */

static float *rand_f32(size_t n, float scale)
{
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = scale * mb_test_rand_f32(&seed);
    return p;
}

/* ---- worst errors per kernel, printed at the end -------------------------- */

typedef struct {
    const char *name;
    double worst, bound;
    char where[160];
    long cases;
} err_stat;

enum {
    E_EMBED,
    E_NORM,
    E_ROPE,
    E_KV,
    E_LIN_GEMV,
    E_LIN_GEMV_MMA,
    E_LIN_GEMM,
    E_LIN_MMA,
    E_LIN_CPU,
    E_ATT_DEC,
    E_ATT_AT,
    E_ATT_FLASH,
    E_ROUTE,
    E_SILU,
    E_ADD,
    E_FUSED,
    E_NORM_IN,
    E_N
};
static err_stat stats[E_N] = {
    [E_EMBED] = {"embed (exact)", 0, 0, "", 0},
    [E_NORM] = {"rmsnorm (rel to row max)", 0, 2e-6, "", 0},
    [E_ROPE] = {"rope (abs)", 0, 1e-6, "", 0},
    [E_KV] = {"kv_store (exact)", 0, 0, "", 0},
    [E_LIN_GEMV] = {"linear GEMV SIMT (|err| / sum|w x|, vs double)", 0, 1e-5, "", 0},
    [E_LIN_GEMV_MMA] = {"linear GEMV bf16 tensor cores (same)", 0, 1e-5, "", 0},
    [E_LIN_GEMM] = {"linear GEMM f32/f16 (|err| / sum|w x|)", 0, 1e-5, "", 0},
    [E_LIN_MMA] = {"linear GEMM bf16 tensor cores (same)", 0, 1e-5, "", 0},
    [E_LIN_CPU] = {"  CPU mb_kcpu_gemm, same metric (reference)", 0, 1e-5, "", 0},
    [E_ATT_DEC] = {"attention decode/split-K (abs vs CPU)", 0, 1e-5, "", 0},
    [E_ATT_AT] = {"attention_at, device position (same)", 0, 1e-5, "", 0},
    [E_ATT_FLASH] = {"attention flash (abs vs CPU)", 0, 1e-5, "", 0},
    [E_ROUTE] = {"route gate (abs; ids exact)", 0, 1e-6, "", 0},
    [E_SILU] = {"silu_mul (rel)", 0, 1e-6, "", 0},
    [E_ADD] = {"add (exact)", 0, 0, "", 0},
    [E_FUSED] = {"fusions vs unfused sequence (bits differing)", 0, 0, "", 0},
    [E_NORM_IN] = {"norm folded in GEMV (|err| / sum|w xn| vs unfused)", 0, 1e-5, "", 0},
};

/* Records err for kernel k at the shape described by the format; returns
 * whether it is within the kernel's bound. */
static int note(int k, double err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int note(int k, double err, const char *fmt, ...)
{
    err_stat *s = &stats[k];
    s->cases++;
    if (err > s->worst || (err != err)) {
        s->worst = err != err ? INFINITY : err;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->where, sizeof s->where, fmt, ap);
        va_end(ap);
    }
    return err <= s->bound;
}

static void print_stats(void)
{
    printf("\n%-46s %12s %10s %6s  %s\n", "kernel", "worst", "bound", "cases", "worst at");
    for (int k = 0; k < E_N; k++)
        printf("%-46s %12.3g %10.3g %6ld  %s\n", stats[k].name, stats[k].worst, stats[k].bound,
               stats[k].cases, stats[k].where);
}

/* ---- weights in a dtype ---------------------------------------------------- */

static size_t wsize(int dt)
{
    return dt == MB_KCUDA_F32 ? 4 : 2;
}
static const char *dtname(int dt)
{
    return dt == MB_KCUDA_F32 ? "f32" : dt == MB_KCUDA_F16 ? "f16" : "bf16";
}

/* Random [rows][cols] weights stored in dt; *exact gets their f32 values. */
static void *rand_weights(int dt, size_t count, float scale, float **exact)
{
    void *w = xmalloc(count * wsize(dt));
    float *e = xmalloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) {
        float v = scale * mb_test_rand_f32(&seed);
        if (dt == MB_KCUDA_F32)
            ((float *)w)[i] = v;
        else
            ((uint16_t *)w)[i] = dt == MB_KCUDA_F16 ? mb_f32_to_f16(v) : mb_f32_to_bf16(v);
        e[i] = mb_kcpu_load_w(dt, w, i);
    }
    *exact = e;
    return w;
}

/* ---- embed ------------------------------------------------------------------ */

static void test_embed(void)
{
    const uint32_t ds[] = {1, 7, 64, 2048}, ns[] = {1, 5, 300};
    const uint32_t vocab = 97;
    for (int dt = 0; dt < 3; dt++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                const uint32_t d = ds[di], n = ns[ni];
                float *exact;
                void *table = rand_weights(dt, (size_t)vocab * d, 2.0f, &exact);
                int32_t *ids = xmalloc(n * sizeof(int32_t));
                for (uint32_t t = 0; t < n; t++)
                    ids[t] = (int32_t)(mb_test_rand_u64(&seed) % vocab);
                ids[n - 1] = (int32_t)vocab - 1; /* the last row */
                void *dtab = dev_upload(table, (size_t)vocab * d * wsize(dt));
                int32_t *dids = dev_upload(ids, n * sizeof(int32_t));
                float *dx = dev_alloc((size_t)n * d * sizeof(float));
                RUN(mb_kcuda_embed(NULL, dt, dtab, d, dids, n, dx));
                float *x = xmalloc((size_t)n * d * sizeof(float));
                dev_download(x, dx, (size_t)n * d * sizeof(float));
                double err = 0;
                for (uint32_t t = 0; t < n; t++)
                    for (uint32_t i = 0; i < d; i++)
                        err = fmax(err, fabs(x[(size_t)t * d + i] - exact[(size_t)ids[t] * d + i]));
                CHECK_MSG(note(E_EMBED, err, "%s d=%u n=%u", dtname(dt), d, n),
                          "embed %s d=%u n=%u err %g", dtname(dt), d, n, err);
                cudaFree(dtab);
                cudaFree(dids);
                cudaFree(dx);
                free(table);
                free(exact);
                free(ids);
                free(x);
            }
}

/* ---- rmsnorm ---------------------------------------------------------------- */

static void test_rmsnorm(void)
{
    const uint32_t ds[] = {16, 64, 128, 513, 2048, 4096}, rs[] = {1, 5, 300};
    for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
        for (size_t ri = 0; ri < sizeof rs / sizeof *rs; ri++)
            for (int inplace = 0; inplace < 2; inplace++) {
                const uint32_t d = ds[di], rows = rs[ri];
                const size_t ldx = d + 3, ldy = inplace ? ldx : d + 1;
                float *x = rand_f32(rows * ldx, 3.0f), *w = rand_f32(d, 1.5f);
                float *ref = xmalloc(rows * ldy * sizeof(float)),
                      *got = xmalloc(rows * ldy * sizeof(float));
                for (size_t i = 0; i < rows * ldy; i++)
                    ref[i] = inplace ? x[i] : 777.0f;
                mb_norm_rms(ref, ldy, inplace ? ref : x, ldx, rows, d, w, 1e-6f);
                float *dx = dev_upload(x, rows * ldx * sizeof(float)),
                      *dw = dev_upload(w, d * sizeof(float));
                float *dy = dx;
                if (!inplace) {
                    float *fill = xmalloc(rows * ldy * sizeof(float));
                    for (size_t i = 0; i < rows * ldy; i++)
                        fill[i] = 777.0f;
                    dy = dev_upload(fill, rows * ldy * sizeof(float));
                    free(fill);
                }
                RUN(mb_kcuda_rmsnorm(NULL, dy, ldy, dx, ldx, rows, d, dw, 1e-6f));
                dev_download(got, dy, rows * ldy * sizeof(float));
                double err = 0;
                int pad_ok = 1;
                for (uint32_t r = 0; r < rows; r++) {
                    double mx = 0;
                    for (uint32_t i = 0; i < d; i++)
                        mx = fmax(mx, fabs(ref[r * ldy + i]));
                    for (uint32_t i = 0; i < d; i++)
                        err = fmax(err, fabs(got[r * ldy + i] - ref[r * ldy + i]) / mx);
                    for (size_t i = d; i < ldy; i++)
                        pad_ok &= got[r * ldy + i] == ref[r * ldy + i];
                }
                CHECK_MSG(note(E_NORM, err, "d=%u rows=%u inplace=%d", d, rows, inplace) && pad_ok,
                          "rmsnorm d=%u rows=%u inplace=%d err %g pad %d", d, rows, inplace, err,
                          pad_ok);
                if (dy != dx) cudaFree(dy);
                cudaFree(dx);
                cudaFree(dw);
                free(x);
                free(w);
                free(ref);
                free(got);
            }
}

/* ---- rope --------------------------------------------------------------------- */

static void test_rope(void)
{
    const uint32_t hds[] = {16, 64, 128}, hs[] = {1, 4, 8}, ns[] = {1, 5, 300}, p0s[] = {0, 17};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t e = 0; e < 2; e++)
                    for (int il = 0; il < 2; il++) {
                        const uint32_t hd = hds[a], nh = hs[b], n = ns[c], pos0 = p0s[e];
                        mb_rope r;
                        REQUIRE(mb_rope_init(&r, hd, 400, 1e6f) == MB_STATUS_OK);
                        r.interleaved = il;
                        const size_t ldx = (size_t)nh * hd + 3, cnt = n * ldx;
                        float *x = rand_f32(cnt, 2.0f), *got = xmalloc(cnt * sizeof(float));
                        float *dx = dev_upload(x, cnt * sizeof(float));
                        const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
                        float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
                        float *dx2 = dev_upload(x, cnt * sizeof(float));
                        uint32_t *dpos = dev_upload(&pos0, sizeof pos0);
                        RUN(mb_kcuda_rope(NULL, dx, ldx, n, nh, hd, pos0, dc, ds, il));
                        RUN(mb_kcuda_rope_at(NULL, dx2, ldx, n, nh, hd, dpos, dc, ds, il));
                        mb_rope_apply(&r, x, ldx, n, nh, pos0);
                        dev_download(got, dx2, cnt * sizeof(float));
                        float *got2 = xmalloc(cnt * sizeof(float));
                        dev_download(got2, dx, cnt * sizeof(float));
                        CHECK_MSG(memcmp(got, got2, cnt * sizeof(float)) == 0,
                                  "rope_at differs from rope (hd=%u n=%u pos0=%u)", hd, n, pos0);
                        free(got2);
                        cudaFree(dx2);
                        cudaFree(dpos);
                        double err = 0;
                        for (size_t i = 0; i < cnt; i++)
                            err = fmax(err, fabs(got[i] - x[i]));
                        CHECK_MSG(note(E_ROPE, err, "hd=%u heads=%u n=%u pos0=%u il=%d", hd, nh, n,
                                       pos0, il),
                                  "rope hd=%u heads=%u n=%u pos0=%u il=%d err %g", hd, nh, n, pos0,
                                  il, err);
                        cudaFree(dx);
                        cudaFree(dc);
                        cudaFree(ds);
                        free(x);
                        free(got);
                        mb_rope_fini(&r);
                    }
}

/* ---- linear ------------------------------------------------------------------- */

/* y[t][r] against a double reference; err normalised by sum |w x| + |b| +
 * |y0|. Returns the worst. */
static double linear_err(const float *y, size_t ldy, const float *we, const float *x, size_t ldx,
                         const float *bias, const float *y0, uint32_t m, uint32_t k, uint32_t n)
{
    double worst = 0;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t r = 0; r < m; r++) {
            double s = 0, mag = 0;
            for (uint32_t i = 0; i < k; i++) {
                double p = (double)we[(size_t)r * k + i] * x[(size_t)t * ldx + i];
                s += p;
                mag += fabs(p);
            }
            if (bias) {
                s += bias[r];
                mag += fabs(bias[r]);
            }
            if (y0) {
                s += y0[(size_t)t * ldy + r];
                mag += fabs(y0[(size_t)t * ldy + r]);
            }
            double e = fabs(y[(size_t)t * ldy + r] - s) / (mag > 0 ? mag : 1);
            if (e > worst || e != e) worst = e != e ? INFINITY : e;
        }
    return worst;
}

static void linear_case(int dt, uint32_t m, uint32_t k, uint32_t n, size_t xpad, int with_bias,
                        int acc)
{
    const size_t ldx = k + xpad, ldy = m + 2;
    float *we;
    void *w = rand_weights(dt, (size_t)m * k, 1.0f, &we);
    float *x = rand_f32((size_t)n * ldx, 1.0f), *bias = with_bias ? rand_f32(m, 1.0f) : NULL;
    float *y0 = rand_f32((size_t)n * ldy, 1.0f);
    float *got = xmalloc((size_t)n * ldy * sizeof(float)),
          *cpu = xmalloc((size_t)n * ldy * sizeof(float));
    void *dw = dev_upload(w, (size_t)m * k * wsize(dt));
    float *dx = dev_upload(x, (size_t)n * ldx * sizeof(float));
    float *dy = dev_upload(y0, (size_t)n * ldy * sizeof(float));
    float *db = bias ? dev_upload(bias, m * sizeof(float)) : NULL;
    RUN(mb_kcuda_linear(NULL, dt, dw, m, k, dx, ldx, n, dy, ldy, db, acc));
    dev_download(got, dy, (size_t)n * ldy * sizeof(float));

    const int gemv = n <= 8;
    double err = linear_err(got, ldy, we, x, ldx, bias, acc ? y0 : NULL, m, k, n);
    int pad_ok = 1;
    for (uint32_t t = 0; t < n; t++)
        for (size_t r = m; r < ldy; r++)
            pad_ok &= got[t * ldy + r] == y0[t * ldy + r];
    /* which kernel ran, as mb_kcuda_linear picks (MB_CUDA_DENSE=simt: none
     * on tensor cores) */
    const int tc = dt == MB_KCUDA_BF16 && !simt_only();
    const int tc_gemv = tc && n >= 2 && m >= 1024 && k % 8 == 0 && ldx % 4 == 0;
    const int kind = gemv ? (tc_gemv ? E_LIN_GEMV_MMA : E_LIN_GEMV) : tc ? E_LIN_MMA : E_LIN_GEMM;
    CHECK_MSG(note(kind, err, "%s m=%u k=%u n=%u xpad=%zu bias=%d acc=%d", dtname(dt), m, k, n,
                   xpad, with_bias, acc) &&
                  pad_ok,
              "linear %s m=%u k=%u n=%u xpad=%zu bias=%d acc=%d: err %g pad %d", dtname(dt), m, k,
              n, xpad, with_bias, acc, err, pad_ok);

    /* The CPU reference on the same metric: a self-check of linear_err and
     * the yardstick the GPU is held to. */
    memcpy(cpu, y0, (size_t)n * ldy * sizeof(float));
    mb_kcpu_gemm(NULL, dt, w, m, k, x, ldx, n, cpu, ldy, acc);
    if (bias)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t r = 0; r < m; r++)
                cpu[t * ldy + r] += bias[r];
    double cerr = linear_err(cpu, ldy, we, x, ldx, bias, acc ? y0 : NULL, m, k, n);
    CHECK_MSG(note(E_LIN_CPU, cerr, "%s m=%u k=%u n=%u", dtname(dt), m, k, n),
              "CPU reference err %g", cerr);

    /* Determinism: the same call again gives the same bits. */
    CU(cudaMemcpy(dy, y0, (size_t)n * ldy * sizeof(float), cudaMemcpyHostToDevice));
    RUN(mb_kcuda_linear(NULL, dt, dw, m, k, dx, ldx, n, dy, ldy, db, acc));
    dev_download(cpu, dy, (size_t)n * ldy * sizeof(float));
    CHECK_MSG(memcmp(cpu, got, (size_t)n * ldy * sizeof(float)) == 0,
              "linear %s m=%u k=%u n=%u not deterministic", dtname(dt), m, k, n);

    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
    if (db) cudaFree(db);
    free(w);
    free(we);
    free(x);
    free(bias);
    free(y0);
    free(got);
    free(cpu);
}

static void test_linear(void)
{
    /* (m, k): tails in both, k not a multiple of 8 or 4, m across the
     * GEMV's one-row and four-row variants (m >= 2048). */
    const uint32_t mk[][2] = {{1, 16},    {7, 13},     {64, 64},   {100, 1003},
                              {513, 256}, {2051, 200}, {2048, 520}};
    const uint32_t ns[] = {1, 2, 5, 8, 9, 64, 300};
    for (int dt = 0; dt < 3; dt++)
        for (size_t s = 0; s < sizeof mk / sizeof *mk; s++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                const uint32_t m = mk[s][0], k = mk[s][1], n = ns[ni];
                if ((size_t)m * k * n > 60u * 1000 * 1000) continue; /* keep the CPU side quick */
                const int v = (int)(s + ni + (size_t)dt); /* vary the options over the grid */
                linear_case(dt, m, k, n, (v % 3 == 2) ? 1 : (size_t)(v % 2) * 4, v % 2,
                            (v / 2) % 2);
            }
    linear_case(MB_KCUDA_BF16, 257, 300, 1100, 4, 1, 1);
    linear_case(MB_KCUDA_F16, 130, 2048, 8, 0, 0, 0);
    linear_case(MB_KCUDA_BF16, 1030, 2048, 8, 0, 1, 1); /* tensor-core GEMV, a short last block */
    linear_case(MB_KCUDA_BF16, 1030, 2048, 3, 4, 0, 0);
    /* One token, rows in one wave of 132 SMs (the staged GEMV with preload
     * s): o_proj's shape, accumulating onto the residual with the experts'
     * row as bias; a short last block; four rows a block. */
    linear_case(MB_KCUDA_BF16, 2048, 4096, 1, 0, 1, 1);
    linear_case(MB_KCUDA_F32, 2051, 200, 1, 0, 1, 0);
    linear_case(MB_KCUDA_F16, 513, 256, 1, 0, 0, 1);
}

/* ---- kv_store + attention ---------------------------------------------------- */

typedef struct {
    uint32_t hd, heads, kv, window, max_ctx;
    const uint32_t *steps;
    size_t n_steps;
    int merge; /* the decode's merge in its last blocks (merge_done) */
} attn_cfg;

static void attn_run(const attn_cfg *c)
{
    mb_attn a;
    REQUIRE(mb_attn_init(&a, 1, c->heads, c->kv, c->hd, c->max_ctx, c->window, 1) == MB_STATUS_OK);
    const size_t qd = (size_t)c->heads * c->hd, kvd = (size_t)c->kv * c->hd;
    const size_t ldq = qd + 1, ldkv = kvd + 3, ldo = qd + 2;
    mb_kcuda_kv kv = {.n_kv_heads = c->kv, .head_dim = c->hd, .max_ctx = c->max_ctx};
    const size_t cache = (size_t)c->kv * c->max_ctx * c->hd;
    kv.k = dev_alloc(cache * sizeof(float));
    kv.v = dev_alloc(cache * sizeof(float));
    mb_kcuda_kv kv2 = kv; /* filled by kv_store_at, must equal kv */
    kv2.k = dev_alloc(cache * sizeof(float));
    kv2.v = dev_alloc(cache * sizeof(float));
    uint32_t *dpos = dev_alloc(sizeof(uint32_t));
    mb_kcuda_attn_shape sh = {.n_heads = c->heads, .window = c->window, .scale = a.scale};
    const size_t n_done = MB_KCUDA_ATTN_MERGE_COUNTERS(c->heads);
    unsigned *done = NULL;
    if (c->merge) {
        done = dev_alloc(n_done * sizeof(unsigned));
        CU(cudaMemset(done, 0, n_done * sizeof(unsigned)));
        sh.merge_done = done;
    }
    uint32_t max_n = 1;
    for (size_t s = 0; s < c->n_steps; s++)
        max_n = c->steps[s] > max_n ? c->steps[s] : max_n;
    const size_t work_floats = mb_kcuda_attention_work(&kv, &sh, max_n);
    for (uint32_t nn = 1; nn <= 8; nn++) /* one size for every step */
        CHECK(mb_kcuda_attention_work(&kv, &sh, nn) <= work_floats);
    float *work = work_floats ? dev_alloc(work_floats * sizeof(float)) : NULL;
    float *dq = dev_alloc(max_n * ldq * sizeof(float)),
          *dk = dev_alloc(max_n * ldkv * sizeof(float));
    float *dv = dev_alloc(max_n * ldkv * sizeof(float)),
          *dout = dev_alloc(max_n * ldo * sizeof(float));
    float *out = xmalloc(max_n * ldo * sizeof(float)), *got = xmalloc(max_n * ldo * sizeof(float));
    float *again = xmalloc(max_n * ldo * sizeof(float)), *cache_k = xmalloc(cache * sizeof(float));
    float *cache_v = xmalloc(cache * sizeof(float));

    uint32_t pos = 0;
    for (size_t s = 0; s < c->n_steps; s++) {
        const uint32_t n = c->steps[s];
        REQUIRE(pos + n <= c->max_ctx);
        float *q = rand_f32(n * ldq, 2.0f), *k = rand_f32(n * ldkv, 2.0f),
              *v = rand_f32(n * ldkv, 1.0f);
        CU(cudaMemcpy(dq, q, n * ldq * sizeof(float), cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dk, k, n * ldkv * sizeof(float), cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dv, v, n * ldkv * sizeof(float), cudaMemcpyHostToDevice));
        RUN(mb_kcuda_kv_store(NULL, &kv, pos, n, dk, ldkv, dv, ldkv));
        CU(cudaMemcpy(dpos, &pos, sizeof pos, cudaMemcpyHostToDevice));
        RUN(mb_kcuda_kv_store_at(NULL, &kv2, dpos, n, dk, ldkv, dv, ldkv));
        mb_attn_store(&a, 0, pos, n, k, ldkv, v, ldkv);

        /* The cache holds exactly the stored rows. */
        dev_download(cache_k, kv.k, cache * sizeof(float));
        dev_download(cache_v, kv.v, cache * sizeof(float));
        double kerr = 0;
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t h = 0; h < c->kv; h++)
                for (uint32_t d = 0; d < c->hd; d++) {
                    const size_t at = ((size_t)h * c->max_ctx + pos + t) * c->hd + d;
                    kerr = fmax(kerr, fabs(cache_k[at] - k[t * ldkv + h * c->hd + d]));
                    kerr = fmax(kerr, fabs(cache_v[at] - v[t * ldkv + h * c->hd + d]));
                }
        CHECK_MSG(note(E_KV, kerr, "hd=%u kv=%u pos0=%u n=%u", c->hd, c->kv, pos, n),
                  "kv_store err %g", kerr);
        float *at_k = xmalloc(cache * sizeof(float)), *at_v = xmalloc(cache * sizeof(float));
        dev_download(at_k, kv2.k, cache * sizeof(float));
        dev_download(at_v, kv2.v, cache * sizeof(float));
        int same = 1;
        for (uint32_t h = 0; h < c->kv; h++) { /* rows written so far */
            const size_t at = (size_t)h * c->max_ctx * c->hd, len = (size_t)(pos + n) * c->hd;
            same &= memcmp(at_k + at, cache_k + at, len * sizeof(float)) == 0 &&
                    memcmp(at_v + at, cache_v + at, len * sizeof(float)) == 0;
        }
        CHECK_MSG(same, "kv_store_at differs from kv_store (pos0=%u n=%u)", pos, n);
        free(at_k);
        free(at_v);

        for (size_t i = 0; i < n * ldo; i++)
            out[i] = 1234.0f;
        CU(cudaMemcpy(dout, out, n * ldo * sizeof(float), cudaMemcpyHostToDevice));
        RUN(mb_kcuda_attention(NULL, &kv, &sh, pos, n, dq, ldq, dout, ldo, work, work_floats));
        dev_download(got, dout, n * ldo * sizeof(float));
        mb_attn_compute(&a, NULL, 0, pos, n, q, ldq, out, ldo);
        double err = 0;
        int pad_ok = 1;
        for (uint32_t t = 0; t < n; t++) {
            for (size_t i = 0; i < qd; i++) {
                const double e = fabs(got[t * ldo + i] - out[t * ldo + i]);
                if (e > err || e != e) err = e != e ? INFINITY : e;
            }
            pad_ok &= got[t * ldo + qd] == 1234.0f && got[t * ldo + qd + 1] == 1234.0f;
        }
        const int dec = n <= 8;
        CHECK_MSG(note(dec ? E_ATT_DEC : E_ATT_FLASH, err, "hd=%u heads=%u/%u win=%u pos0=%u n=%u",
                       c->hd, c->heads, c->kv, c->window, pos, n) &&
                      pad_ok,
                  "attention hd=%u heads=%u kv=%u window=%u pos0=%u n=%u: err %g pad %d", c->hd,
                  c->heads, c->kv, c->window, pos, n, err, pad_ok);

        RUN(mb_kcuda_attention(NULL, &kv, &sh, pos, n, dq, ldq, dout, ldo, work, work_floats));
        dev_download(again, dout, n * ldo * sizeof(float));
        CHECK_MSG(memcmp(again, got, n * ldo * sizeof(float)) == 0,
                  "attention pos0=%u n=%u not deterministic", pos, n);

        /* The graph variant: position on the device, chunks for the whole
         * cache (other sums, so compared with the CPU, not bit for bit). */
        if (dec) {
            RUN(mb_kcuda_attention_at(NULL, &kv, &sh, dpos, n, dq, ldq, dout, ldo, work,
                                      work_floats));
            dev_download(again, dout, n * ldo * sizeof(float));
            double aerr = 0;
            for (uint32_t t = 0; t < n; t++)
                for (size_t i = 0; i < qd; i++) {
                    const double e = fabs(again[t * ldo + i] - out[t * ldo + i]);
                    if (e > aerr || e != e) aerr = e != e ? INFINITY : e;
                }
            CHECK_MSG(note(E_ATT_AT, aerr, "hd=%u heads=%u/%u win=%u pos0=%u n=%u", c->hd, c->heads,
                           c->kv, c->window, pos, n),
                      "attention_at hd=%u window=%u pos0=%u n=%u: err %g", c->hd, c->window, pos, n,
                      aerr);
        }
        free(q);
        free(k);
        free(v);
        pos += n;
    }
    if (done) { /* every launch left its counters at 0 */
        unsigned *hd = xmalloc(n_done * sizeof(unsigned));
        dev_download(hd, done, n_done * sizeof(unsigned));
        size_t left = 0;
        for (size_t i = 0; i < n_done; i++)
            left += hd[i] != 0;
        CHECK_MSG(left == 0, "attention merge hd=%u heads=%u/%u: %zu counters not back at 0", c->hd,
                  c->heads, c->kv, left);
        free(hd);
        cudaFree(done);
    }
    cudaFree(kv.k);
    cudaFree(kv.v);
    cudaFree(kv2.k);
    cudaFree(kv2.v);
    cudaFree(dpos);
    if (work) cudaFree(work);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    free(out);
    free(got);
    free(again);
    free(cache_k);
    free(cache_v);
    mb_attn_fini(&a);
}

static void test_attention(void)
{
    /* Decode steps (n <= 8) at growing positions split the keys over more
     * chunks; longer steps take the flash kernel. */
    static const uint32_t mixed[] = {5, 1, 2, 300, 1, 8, 9, 64, 1, 2, 5, 1};
    static const uint32_t longer[] = {1100, 1, 8, 300, 1, 1};
    static const uint32_t deep[] = {3, 1000, 1, 1200, 1, 5};
    const attn_cfg cfgs[] = {
        {16, 4, 4, 0, 512, mixed, sizeof mixed / sizeof *mixed, 0},      /* ratio 1 */
        {64, 8, 2, 0, 512, mixed, sizeof mixed / sizeof *mixed, 0},      /* ratio 4 */
        {128, 8, 1, 0, 1500, longer, sizeof longer / sizeof *longer, 0}, /* ratio 8 */
        {64, 4, 1, 37, 512, mixed, sizeof mixed / sizeof *mixed, 0},     /* small window */
        {128, 16, 2, 100, 1500, longer, sizeof longer / sizeof *longer, 0},
        {18, 6, 3, 0, 512, mixed, sizeof mixed / sizeof *mixed,
         0}, /* head_dim not a multiple of 4 */
        {256, 4, 2, 0, 512, mixed, sizeof mixed / sizeof *mixed, 0}, /* largest head_dim */
        {32, 16, 1, 0, 512, mixed, sizeof mixed / sizeof *mixed, 0}, /* 16 query heads a kv head */
        {128, 4, 4, 0, 2300, deep, sizeof deep / sizeof *deep, 0},   /* many chunks, one a block */
        {128, 8, 2, 700, 2300, deep, sizeof deep / sizeof *deep, 0}, /* window below the context */
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++)
        attn_run(&cfgs[i]);
}

/* The decode's merge in its last blocks (merge_done), against the CPU as
 * the merge kernel is: decode steps (and a short flash step between) at
 * positions growing over several chunks, through both entry points (the
 * device-position one sizes chunks for the whole cache, so most blocks
 * return before counting); head_dim not a multiple of 4, two head groups
 * a kv head, a window. */
static void test_merge(void)
{
    static const uint32_t steps[] = {5, 1, 2, 60, 1, 8, 1, 2, 5, 1, 40, 1, 3};
    const size_t ns = sizeof steps / sizeof *steps;
    const attn_cfg cfgs[] = {
        {64, 8, 2, 0, 512, steps, ns, 1},
        {18, 6, 3, 0, 512, steps, ns, 1},
        {32, 16, 1, 37, 512, steps, ns, 1},
        {128, 8, 1, 0, 256, steps, ns, 1},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++)
        attn_run(&cfgs[i]);
}

/* ---- routing ---------------------------------------------------------------------- */

/* Logits with a NaN (a malformed checkpoint's or an overflow's): the row's
 * softmax is all NaN, and the routing must still name k distinct experts
 * in range, the CPU's (the lowest first), with NaN gates, by both routing
 * kernels: an id past the experts would index the pair tables out of
 * bounds. */
static void route_nan_case(uint32_t ne, uint32_t k)
{
    float *lg = rand_f32(ne, 4.0f);
    lg[ne / 2] = NAN;
    float *dl = dev_upload(lg, ne * sizeof(float));
    int32_t *dids = dev_alloc(k * sizeof(int32_t));
    float *dg = dev_alloc(k * sizeof(float));
    int32_t ids[32], ref_ids[32];
    float g[32], ref_g[32];
    const mb_router r = {.n_experts = ne, .top_k = k, .renorm = 1};
    mb_router_select(&r, lg, 1, ref_ids, ref_g);
    RUN(mb_kcuda_route_topk(NULL, dl, 1, ne, k, 1, dids, dg));
    dev_download(ids, dids, k * sizeof(int32_t));
    dev_download(g, dg, k * sizeof(float));
    int bad = memcmp(ids, ref_ids, k * sizeof(int32_t)) != 0;
    for (uint32_t j = 0; j < k; j++)
        bad += g[j] == g[j]; /* NaN, as the CPU's */
    /* The fused router on a weight matrix whose row ne / 2 is NaN. */
    float *w = xmalloc((size_t)ne * 8 * sizeof(float)), x[8];
    for (size_t i = 0; i < (size_t)ne * 8; i++)
        w[i] = i / 8 == ne / 2 ? NAN : 0.25f;
    for (int i = 0; i < 8; i++)
        x[i] = 1.0f;
    float *dw = dev_upload(w, (size_t)ne * 8 * sizeof(float)), *dx = dev_upload(x, sizeof x);
    float *dlog = dev_alloc(ne * sizeof(float));
    unsigned zero = 0, *done = dev_upload(&zero, sizeof zero);
    RUN(mb_kcuda_router_topk(NULL, MB_KCUDA_F32, dw, ne, 8, dx, 8, 1, dlog, k, 1, dids, dg, done));
    dev_download(ids, dids, k * sizeof(int32_t));
    bad += memcmp(ids, ref_ids, k * sizeof(int32_t)) != 0;
    CHECK_MSG(!bad, "route with a NaN logit ne=%u k=%u: ids 0..%u expected (%d, %d, ...)", ne, k,
              k - 1, ids[0], ids[1]);
    cudaFree(dl);
    cudaFree(dids);
    cudaFree(dg);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dlog);
    cudaFree(done);
    free(lg);
    free(w);
}

static void route_case(uint32_t n, uint32_t ne, uint32_t k, int renorm, int ties)
{
    /* Logits on a grid: distinct values are far apart next to f32
     * rounding (the CPU and GPU sum the softmax in different orders and
     * their expf may differ by an ulp), equal ones tie exactly on both. */
    float *lg = rand_f32((size_t)n * ne, 4.0f);
    const float steps = ties ? 2.0f : 1024.0f; /* ties: 17 levels, many equal logits */
    for (size_t i = 0; i < (size_t)n * ne; i++)
        lg[i] = roundf(lg[i] * steps) / steps;
    if (ties && n > 1)
        for (uint32_t e = 0; e < ne; e++)
            lg[e] = 0.5f; /* a row of one value: ids 0..k-1 */
    float *dl = dev_upload(lg, (size_t)n * ne * sizeof(float));
    int32_t *dids = dev_alloc((size_t)n * k * sizeof(int32_t));
    float *dg = dev_alloc((size_t)n * k * sizeof(float));
    RUN(mb_kcuda_route_topk(NULL, dl, n, ne, k, renorm, dids, dg));
    int32_t *ids = xmalloc((size_t)n * k * sizeof(int32_t)),
            *ref_ids = xmalloc((size_t)n * k * sizeof(int32_t));
    float *g = xmalloc((size_t)n * k * sizeof(float)),
          *ref_g = xmalloc((size_t)n * k * sizeof(float));
    float *after = xmalloc((size_t)n * ne * sizeof(float));
    dev_download(ids, dids, (size_t)n * k * sizeof(int32_t));
    dev_download(g, dg, (size_t)n * k * sizeof(float));
    dev_download(after, dl, (size_t)n * ne * sizeof(float));
    CHECK_MSG(memcmp(after, lg, (size_t)n * ne * sizeof(float)) == 0, "route changed its logits");
    const mb_router r = {.n_experts = ne, .top_k = k, .renorm = renorm};
    mb_router_select(&r, lg, n, ref_ids, ref_g); /* lg becomes probabilities */
    double err = 0;
    int id_bad = 0;
    for (size_t i = 0; i < (size_t)n * k; i++) {
        if (ids[i] != ref_ids[i] && id_bad++ < 3)
            fprintf(stderr, "route n=%u ne=%u k=%u ties=%d: token %zu slot %zu id %d, CPU %d\n", n,
                    ne, k, ties, i / k, i % k, ids[i], ref_ids[i]);
        err = fmax(err, fabs(g[i] - ref_g[i]));
    }
    CHECK_MSG(note(E_ROUTE, err, "n=%u ne=%u k=%u renorm=%d ties=%d", n, ne, k, renorm, ties) &&
                  !id_bad,
              "route n=%u ne=%u k=%u renorm=%d ties=%d: gate err %g, %d ids differ", n, ne, k,
              renorm, ties, err, id_bad);
    cudaFree(dl);
    cudaFree(dids);
    cudaFree(dg);
    free(lg);
    free(ids);
    free(ref_ids);
    free(g);
    free(ref_g);
    free(after);
}

static void test_route(void)
{
    const uint32_t ns[] = {1, 5, 300}, nes[] = {8, 60, 64, 128, 1024}, ks[] = {1, 2, 4, 8, 32};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t c = 0; c < 5; c++) {
                if (ks[c] > nes[b]) continue;
                for (int ties = 0; ties < 2; ties++)
                    route_case(ns[a], nes[b], ks[c], (int)((a + b + c) % 2), ties);
            }
    route_nan_case(8, 4);
    route_nan_case(128, 8);
    route_nan_case(60, 32);
}

/* ---- silu_mul, add ---------------------------------------------------------------- */

static void test_silu_add(void)
{
    const uint32_t ns[] = {1, 5, 300}, ffs[] = {1, 7, 1408};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (int with_sg = 0; with_sg < 2; with_sg++) {
                const uint32_t n = ns[a], ff = ffs[b];
                const size_t ld = ff + 3, cnt = n * ld;
                float *g = rand_f32(cnt, 6.0f), *u = rand_f32(cnt, 2.0f),
                      *sg = with_sg ? rand_f32(n, 4.0f) : NULL;
                float *got = xmalloc(cnt * sizeof(float));
                float *dg = dev_upload(g, cnt * sizeof(float)),
                      *du = dev_upload(u, cnt * sizeof(float));
                float *dsg = sg ? dev_upload(sg, n * sizeof(float)) : NULL;
                RUN(mb_kcuda_silu_mul(NULL, dg, du, ld, n, ff, dsg));
                dev_download(got, dg, cnt * sizeof(float));
                double err = 0;
                int pad_ok = 1;
                for (uint32_t t = 0; t < n; t++) {
                    /* broker/forward.c's shared expert, operation by operation */
                    const float s = sg ? 1.0f / (1.0f + expf(-sg[t])) : 1.0f;
                    for (uint32_t i = 0; i < ff; i++) {
                        const float gv = g[t * ld + i];
                        const float silu = gv / (1.0f + expf(-gv));
                        const float want = s * (silu * u[t * ld + i]);
                        err = fmax(err, fabs(got[t * ld + i] - want) / fmax(fabs(want), 1e-3));
                    }
                    for (size_t i = ff; i < ld; i++)
                        pad_ok &= got[t * ld + i] == g[t * ld + i];
                }
                CHECK_MSG(note(E_SILU, err, "n=%u ff=%u sg=%d", n, ff, with_sg) && pad_ok,
                          "silu_mul n=%u ff=%u sg=%d err %g pad %d", n, ff, with_sg, err, pad_ok);
                cudaFree(dg);
                cudaFree(du);
                if (dsg) cudaFree(dsg);
                free(g);
                free(u);
                free(sg);
                free(got);
            }
    const size_t counts[] = {1, 1000, (size_t)1 << 21};
    for (size_t c = 0; c < 3; c++) {
        const size_t cnt = counts[c];
        float *x = rand_f32(cnt, 1.0f), *y = rand_f32(cnt, 1.0f),
              *got = xmalloc(cnt * sizeof(float));
        float *dx = dev_upload(x, cnt * sizeof(float)), *dy = dev_upload(y, cnt * sizeof(float));
        RUN(mb_kcuda_add(NULL, dx, dy, cnt));
        dev_download(got, dx, cnt * sizeof(float));
        double err = 0;
        for (size_t i = 0; i < cnt; i++)
            err = fmax(err, fabs(got[i] - (x[i] + y[i])));
        CHECK_MSG(note(E_ADD, err, "count=%zu", cnt), "add count=%zu err %g", cnt, err);
        cudaFree(dx);
        cudaFree(dy);
        free(x);
        free(y);
        free(got);
    }
}

/* The clock stamp: after the work before it, monotonic, and replayable
 * from a graph (where an event could not be timed). */
static void test_stamp(void)
{
    const size_t cnt = (size_t)1 << 22;
    float *dx = NULL, *dy = NULL;
    unsigned long long *ts = NULL, h[4] = {0};
    CHECK(cudaMalloc((void **)&dx, cnt * sizeof(float)) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dy, cnt * sizeof(float)) == cudaSuccess);
    CHECK(cudaMalloc((void **)&ts, sizeof h) == cudaSuccess);
    CHECK(cudaMemset(dx, 0, cnt * sizeof(float)) == cudaSuccess &&
          cudaMemset(dy, 0, cnt * sizeof(float)) == cudaSuccess);
    CHECK(cudaMemset(ts, 0, sizeof h) == cudaSuccess);
    RUN(mb_kcuda_stamp(NULL, ts));
    RUN(mb_kcuda_add(NULL, dx, dy, cnt));
    RUN(mb_kcuda_stamp(NULL, ts + 1));
    dev_download(h, ts, 2 * sizeof *h);
    CHECK_MSG(h[0] != 0 && h[1] > h[0], "stamps around an add: %llu, %llu", h[0], h[1]);
    cudaStream_t s = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) !=
        cudaSuccess) { /* the CPU emulator has no graphs */
        cudaGetLastError();
        cudaStreamDestroy(s);
        cudaFree(dx);
        cudaFree(dy);
        cudaFree(ts);
        return;
    }
    CHECK(mb_kcuda_stamp(s, ts + 2) == 0); /* no synchronisation while capturing */
    CHECK(mb_kcuda_add(s, dx, dy, cnt) == 0);
    CHECK(mb_kcuda_stamp(s, ts + 3) == 0);
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess);
    CHECK(cudaGraphInstantiate(&ge, g, 0) == cudaSuccess);
    CHECK(cudaGraphLaunch(ge, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess);
    dev_download(h, ts, sizeof h);
    const unsigned long long first = h[2];
    CHECK_MSG(h[2] >= h[1] && h[3] > h[2], "graph stamps: %llu, %llu after %llu", h[2], h[3], h[1]);
    CHECK(cudaGraphLaunch(ge, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess);
    dev_download(h, ts, sizeof h);
    CHECK_MSG(h[2] > first && h[3] > h[2], "graph replayed: %llu, %llu after %llu", h[2], h[3],
              first);
    CHECK(mb_kcuda_stamp(NULL, NULL) != 0);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(ts);
}

/* mb_kcuda_drain into pinned host memory: every word copied, the source
 * zeroed from zero_from on and kept below it. */
static void test_drain(void)
{
    const size_t counts[] = {1, 528, 70000}, zf[] = {0, 16, 70000};
    for (size_t c = 0; c < 3; c++)
        for (size_t z = 0; z < 3; z++) {
            const size_t n = counts[c], from = zf[z] < n ? zf[z] : n;
            uint32_t *h = xmalloc(n * sizeof *h), *back = xmalloc(n * sizeof *back), *pinned = NULL;
            for (size_t i = 0; i < n; i++)
                h[i] = (uint32_t)(mb_test_rand_f32(&seed) * 4e9f) ^ (uint32_t)i;
            uint32_t *d = dev_upload(h, n * sizeof *h);
            CU(cudaMallocHost((void **)&pinned, n * sizeof *pinned));
            memset(pinned, 0xab, n * sizeof *pinned);
            RUN(mb_kcuda_drain(NULL, d, pinned, n, from));
            dev_download(back, d, n * sizeof *back);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++)
                bad += (pinned[i] != h[i]) + (back[i] != (i >= from ? 0u : h[i]));
            CHECK_MSG(bad == 0, "drain n=%zu zero_from=%zu: %zu words wrong", n, from, bad);
            cudaFreeHost(pinned);
            cudaFree(d);
            free(h);
            free(back);
        }
    uint32_t *d = dev_alloc(16);
    CHECK(mb_kcuda_drain(NULL, d, d, 4, 5) != 0); /* zero_from past count */
    CHECK(mb_kcuda_drain(NULL, d, NULL, 4, 0) != 0);
    cudaFree(d);
}

/* ---- fusions: bit-identical to the sequences they replace ------------------ */

static size_t count_diff(const float *a, const float *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return k;
}

/* Elements of got (n, in dtype dt: the experts' wire copy of a row) that
 * differ from ref encoded by the CPU's mb_dtype_encode_f32: the kernels
 * must round as the dispatcher would have. */
static size_t count_wire_diff(const float *ref, const void *got, int dt, size_t n)
{
    _Static_assert(
        (int)MB_DTYPE_F32 == (int)MB_KCUDA_F32 && (int)MB_DTYPE_F16 == (int)MB_KCUDA_F16 &&
            (int)MB_DTYPE_BF16 == (int)MB_KCUDA_BF16,
        "the cases pass one wire dtype number to the kernels and to mb_dtype_encode_f32");
    if (dt == MB_DTYPE_F32) return count_diff(ref, got, n);
    uint16_t *enc = xmalloc(n * sizeof *enc);
    mb_dtype_encode_f32((mb_dtype)dt, enc, ref, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += enc[i] != ((const uint16_t *)got)[i];
    free(enc);
    return k;
}

static void add_rmsnorm_case(uint32_t d, uint32_t rows, int inplace)
{
    const size_t ldx = d + 3, lda = d + 1, ldy = inplace ? ldx : d + 2;
    float *x = rand_f32(rows * ldx, 3.0f), *a = rand_f32(rows * lda, 2.0f), *w = rand_f32(d, 1.5f);
    float *dx1 = dev_upload(x, rows * ldx * sizeof(float)), *dx2 = dev_upload(x, rows * ldx * sizeof(float));
    float *da = dev_upload(a, rows * lda * sizeof(float)), *dw = dev_upload(w, d * sizeof(float));
    float *dy1 = inplace ? dx1 : dev_upload(x, rows * ldy * sizeof(float)),
          *dy2 = inplace ? dx2 : dev_upload(x, rows * ldy * sizeof(float));
    /* unfused: the add row by row (a's stride differs from x's), then the norm */
    for (uint32_t r = 0; r < rows; r++)
        RUN(mb_kcuda_add(NULL, dx1 + r * ldx, da + r * lda, d));
    RUN(mb_kcuda_rmsnorm(NULL, dy1, ldy, dx1, ldx, rows, d, dw, 1e-6f));
    RUN(mb_kcuda_add_rmsnorm(NULL, dy2, ldy, dx2, ldx, da, lda, rows, d, dw, 1e-6f));
    float *g1 = xmalloc(rows * ldx * sizeof(float)), *g2 = xmalloc(rows * ldx * sizeof(float));
    dev_download(g1, dx1, rows * ldx * sizeof(float));
    dev_download(g2, dx2, rows * ldx * sizeof(float));
    size_t bad = count_diff(g1, g2, rows * ldx);
    if (!inplace) {
        float *h1 = xmalloc(rows * ldy * sizeof(float)), *h2 = xmalloc(rows * ldy * sizeof(float));
        dev_download(h1, dy1, rows * ldy * sizeof(float));
        dev_download(h2, dy2, rows * ldy * sizeof(float));
        bad += count_diff(h1, h2, rows * ldy);
        free(h1);
        free(h2);
        cudaFree(dy1);
        cudaFree(dy2);
    }
    CHECK_MSG(note(E_FUSED, (double)bad, "add_rmsnorm d=%u rows=%u inplace=%d", d, rows, inplace),
              "add_rmsnorm d=%u rows=%u inplace=%d: %zu values differ from add + rmsnorm", d, rows, inplace, bad);
    cudaFree(dx1);
    cudaFree(dx2);
    cudaFree(da);
    cudaFree(dw);
    free(x);
    free(a);
    free(w);
    free(g1);
    free(g2);
}

/* rmsnorm_copy into device memory and pinned host memory (in dtype dt):
 * both copies equal mb_kcuda_rmsnorm's result, bit for bit, the host's
 * as the CPU encodes it in dt. */
static void rmsnorm_copy_case(uint32_t d, uint32_t rows, int dt)
{
    const size_t ldx = d + 3, ldy = d + 1, ldh = d + 2, es = mb_dtype_size(dt);
    float *x = rand_f32(rows * ldx, 3.0f), *w = rand_f32(d, 1.5f);
    float *dx = dev_upload(x, rows * ldx * sizeof(float)), *dw = dev_upload(w, d * sizeof(float));
    float *dy1 = dev_upload(x, rows * ldy * sizeof(float)), *dy2 = dev_upload(x, rows * ldy * sizeof(float));
    unsigned char *h = NULL;
    CU(cudaMallocHost((void **)&h, rows * ldh * es));
    RUN(mb_kcuda_rmsnorm(NULL, dy1, ldy, dx, ldx, rows, d, dw, 1e-6f));
    RUN(mb_kcuda_rmsnorm_copy(NULL, dy2, ldy, h, dt, ldh, dx, ldx, rows, d, dw, 1e-6f));
    float *g1 = xmalloc(rows * ldy * sizeof(float)), *g2 = xmalloc(rows * ldy * sizeof(float));
    dev_download(g1, dy1, rows * ldy * sizeof(float));
    dev_download(g2, dy2, rows * ldy * sizeof(float));
    size_t bad = count_diff(g1, g2, rows * ldy);
    for (uint32_t r = 0; r < rows; r++)
        bad += count_wire_diff(g1 + r * ldy, h + r * ldh * es, dt, d);
    CHECK_MSG(note(E_FUSED, (double)bad, "rmsnorm_copy d=%u rows=%u dt=%d", d, rows, dt),
              "rmsnorm_copy d=%u rows=%u dt=%d: %zu values differ from rmsnorm", d, rows, dt, bad);
    cudaFreeHost(h);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dy1);
    cudaFree(dy2);
    free(x);
    free(w);
    free(g1);
    free(g2);
}

static void qk_rope_store_case(uint32_t hd, uint32_t nh, uint32_t nkv, uint32_t n, uint32_t pos0, int norms, int il,
                               int at)
{
    mb_rope r;
    REQUIRE(mb_rope_init(&r, hd, 64, 1e6f) == MB_STATUS_OK);
    const uint32_t qd = nh * hd, kd = nkv * hd, ctx = 64;
    const size_t ld = qd + 2 * (size_t)kd + 5, cnt = n * ld, cache = (size_t)kd * ctx;
    float *qkv = rand_f32(cnt, 2.0f), *qn = rand_f32(hd, 1.5f), *kn = rand_f32(hd, 1.5f);
    const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
    float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
    float *dqn = dev_upload(qn, hd * sizeof(float)), *dkn = dev_upload(kn, hd * sizeof(float));
    float *zero = xmalloc(2 * cache * sizeof(float));
    for (size_t i = 0; i < 2 * cache; i++)
        zero[i] = -5.0f;
    float *d1 = dev_upload(qkv, cnt * sizeof(float)), *d2 = dev_upload(qkv, cnt * sizeof(float));
    float *c1 = dev_upload(zero, 2 * cache * sizeof(float)), *c2 = dev_upload(zero, 2 * cache * sizeof(float));
    const mb_kcuda_kv kv1 = {.k = c1, .v = c1 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx},
                      kv2 = {.k = c2, .v = c2 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx};
    /* unfused, as forward_cuda ran it: head norms over whole rows of heads, rope, store */
    for (uint32_t t = 0; t < n && norms; t++) {
        RUN(mb_kcuda_rmsnorm(NULL, d1 + t * ld, hd, d1 + t * ld, hd, nh, hd, dqn, 1e-6f));
        RUN(mb_kcuda_rmsnorm(NULL, d1 + t * ld + qd, hd, d1 + t * ld + qd, hd, nkv, hd, dkn, 1e-6f));
    }
    RUN(mb_kcuda_rope(NULL, d1, ld, n, nh, hd, pos0, dc, ds, il));
    RUN(mb_kcuda_rope(NULL, d1 + qd, ld, n, nkv, hd, pos0, dc, ds, il));
    RUN(mb_kcuda_kv_store(NULL, &kv1, pos0, n, d1 + qd, ld, d1 + qd + kd, ld));
    if (at) {
        uint32_t *dpos = dev_upload(&pos0, sizeof pos0);
        RUN(mb_kcuda_qk_rope_store_at(NULL, d2, ld, n, nh, norms ? dqn : NULL, norms ? dkn : NULL, 1e-6f, dpos, dc,
                                      ds, il, &kv2));
        cudaFree(dpos);
    } else {
        RUN(mb_kcuda_qk_rope_store(NULL, d2, ld, n, nh, norms ? dqn : NULL, norms ? dkn : NULL, 1e-6f, pos0, dc, ds,
                                   il, &kv2));
    }
    float *g1 = xmalloc(cnt * sizeof(float)), *g2 = xmalloc(cnt * sizeof(float));
    float *k1 = xmalloc(2 * cache * sizeof(float)), *k2 = xmalloc(2 * cache * sizeof(float));
    dev_download(g1, d1, cnt * sizeof(float));
    dev_download(g2, d2, cnt * sizeof(float));
    dev_download(k1, c1, 2 * cache * sizeof(float));
    dev_download(k2, c2, 2 * cache * sizeof(float));
    /* the query columns must agree; the key columns of qkv may hold either the rotated keys or not (the cache is
     * what counts), the values and the padding must be untouched */
    size_t bad = 0;
    for (uint32_t t = 0; t < n; t++) {
        bad += count_diff(g1 + t * ld, g2 + t * ld, qd);
        bad += count_diff(qkv + t * ld + qd + kd, g2 + t * ld + qd + kd, ld - qd - kd);
    }
    bad += count_diff(k1, k2, 2 * cache);
    CHECK_MSG(note(E_FUSED, (double)bad, "qk_rope_store hd=%u heads=%u/%u n=%u pos0=%u norms=%d il=%d at=%d", hd, nh,
                   nkv, n, pos0, norms, il, at),
              "qk_rope_store hd=%u heads=%u/%u n=%u pos0=%u norms=%d il=%d at=%d: %zu values differ", hd, nh, nkv, n,
              pos0, norms, il, at, bad);
    cudaFree(d1);
    cudaFree(d2);
    cudaFree(c1);
    cudaFree(c2);
    cudaFree(dc);
    cudaFree(ds);
    cudaFree(dqn);
    cudaFree(dkn);
    free(qkv);
    free(qn);
    free(kn);
    free(zero);
    free(g1);
    free(g2);
    free(k1);
    free(k2);
    mb_rope_fini(&r);
}

/* mb_kcuda_qkp_attention against mb_kcuda_qk_rope_store(_at) then
 * mb_kcuda_attention(_at), bit for bit: the output, both caches, and qkv
 * left as it was by the fused call. Positions before pos hold random
 * keys and values; the token's own row holds a sentinel the fused call
 * must not read. */
static void qkp_attention_case(uint32_t hd, uint32_t nh, uint32_t nkv, uint32_t pos,
                               uint32_t window, int norms, int il, int at)
{
    mb_rope r;
    const uint32_t ctx = pos + 3;
    REQUIRE(mb_rope_init(&r, hd, ctx, 1e6f) == MB_STATUS_OK);
    const uint32_t qd = nh * hd, kd = nkv * hd;
    const size_t ld = qd + 2 * (size_t)kd + 4, cache = (size_t)kd * ctx;
    float *qkv = rand_f32(ld, 2.0f), *qn = rand_f32(hd, 1.5f), *kn = rand_f32(hd, 1.5f);
    float *kvh = rand_f32(2 * cache, 1.0f);
    for (uint32_t h = 0; h < 2 * nkv; h++) /* the own row and past it: sentinels */
        for (uint32_t p = pos; p < ctx; p++)
            for (uint32_t d = 0; d < hd; d++)
                kvh[((size_t)h * ctx + p) * hd + d] = 1e4f;
    const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
    float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
    float *dqn = dev_upload(qn, hd * sizeof(float)), *dkn = dev_upload(kn, hd * sizeof(float));
    float *d1 = dev_upload(qkv, ld * sizeof(float)), *d2 = dev_upload(qkv, ld * sizeof(float));
    float *c1 = dev_upload(kvh, 2 * cache * sizeof(float)),
          *c2 = dev_upload(kvh, 2 * cache * sizeof(float));
    const mb_kcuda_kv
        kv1 = {.k = c1, .v = c1 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx},
        kv2 = {.k = c2, .v = c2 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx};
    const mb_kcuda_attn_shape sh = {
        .n_heads = nh, .window = window, .scale = 1.0f / sqrtf((float)hd)};
    const size_t wf = mb_kcuda_attention_work(&kv1, &sh, 1);
    float *w1 = dev_alloc((wf ? wf : 1) * sizeof(float)),
          *w2 = dev_alloc((wf ? wf : 1) * sizeof(float));
    float *o1 = dev_alloc(qd * sizeof(float)), *o2 = dev_alloc(qd * sizeof(float));
    const float *qnp = norms ? dqn : NULL, *knp = norms ? dkn : NULL;
    uint32_t *dpos = at ? dev_upload(&pos, sizeof pos) : NULL;
    if (at) {
        RUN(mb_kcuda_qk_rope_store_at(NULL, d1, ld, 1, nh, qnp, knp, 1e-6f, dpos, dc, ds, il,
                                      &kv1));
        RUN(mb_kcuda_attention_at(NULL, &kv1, &sh, dpos, 1, d1, ld, o1, qd, w1, wf));
    } else {
        RUN(mb_kcuda_qk_rope_store(NULL, d1, ld, 1, nh, qnp, knp, 1e-6f, pos, dc, ds, il, &kv1));
        RUN(mb_kcuda_attention(NULL, &kv1, &sh, pos, 1, d1, ld, o1, qd, w1, wf));
    }
    RUN(mb_kcuda_qkp_attention(NULL, d2, ld, qnp, knp, 1e-6f, dc, ds, il, &kv2, &sh, at ? 0 : pos,
                               dpos, o2, qd, w2, wf));
    float *g1 = xmalloc(qd * sizeof(float)), *g2 = xmalloc(qd * sizeof(float)),
          *q2 = xmalloc(ld * sizeof(float));
    float *k1 = xmalloc(2 * cache * sizeof(float)), *k2 = xmalloc(2 * cache * sizeof(float));
    dev_download(g1, o1, qd * sizeof(float));
    dev_download(g2, o2, qd * sizeof(float));
    dev_download(q2, d2, ld * sizeof(float));
    dev_download(k1, c1, 2 * cache * sizeof(float));
    dev_download(k2, c2, 2 * cache * sizeof(float));
    size_t bad = count_diff(g1, g2, qd) + count_diff(k1, k2, 2 * cache) + count_diff(qkv, q2, ld);
    CHECK_MSG(
        note(E_FUSED, (double)bad,
             "qkp_attention hd=%u heads=%u/%u pos=%u win=%u norms=%d il=%d at=%d", hd, nh, nkv, pos,
             window, norms, il, at),
        "qkp_attention hd=%u heads=%u/%u pos=%u win=%u norms=%d il=%d at=%d: %zu values differ", hd,
        nh, nkv, pos, window, norms, il, at, bad);
    cudaFree(d1);
    cudaFree(d2);
    cudaFree(c1);
    cudaFree(c2);
    cudaFree(w1);
    cudaFree(w2);
    cudaFree(o1);
    cudaFree(o2);
    cudaFree(dc);
    cudaFree(ds);
    cudaFree(dqn);
    cudaFree(dkn);
    if (dpos) cudaFree(dpos);
    free(qkv);
    free(qn);
    free(kn);
    free(kvh);
    free(g1);
    free(g2);
    free(q2);
    free(k1);
    free(k2);
    mb_rope_fini(&r);
}

/* mb_kcuda_qkv_rope_store(_at) against mb_kcuda_linear_norm then
 * mb_kcuda_qk_rope_store(_at), bit for bit (qkv and both caches), at two
 * positions in a row (the head counters must be back at 0 after each). */
static void qkv_rope_case(int dt, uint32_t hd, uint32_t nh, uint32_t nkv, uint32_t k, uint32_t pos0,
                          int norms, int il, int at, int extra)
{
    mb_rope r;
    REQUIRE(mb_rope_init(&r, hd, 64, 1e6f) == MB_STATUS_OK);
    const uint32_t slots = nh + 2 * nkv, m = slots * hd, ctx = 64;
    const size_t cache = (size_t)nkv * hd * ctx;
    float *we = NULL;
    void *w = rand_weights(dt, (size_t)m * k, 0.5f, &we);
    float *x = rand_f32(k, 3.0f), *a = rand_f32(k, 2.0f), *nw = rand_f32(k, 1.5f),
          *b = rand_f32(m, 1.0f);
    float *qn = rand_f32(hd, 1.5f), *kn = rand_f32(hd, 1.5f);
    const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
    float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
    float *dqn = dev_upload(qn, hd * sizeof(float)), *dkn = dev_upload(kn, hd * sizeof(float));
    void *dw = dev_upload(w, (size_t)m * k * wsize(dt));
    float *dx = dev_upload(x, k * sizeof(float)), *da = dev_upload(a, k * sizeof(float));
    float *dnw = dev_upload(nw, k * sizeof(float)), *db = dev_upload(b, m * sizeof(float));
    float *q1 = dev_alloc(m * sizeof(float)), *q2 = dev_alloc(m * sizeof(float));
    float *fill = xmalloc(2 * cache * sizeof(float));
    for (size_t i = 0; i < 2 * cache; i++)
        fill[i] = -5.0f;
    float *c1 = dev_upload(fill, 2 * cache * sizeof(float)),
          *c2 = dev_upload(fill, 2 * cache * sizeof(float));
    unsigned *cnt = dev_alloc(slots * sizeof(unsigned));
    CU(cudaMemset(cnt, 0, slots * sizeof(unsigned)));
    const mb_kcuda_kv
        kv1 = {.k = c1, .v = c1 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx},
        kv2 = {.k = c2, .v = c2 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx};
    const mb_kcuda_norm_in in = {.x = dx, .a = extra ? da : NULL, .w = dnw, .eps = 1e-6f};
    const float *bias = extra ? db : NULL, *fq = norms ? dqn : NULL, *fk = norms ? dkn : NULL;
    float *g1 = xmalloc(m * sizeof(float)), *g2 = xmalloc(m * sizeof(float));
    float *k1 = xmalloc(2 * cache * sizeof(float)), *k2 = xmalloc(2 * cache * sizeof(float));
    unsigned *hc = xmalloc(slots * sizeof(unsigned));
    size_t bad = 0;
    for (uint32_t step = 0; step < 2; step++) {
        const uint32_t pos = pos0 + step;
        RUN(mb_kcuda_linear_norm(NULL, dt, dw, m, k, &in, q1, bias, 0));
        if (at) {
            uint32_t *dpos = dev_upload(&pos, sizeof pos);
            RUN(mb_kcuda_qk_rope_store_at(NULL, q1, m, 1, nh, fq, fk, 1e-6f, dpos, dc, ds, il,
                                          &kv1));
            RUN(mb_kcuda_qkv_rope_store_at(NULL, dt, dw, k, &in, q2, bias, nh, fq, fk, 1e-6f, dpos,
                                           dc, ds, il, &kv2, cnt));
            CU(cudaDeviceSynchronize());
            cudaFree(dpos);
        } else {
            RUN(mb_kcuda_qk_rope_store(NULL, q1, m, 1, nh, fq, fk, 1e-6f, pos, dc, ds, il, &kv1));
            RUN(mb_kcuda_qkv_rope_store(NULL, dt, dw, k, &in, q2, bias, nh, fq, fk, 1e-6f, pos, dc,
                                        ds, il, &kv2, cnt));
        }
        dev_download(g1, q1, m * sizeof(float));
        dev_download(g2, q2, m * sizeof(float));
        dev_download(hc, cnt, slots * sizeof(unsigned));
        bad += count_diff(g1, g2, m);
        for (uint32_t i = 0; i < slots; i++)
            bad += hc[i] != 0;
    }
    dev_download(k1, c1, 2 * cache * sizeof(float));
    dev_download(k2, c2, 2 * cache * sizeof(float));
    bad += count_diff(k1, k2, 2 * cache);
    CHECK_MSG(note(E_FUSED, (double)bad,
                   "qkv_rope %s hd=%u heads=%u/%u k=%u pos0=%u norms=%d il=%d at=%d extra=%d",
                   dtname(dt), hd, nh, nkv, k, pos0, norms, il, at, extra),
              "qkv_rope %s hd=%u heads=%u/%u k=%u pos0=%u norms=%d il=%d at=%d extra=%d: %zu "
              "values differ",
              dtname(dt), hd, nh, nkv, k, pos0, norms, il, at, extra, bad);
    void *bufs[] = {dc, ds, dqn, dkn, dw, dx, da, dnw, db, q1, q2, c1, c2, cnt};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]);
    void *hbufs[] = {w, we, x, a, nw, b, qn, kn, fill, g1, g2, k1, k2, hc};
    for (size_t i = 0; i < sizeof hbufs / sizeof *hbufs; i++)
        free(hbufs[i]);
    mb_rope_fini(&r);
}

/* The fused router + routing against mb_kcuda_linear then
 * mb_kcuda_route_topk, twice in a row (the done counter must be back at 0). */
static void router_topk_case(int dt, uint32_t ne, uint32_t k, uint32_t n, uint32_t top_k, int renorm)
{
    float *we = NULL;
    void *w = rand_weights(dt, (size_t)ne * k, 0.5f, &we);
    const size_t ldx = k + (k % 4 ? 0 : 4);
    float *x = rand_f32(n * ldx, 1.0f);
    void *dw = dev_upload(w, (size_t)ne * k * wsize(dt));
    float *dx = dev_upload(x, n * ldx * sizeof(float));
    float *l1 = dev_alloc(n * ne * sizeof(float)), *l2 = dev_alloc(n * ne * sizeof(float));
    int32_t *i1 = dev_alloc(n * top_k * sizeof(int32_t)), *i2 = dev_alloc(n * top_k * sizeof(int32_t));
    float *g1 = dev_alloc(n * top_k * sizeof(float)), *g2 = dev_alloc(n * top_k * sizeof(float));
    unsigned zero = 0, *done = dev_upload(&zero, sizeof zero);
    RUN(mb_kcuda_linear(NULL, dt, dw, ne, k, dx, ldx, n, l1, ne, NULL, 0));
    RUN(mb_kcuda_route_topk(NULL, l1, n, ne, top_k, renorm, i1, g1));
    size_t bad = 0;
    for (int rep = 0; rep < 2; rep++) {
        RUN(mb_kcuda_router_topk(NULL, dt, dw, ne, k, dx, ldx, n, l2, top_k, renorm, i2, g2, done));
        float *a = xmalloc(n * ne * sizeof(float)), *b = xmalloc(n * ne * sizeof(float));
        dev_download(a, l1, n * ne * sizeof(float));
        dev_download(b, l2, n * ne * sizeof(float));
        bad += count_diff(a, b, (size_t)n * ne);
        dev_download(a, i1, n * top_k * sizeof(int32_t));
        dev_download(b, i2, n * top_k * sizeof(int32_t));
        bad += count_diff(a, b, (size_t)n * top_k);
        dev_download(a, g1, n * top_k * sizeof(float));
        dev_download(b, g2, n * top_k * sizeof(float));
        bad += count_diff(a, b, (size_t)n * top_k);
        unsigned left = 1;
        dev_download(&left, done, sizeof left);
        bad += left != 0;
        free(a);
        free(b);
    }
    CHECK_MSG(note(E_FUSED, (double)bad, "router_topk %s ne=%u k=%u n=%u top_k=%u renorm=%d", dtname(dt), ne, k, n,
                   top_k, renorm),
              "router_topk %s ne=%u k=%u n=%u top_k=%u renorm=%d: %zu values differ", dtname(dt), ne, k, n, top_k,
              renorm, bad);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(l1);
    cudaFree(l2);
    cudaFree(i1);
    cudaFree(i2);
    cudaFree(g1);
    cudaFree(g2);
    cudaFree(done);
    free(w);
    free(we);
    free(x);
}

/* |y1 - y2| / sum_i |W[r][i] xn[i]| over the rows: the GEMV metric. */
static double gemv_rel_err(const float *y1, const float *y2, const float *we, const float *xn,
                           const float *bias, const float *y0, uint32_t m, uint32_t k)
{
    double worst = 0.0;
    for (uint32_t r = 0; r < m; r++) {
        double mag = (bias ? fabs(bias[r]) : 0.0) + (y0 ? fabs(y0[r]) : 0.0);
        for (uint32_t i = 0; i < k; i++)
            mag += fabs((double)we[(size_t)r * k + i] * xn[i]);
        const double e = fabs((double)y1[r] - (double)y2[r]) / (mag > 0 ? mag : 1.0);
        if (e > worst || e != e) worst = e != e ? INFINITY : e;
    }
    return worst;
}

/* mb_kcuda_linear_norm against (add_)rmsnorm then linear: y within the
 * GEMV bound, xn (device, and pinned host in a wire dtype that varies
 * with the shape) bit for bit, x untouched. */
static void linear_norm_case(int dt, uint32_t m, uint32_t k, int addend, int bias, int acc,
                             int want_xn)
{
    float *we = NULL;
    void *w = rand_weights(dt, (size_t)m * k, 0.5f, &we);
    float *x = rand_f32(k, 3.0f), *a = rand_f32(k, 2.0f), *nw = rand_f32(k, 1.5f),
          *b = rand_f32(m, 1.0f);
    float *y0 = rand_f32(m, 1.0f);
    void *dw = dev_upload(w, (size_t)m * k * wsize(dt));
    float *dx = dev_upload(x, k * sizeof(float)), *dx2 = dev_upload(x, k * sizeof(float));
    float *da = dev_upload(a, k * sizeof(float)), *dnw = dev_upload(nw, k * sizeof(float));
    float *db = dev_upload(b, m * sizeof(float)), *dxn = dev_alloc(k * sizeof(float)),
          *dxn2 = dev_alloc(k * sizeof(float));
    float *dy1 = dev_upload(y0, m * sizeof(float)), *dy2 = dev_upload(y0, m * sizeof(float));
    const int wire = (int)((m + k + (uint32_t)addend + (uint32_t)dt) % 3); /* f32, f16, bf16 */
    float *h = NULL;
    CU(cudaMallocHost((void **)&h, k * sizeof(float)));
    if (addend)
        RUN(mb_kcuda_add_rmsnorm(NULL, dxn, k, dx, k, da, k, 1, k, dnw, 1e-6f));
    else
        RUN(mb_kcuda_rmsnorm(NULL, dxn, k, dx, k, 1, k, dnw, 1e-6f));
    RUN(mb_kcuda_linear(NULL, dt, dw, m, k, dxn, k, 1, dy1, m, bias ? db : NULL, acc));
    const mb_kcuda_norm_in in = {.x = dx2,
                                 .a = addend ? da : NULL,
                                 .w = dnw,
                                 .eps = 1e-6f,
                                 .xn = want_xn ? dxn2 : NULL,
                                 .xn2 = want_xn ? h : NULL,
                                 .xn2_dtype = wire};
    RUN(mb_kcuda_linear_norm(NULL, dt, dw, m, k, &in, dy2, bias ? db : NULL, acc));
    float *y1 = xmalloc(m * sizeof(float)), *y2 = xmalloc(m * sizeof(float)),
          *xn1 = xmalloc(k * sizeof(float)), *xn2 = xmalloc(k * sizeof(float)),
          *xb = xmalloc(k * sizeof(float));
    dev_download(y1, dy1, m * sizeof(float));
    dev_download(y2, dy2, m * sizeof(float));
    dev_download(xn1, dxn, k * sizeof(float));
    dev_download(xn2, dxn2, k * sizeof(float));
    dev_download(xb, dx2, k * sizeof(float));
    const double err = gemv_rel_err(y1, y2, we, xn1, bias ? b : NULL, acc ? y0 : NULL, m, k);
    CHECK_MSG(note(E_NORM_IN, err, "linear_norm %s m=%u k=%u a=%d bias=%d acc=%d", dtname(dt), m, k,
                   addend, bias, acc),
              "linear_norm %s m=%u k=%u a=%d bias=%d acc=%d: error %.3g", dtname(dt), m, k, addend,
              bias, acc, err);
    size_t bad = count_diff(xb, x, k); /* x is only read */
    if (want_xn) bad += count_diff(xn1, xn2, k) + count_wire_diff(xn1, h, wire, k);
    CHECK_MSG(note(E_FUSED, (double)bad, "linear_norm xn %s m=%u k=%u a=%d wire=%d", dtname(dt), m,
                   k, addend, wire),
              "linear_norm %s m=%u k=%u a=%d wire=%d: %zu values of x or xn differ", dtname(dt), m,
              k, addend, wire, bad);
    cudaFreeHost(h);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dx2);
    cudaFree(da);
    cudaFree(dnw);
    cudaFree(db);
    cudaFree(dxn);
    cudaFree(dxn2);
    cudaFree(dy1);
    cudaFree(dy2);
    free(w);
    free(we);
    free(x);
    free(a);
    free(nw);
    free(b);
    free(y0);
    free(y1);
    free(y2);
    free(xn1);
    free(xn2);
    free(xb);
}

/* Whether two routings of one token (device ids and gates) differ: 1 for
 * the ids, plus the gates that differ. */
static size_t routing_diff(const int32_t *i1, const float *g1, const int32_t *i2, const float *g2,
                           uint32_t top_k)
{
    int32_t ia[32], ib[32];
    float ga[32], gb[32];
    dev_download(ia, i1, top_k * sizeof(int32_t));
    dev_download(ib, i2, top_k * sizeof(int32_t));
    dev_download(ga, g1, top_k * sizeof(float));
    dev_download(gb, g2, top_k * sizeof(float));
    return (size_t)(memcmp(ia, ib, top_k * sizeof(int32_t)) != 0) + count_diff(ga, gb, top_k);
}

/* The local experts' pairs a routing kernel writes with loc (slots a
 * permutation of the experts, routed counts, its stamp), checked against
 * mb_kcuda_local_pairs' on the same ids and gates. */
typedef struct {
    uint32_t ne, top_k;
    int32_t *slot_of, *dslot;
    uint16_t *cnt1, *cnt2;
    void *pr1, *pr2;
    uint32_t *rt1, *rt2;
    unsigned long long *stamp;
    mb_kcuda_route_local loc;
} local_check;

static void local_check_init(local_check *c, uint32_t ne, uint32_t top_k)
{
    c->ne = ne;
    c->top_k = top_k;
    c->slot_of = xmalloc(ne * sizeof(int32_t));
    for (uint32_t e = 0; e < ne; e++)
        c->slot_of[e] = (int32_t)((e * 7u + 3u) % ne);
    c->dslot = dev_upload(c->slot_of, ne * sizeof(int32_t));
    c->cnt1 = dev_alloc(sizeof(uint16_t));
    c->cnt2 = dev_alloc(sizeof(uint16_t));
    c->pr1 = dev_alloc(top_k * 8);
    c->pr2 = dev_alloc(top_k * 8);
    c->rt1 = dev_alloc(ne * sizeof(uint32_t));
    c->rt2 = dev_alloc(ne * sizeof(uint32_t));
    c->stamp = dev_alloc(sizeof *c->stamp);
    CU(cudaMemset(c->rt1, 0, ne * sizeof(uint32_t)));
    CU(cudaMemset(c->rt2, 0, ne * sizeof(uint32_t)));
    CU(cudaMemset(c->stamp, 0, sizeof *c->stamp));
    c->loc = (mb_kcuda_route_local){.slot_of = c->dslot,
                                    .counts = c->cnt2,
                                    .pairs = c->pr2,
                                    .routed = c->rt2,
                                    .stamp = c->stamp};
}

/* What differs from mb_kcuda_local_pairs on ids and gate (device, one
 * token): pairs, routed counts, count, and a stamp never written. */
static size_t local_check_diff(local_check *c, const int32_t *ids, const float *gate)
{
    const uint32_t ne = c->ne, top_k = c->top_k;
    RUN(mb_kcuda_local_pairs(NULL, ids, gate, 1, top_k, c->dslot, c->cnt1, c->pr1, c->rt1));
    unsigned char b1[32 * 8], b2[32 * 8];
    uint32_t *r1 = xmalloc(ne * sizeof(uint32_t)), *r2 = xmalloc(ne * sizeof(uint32_t));
    uint16_t c1 = 0, c2 = 1;
    unsigned long long st = 0;
    dev_download(b1, c->pr1, top_k * 8);
    dev_download(b2, c->pr2, top_k * 8);
    dev_download(r1, c->rt1, ne * sizeof(uint32_t));
    dev_download(r2, c->rt2, ne * sizeof(uint32_t));
    dev_download(&c1, c->cnt1, sizeof c1);
    dev_download(&c2, c->cnt2, sizeof c2);
    dev_download(&st, c->stamp, sizeof st);
    const size_t bad = (size_t)(memcmp(b1, b2, top_k * 8) != 0) +
                       (size_t)(memcmp(r1, r2, ne * sizeof(uint32_t)) != 0) + (c1 != c2) +
                       (st == 0);
    free(r1);
    free(r2);
    return bad;
}

static void local_check_free(local_check *c)
{
    void *dev[] = {c->dslot, c->cnt1, c->cnt2, c->pr1, c->pr2, c->rt1, c->rt2, c->stamp};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        cudaFree(dev[i]);
    free(c->slot_of);
}

/* mb_kcuda_router_topk_norm against rmsnorm then the router: logits
 * within the GEMV bound, ids and gate those of mb_kcuda_route_topk on the
 * logits it wrote, xn bit for bit, the done counter back at 0 (twice). */
static void router_norm_case(int dt, uint32_t ne, uint32_t k, uint32_t top_k, int renorm,
                             int addend)
{
    float *we = NULL;
    void *w = rand_weights(dt, (size_t)ne * k, 0.5f, &we);
    float *x = rand_f32(k, 3.0f), *a = rand_f32(k, 2.0f), *nw = rand_f32(k, 1.5f);
    void *dw = dev_upload(w, (size_t)ne * k * wsize(dt));
    float *dx = dev_upload(x, k * sizeof(float)), *dx2 = dev_upload(x, k * sizeof(float));
    float *da = dev_upload(a, k * sizeof(float)), *dnw = dev_upload(nw, k * sizeof(float));
    float *dxn = dev_alloc(k * sizeof(float)), *dxn2 = dev_alloc(k * sizeof(float));
    float *l1 = dev_alloc(ne * sizeof(float)), *l2 = dev_alloc(ne * sizeof(float));
    int32_t *i1 = dev_alloc(top_k * sizeof(int32_t)), *i2 = dev_alloc(top_k * sizeof(int32_t));
    float *g1 = dev_alloc(top_k * sizeof(float)), *g2 = dev_alloc(top_k * sizeof(float));
    unsigned zero = 0, *done = dev_upload(&zero, sizeof zero);
    if (addend)
        RUN(mb_kcuda_add_rmsnorm(NULL, dxn, k, dx, k, da, k, 1, k, dnw, 1e-6f));
    else
        RUN(mb_kcuda_rmsnorm(NULL, dxn, k, dx, k, 1, k, dnw, 1e-6f));
    RUN(mb_kcuda_linear(NULL, dt, dw, ne, k, dxn, k, 1, l1, ne, NULL, 0));
    float *a1 = xmalloc(ne * sizeof(float)), *a2 = xmalloc(ne * sizeof(float)),
          *xn1 = xmalloc(k * sizeof(float)), *xn2 = xmalloc(k * sizeof(float));
    dev_download(a1, l1, ne * sizeof(float));
    dev_download(xn1, dxn, k * sizeof(float));
    /* The row's host copy for the experts' links, in a wire dtype that
     * varies with the shape. */
    const int wire = (int)((ne + k + top_k + (uint32_t)dt) % 3);
    void *h = NULL;
    CU(cudaMallocHost(&h, k * sizeof(float)));
    const mb_kcuda_norm_in in = {.x = dx2,
                                 .a = addend ? da : NULL,
                                 .w = dnw,
                                 .eps = 1e-6f,
                                 .xn = dxn2,
                                 .xn2 = h,
                                 .xn2_dtype = wire};
    /* The second call also writes the local experts' pairs (slots a
     * permutation of the experts), which must be mb_kcuda_local_pairs' on
     * the same ids and gates, routed counts and all, with its stamp. */
    local_check lc;
    local_check_init(&lc, ne, top_k);
    size_t bad = 0;
    double err = 0.0;
    for (int rep = 0; rep < 2; rep++) {
        if (rep == 0)
            RUN(mb_kcuda_router_topk_norm(NULL, dt, dw, ne, k, &in, l2, top_k, renorm, i2, g2,
                                          done));
        else
            RUN(mb_kcuda_router_topk_norm_local(NULL, dt, dw, ne, k, &in, l2, top_k, renorm, i2, g2,
                                                done, &lc.loc));
        RUN(mb_kcuda_route_topk(NULL, l2, 1, ne, top_k, renorm, i1, g1));
        if (rep == 1) bad += local_check_diff(&lc, i1, g1);
        dev_download(a2, l2, ne * sizeof(float));
        const double e = gemv_rel_err(a1, a2, we, xn1, NULL, NULL, ne, k);
        err = e > err ? e : err;
        bad += routing_diff(i1, g1, i2, g2, top_k);
        dev_download(xn2, dxn2, k * sizeof(float));
        bad += count_diff(xn1, xn2, k) + count_wire_diff(xn1, h, wire, k);
        memset(h, 0xff, k * sizeof(float));
        unsigned left = 1;
        dev_download(&left, done, sizeof left);
        bad += left != 0;
    }
    CHECK_MSG(
        note(E_NORM_IN, err, "router_topk_norm %s ne=%u k=%u a=%d", dtname(dt), ne, k, addend),
        "router_topk_norm %s ne=%u k=%u a=%d: logits error %.3g", dtname(dt), ne, k, addend, err);
    CHECK_MSG(
        note(E_FUSED, (double)bad, "router_topk_norm %s ne=%u k=%u top_k=%u", dtname(dt), ne, k,
             top_k),
        "router_topk_norm %s ne=%u k=%u top_k=%u: %zu ids, gates, xn values or counters differ",
        dtname(dt), ne, k, top_k, bad);
    cudaFreeHost(h);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dx2);
    cudaFree(da);
    cudaFree(dnw);
    cudaFree(dxn);
    cudaFree(dxn2);
    cudaFree(l1);
    cudaFree(l2);
    cudaFree(i1);
    cudaFree(i2);
    cudaFree(g1);
    cudaFree(g2);
    cudaFree(done);
    local_check_free(&lc);
    free(w);
    free(we);
    free(x);
    free(a);
    free(nw);
    free(a1);
    free(a2);
    free(xn1);
    free(xn2);
}

/* The norm folded into one-token projections (decode): the GEMV's one-row
 * and four-row blocks, vector and scalar loads (k % 8), every dtype, and
 * row counts past 4096 at a narrower k (4200, 6000). */
static void test_norm_in(void)
{
    static const uint32_t mk[][2] = {{5120, 2048}, {37, 64},     {2048, 520}, {300, 13},
                                     {1, 8},       {4200, 1024}, {6000, 1024}};
    for (int dt = 0; dt < 3; dt++)
        for (size_t s = 0; s < sizeof mk / sizeof *mk; s++) {
            const int v = (int)s + dt;
            linear_norm_case(dt, mk[s][0], mk[s][1], v % 2, (v / 2) % 2, (v / 3) % 2, v % 3 == 0);
        }
    static const uint32_t rs[][3] = {{128, 2048, 8}, {60, 256, 4}, {8, 13, 2}, {1024, 64, 1}};
    for (int dt = 0; dt < 3; dt++)
        for (size_t r = 0; r < sizeof rs / sizeof *rs; r++)
            router_norm_case(dt, rs[r][0], rs[r][1], rs[r][2], (int)(r & 1),
                             (int)((r + (size_t)dt) % 2));
}

static void test_fused(void)
{
    const uint32_t ds[] = {64, 513, 2048}, rs[] = {1, 5};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++)
            for (int inplace = 0; inplace < 2; inplace++)
                add_rmsnorm_case(ds[a], rs[b], inplace);
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++)
            for (int dt = MB_DTYPE_F32; dt <= MB_DTYPE_BF16; dt++)
                rmsnorm_copy_case(ds[a], rs[b], dt);
    const int dts[] = {MB_KCUDA_F32, MB_KCUDA_F16, MB_KCUDA_BF16};
    static const uint32_t rshapes[][4] = {{128, 2048, 1, 8}, {60, 256, 3, 4}, {8, 13, 8, 2}, {128, 64, 9, 8},
                                          {1024, 64, 2, 1}};
    for (int di = 0; di < 3; di++)
        for (size_t r = 0; r < sizeof rshapes / sizeof *rshapes; r++)
            router_topk_case(dts[di], rshapes[r][0], rshapes[r][1], rshapes[r][2], rshapes[r][3], (int)(r & 1));
    /* 288: past the shared row of the standalone kernel (in place instead) */
    static const uint32_t shapes[][3] = {{128, 8, 2}, {64, 4, 4}, {16, 3, 1}, {288, 2, 1}};
    const uint32_t ns[] = {1, 5}, p0s[] = {0, 17};
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++)
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++)
                for (int norms = 0; norms < 2; norms++)
                    for (int il = 0; il < 2; il++)
                        for (int at = 0; at < 2; at++)
                            qk_rope_store_case(shapes[sh][0], shapes[sh][1], shapes[sh][2], ns[a], p0s[b], norms, il,
                                               at);
    /* The head pass inside the decode attention: every head_dim it takes,
     * 8 to 1 query heads a kv head, the first position, one tile, several
     * tiles and chunks, a window, with and without head norms, both RoPE
     * layouts, the position on the host and on the device. */
    static const uint32_t ashapes[][5] = {{128, 8, 1, 0, 0},     {128, 32, 4, 1100, 0},
                                          {64, 16, 2, 45, 0},    {8, 12, 4, 300, 0},
                                          {128, 8, 1, 200, 100}, {4, 2, 2, 33, 0}};
    for (size_t a = 0; a < sizeof ashapes / sizeof *ashapes; a++)
        qkp_attention_case(ashapes[a][0], ashapes[a][1], ashapes[a][2], ashapes[a][3],
                           ashapes[a][4], (int)(a % 2), (int)(a / 2 % 2), (int)((a + 1) % 2));
    /* The projection with the head pass: one-row blocks (m < 2048) and four-row blocks, a block
     * across two heads (hd 6) and across several (hd 2), vector and
     * scalar loads (k % 8), every dtype; m = 5120 against mb_kcuda_linear_norm's
     * sixteen-row blocks (mb_lin_rows1), bit for bit. */
    static const uint32_t qshapes[][4] = {{128, 8, 2, 256}, {64, 4, 4, 200},  {6, 3, 1, 13},
                                          {128, 16, 4, 64}, {6, 300, 21, 16}, {2, 1000, 24, 16},
                                          {128, 32, 4, 64}};
    for (int di = 0; di < 3; di++)
        for (size_t q = 0; q < sizeof qshapes / sizeof *qshapes; q++) {
            const int v = di + (int)q;
            qkv_rope_case(dts[di], qshapes[q][0], qshapes[q][1], qshapes[q][2], qshapes[q][3],
                          v % 2 ? 17 : 0, v % 2, (v / 2) % 2, v % 3 != 0, (v + 1) % 2);
        }
}

/* ---- refused arguments -------------------------------------------------------------- */

static void test_refusals(void)
{
    float *d = dev_alloc(4096 * sizeof(float));
    int32_t *di = dev_alloc(64 * sizeof(int32_t));
    CHECK(mb_kcuda_linear(NULL, 7, d, 4, 4, d, 4, 1, d, 4, NULL, 0) != 0); /* dtype */
    CHECK(mb_kcuda_linear(NULL, MB_KCUDA_F32, d, 0, 4, d, 4, 1, d, 4, NULL, 0) != 0);
    CHECK(mb_kcuda_linear(NULL, MB_KCUDA_F32, d, 4, 4, d, 3, 1, d, 4, NULL, 0) != 0); /* ldx < k */
    CHECK(mb_kcuda_embed(NULL, MB_KCUDA_F32, d, 0, di, 1, d) != 0);
    CHECK(mb_kcuda_rmsnorm(NULL, d, 8, d, 8, 0, 8, d, 1e-6f) != 0);
    CHECK(mb_kcuda_rope(NULL, d, 64, 1, 1, 7, 0, d, d, 0) != 0); /* odd head_dim */
    CHECK(mb_kcuda_route_topk(NULL, d, 1, 8, 9, 1, di, d) != 0); /* k > experts */
    CHECK(mb_kcuda_route_topk(NULL, d, 1, 2048, 8, 1, di, d) != 0);
    const mb_kcuda_norm_in nin = {.x = d, .w = NULL, .eps = 1e-6f};
    CHECK(mb_kcuda_linear_norm(NULL, MB_KCUDA_F32, d, 4, 4, &nin, d, NULL, 0) !=
          0); /* no norm weights */
    CHECK(mb_kcuda_linear_norm(NULL, MB_KCUDA_F32, d, 4, 4, NULL, d, NULL, 0) != 0);
    CHECK(mb_kcuda_router_topk_norm(NULL, MB_KCUDA_F32, d, 2048, 4, &nin, d, 8, 1, di, d,
                                    (unsigned *)di) != 0);
    const mb_kcuda_norm_in rin = {.x = d, .w = d, .eps = 1e-6f};
    const mb_kcuda_route_local no_counts = {.slot_of = di, .counts = NULL, .pairs = d};
    CHECK(mb_kcuda_router_topk_norm_local(NULL, MB_KCUDA_F32, d, 8, 4, &rin, d, 2, 1, di, d,
                                          (unsigned *)di, &no_counts) != 0); /* pairs, no counts */
    /* the host copy's dtype: f32, f16 or bf16 only */
    const mb_kcuda_norm_in win = {.x = d, .w = d, .eps = 1e-6f, .xn = d, .xn2 = d, .xn2_dtype = 3};
    CHECK(mb_kcuda_router_topk_norm(NULL, MB_KCUDA_F32, d, 8, 4, &win, d, 2, 1, di, d,
                                    (unsigned *)di) != 0);
    CHECK(mb_kcuda_linear_norm(NULL, MB_KCUDA_F32, d, 4, 4, &win, d, NULL, 0) != 0);
    CHECK(mb_kcuda_rmsnorm_copy(NULL, d, 8, d, 3, 8, d, 8, 1, 8, d, 1e-6f) != 0);
    CHECK(mb_kcuda_rmsnorm_copy(NULL, d, 8, d, -1, 8, d, 8, 1, 8, d, 1e-6f) != 0);
    mb_kcuda_kv kvq = {.k = d, .v = d, .n_kv_heads = 1, .head_dim = 8, .max_ctx = 16};
    const mb_kcuda_norm_in qin = {.x = d, .w = d, .eps = 1e-6f};
    CHECK(mb_kcuda_qkv_rope_store(NULL, MB_KCUDA_F32, d, 8, &qin, d, NULL, 1, NULL, NULL, 1e-6f, 0,
                                  d, d, 0, &kvq, NULL) != 0); /* no counters */
    CHECK(mb_kcuda_qkv_rope_store(NULL, MB_KCUDA_F32, d, 8, &qin, d, NULL, 1, NULL, NULL, 1e-6f, 16,
                                  d, d, 0, &kvq, (unsigned *)di) != 0); /* past max_ctx */
    kvq.head_dim = 258;
    CHECK(mb_kcuda_qkv_rope_store(NULL, MB_KCUDA_F32, d, 8, &qin, d, NULL, 1, NULL, NULL, 1e-6f, 0,
                                  d, d, 0, &kvq, (unsigned *)di) != 0); /* head_dim past 256 */
    {
        const mb_kcuda_kv kvw = {.k = d, .v = d, .n_kv_heads = 1, .head_dim = 256, .max_ctx = 4};
        const mb_kcuda_attn_shape shw = {.n_heads = 1, .scale = 0.1f};
        CHECK(mb_kcuda_qkp_attention(NULL, d, 768, NULL, NULL, 1e-6f, d, d, 0, &kvw, &shw, 0, NULL,
                                     d, 256, d, 4096) != 0); /* head_dim past the pipelined tiles */
    }
    CHECK(mb_kcuda_l2_prefetch(NULL, (const char *)d + 4, 64) != 0); /* not 16-byte aligned */
    RUN(mb_kcuda_l2_prefetch(NULL, d, 4096 * sizeof(float)));        /* asks, changes nothing */
    CHECK(mb_kcuda_silu_mul(NULL, d, d, 4, 1, 0, NULL) != 0);
    CHECK(mb_kcuda_add(NULL, d, d, 0) != 0);
    mb_kcuda_kv kv = {.k = d, .v = d, .n_kv_heads = 2, .head_dim = 8, .max_ctx = 16};
    mb_kcuda_attn_shape sh = {.n_heads = 3, .window = 0, .scale = 0.3f}; /* 3 % 2 != 0 */
    CHECK(mb_kcuda_attention(NULL, &kv, &sh, 0, 1, d, 64, d, 64, d, 4096) != 0);
    sh.n_heads = 4;
    CHECK(mb_kcuda_attention(NULL, &kv, &sh, 10, 7, d, 64, d, 64, d, 4096) != 0); /* past max_ctx */
    CHECK(mb_kcuda_kv_store(NULL, &kv, 16, 1, d, 16, d, 16) != 0);
    CU(cudaDeviceSynchronize());
    cudaFree(d);
    cudaFree(di);
}

/* ---- timing (--bench) ------------------------------------------------------------- */

/* Device copy bandwidth (GB/s): the ceiling a weight-streaming kernel is
 * measured against. */
static double copy_gbps(void *a, void *b, size_t bytes)
{
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CU(cudaEventRecord(e0, NULL));
    for (int i = 0; i < 20; i++)
        CU(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CU(cudaEventRecord(e1, NULL));
    CU(cudaEventSynchronize(e1));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return 2.0 * bytes * 20 / (ms * 1e-3) / 1e9; /* read + write */
}

/* A projection's time. cold: the weights streamed from memory, as in a
 * decode step (calls rotate over copies of W that together exceed the L2
 * cache several times); else the same W every call (from L2 when it
 * fits). norm (one token): mb_kcuda_linear_norm as the decode step calls
 * it, with the residual addend and the normalised row written. */
static void bench_linear_at(int dt, uint32_t m, uint32_t k, uint32_t n, double ceil_gbps, int cold,
                            int norm)
{
    const size_t wb = (size_t)m * k * wsize(dt);
    const size_t want = cold ? ((size_t)320 << 20) / wb + 1 : 1;
    const int copies = want > 1024 ? 1024 : (int)want;
    void **dw = malloc(copies * sizeof *dw);
    if (!dw) abort();
    for (int c = 0; c < copies; c++) {
        dw[c] = dev_alloc(wb);
        CU(cudaMemset(dw[c], 0, wb));
    }
    float *dx = dev_alloc((size_t)n * k * sizeof(float)),
          *dy = dev_alloc((size_t)n * m * sizeof(float));
    float *da = dev_alloc((size_t)k * sizeof(float)), *dnw = dev_alloc((size_t)k * sizeof(float));
    CU(cudaMemset(dx, 0, (size_t)n * k * sizeof(float)));
    CU(cudaMemset(da, 0, (size_t)k * sizeof(float)));
    CU(cudaMemset(dnw, 0, (size_t)k * sizeof(float)));
    const mb_kcuda_norm_in in = {.x = dx, .a = da, .w = dnw, .eps = 1e-6f};
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    const int iters = cold ? (copies < 8 ? 8 * copies : 2 * copies) : 50;
    for (int i = -copies; i < iters; i++) { /* the first round untimed */
        if (i == 0) CU(cudaEventRecord(e0, NULL));
        void *w = dw[(i + copies) % copies];
        if (norm)
            CU(mb_kcuda_linear_norm(NULL, dt, w, m, k, &in, dy, NULL, 0));
        else
            CU(mb_kcuda_linear(NULL, dt, w, m, k, dx, k, n, dy, m, NULL, 0));
    }
    CU(cudaEventRecord(e1, NULL));
    CU(cudaEventSynchronize(e1));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    const double us = ms * 1e3 / iters, gbps = wb / (us * 1e-6) / 1e9;
    const double flops = 2.0 * m * k * n / (us * 1e-6) / 1e12;
    printf("linear%s %-4s m=%6u k=%5u n=%4u%s: %9.1f us  %7.1f GB/s of W (%3.0f%% of copy)  %6.2f "
           "TFLOP/s\n",
           norm ? "_norm" : "", dtname(dt), m, k, n, cold ? " cold" : "", us, gbps,
           100 * gbps / ceil_gbps, flops);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (int c = 0; c < copies; c++)
        cudaFree(dw[c]);
    free(dw);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(da);
    cudaFree(dnw);
}

static void bench_linear(int dt, uint32_t m, uint32_t k, uint32_t n, double ceil_gbps)
{
    bench_linear_at(dt, m, k, n, ceil_gbps, 0, 0);
}

static void bench_attention(uint32_t hd, uint32_t heads, uint32_t kvh, uint32_t ctx, uint32_t n,
                            double ceil_gbps)
{
    mb_kcuda_kv kv = {.n_kv_heads = kvh, .head_dim = hd, .max_ctx = ctx};
    const size_t cache = (size_t)kvh * ctx * hd * sizeof(float);
    kv.k = dev_alloc(cache);
    kv.v = dev_alloc(cache);
    CU(cudaMemset(kv.k, 0, cache));
    CU(cudaMemset(kv.v, 0, cache));
    mb_kcuda_attn_shape sh = {.n_heads = heads, .window = 0, .scale = 1.0f / sqrtf((float)hd)};
    const size_t wf = mb_kcuda_attention_work(&kv, &sh, n);
    float *work = wf ? dev_alloc(wf * sizeof(float)) : NULL;
    const size_t row = (size_t)heads * hd;
    float *dq = dev_alloc(n * row * sizeof(float)), *dout = dev_alloc(n * row * sizeof(float));
    CU(cudaMemset(dq, 0, n * row * sizeof(float)));
    const uint32_t pos0 = ctx - n;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(mb_kcuda_attention(NULL, &kv, &sh, pos0, n, dq, row, dout, row, work, wf));
    const int iters = 20;
    CU(cudaEventRecord(e0, NULL));
    for (int i = 0; i < iters; i++)
        CU(mb_kcuda_attention(NULL, &kv, &sh, pos0, n, dq, row, dout, row, work, wf));
    CU(cudaEventRecord(e1, NULL));
    CU(cudaEventSynchronize(e1));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    const double us = ms * 1e3 / iters, gbps = 2.0 * cache / (us * 1e-6) / 1e9;
    /* causal prefill: about half the n x ctx score matrix */
    const double pairs = n == 1 ? (double)ctx : (double)n * (ctx - n) + 0.5 * (double)n * n;
    const double flops = 4.0 * pairs * hd * heads / (us * 1e-6) / 1e12;
    printf("attention hd=%u heads=%u/%u ctx=%u n=%u: %9.1f us  %7.1f GB/s of cache (%3.0f%% of "
           "copy)  %6.2f "
           "TFLOP/s\n",
           hd, heads, kvh, ctx, n, us, gbps, 100 * gbps / ceil_gbps, flops);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(kv.k);
    cudaFree(kv.v);
    if (work) cudaFree(work);
    cudaFree(dq);
    cudaFree(dout);
}

static void bench(void)
{
    const size_t bytes = (size_t)256 << 20;
    void *a = dev_alloc(bytes), *b = dev_alloc(bytes);
    CU(cudaMemset(a, 0, bytes));
    const double ceil_gbps = copy_gbps(a, b, bytes);
    cudaFree(a);
    cudaFree(b);
    printf("\ndevice copy: %.0f GB/s (read + write)\n", ceil_gbps);
    /* The decode step's projections as it runs them: weights from memory,
     * the norm folded into QKV, the router and lm_head. */
    const uint32_t step[][3] = {
        {5120, 2048, 1}, {2048, 4096, 0}, {128, 2048, 1}, {32768, 2048, 1}, {151936, 2048, 1}};
    for (size_t s = 0; s < sizeof step / sizeof step[0]; s++) {
        bench_linear_at(MB_KCUDA_BF16, step[s][0], step[s][1], 1, ceil_gbps, 1, 0);
        if (step[s][2]) bench_linear_at(MB_KCUDA_BF16, step[s][0], step[s][1], 1, ceil_gbps, 1, 1);
    }
    if (getenv("MB_BENCH_COLD_ONLY")) return;
    /* Qwen3-30B-A3B: q_proj, k/v_proj, o_proj, router, lm_head. */
    const uint32_t shapes[][2] = {{4096, 2048},   {512, 2048},  {2048, 4096}, {128, 2048},
                                  {151936, 2048}, {5120, 2048}, {32768, 2048}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (uint32_t n = 1; n <= 8; n *= 8)
            bench_linear(MB_KCUDA_BF16, shapes[s][0], shapes[s][1], n, ceil_gbps);
    bench_linear(MB_KCUDA_F32, 4096, 2048, 1, ceil_gbps);
    bench_linear(MB_KCUDA_BF16, 4096, 2048, 512, ceil_gbps);
    bench_linear(MB_KCUDA_BF16, 4096, 2048, 2048, ceil_gbps);
    bench_attention(128, 32, 4, 1024, 1, ceil_gbps);
    bench_attention(128, 32, 4, 4096, 1, ceil_gbps);
    bench_attention(128, 32, 4, 32768, 1, ceil_gbps);
    bench_attention(128, 32, 4, 2048, 2048, ceil_gbps);
}

/* MB_DENSE_TESTS=name,name... runs only those groups (the emulator is
 * slow); unset, all of them. */
static int wanted(const char *name)
{
    const char *e = getenv("MB_DENSE_TESTS");
    return !e || strstr(e, name) != NULL;
}

int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= 0) MB_TEST_SKIP("no CUDA device");
    static const struct {
        const char *name;
        void (*run)(void);
    } groups[] = {
        {"refusals", test_refusals}, {"embed", test_embed},         {"rmsnorm", test_rmsnorm},
        {"rope", test_rope},         {"silu_add", test_silu_add},   {"route", test_route},
        {"linear", test_linear},     {"attention", test_attention}, {"merge", test_merge},
        {"fused", test_fused},       {"norm_in", test_norm_in},     {"drain", test_drain},
        {"stamp", test_stamp}};
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++)
        if (wanted(groups[i].name)) groups[i].run();
    print_stats();
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) bench();
    return mb_test_finish("test_dense_cuda");
}
