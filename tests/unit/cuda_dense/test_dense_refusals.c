/* Arguments the dense kernels must refuse (a status, no launch): bad
 * dtypes and shapes, missing buffers, positions past the cache. */
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

/* ---- refused arguments -------------------------------------------------------------- */

void test_refusals(void)
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
