/* The routing kernels (softmax, top-k, renormalised gates) against the
 * CPU router, ties and NaN logits included. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include "broker/router.h"
#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

/* ---- routing ---------------------------------------------------------------------- */

/* Logits with a NaN (a malformed checkpoint's or an overflow's): the row's
 * softmax is all NaN, and the routing must still name k distinct experts
 * in range, the CPU's (the lowest first), with NaN gates, by both routing
 * kernels: an id past the experts would index the pair tables out of
 * bounds. */
static void route_nan_case(uint32_t ne, uint32_t k)
{
    float *lg = dense_rand_f32(ne, 4.0f);
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
    float *lg = dense_rand_f32((size_t)n * ne, 4.0f);
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
    CHECK_MSG(
        dense_note(E_ROUTE, err, "n=%u ne=%u k=%u renorm=%d ties=%d", n, ne, k, renorm, ties) &&
            !id_bad,
        "route n=%u ne=%u k=%u renorm=%d ties=%d: gate err %g, %d ids differ", n, ne, k, renorm,
        ties, err, id_bad);
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

void test_route(void)
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
