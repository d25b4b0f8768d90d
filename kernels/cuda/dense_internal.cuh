// Shared pieces of the dense-layer kernels (kernels/cuda/dense_*.cu, the API
// of dense.h): the stream cast, grid sizing and the launch epilogue. Private
// to kernels/cuda/.
#pragma once

#include <cstdlib>
#include <cstring>

#include "kernels/cuda/dense.h"
#include "kernels/cuda/moe_internal.cuh"

static inline cudaStream_t mb_dense_stream(void *stream)
{
    return (cudaStream_t)stream;
}

static inline size_t mb_dense_cdiv(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

// Blocks of `threads` for a grid-stride loop over `count` elements: enough
// to fill any current GPU several times over, few enough for grid.x.
static inline unsigned mb_dense_blocks(size_t count, unsigned threads)
{
    const size_t b = mb_dense_cdiv(count, threads);
    return (unsigned)(b < 65536 ? (b ? b : 1) : 65536);
}

// The value a dense.h function returns after its launches.
static inline int mb_dense_launched(void)
{
    return (int)cudaGetLastError();
}

static inline bool mb_dense_wdtype_ok(int wdtype)
{
    return wdtype == MB_KCUDA_F32 || wdtype == MB_KCUDA_F16 || wdtype == MB_KCUDA_BF16;
}

// MB_CUDA_DENSE=simt keeps every dense kernel off the tensor cores (the
// SIMT GEMV, GEMM and flash attention): for tests, and a way out should a
// tensor-core kernel misbehave on some device. Read once per file.
static inline bool mb_dense_force_simt(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *e = getenv("MB_CUDA_DENSE");
        cached = e && strcmp(e, "simt") == 0;
    }
    return cached != 0;
}

// mb_kcuda_linear's tensor-core GEMV for 2..8 rows and bf16 weights
// (dense_linear_mma.cu); x rows and W 16-byte aligned, k % 8 == 0.
cudaError_t mb_kcuda_linear_mma_gemv_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k,
                                            const float *x, size_t ldx, uint32_t n, float *y, size_t ldy,
                                            const float *bias, int accumulate);

// mb_kcuda_linear's tensor-core GEMM for bf16 weights (dense_linear_mma.cu).
cudaError_t mb_kcuda_linear_mma_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k, const float *x,
                                       size_t ldx, uint32_t n, float *y, size_t ldy, const float *bias, int accumulate);

// One attention call's arguments, as the kernels take them.
struct mb_attn_args {
    const float *k, *v; // cache [n_kv][max_ctx][hd]
    uint32_t n_kv, hd, max_ctx, n_heads, n_rep, window;
    float scale;
    uint32_t pos0, n;
    const uint32_t *pos_dev; // when not NULL, pos0 is read here on the device (decode graphs)
    const float *q;
    size_t ldq;
    float *out;
    size_t ldo;
};

#define MB_ATTN_MAX_HD 256 // head_dim attention takes
#define MB_ATTN_DEC_MAX_N 8 // query rows the split-K decode path takes
#define MB_ATTN_DEC_HEADS 8
#define MB_ATTN_DEC_THREADS 128
#define MB_ATTN_DEC_CHUNK_MIN 64
#define MB_ATTN_DEC_CHUNK_MAX 256

// The first cache position visible from the query at position qpos under a
// sliding window (0: none), as broker/attention.c: q - window < p <= q.
__host__ __device__ __forceinline__ uint32_t mb_attn_first_visible(uint32_t qpos, uint32_t window)
{
    return window && qpos + 1 > window ? qpos + 1 - window : 0;
}

// Positions a block takes: MB_ATTN_DEC_CHUNK_MIN..MAX (a multiple of 32),
// so that a row of `span` positions makes about `want` chunks. One chunk
// size serves a call, from its last (longest) row; host and device compute
// it alike (the device from the position it reads, for the _at variant).
// Hence a row has at most max(want, ceil(span / CHUNK_MAX)) chunks, the
// bound mb_kcuda_attention_work sizes work by.
__host__ __device__ __forceinline__ uint32_t mb_attn_dec_chunk(uint32_t span, uint32_t want)
{
    const uint32_t c = ((span + want - 1) / want + 31) / 32 * 32;
    return c < MB_ATTN_DEC_CHUNK_MIN ? MB_ATTN_DEC_CHUNK_MIN : c > MB_ATTN_DEC_CHUNK_MAX ? MB_ATTN_DEC_CHUNK_MAX : c;
}

// Positions visible from the query at position last.
__host__ __device__ __forceinline__ uint32_t mb_attn_span(uint32_t last, uint32_t window)
{
    return last - mb_attn_first_visible(last, window) + 1;
}

// The split-K decode kernels (dense_attention_decode.cu): grid (n_split,
// n_kv * n_hgroups, n), then the merge when n_split > 1 (work holds
// [n][n_heads][n_split][hd + 2] partials).
cudaError_t mb_kcuda_attn_decode_launch(const mb_attn_args &a, uint32_t n_hgroups, uint32_t want, uint32_t n_split,
                                        float *work, cudaStream_t stream);

// The prefill attention kernel on tensor cores (dense_attention_mma.cu),
// for head_dim a multiple of 8 up to 128.
cudaError_t mb_kcuda_attn_flash_mma_launch(const mb_attn_args &a, cudaStream_t stream);
