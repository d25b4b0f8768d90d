// Element-wise ops of the dense path (dense.h): the shared expert's gated
// SiLU and the residual add; and the clock stamp. Grid-stride loops; the SiLU follows
// broker/forward.c operation by operation (expf, IEEE division).
#include "kernels/cuda/dense_internal.cuh"

#define MB_ELT_THREADS 256

// g[t][i] = s_t * (silu(g[t][i]) * u[t][i]), s_t = sigmoid(sg[t]) or 1.
__global__ void __launch_bounds__(MB_ELT_THREADS)
mb_kcuda_silu_mul_kernel(float *__restrict__ g, const float *__restrict__ u, size_t ld, uint32_t ff, size_t count,
                         const float *__restrict__ sg)
{
    mb_pdl_enter();
    for (size_t idx = (size_t)blockIdx.x * MB_ELT_THREADS + threadIdx.x; idx < count;
         idx += (size_t)gridDim.x * MB_ELT_THREADS) {
        const size_t t = idx / ff, o = t * ld + idx % ff;
        const float gv = g[o];
        const float silu = gv / (1.0f + expf(-gv));
        const float prod = silu * u[o];
        g[o] = sg ? (1.0f / (1.0f + expf(-sg[t]))) * prod : prod;
    }
}

extern "C" int mb_kcuda_silu_mul(void *stream, float *g, const float *u, size_t ld, uint32_t n, uint32_t ff,
                                 const float *sg)
{
    if (!g || !u || n == 0 || ff == 0 || ld < ff) return (int)cudaErrorInvalidValue;
    const size_t count = (size_t)n * ff;
    mb_dense_launch(mb_kcuda_silu_mul_kernel, mb_dense_blocks(count, MB_ELT_THREADS),
                    MB_ELT_THREADS, 0, mb_dense_stream(stream), g, u, ld, ff, count, sg);
    return mb_dense_launched();
}

__global__ void __launch_bounds__(MB_ELT_THREADS)
mb_kcuda_add_kernel(float *__restrict__ x, const float *__restrict__ y, size_t count)
{
    mb_pdl_enter();
    for (size_t i = (size_t)blockIdx.x * MB_ELT_THREADS + threadIdx.x; i < count;
         i += (size_t)gridDim.x * MB_ELT_THREADS)
        x[i] += y[i];
}

extern "C" int mb_kcuda_add(void *stream, float *x, const float *y, size_t count)
{
    if (!x || !y || count == 0) return (int)cudaErrorInvalidValue;
    mb_dense_launch(mb_kcuda_add_kernel, mb_dense_blocks(count, MB_ELT_THREADS), MB_ELT_THREADS, 0,
                    mb_dense_stream(stream), x, y, count);
    return mb_dense_launched();
}

__global__ void mb_kcuda_stamp_kernel(unsigned long long *slot)
{
    mb_pdl_enter();
    *slot = mb_dense_globaltimer();
}

extern "C" int mb_kcuda_stamp(void *stream, unsigned long long *slot)
{
    if (!slot) return (int)cudaErrorInvalidValue;
    mb_dense_launch(mb_kcuda_stamp_kernel, 1, 1, 0, mb_dense_stream(stream), slot);
    return mb_dense_launched();
}

#define MB_L2PF_CHUNK 16384u // bytes a bulk prefetch asks for
#define MB_L2PF_THREADS 32

// No programmatic launch: it runs on a stream of its own, beside the work.
// A thread asks L2 for a chunk at a time (a hint: no effect on results,
// none on the emulator); a tail under 16 bytes is left out.
__global__ void __launch_bounds__(MB_L2PF_THREADS)
    mb_kcuda_l2_prefetch_kernel(const char *p, size_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const size_t tid = (size_t)blockIdx.x * MB_L2PF_THREADS + threadIdx.x,
                 threads = (size_t)gridDim.x * MB_L2PF_THREADS;
    for (size_t off = tid * MB_L2PF_CHUNK; off < bytes; off += threads * MB_L2PF_CHUNK) {
        const size_t left = bytes - off;
        const uint32_t n = (uint32_t)(left < MB_L2PF_CHUNK ? left : MB_L2PF_CHUNK) & ~15u;
        if (n)
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(n)
                         : "memory");
    }
#else
    (void)p, (void)bytes;
#endif
}

extern "C" int mb_kcuda_l2_prefetch(void *stream, const void *p, size_t bytes)
{
    if (!p || ((uintptr_t)p & 15)) return (int)cudaErrorInvalidValue;
    if (bytes < 16) return 0;
    // Eight prefetches a thread, at most 16 blocks; MB_CUDA_L2PF_EACH (1 to
    // 64; read once) sets the prefetches a thread, and so the blocks (at
    // most 128 / each: as many requests in flight at once).
    static const int each = mb_dense_env_int("MB_CUDA_L2PF_EACH", 1, 64, 8);
    const size_t per_block = (size_t)MB_L2PF_THREADS * MB_L2PF_CHUNK * (size_t)each;
    const size_t want = (bytes + per_block - 1) / per_block, most = (size_t)(128 / each);
    const unsigned blocks = (unsigned)(want < most ? want : most);
    mb_kcuda_l2_prefetch_kernel<<<blocks, MB_L2PF_THREADS, 0, mb_dense_stream(stream)>>>(
        (const char *)p, bytes);
    return mb_dense_launched();
}

// dst[i] = src[i] for i < count, then src[i] = 0 from zero_from on.
__global__ void __launch_bounds__(MB_ELT_THREADS)
    mb_kcuda_drain_kernel(uint32_t *__restrict__ src, uint32_t *__restrict__ dst, size_t count,
                          size_t zero_from)
{
    mb_pdl_enter();
    for (size_t i = (size_t)blockIdx.x * MB_ELT_THREADS + threadIdx.x; i < count;
         i += (size_t)gridDim.x * MB_ELT_THREADS) {
        dst[i] = src[i];
        if (i >= zero_from) src[i] = 0;
    }
}

extern "C" int mb_kcuda_drain(void *stream, uint32_t *src, uint32_t *dst, size_t count,
                              size_t zero_from)
{
    if (!src || !dst || count == 0 || zero_from > count) return (int)cudaErrorInvalidValue;
    mb_dense_launch(mb_kcuda_drain_kernel, mb_dense_blocks(count, MB_ELT_THREADS), MB_ELT_THREADS,
                    0, mb_dense_stream(stream), src, dst, count, zero_from);
    return mb_dense_launched();
}
