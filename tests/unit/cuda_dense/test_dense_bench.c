/* `--bench`: decode-sized projections and attention timed against the
 * device's copy bandwidth. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cuda/dense.h"
#include "tests/cuda_testutil.h"
#include "tests/testutil.h"

#include "dense_test.h"

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
    const size_t wb = (size_t)m * k * dense_wsize(dt);
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
           norm ? "_norm" : "", dense_dtname(dt), m, k, n, cold ? " cold" : "", us, gbps,
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

void dense_bench(void)
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
