/* kv_store and attention (decode, split-K, device position, flash)
 * against the CPU's mb_attn over sequences of steps, and the decode's merge
 * in its last blocks. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include "broker/attention.h"
#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

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
        float *q = dense_rand_f32(n * ldq, 2.0f), *k = dense_rand_f32(n * ldkv, 2.0f),
              *v = dense_rand_f32(n * ldkv, 1.0f);
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
        CHECK_MSG(dense_note(E_KV, kerr, "hd=%u kv=%u pos0=%u n=%u", c->hd, c->kv, pos, n),
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
        CHECK_MSG(dense_note(dec ? E_ATT_DEC : E_ATT_FLASH, err,
                             "hd=%u heads=%u/%u win=%u pos0=%u n=%u", c->hd, c->heads, c->kv,
                             c->window, pos, n) &&
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
            CHECK_MSG(dense_note(E_ATT_AT, aerr, "hd=%u heads=%u/%u win=%u pos0=%u n=%u", c->hd,
                                 c->heads, c->kv, c->window, pos, n),
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

void test_attention(void)
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
void test_merge(void)
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
