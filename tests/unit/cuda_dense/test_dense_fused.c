/* The fusions that replace a sequence of kernels, bit for bit: add +
 * rmsnorm, rmsnorm_copy (the experts' wire copy), the router with its
 * routing, and the attention head passes (qk_rope_store, qkp_attention,
 * qkv_rope_store). */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include "broker/rope.h"
#include "kernels/cuda/dense.h"
#include "protocol/dtype.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

/* ---- fusions: bit-identical to the sequences they replace ------------------ */

size_t dense_count_diff(const float *a, const float *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return k;
}

/* Elements of got (n, in dtype dt: the experts' wire copy of a row) that
 * differ from ref encoded by the CPU's mb_dtype_encode_f32: the kernels
 * must round as the dispatcher would have. */
size_t dense_count_wire_diff(const float *ref, const void *got, int dt, size_t n)
{
    _Static_assert(
        (int)MB_DTYPE_F32 == (int)MB_KCUDA_F32 && (int)MB_DTYPE_F16 == (int)MB_KCUDA_F16 &&
            (int)MB_DTYPE_BF16 == (int)MB_KCUDA_BF16,
        "the cases pass one wire dtype number to the kernels and to mb_dtype_encode_f32");
    if (dt == MB_DTYPE_F32) return dense_count_diff(ref, got, n);
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
    float *x = dense_rand_f32(rows * ldx, 3.0f), *a = dense_rand_f32(rows * lda, 2.0f),
          *w = dense_rand_f32(d, 1.5f);
    float *dx1 = dev_upload(x, rows * ldx * sizeof(float)),
          *dx2 = dev_upload(x, rows * ldx * sizeof(float));
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
    size_t bad = dense_count_diff(g1, g2, rows * ldx);
    if (!inplace) {
        float *h1 = xmalloc(rows * ldy * sizeof(float)), *h2 = xmalloc(rows * ldy * sizeof(float));
        dev_download(h1, dy1, rows * ldy * sizeof(float));
        dev_download(h2, dy2, rows * ldy * sizeof(float));
        bad += dense_count_diff(h1, h2, rows * ldy);
        free(h1);
        free(h2);
        cudaFree(dy1);
        cudaFree(dy2);
    }
    CHECK_MSG(
        dense_note(E_FUSED, (double)bad, "add_rmsnorm d=%u rows=%u inplace=%d", d, rows, inplace),
        "add_rmsnorm d=%u rows=%u inplace=%d: %zu values differ from add + rmsnorm", d, rows,
        inplace, bad);
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
    float *x = dense_rand_f32(rows * ldx, 3.0f), *w = dense_rand_f32(d, 1.5f);
    float *dx = dev_upload(x, rows * ldx * sizeof(float)), *dw = dev_upload(w, d * sizeof(float));
    float *dy1 = dev_upload(x, rows * ldy * sizeof(float)),
          *dy2 = dev_upload(x, rows * ldy * sizeof(float));
    unsigned char *h = NULL;
    CU(cudaMallocHost((void **)&h, rows * ldh * es));
    RUN(mb_kcuda_rmsnorm(NULL, dy1, ldy, dx, ldx, rows, d, dw, 1e-6f));
    RUN(mb_kcuda_rmsnorm_copy(NULL, dy2, ldy, h, dt, ldh, dx, ldx, rows, d, dw, 1e-6f));
    float *g1 = xmalloc(rows * ldy * sizeof(float)), *g2 = xmalloc(rows * ldy * sizeof(float));
    dev_download(g1, dy1, rows * ldy * sizeof(float));
    dev_download(g2, dy2, rows * ldy * sizeof(float));
    size_t bad = dense_count_diff(g1, g2, rows * ldy);
    for (uint32_t r = 0; r < rows; r++)
        bad += dense_count_wire_diff(g1 + r * ldy, h + r * ldh * es, dt, d);
    CHECK_MSG(dense_note(E_FUSED, (double)bad, "rmsnorm_copy d=%u rows=%u dt=%d", d, rows, dt),
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

static void qk_rope_store_case(uint32_t hd, uint32_t nh, uint32_t nkv, uint32_t n, uint32_t pos0,
                               int norms, int il, int at)
{
    mb_rope r;
    REQUIRE(mb_rope_init(&r, hd, 64, 1e6f) == MB_STATUS_OK);
    const uint32_t qd = nh * hd, kd = nkv * hd, ctx = 64;
    const size_t ld = qd + 2 * (size_t)kd + 5, cnt = n * ld, cache = (size_t)kd * ctx;
    float *qkv = dense_rand_f32(cnt, 2.0f), *qn = dense_rand_f32(hd, 1.5f),
          *kn = dense_rand_f32(hd, 1.5f);
    const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
    float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
    float *dqn = dev_upload(qn, hd * sizeof(float)), *dkn = dev_upload(kn, hd * sizeof(float));
    float *zero = xmalloc(2 * cache * sizeof(float));
    for (size_t i = 0; i < 2 * cache; i++)
        zero[i] = -5.0f;
    float *d1 = dev_upload(qkv, cnt * sizeof(float)), *d2 = dev_upload(qkv, cnt * sizeof(float));
    float *c1 = dev_upload(zero, 2 * cache * sizeof(float)),
          *c2 = dev_upload(zero, 2 * cache * sizeof(float));
    const mb_kcuda_kv
        kv1 = {.k = c1, .v = c1 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx},
        kv2 = {.k = c2, .v = c2 + cache, .n_kv_heads = nkv, .head_dim = hd, .max_ctx = ctx};
    /* unfused, as forward_cuda ran it: head norms over whole rows of heads, rope, store */
    for (uint32_t t = 0; t < n && norms; t++) {
        RUN(mb_kcuda_rmsnorm(NULL, d1 + t * ld, hd, d1 + t * ld, hd, nh, hd, dqn, 1e-6f));
        RUN(mb_kcuda_rmsnorm(NULL, d1 + t * ld + qd, hd, d1 + t * ld + qd, hd, nkv, hd, dkn,
                             1e-6f));
    }
    RUN(mb_kcuda_rope(NULL, d1, ld, n, nh, hd, pos0, dc, ds, il));
    RUN(mb_kcuda_rope(NULL, d1 + qd, ld, n, nkv, hd, pos0, dc, ds, il));
    RUN(mb_kcuda_kv_store(NULL, &kv1, pos0, n, d1 + qd, ld, d1 + qd + kd, ld));
    if (at) {
        uint32_t *dpos = dev_upload(&pos0, sizeof pos0);
        RUN(mb_kcuda_qk_rope_store_at(NULL, d2, ld, n, nh, norms ? dqn : NULL, norms ? dkn : NULL,
                                      1e-6f, dpos, dc, ds, il, &kv2));
        cudaFree(dpos);
    } else {
        RUN(mb_kcuda_qk_rope_store(NULL, d2, ld, n, nh, norms ? dqn : NULL, norms ? dkn : NULL,
                                   1e-6f, pos0, dc, ds, il, &kv2));
    }
    float *g1 = xmalloc(cnt * sizeof(float)), *g2 = xmalloc(cnt * sizeof(float));
    float *k1 = xmalloc(2 * cache * sizeof(float)), *k2 = xmalloc(2 * cache * sizeof(float));
    dev_download(g1, d1, cnt * sizeof(float));
    dev_download(g2, d2, cnt * sizeof(float));
    dev_download(k1, c1, 2 * cache * sizeof(float));
    dev_download(k2, c2, 2 * cache * sizeof(float));
    /* the query columns must agree; the key columns of qkv may hold either the rotated keys or not
     * (the cache is what counts), the values and the padding must be untouched */
    size_t bad = 0;
    for (uint32_t t = 0; t < n; t++) {
        bad += dense_count_diff(g1 + t * ld, g2 + t * ld, qd);
        bad += dense_count_diff(qkv + t * ld + qd + kd, g2 + t * ld + qd + kd, ld - qd - kd);
    }
    bad += dense_count_diff(k1, k2, 2 * cache);
    CHECK_MSG(
        dense_note(E_FUSED, (double)bad,
                   "qk_rope_store hd=%u heads=%u/%u n=%u pos0=%u norms=%d il=%d at=%d", hd, nh, nkv,
                   n, pos0, norms, il, at),
        "qk_rope_store hd=%u heads=%u/%u n=%u pos0=%u norms=%d il=%d at=%d: %zu values differ", hd,
        nh, nkv, n, pos0, norms, il, at, bad);
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
    float *qkv = dense_rand_f32(ld, 2.0f), *qn = dense_rand_f32(hd, 1.5f),
          *kn = dense_rand_f32(hd, 1.5f);
    float *kvh = dense_rand_f32(2 * cache, 1.0f);
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
    size_t bad = dense_count_diff(g1, g2, qd) + dense_count_diff(k1, k2, 2 * cache) +
                 dense_count_diff(qkv, q2, ld);
    CHECK_MSG(
        dense_note(E_FUSED, (double)bad,
                   "qkp_attention hd=%u heads=%u/%u pos=%u win=%u norms=%d il=%d at=%d", hd, nh,
                   nkv, pos, window, norms, il, at),
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
    void *w = dense_rand_weights(dt, (size_t)m * k, 0.5f, &we);
    float *x = dense_rand_f32(k, 3.0f), *a = dense_rand_f32(k, 2.0f), *nw = dense_rand_f32(k, 1.5f),
          *b = dense_rand_f32(m, 1.0f);
    float *qn = dense_rand_f32(hd, 1.5f), *kn = dense_rand_f32(hd, 1.5f);
    const size_t tab = (size_t)r.n_pos * (hd / 2) * sizeof(float);
    float *dc = dev_upload(r.cos, tab), *ds = dev_upload(r.sin, tab);
    float *dqn = dev_upload(qn, hd * sizeof(float)), *dkn = dev_upload(kn, hd * sizeof(float));
    void *dw = dev_upload(w, (size_t)m * k * dense_wsize(dt));
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
        bad += dense_count_diff(g1, g2, m);
        for (uint32_t i = 0; i < slots; i++)
            bad += hc[i] != 0;
    }
    dev_download(k1, c1, 2 * cache * sizeof(float));
    dev_download(k2, c2, 2 * cache * sizeof(float));
    bad += dense_count_diff(k1, k2, 2 * cache);
    CHECK_MSG(dense_note(E_FUSED, (double)bad,
                         "qkv_rope %s hd=%u heads=%u/%u k=%u pos0=%u norms=%d il=%d at=%d extra=%d",
                         dense_dtname(dt), hd, nh, nkv, k, pos0, norms, il, at, extra),
              "qkv_rope %s hd=%u heads=%u/%u k=%u pos0=%u norms=%d il=%d at=%d extra=%d: %zu "
              "values differ",
              dense_dtname(dt), hd, nh, nkv, k, pos0, norms, il, at, extra, bad);
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
static void router_topk_case(int dt, uint32_t ne, uint32_t k, uint32_t n, uint32_t top_k,
                             int renorm)
{
    float *we = NULL;
    void *w = dense_rand_weights(dt, (size_t)ne * k, 0.5f, &we);
    const size_t ldx = k + (k % 4 ? 0 : 4);
    float *x = dense_rand_f32(n * ldx, 1.0f);
    void *dw = dev_upload(w, (size_t)ne * k * dense_wsize(dt));
    float *dx = dev_upload(x, n * ldx * sizeof(float));
    float *l1 = dev_alloc(n * ne * sizeof(float)), *l2 = dev_alloc(n * ne * sizeof(float));
    int32_t *i1 = dev_alloc(n * top_k * sizeof(int32_t)),
            *i2 = dev_alloc(n * top_k * sizeof(int32_t));
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
        bad += dense_count_diff(a, b, (size_t)n * ne);
        dev_download(a, i1, n * top_k * sizeof(int32_t));
        dev_download(b, i2, n * top_k * sizeof(int32_t));
        bad += dense_count_diff(a, b, (size_t)n * top_k);
        dev_download(a, g1, n * top_k * sizeof(float));
        dev_download(b, g2, n * top_k * sizeof(float));
        bad += dense_count_diff(a, b, (size_t)n * top_k);
        unsigned left = 1;
        dev_download(&left, done, sizeof left);
        bad += left != 0;
        free(a);
        free(b);
    }
    CHECK_MSG(dense_note(E_FUSED, (double)bad, "router_topk %s ne=%u k=%u n=%u top_k=%u renorm=%d",
                         dense_dtname(dt), ne, k, n, top_k, renorm),
              "router_topk %s ne=%u k=%u n=%u top_k=%u renorm=%d: %zu values differ",
              dense_dtname(dt), ne, k, n, top_k, renorm, bad);
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

void test_fused(void)
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
    static const uint32_t rshapes[][4] = {
        {128, 2048, 1, 8}, {60, 256, 3, 4}, {8, 13, 8, 2}, {128, 64, 9, 8}, {1024, 64, 2, 1}};
    for (int di = 0; di < 3; di++)
        for (size_t r = 0; r < sizeof rshapes / sizeof *rshapes; r++)
            router_topk_case(dts[di], rshapes[r][0], rshapes[r][1], rshapes[r][2], rshapes[r][3],
                             (int)(r & 1));
    /* 288: past the shared row of the standalone kernel (in place instead) */
    static const uint32_t shapes[][3] = {{128, 8, 2}, {64, 4, 4}, {16, 3, 1}, {288, 2, 1}};
    const uint32_t ns[] = {1, 5}, p0s[] = {0, 17};
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++)
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++)
                for (int norms = 0; norms < 2; norms++)
                    for (int il = 0; il < 2; il++)
                        for (int at = 0; at < 2; at++)
                            qk_rope_store_case(shapes[sh][0], shapes[sh][1], shapes[sh][2], ns[a],
                                               p0s[b], norms, il, at);
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
