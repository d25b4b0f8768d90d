// The prefill path of mb_kcuda_linear for bf16 weights, on tensor cores:
//   y[n][m] = x[n][k] @ W[m][k]^T
// with the f32 activations split into three bf16 terms (x = hi + mid + lo
// exactly up to f32's 24 significant bits), each multiplied by the bf16
// weights with f32 accumulation: the result carries f32 precision, not
// bf16's. A block computes a 64 x 64 tile (tokens x rows of W) with 4 warps
// of 32 x 32 WMMA fragments, staging 32-deep k slices through shared memory
// (register-prefetched, double-buffered; the split happens while staging).
// f16 weights stay on the SIMT GEMM: an f16 split of x would overflow past
// 65504.
#include <mma.h>

#include "kernels/cuda/dense_internal.cuh"

using namespace nvcuda;

#define MB_LMMA_BM 64 // tokens per tile
#define MB_LMMA_BN 64 // rows of W per tile
#define MB_LMMA_BK 32
#define MB_LMMA_LDS (MB_LMMA_BK + 8) // bf16 elements per staged row (16-byte rows, fewer bank conflicts)
#define MB_LMMA_LDC (MB_LMMA_BN + 4) // floats per row of the epilogue tile
#define MB_LMMA_THREADS 128
#define MB_LMMA_NSPLIT 3
#define MB_LMMA_TILE (MB_LMMA_BM * MB_LMMA_LDS) // bf16 elements of one staged tile
#define MB_LMMA_STAGE (MB_LMMA_NSPLIT + 1)      // tiles a stage holds: the x terms, then W
#define MB_LMMA_SMEM (2 * MB_LMMA_STAGE * MB_LMMA_TILE * 2)
#define MB_LMMA_XLOADS (MB_LMMA_BM * MB_LMMA_BK / 4 / MB_LMMA_THREADS) // float4 of x a thread stages
#define MB_LMMA_WLOADS (MB_LMMA_BN * MB_LMMA_BK / 8 / MB_LMMA_THREADS) // 8 weights a thread stages

static_assert(MB_LMMA_BM == MB_LMMA_BN, "tiles share one layout");
static_assert(MB_LMMA_BM * MB_LMMA_LDC * 4 <= MB_LMMA_SMEM, "epilogue tile fits the staging buffers");

// VEC: x rows and W rows start 16-byte aligned and k is a multiple of 8, so
// slices load as float4 and as 8 weights; otherwise element by element.
template <bool VEC>
__global__ void __launch_bounds__(MB_LMMA_THREADS)
mb_kcuda_linear_mma_kernel(const __nv_bfloat16 *__restrict__ w, uint32_t m, uint32_t k, const float *__restrict__ x,
                           size_t ldx, uint32_t n, float *__restrict__ y, size_t ldy,
                           const float *__restrict__ bias, int accumulate)
{
    __shared__ __align__(128) unsigned char smem[MB_LMMA_SMEM];
    __nv_bfloat16 *const st = reinterpret_cast<__nv_bfloat16 *>(smem);
    auto tile = [&](int s, int which) { return st + (size_t)(s * MB_LMMA_STAGE + which) * MB_LMMA_TILE; };
    const int tid = threadIdx.x;
    const uint32_t r0 = blockIdx.x * MB_LMMA_BN, t0 = blockIdx.y * MB_LMMA_BM;

    // Thread tid stages float4 number tid + 128 i of the x slice (row idx / 8,
    // column (idx % 8) * 4) and 8-weight group tid + 128 i of W (row idx / 4,
    // column (idx % 4) * 8).
    float xr[MB_LMMA_XLOADS][4];
    uint4 wr[MB_LMMA_WLOADS];
    auto fetch = [&](uint32_t k0) {
#pragma unroll
        for (int i = 0; i < MB_LMMA_XLOADS; i++) {
            const int idx = tid + i * MB_LMMA_THREADS, row = idx / 8;
            const uint32_t kc = k0 + (idx % 8) * 4;
            const bool rin = t0 + row < n;
            const float *src = x + (size_t)(t0 + row) * ldx + kc;
            if (VEC) {
                const float4 v =
                    rin && kc < k ? __ldg(reinterpret_cast<const float4 *>(src)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                xr[i][0] = v.x, xr[i][1] = v.y, xr[i][2] = v.z, xr[i][3] = v.w;
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    xr[i][j] = rin && kc + j < k ? src[j] : 0.0f;
            }
        }
#pragma unroll
        for (int i = 0; i < MB_LMMA_WLOADS; i++) {
            const int idx = tid + i * MB_LMMA_THREADS, row = idx / 4;
            const uint32_t kc = k0 + (idx % 4) * 8;
            const bool rin = r0 + row < m;
            const __nv_bfloat16 *src = w + (size_t)(r0 + row) * k + kc;
            if (VEC) {
                wr[i] = rin && kc < k ? __ldg(reinterpret_cast<const uint4 *>(src)) : make_uint4(0u, 0u, 0u, 0u);
            } else {
                uint16_t h[8];
#pragma unroll
                for (int j = 0; j < 8; j++)
                    h[j] = rin && kc + j < k ? reinterpret_cast<const uint16_t *>(src)[j] : (uint16_t)0;
                wr[i] = make_uint4(h[0] | (uint32_t)h[1] << 16, h[2] | (uint32_t)h[3] << 16,
                                   h[4] | (uint32_t)h[5] << 16, h[6] | (uint32_t)h[7] << 16);
            }
        }
    };
    auto stage = [&](int s) {
#pragma unroll
        for (int i = 0; i < MB_LMMA_XLOADS; i++) {
            const int idx = tid + i * MB_LMMA_THREADS;
            const int off = (idx / 8) * MB_LMMA_LDS + (idx % 8) * 4;
            float rest[4] = {xr[i][0], xr[i][1], xr[i][2], xr[i][3]};
#pragma unroll
            for (int p = 0; p < MB_LMMA_NSPLIT; p++) {
                uint32_t bits[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const __nv_bfloat16 b = __float2bfloat16_rn(rest[j]);
                    rest[j] -= __bfloat162float(b); // exact: the next term
                    bits[j] = __bfloat16_as_ushort(b);
                }
                *reinterpret_cast<uint2 *>(tile(s, p) + off) =
                    make_uint2(bits[0] | bits[1] << 16, bits[2] | bits[3] << 16);
            }
        }
#pragma unroll
        for (int i = 0; i < MB_LMMA_WLOADS; i++) {
            const int idx = tid + i * MB_LMMA_THREADS;
            *reinterpret_cast<uint4 *>(tile(s, MB_LMMA_NSPLIT) + (idx / 4) * MB_LMMA_LDS + (idx % 4) * 8) = wr[i];
        }
    };

    const int warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::fill_fragment(acc[i][j], 0.0f);

    const uint32_t nk = (k + MB_LMMA_BK - 1) / MB_LMMA_BK;
    fetch(0);
    for (uint32_t kt = 0; kt < nk; kt++) {
        const int s = kt & 1;
        stage(s);
        __syncthreads();
        // The next slice's loads fly during the MMAs; the other stage is
        // free: every thread passed this sync after its previous MMAs.
        if (kt + 1 < nk) fetch((kt + 1) * MB_LMMA_BK);
#pragma unroll
        for (int kk = 0; kk < MB_LMMA_BK; kk += 16) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bf[2];
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(bf[j], tile(s, MB_LMMA_NSPLIT) + (wn * 32 + j * 16) * MB_LMMA_LDS + kk,
                                       MB_LMMA_LDS);
                // Terms in a fixed order, hi first: the small ones then add
                // into an accumulator of the final magnitude.
#pragma unroll
            for (int p = 0; p < MB_LMMA_NSPLIT; p++)
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> af;
                    wmma::load_matrix_sync(af, tile(s, p) + (wm * 32 + i * 16) * MB_LMMA_LDS + kk, MB_LMMA_LDS);
#pragma unroll
                    for (int j = 0; j < 2; j++)
                        wmma::mma_sync(acc[i][j], af, bf[j], acc[i][j]);
                }
        }
    }

    // Epilogue through shared memory, so global writes are row-contiguous.
    __syncthreads(); // every warp is done with the staging buffers
    float *c = reinterpret_cast<float *>(smem);
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(c + (wm * 32 + i * 16) * MB_LMMA_LDC + wn * 32 + j * 16, acc[i][j], MB_LMMA_LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < MB_LMMA_BM * MB_LMMA_BN; idx += MB_LMMA_THREADS) {
        const uint32_t t = t0 + idx / MB_LMMA_BN, r = r0 + idx % MB_LMMA_BN;
        if (t >= n || r >= m) continue;
        float v = c[(idx / MB_LMMA_BN) * MB_LMMA_LDC + idx % MB_LMMA_BN];
        if (bias) v += bias[r];
        float *dst = y + (size_t)t * ldy + r;
        if (accumulate) v += *dst;
        *dst = v;
    }
}

cudaError_t mb_kcuda_linear_mma_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k, const float *x,
                                       size_t ldx, uint32_t n, float *y, size_t ldy, const float *bias, int accumulate)
{
    const dim3 grid((unsigned)mb_dense_cdiv(m, MB_LMMA_BN), (unsigned)mb_dense_cdiv(n, MB_LMMA_BM));
    const bool vec = k % 8 == 0 && ldx % 4 == 0 && ((uintptr_t)w & 15) == 0 && ((uintptr_t)x & 15) == 0;
    if (vec)
        mb_kcuda_linear_mma_kernel<true><<<grid, MB_LMMA_THREADS, 0, s>>>(w, m, k, x, ldx, n, y, ldy, bias, accumulate);
    else
        mb_kcuda_linear_mma_kernel<false>
            <<<grid, MB_LMMA_THREADS, 0, s>>>(w, m, k, x, ldx, n, y, ldy, bias, accumulate);
    return cudaGetLastError();
}
