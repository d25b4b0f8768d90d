// The prefill path's grouped GEMM for quantized weights: moe_gemm.cu's
// tiles (64 x 64 of one expert's rows, the route kernel's schedule, 4 warps
// of 32 x 32 WMMA fragments, 32-deep K slices double-buffered, the same
// epilogue), with f16 operands. Activation tiles are staged with cp.async
// as there; weight tiles are dequantized by the block's own threads, each
// thread one run of 16 weights of a row per matrix: its raw bytes are
// loaded into registers one slice ahead (while the tensor cores work on the
// current slice), then dequantized exactly (f32, as the CPU) and stored to
// shared memory rounded to f16. No dequantized copy of the weights exists
// outside shared memory. One kernel serves every weight type (chosen per
// matrix at run time, a uniform branch).
//   gate/up: h[pos][n] = silu(x[token(pos)] . W_gate[n]) * (x[token(pos)] . W_up[n])
//   down:    y[pos][n] = h[pos] . W_down[n]
#include <mma.h>

#include "kernels/cuda/moe_cp_async.cuh"
#include "kernels/cuda/moe_quant.cuh"

using namespace nvcuda;

#define MB_QGEMM_BM MB_KCUDA_GEMM_BM
#define MB_QGEMM_BN 64
#define MB_QGEMM_BK 32
#define MB_QGEMM_LDS (MB_QGEMM_BK + 8) // f16 elements per staged row (pads bank conflicts)
#define MB_QGEMM_LDC (MB_QGEMM_BN + 4) // floats per row of the epilogue tile
#define MB_QGEMM_THREADS 128
#define MB_QGEMM_TILE_ELEMS (MB_QGEMM_BM * MB_QGEMM_LDS)
#define MB_QGEMM_SMEM_BYTES (2 * 4 * MB_QGEMM_TILE_ELEMS * 2)

static_assert(2 * MB_QGEMM_BM * MB_QGEMM_LDC * 4 <= MB_QGEMM_SMEM_BYTES, "epilogue tile fits the staging buffers");
static_assert(MB_QGEMM_BN * MB_QGEMM_BK == MB_QGEMM_THREADS * 16, "one run of 16 weights a thread and matrix");

// Dequantizes raw run r of type q and stores it as 16 f16 values at dst
// (16-byte aligned); zeros when !valid (rows past N).
__device__ __forceinline__ void mb_qgemm_store_run(__half *dst, int q, const mb_qraw &r, bool valid)
{
    uint32_t u[8] = {};
    if (valid) {
        float w[16];
        mb_qdeq_any(q, r, w);
#pragma unroll
        for (int j = 0; j < 8; j++)
            u[j] = (uint32_t)__half_as_ushort(__float2half_rn(w[2 * j])) |
                   ((uint32_t)__half_as_ushort(__float2half_rn(w[2 * j + 1])) << 16);
    }
    reinterpret_cast<uint4 *>(dst)[0] = make_uint4(u[0], u[1], u[2], u[3]);
    reinterpret_cast<uint4 *>(dst)[1] = make_uint4(u[4], u[5], u[6], u[7]);
}

template <bool GATEUP, bool SPLIT>
__global__ void __launch_bounds__(MB_QGEMM_THREADS)
mb_kcuda_qgemm_kernel(const mb_kcuda_expert *__restrict__ slots, const int32_t *__restrict__ scalars,
                      const mb_kcuda_tile *__restrict__ tiles, const int32_t *__restrict__ expert_slot,
                      const int32_t *__restrict__ expert_off, const int32_t *__restrict__ perm_token,
                      const __half *__restrict__ a_hi, const __half *__restrict__ a_lo, void *__restrict__ out,
                      __half *__restrict__ out_lo, int K, int N, int q0, int q1)
{
    if ((int)blockIdx.x >= scalars[1]) return;
    __shared__ __align__(128) unsigned char smem[MB_QGEMM_SMEM_BYTES];
    __half *const st = reinterpret_cast<__half *>(smem);
    // Stage s: A_hi, A_lo, B0, B1, each MB_QGEMM_TILE_ELEMS.
    auto tile_at = [&](int s, int which) { return st + (size_t)(s * 4 + which) * MB_QGEMM_TILE_ELEMS; };

    const mb_kcuda_tile tl = tiles[blockIdx.x];
    const int row0 = expert_off[tl.expert] + tl.row0;
    const int rows = min(MB_QGEMM_BM, expert_off[tl.expert + 1] - row0);
    const int n0 = blockIdx.y * MB_QGEMM_BN;
    const mb_kcuda_expert ex = slots[expert_slot[tl.expert]];
    const mb_qmat m0 = mb_qmat_make(q0, GATEUP ? ex.gate : ex.down, N, K);
    const mb_qmat m1 = mb_qmat_make(q1, GATEUP ? ex.up : ex.down, N, K);

    // A: chunks tid and tid + 128 of each 64 x 32 tile, row c / 4, 8
    // elements at column (c % 4) * 8. B: row tid / 2, 16 weights at column
    // (tid % 2) * 16.
    const int tid = threadIdx.x;
    int r_[2], c_[2];
    size_t arow[2];
    bool aval[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int c = tid + i * MB_QGEMM_THREADS;
        r_[i] = c >> 2;
        c_[i] = (c & 3) * 8;
        aval[i] = r_[i] < rows;
        const int ar = aval[i] ? (GATEUP ? perm_token[row0 + r_[i]] : row0 + r_[i]) : 0;
        arow[i] = (size_t)ar * K;
    }
    const int br = tid >> 1, bk = (tid & 1) * 16;
    const bool bval = n0 + br < N;
    auto load_a = [&](int s, int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int k = k0 + c_[i];
            const bool v = aval[i] && k < K;
            const size_t aoff = arow[i] + k;
            const int so = r_[i] * MB_QGEMM_LDS + c_[i];
            mb_cp_async16(tile_at(s, 0) + so, v ? a_hi + aoff : a_hi, v);
            if (SPLIT) mb_cp_async16(tile_at(s, 1) + so, v ? a_lo + aoff : a_lo, v);
        }
        mb_cp_async_commit();
    };
    mb_qraw raw0 = {}, raw1 = {};
    auto load_b = [&](int k0) {
        if (!bval) return;
        raw0 = mb_qload_any(q0, m0, n0 + br, k0 + bk);
        if (GATEUP) raw1 = mb_qload_any(q1, m1, n0 + br, k0 + bk);
    };
    auto store_b = [&](int s) {
        mb_qgemm_store_run(tile_at(s, 2) + br * MB_QGEMM_LDS + bk, q0, raw0, bval);
        if (GATEUP) mb_qgemm_store_run(tile_at(s, 3) + br * MB_QGEMM_LDS + bk, q1, raw1, bval);
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

    // K is whole blocks of 32 or 256, so every slice is full.
    const int nk = K / MB_QGEMM_BK;
    load_a(0, 0);
    load_b(0);
    store_b(0);
    for (int kt = 0; kt < nk; kt++) {
        const int s = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) {
            load_a(s ^ 1, (kt + 1) * MB_QGEMM_BK);
            load_b((kt + 1) * MB_QGEMM_BK); // in flight during this slice's MMAs
            mb_cp_async_wait<1>();
        } else {
            mb_cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MB_QGEMM_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> ah[2], al[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bf0[2], bf1[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                wmma::load_matrix_sync(ah[i], tile_at(s, 0) + (wm * 32 + i * 16) * MB_QGEMM_LDS + kk, MB_QGEMM_LDS);
                if (SPLIT)
                    wmma::load_matrix_sync(al[i], tile_at(s, 1) + (wm * 32 + i * 16) * MB_QGEMM_LDS + kk,
                                           MB_QGEMM_LDS);
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                wmma::load_matrix_sync(bf0[j], tile_at(s, 2) + (wn * 32 + j * 16) * MB_QGEMM_LDS + kk, MB_QGEMM_LDS);
                if (GATEUP)
                    wmma::load_matrix_sync(bf1[j], tile_at(s, 3) + (wn * 32 + j * 16) * MB_QGEMM_LDS + kk,
                                           MB_QGEMM_LDS);
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
        // Stage s ^ 1 was last read before the previous slice's barrier.
        if (more) store_b(s ^ 1);
        __syncthreads();
    }

    // Epilogue through shared memory, so global writes are row-contiguous.
    float *c0 = reinterpret_cast<float *>(smem);
    float *c1 = c0 + MB_QGEMM_BM * MB_QGEMM_LDC;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int o = (wm * 32 + i * 16) * MB_QGEMM_LDC + wn * 32 + j * 16;
            wmma::store_matrix_sync(c0 + o, acc0[i][j], MB_QGEMM_LDC, wmma::mem_row_major);
            if (GATEUP) wmma::store_matrix_sync(c1 + o, acc1[i][j], MB_QGEMM_LDC, wmma::mem_row_major);
        }
    __syncthreads();
    for (int idx = tid; idx < MB_QGEMM_BM * MB_QGEMM_BN; idx += MB_QGEMM_THREADS) {
        const int r = idx / MB_QGEMM_BN, c = idx % MB_QGEMM_BN;
        if (r >= rows || n0 + c >= N) continue;
        const size_t o = (size_t)(row0 + r) * N + n0 + c;
        const float v0 = c0[r * MB_QGEMM_LDC + c];
        if (GATEUP) {
            const float v = mb_silu(v0) * c1[r * MB_QGEMM_LDC + c];
            const __half hi = __float2half_rn(v);
            ((__half *)out)[o] = hi;
            if (out_lo) out_lo[o] = __float2half_rn(v - __half2float(hi));
        } else {
            ((float *)out)[o] = v0;
        }
    }
}

cudaError_t mb_kcuda_qgemm_launch(mb_kcuda_moe_ws *ws, const mb_kcuda_moe_problem *p, int split_x, int split_h,
                                  cudaStream_t stream)
{
    const int dm = (int)p->d_model, dff = (int)p->d_ff;
    const unsigned nt = mb_kcuda_max_tiles(p);
    const size_t nx = (size_t)p->n_tokens * dm, nh = (size_t)p->n_pairs * dff;
    const __half *xhi = (const __half *)ws->x, *xlo = split_x ? xhi + nx : nullptr;
    __half *hhi = (__half *)ws->h, *hlo = split_h ? hhi + nh : nullptr;
    const dim3 g1(nt, (dff + MB_QGEMM_BN - 1) / MB_QGEMM_BN), g2(nt, (dm + MB_QGEMM_BN - 1) / MB_QGEMM_BN);
    const int qg = p->wdtype, qu = p->wdtype_up, qd = p->wdtype_down;
#define MB_QGEMM_ARGS ws->tiles, ws->expert_slot, ws->expert_off, ws->perm_token
    if (split_x)
        mb_kcuda_qgemm_kernel<true, true><<<g1, MB_QGEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_QGEMM_ARGS, xhi, xlo, hhi, hlo, dm, dff, qg, qu);
    else
        mb_kcuda_qgemm_kernel<true, false><<<g1, MB_QGEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_QGEMM_ARGS, xhi, nullptr, hhi, hlo, dm, dff, qg, qu);
    if (split_h)
        mb_kcuda_qgemm_kernel<false, true><<<g2, MB_QGEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_QGEMM_ARGS, hhi, hlo, ws->y, nullptr, dff, dm, qd, qd);
    else
        mb_kcuda_qgemm_kernel<false, false><<<g2, MB_QGEMM_THREADS, 0, stream>>>(
            p->slots, ws->scalars, MB_QGEMM_ARGS, hhi, nullptr, ws->y, nullptr, dff, dm, qd, qd);
#undef MB_QGEMM_ARGS
    return cudaGetLastError();
}
