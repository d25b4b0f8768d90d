// mb_kcuda_linear for bf16 weights on tensor cores:
//   y[n][m] = x[n][k] @ W[m][k]^T
// with the f32 activations split into three bf16 terms (x = hi + mid + lo
// exactly up to f32's 24 significant bits), each multiplied by the bf16
// weights with f32 accumulation: the result carries f32 precision, not
// bf16's. f16 weights stay on the SIMT kernels: an f16 split of x would
// overflow past 65504.
//   GEMM (prefill): a block computes a 64 x 64 tile (tokens x rows of W)
//   with 4 warps of 32 x 32 WMMA fragments, staging 32-deep k slices through
//   shared memory (register-prefetched, double-buffered; the split happens
//   while staging).
//   GEMV (2..8 rows): W is the A operand and the rows of x the 8 columns of
//   B of mma.m16n8k16, both straight from global memory into fragments: a
//   block owns 16 rows of W and its 8 warps split k. Each lane loads 16
//   bytes of two W rows and 32 of one x row per 32 k; the k order inside
//   those 32 is permuted alike in A and B (a sum does not care), which makes
//   every load one vector. x costs as many bytes from L1 as W from memory,
//   whatever n; the SIMT GEMV re-reads x per row and token.
#include <mma.h>

#include "kernels/cuda/dense_internal.cuh"
#include "kernels/cuda/dense_mma.cuh"

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
    mb_pdl_enter();
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
        mb_dense_launch(mb_kcuda_linear_mma_kernel<true>, grid, MB_LMMA_THREADS, 0, s, w, m, k, x,
                        ldx, n, y, ldy, bias, accumulate);
    else
        mb_dense_launch(mb_kcuda_linear_mma_kernel<false>, grid, MB_LMMA_THREADS, 0, s, w, m, k, x,
                        ldx, n, y, ldy, bias, accumulate);
    return cudaGetLastError();
}

// ---- GEMV -------------------------------------------------------------------

#define MB_MGV_ROWS 16
#define MB_MGV_WARPS 8
#define MB_MGV_THREADS (MB_MGV_WARPS * 32)
#define MB_MGV_UNROLL 4 // 32-k steps a warp has in flight

// Three bf16 terms of 8 floats, as pairs: t[p][j] holds term p of v[2j]
// (low half) and v[2j + 1].
__device__ __forceinline__ void mb_split3_bf16x8(const float4 &v0, const float4 &v1, uint32_t t[3][4])
{
    float rest[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
#pragma unroll
    for (int p = 0; p < 3; p++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const __nv_bfloat16 lo = __float2bfloat16_rn(rest[2 * j]), hi = __float2bfloat16_rn(rest[2 * j + 1]);
            rest[2 * j] -= __bfloat162float(lo); // exact: the next term
            rest[2 * j + 1] -= __bfloat162float(hi);
            t[p][j] = (uint32_t)__bfloat16_as_ushort(lo) | (uint32_t)__bfloat16_as_ushort(hi) << 16;
        }
}

// Lane (g, i) loads W rows r0 + g and r0 + g + 8 and x row g at k = 32 s +
// 8 i .. + 8 of each step s. Of those 8, elements 0-1 and 2-3 are the
// lane's columns 2i..2i+1 and 2i+8..2i+9 of the first k16 step, 4-5 and 6-7
// of the second (A's and B's fragments number k alike, so the products
// pair up). C: c0, c1 are row g for tokens 2i, 2i + 1; c2, c3 row g + 8.
__global__ void __launch_bounds__(MB_MGV_THREADS)
mb_kcuda_linear_mma_gemv_kernel(const __nv_bfloat16 *__restrict__ w, uint32_t m, uint32_t k,
                                const float *__restrict__ x, size_t ldx, uint32_t n, float *__restrict__ y,
                                size_t ldy, const float *__restrict__ bias, int accumulate)
{
    mb_pdl_enter();
    __shared__ float red[MB_MGV_WARPS][MB_MGV_ROWS * 8]; // each warp's C, [row][token]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, qi = lane & 3;
    const uint32_t r0 = blockIdx.x * MB_MGV_ROWS;
    // Rows past m read row m - 1 again (in bounds) and are not stored.
    const __nv_bfloat16 *wa = w + (size_t)min(r0 + g, m - 1) * k;
    const __nv_bfloat16 *wb = w + (size_t)min(r0 + g + 8, m - 1) * k;
    const bool xin = (uint32_t)g < n;
    const float *xr = x + (size_t)(xin ? g : 0) * ldx;
    const uint32_t steps = (k + 31) / 32;
    const uint4 z4 = make_uint4(0u, 0u, 0u, 0u);
    const float4 zf = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (uint32_t s0 = warp; s0 < steps; s0 += MB_MGV_WARPS * MB_MGV_UNROLL) {
        uint4 va[MB_MGV_UNROLL], vb[MB_MGV_UNROLL];
        float4 vx[MB_MGV_UNROLL][2];
#pragma unroll
        for (int u = 0; u < MB_MGV_UNROLL; u++) {
            // Loads from clamped addresses, zeroed afterwards: straight-line
            // code, so that all of them are in flight before the first use.
            const uint32_t s = s0 + u * MB_MGV_WARPS, kk = s * 32 + 8 * qi;
            const bool ok = s < steps && kk < k; // k % 8 == 0: all 8 or none
            const uint32_t kc = ok ? kk : 0;
            va[u] = __ldg(reinterpret_cast<const uint4 *>(wa + kc));
            vb[u] = __ldg(reinterpret_cast<const uint4 *>(wb + kc));
            vx[u][0] = __ldg(reinterpret_cast<const float4 *>(xr + kc));
            vx[u][1] = __ldg(reinterpret_cast<const float4 *>(xr + kc + 4));
            if (!ok) va[u] = vb[u] = z4;
            if (!ok || !xin) vx[u][0] = vx[u][1] = zf;
        }
#pragma unroll
        for (int u = 0; u < MB_MGV_UNROLL; u++) {
            uint32_t xt[3][4];
            mb_split3_bf16x8(vx[u][0], vx[u][1], xt);
            const uint32_t wa_[4] = {va[u].x, va[u].y, va[u].z, va[u].w};
            const uint32_t wb_[4] = {vb[u].x, vb[u].y, vb[u].z, vb[u].w};
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                const uint32_t a[4] = {wa_[2 * ks], wb_[2 * ks], wa_[2 * ks + 1], wb_[2 * ks + 1]};
                // The small terms first: they add into c before the big one.
#pragma unroll
                for (int p = 2; p >= 0; p--) {
                    const uint32_t b[2] = {xt[p][2 * ks], xt[p][2 * ks + 1]};
                    mb_mma_bf16(c, a, b);
                }
            }
        }
    }
    red[warp][g * 8 + 2 * qi] = c[0];
    red[warp][g * 8 + 2 * qi + 1] = c[1];
    red[warp][(g + 8) * 8 + 2 * qi] = c[2];
    red[warp][(g + 8) * 8 + 2 * qi + 1] = c[3];
    __syncthreads();
    if (tid < MB_MGV_ROWS * 8) {
        const uint32_t r = r0 + tid / 8, t = tid % 8;
        if (r < m && t < n) {
            float v = 0.0f;
#pragma unroll
            for (int wi = 0; wi < MB_MGV_WARPS; wi++)
                v += red[wi][tid];
            if (bias) v += bias[r];
            float *dst = y + (size_t)t * ldy + r;
            if (accumulate) v += *dst;
            *dst = v;
        }
    }
}

cudaError_t mb_kcuda_linear_mma_gemv_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k,
                                            const float *x, size_t ldx, uint32_t n, float *y, size_t ldy,
                                            const float *bias, int accumulate)
{
    if (n > 8) return cudaErrorInvalidValue;
    const unsigned blocks = (unsigned)mb_dense_cdiv(m, MB_MGV_ROWS);
    mb_dense_launch(mb_kcuda_linear_mma_gemv_kernel, blocks, MB_MGV_THREADS, 0, s, w, m, k, x, ldx,
                    n, y, ldy, bias, accumulate);
    return cudaGetLastError();
}
