// The prefill path: grouped GEMMs on tensor cores over every expert of the
// layer in one launch each. A block computes a 64 x 64 tile of one expert's
// rows (the route kernel's tile schedule) with 4 warps of 32 x 32 WMMA
// fragments, 16-bit operands and f32 accumulators, staging 32-deep K
// slices through shared memory with cp.async, double-buffered.
//   gate/up: h[pos][n] = silu(x[token(pos)] . W_gate[n]) * (x[token(pos)] . W_up[n])
//   down:    y[pos][n] = h[pos] . W_down[n]
// A split operand (high + low 16-bit halves) takes two MMAs per fragment and
// keeps about 16 significant bits of an f32 input.
#include <mma.h>

#include "kernels/cuda/moe_cp_async.cuh"
#include "kernels/cuda/moe_internal.cuh"

using namespace nvcuda;

#define MB_GEMM_BM MB_KCUDA_GEMM_BM
#define MB_GEMM_BN 64
#define MB_GEMM_BK 32
#define MB_GEMM_LDS (MB_GEMM_BK + 8) // 16-bit elements per staged row (pads bank conflicts)
#define MB_GEMM_LDC (MB_GEMM_BN + 4) // floats per row of the epilogue tile
#define MB_GEMM_THREADS 128
#define MB_GEMM_TILE_ELEMS (MB_GEMM_BM * MB_GEMM_LDS)
#define MB_GEMM_SMEM_BYTES (2 * 4 * MB_GEMM_TILE_ELEMS * 2)

static_assert(2 * MB_GEMM_BM * MB_GEMM_LDC * 4 <= MB_GEMM_SMEM_BYTES, "epilogue tile fits the staging buffers");

template <typename T, bool GATEUP, bool SPLIT>
__global__ void __launch_bounds__(MB_GEMM_THREADS)
mb_kcuda_gemm_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                     const mb_kcuda_tile *__restrict__ tiles, const int32_t *__restrict__ expert_slot,
                     const int32_t *__restrict__ expert_off, const int32_t *__restrict__ perm_token,
                     const T *__restrict__ a_hi, const T *__restrict__ a_lo, void *__restrict__ out,
                     T *__restrict__ out_lo, int K, int N)
{
    if ((int)blockIdx.x >= scalars[1]) return;
    __shared__ __align__(128) unsigned char smem[MB_GEMM_SMEM_BYTES];
    T *const st = reinterpret_cast<T *>(smem);
    // Stage s: A_hi, A_lo, B0, B1, each MB_GEMM_TILE_ELEMS.
    auto tile_at = [&](int s, int which) { return st + (size_t)(s * 4 + which) * MB_GEMM_TILE_ELEMS; };

    const mb_kcuda_tile tl = tiles[blockIdx.x];
    const int row0 = expert_off[tl.expert] + tl.row0;
    const int rows = min(MB_GEMM_BM, expert_off[tl.expert + 1] - row0);
    const int n0 = blockIdx.y * MB_GEMM_BN;
    const mb_kcuda_expert ex = slots[expert_slot[tl.expert]];
    const T *b0 = (const T *)(GATEUP ? ex.gate : ex.down);
    const T *b1 = (const T *)ex.up;

    // Each thread moves chunks tid and tid + 128 of each 64 x 32 tile:
    // row c / 4, 8 elements at column (c % 4) * 8.
    const int tid = threadIdx.x;
    int r_[2], c_[2];
    size_t arow[2];
    bool aval[2], bval[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int c = tid + i * MB_GEMM_THREADS;
        r_[i] = c >> 2;
        c_[i] = (c & 3) * 8;
        aval[i] = r_[i] < rows;
        const int ar = aval[i] ? (GATEUP ? perm_token[row0 + r_[i]] : row0 + r_[i]) : 0;
        arow[i] = (size_t)ar * K;
        bval[i] = n0 + r_[i] < N;
    }
    auto load_stage = [&](int s, int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int k = k0 + c_[i];
            const bool kin = k < K;
            const size_t aoff = arow[i] + k;
            const size_t boff = (size_t)(n0 + r_[i]) * K + k;
            const int so = r_[i] * MB_GEMM_LDS + c_[i];
            mb_cp_async16(tile_at(s, 0) + so, aval[i] && kin ? a_hi + aoff : a_hi, aval[i] && kin);
            if (SPLIT) mb_cp_async16(tile_at(s, 1) + so, aval[i] && kin ? a_lo + aoff : a_lo, aval[i] && kin);
            mb_cp_async16(tile_at(s, 2) + so, bval[i] && kin ? b0 + boff : b0, bval[i] && kin);
            if (GATEUP) mb_cp_async16(tile_at(s, 3) + so, bval[i] && kin ? b1 + boff : b1, bval[i] && kin);
        }
        mb_cp_async_commit();
    };

    const int warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0[2][2], acc1[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::fill_fragment(acc0[i][j], 0.0f);
            wmma::fill_fragment(acc1[i][j], 0.0f);
        }

    const int nk = (K + MB_GEMM_BK - 1) / MB_GEMM_BK;
    load_stage(0, 0);
    for (int kt = 0; kt < nk; kt++) {
        const int s = kt & 1;
        if (kt + 1 < nk) {
            load_stage(s ^ 1, (kt + 1) * MB_GEMM_BK);
            mb_cp_async_wait<1>();
        } else {
            mb_cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MB_GEMM_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> ah[2], al[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf0[2], bf1[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                wmma::load_matrix_sync(ah[i], tile_at(s, 0) + (wm * 32 + i * 16) * MB_GEMM_LDS + kk, MB_GEMM_LDS);
                if (SPLIT)
                    wmma::load_matrix_sync(al[i], tile_at(s, 1) + (wm * 32 + i * 16) * MB_GEMM_LDS + kk,
                                           MB_GEMM_LDS);
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                wmma::load_matrix_sync(bf0[j], tile_at(s, 2) + (wn * 32 + j * 16) * MB_GEMM_LDS + kk, MB_GEMM_LDS);
                if (GATEUP)
                    wmma::load_matrix_sync(bf1[j], tile_at(s, 3) + (wn * 32 + j * 16) * MB_GEMM_LDS + kk,
                                           MB_GEMM_LDS);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    wmma::mma_sync(acc0[i][j], ah[i], bf0[j], acc0[i][j]);
                    if (SPLIT) wmma::mma_sync(acc0[i][j], al[i], bf0[j], acc0[i][j]);
                    if (GATEUP) {
                        wmma::mma_sync(acc1[i][j], ah[i], bf1[j], acc1[i][j]);
                        if (SPLIT) wmma::mma_sync(acc1[i][j], al[i], bf1[j], acc1[i][j]);
                    }
                }
        }
        __syncthreads();
    }

    // Epilogue through shared memory, so global writes are row-contiguous.
    float *c0 = reinterpret_cast<float *>(smem);
    float *c1 = c0 + MB_GEMM_BM * MB_GEMM_LDC;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int o = (wm * 32 + i * 16) * MB_GEMM_LDC + wn * 32 + j * 16;
            wmma::store_matrix_sync(c0 + o, acc0[i][j], MB_GEMM_LDC, wmma::mem_row_major);
            if (GATEUP) wmma::store_matrix_sync(c1 + o, acc1[i][j], MB_GEMM_LDC, wmma::mem_row_major);
        }
    __syncthreads();
    for (int idx = tid; idx < MB_GEMM_BM * MB_GEMM_BN; idx += MB_GEMM_THREADS) {
        const int r = idx / MB_GEMM_BN, c = idx % MB_GEMM_BN;
        if (r >= rows || n0 + c >= N) continue;
        const size_t o = (size_t)(row0 + r) * N + n0 + c;
        const float v0 = c0[r * MB_GEMM_LDC + c];
        if (GATEUP) {
            const float v = mb_silu(v0) * c1[r * MB_GEMM_LDC + c];
            const T hi = mb_from_f32<T>(v);
            ((T *)out)[o] = hi;
            if (out_lo) out_lo[o] = mb_from_f32<T>(v - mb_to_f32<T>(hi));
        } else {
            ((float *)out)[o] = v0;
        }
    }
}

template <typename T>
static cudaError_t mb_gemm_typed(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                 cudaStream_t stream)
{
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    const unsigned nt = mb_kcuda_max_tiles(p);
    const size_t nx = (size_t)p->n_tokens * dm, nh = (size_t)p->n_pairs * dff;
    const T *xhi = (const T *)ws->x, *xlo = split_x ? xhi + nx : nullptr;
    T *hhi = (T *)ws->h, *hlo = split_h ? hhi + nh : nullptr;
    dim3 g1(nt, (dff + MB_GEMM_BN - 1) / MB_GEMM_BN), g2(nt, (dm + MB_GEMM_BN - 1) / MB_GEMM_BN);
#define MB_GEMM_ARGS ws->tiles, ws->expert_slot, ws->expert_off, ws->perm_token
    if (split_x)
        mb_kcuda_gemm_kernel<T, true, true><<<g1, MB_GEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_GEMM_ARGS, xhi, xlo, hhi, hlo, dm, dff);
    else
        mb_kcuda_gemm_kernel<T, true, false><<<g1, MB_GEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_GEMM_ARGS, xhi, nullptr, hhi, hlo, dm, dff);
    if (split_h)
        mb_kcuda_gemm_kernel<T, false, true><<<g2, MB_GEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_GEMM_ARGS, hhi, hlo, ws->y, nullptr, dff, dm);
    else
        mb_kcuda_gemm_kernel<T, false, false><<<g2, MB_GEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_GEMM_ARGS, hhi, nullptr, ws->y, nullptr, dff, dm);
#undef MB_GEMM_ARGS
    return cudaGetLastError();
}

cudaError_t mb_kcuda_gemm_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                 cudaStream_t stream)
{
    switch (p->wdtype) {
    case MB_KCUDA_F16: return mb_gemm_typed<__half>(ws, p, split_x, split_h, stream);
    case MB_KCUDA_BF16: return mb_gemm_typed<__nv_bfloat16>(ws, p, split_x, split_h, stream);
    default: return cudaErrorInvalidValue;
    }
}
