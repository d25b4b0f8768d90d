/* The rmsnorm folded into one-token projections (mb_kcuda_linear_norm)
 * and into the router (mb_kcuda_router_topk_norm, with the local experts'
 * pairs), against the unfused sequences. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

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
    void *w = dense_rand_weights(dt, (size_t)m * k, 0.5f, &we);
    float *x = dense_rand_f32(k, 3.0f), *a = dense_rand_f32(k, 2.0f), *nw = dense_rand_f32(k, 1.5f),
          *b = dense_rand_f32(m, 1.0f);
    float *y0 = dense_rand_f32(m, 1.0f);
    void *dw = dev_upload(w, (size_t)m * k * dense_wsize(dt));
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
    CHECK_MSG(dense_note(E_NORM_IN, err, "linear_norm %s m=%u k=%u a=%d bias=%d acc=%d",
                         dense_dtname(dt), m, k, addend, bias, acc),
              "linear_norm %s m=%u k=%u a=%d bias=%d acc=%d: error %.3g", dense_dtname(dt), m, k,
              addend, bias, acc, err);
    size_t bad = dense_count_diff(xb, x, k); /* x is only read */
    if (want_xn) bad += dense_count_diff(xn1, xn2, k) + dense_count_wire_diff(xn1, h, wire, k);
    CHECK_MSG(dense_note(E_FUSED, (double)bad, "linear_norm xn %s m=%u k=%u a=%d wire=%d",
                         dense_dtname(dt), m, k, addend, wire),
              "linear_norm %s m=%u k=%u a=%d wire=%d: %zu values of x or xn differ",
              dense_dtname(dt), m, k, addend, wire, bad);
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
    return (size_t)(memcmp(ia, ib, top_k * sizeof(int32_t)) != 0) + dense_count_diff(ga, gb, top_k);
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
    void *w = dense_rand_weights(dt, (size_t)ne * k, 0.5f, &we);
    float *x = dense_rand_f32(k, 3.0f), *a = dense_rand_f32(k, 2.0f), *nw = dense_rand_f32(k, 1.5f);
    void *dw = dev_upload(w, (size_t)ne * k * dense_wsize(dt));
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
        bad += dense_count_diff(xn1, xn2, k) + dense_count_wire_diff(xn1, h, wire, k);
        memset(h, 0xff, k * sizeof(float));
        unsigned left = 1;
        dev_download(&left, done, sizeof left);
        bad += left != 0;
    }
    CHECK_MSG(dense_note(E_NORM_IN, err, "router_topk_norm %s ne=%u k=%u a=%d", dense_dtname(dt),
                         ne, k, addend),
              "router_topk_norm %s ne=%u k=%u a=%d: logits error %.3g", dense_dtname(dt), ne, k,
              addend, err);
    CHECK_MSG(
        dense_note(E_FUSED, (double)bad, "router_topk_norm %s ne=%u k=%u top_k=%u",
                   dense_dtname(dt), ne, k, top_k),
        "router_topk_norm %s ne=%u k=%u top_k=%u: %zu ids, gates, xn values or counters differ",
        dense_dtname(dt), ne, k, top_k, bad);
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
void test_norm_in(void)
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
