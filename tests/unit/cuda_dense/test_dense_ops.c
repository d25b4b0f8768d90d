/* The one-op kernels against the CPU: embed, rmsnorm, rope, linear (GEMV
 * and GEMM, SIMT and tensor cores, with the CPU GEMM held to the same
 * metric), silu_mul and add, the clock stamp and the drain into pinned
 * host memory. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include "broker/norm.h"
#include "broker/rope.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

/* MB_CUDA_DENSE=simt: the kernels stay off the tensor cores. */
static int simt_only(void)
{
    const char *e = getenv("MB_CUDA_DENSE");
    return e && strcmp(e, "simt") == 0;
}

/* ---- embed ------------------------------------------------------------------ */

void test_embed(void)
{
    const uint32_t ds[] = {1, 7, 64, 2048}, ns[] = {1, 5, 300};
    const uint32_t vocab = 97;
    for (int dt = 0; dt < 3; dt++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                const uint32_t d = ds[di], n = ns[ni];
                float *exact;
                void *table = dense_rand_weights(dt, (size_t)vocab * d, 2.0f, &exact);
                int32_t *ids = xmalloc(n * sizeof(int32_t));
                for (uint32_t t = 0; t < n; t++)
                    ids[t] = (int32_t)(mb_test_rand_u64(&dense_seed) % vocab);
                ids[n - 1] = (int32_t)vocab - 1; /* the last row */
                void *dtab = dev_upload(table, (size_t)vocab * d * dense_wsize(dt));
                int32_t *dids = dev_upload(ids, n * sizeof(int32_t));
                float *dx = dev_alloc((size_t)n * d * sizeof(float));
                RUN(mb_kcuda_embed(NULL, dt, dtab, d, dids, n, dx));
                float *x = xmalloc((size_t)n * d * sizeof(float));
                dev_download(x, dx, (size_t)n * d * sizeof(float));
                double err = 0;
                for (uint32_t t = 0; t < n; t++)
                    for (uint32_t i = 0; i < d; i++)
                        err = fmax(err, fabs(x[(size_t)t * d + i] - exact[(size_t)ids[t] * d + i]));
                CHECK_MSG(dense_note(E_EMBED, err, "%s d=%u n=%u", dense_dtname(dt), d, n),
                          "embed %s d=%u n=%u err %g", dense_dtname(dt), d, n, err);
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

void test_rmsnorm(void)
{
    const uint32_t ds[] = {16, 64, 128, 513, 2048, 4096}, rs[] = {1, 5, 300};
    for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
        for (size_t ri = 0; ri < sizeof rs / sizeof *rs; ri++)
            for (int inplace = 0; inplace < 2; inplace++) {
                const uint32_t d = ds[di], rows = rs[ri];
                const size_t ldx = d + 3, ldy = inplace ? ldx : d + 1;
                float *x = dense_rand_f32(rows * ldx, 3.0f), *w = dense_rand_f32(d, 1.5f);
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
                CHECK_MSG(
                    dense_note(E_NORM, err, "d=%u rows=%u inplace=%d", d, rows, inplace) && pad_ok,
                    "rmsnorm d=%u rows=%u inplace=%d err %g pad %d", d, rows, inplace, err, pad_ok);
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

void test_rope(void)
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
                        float *x = dense_rand_f32(cnt, 2.0f), *got = xmalloc(cnt * sizeof(float));
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
                        CHECK_MSG(dense_note(E_ROPE, err, "hd=%u heads=%u n=%u pos0=%u il=%d", hd,
                                             nh, n, pos0, il),
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
    void *w = dense_rand_weights(dt, (size_t)m * k, 1.0f, &we);
    float *x = dense_rand_f32((size_t)n * ldx, 1.0f),
          *bias = with_bias ? dense_rand_f32(m, 1.0f) : NULL;
    float *y0 = dense_rand_f32((size_t)n * ldy, 1.0f);
    float *got = xmalloc((size_t)n * ldy * sizeof(float)),
          *cpu = xmalloc((size_t)n * ldy * sizeof(float));
    void *dw = dev_upload(w, (size_t)m * k * dense_wsize(dt));
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
    CHECK_MSG(dense_note(kind, err, "%s m=%u k=%u n=%u xpad=%zu bias=%d acc=%d", dense_dtname(dt),
                         m, k, n, xpad, with_bias, acc) &&
                  pad_ok,
              "linear %s m=%u k=%u n=%u xpad=%zu bias=%d acc=%d: err %g pad %d", dense_dtname(dt),
              m, k, n, xpad, with_bias, acc, err, pad_ok);

    /* The CPU reference on the same metric: a self-check of linear_err and
     * the yardstick the GPU is held to. */
    memcpy(cpu, y0, (size_t)n * ldy * sizeof(float));
    mb_kcpu_gemm(NULL, dt, w, m, k, x, ldx, n, cpu, ldy, acc);
    if (bias)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t r = 0; r < m; r++)
                cpu[t * ldy + r] += bias[r];
    double cerr = linear_err(cpu, ldy, we, x, ldx, bias, acc ? y0 : NULL, m, k, n);
    CHECK_MSG(dense_note(E_LIN_CPU, cerr, "%s m=%u k=%u n=%u", dense_dtname(dt), m, k, n),
              "CPU reference err %g", cerr);

    /* Determinism: the same call again gives the same bits. */
    CU(cudaMemcpy(dy, y0, (size_t)n * ldy * sizeof(float), cudaMemcpyHostToDevice));
    RUN(mb_kcuda_linear(NULL, dt, dw, m, k, dx, ldx, n, dy, ldy, db, acc));
    dev_download(cpu, dy, (size_t)n * ldy * sizeof(float));
    CHECK_MSG(memcmp(cpu, got, (size_t)n * ldy * sizeof(float)) == 0,
              "linear %s m=%u k=%u n=%u not deterministic", dense_dtname(dt), m, k, n);

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

void test_linear(void)
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

/* ---- silu_mul, add ---------------------------------------------------------------- */

void test_silu_add(void)
{
    const uint32_t ns[] = {1, 5, 300}, ffs[] = {1, 7, 1408};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (int with_sg = 0; with_sg < 2; with_sg++) {
                const uint32_t n = ns[a], ff = ffs[b];
                const size_t ld = ff + 3, cnt = n * ld;
                float *g = dense_rand_f32(cnt, 6.0f), *u = dense_rand_f32(cnt, 2.0f),
                      *sg = with_sg ? dense_rand_f32(n, 4.0f) : NULL;
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
                CHECK_MSG(dense_note(E_SILU, err, "n=%u ff=%u sg=%d", n, ff, with_sg) && pad_ok,
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
        float *x = dense_rand_f32(cnt, 1.0f), *y = dense_rand_f32(cnt, 1.0f),
              *got = xmalloc(cnt * sizeof(float));
        float *dx = dev_upload(x, cnt * sizeof(float)), *dy = dev_upload(y, cnt * sizeof(float));
        RUN(mb_kcuda_add(NULL, dx, dy, cnt));
        dev_download(got, dx, cnt * sizeof(float));
        double err = 0;
        for (size_t i = 0; i < cnt; i++)
            err = fmax(err, fabs(got[i] - (x[i] + y[i])));
        CHECK_MSG(dense_note(E_ADD, err, "count=%zu", cnt), "add count=%zu err %g", cnt, err);
        cudaFree(dx);
        cudaFree(dy);
        free(x);
        free(y);
        free(got);
    }
}

/* The clock stamp: after the work before it, monotonic, and replayable
 * from a graph (where an event could not be timed). */
void test_stamp(void)
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
void test_drain(void)
{
    const size_t counts[] = {1, 528, 70000}, zf[] = {0, 16, 70000};
    for (size_t c = 0; c < 3; c++)
        for (size_t z = 0; z < 3; z++) {
            const size_t n = counts[c], from = zf[z] < n ? zf[z] : n;
            uint32_t *h = xmalloc(n * sizeof *h), *back = xmalloc(n * sizeof *back), *pinned = NULL;
            for (size_t i = 0; i < n; i++)
                h[i] = (uint32_t)(mb_test_rand_f32(&dense_seed) * 4e9f) ^ (uint32_t)i;
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
