// The SIMT GEMV's block body (dense_linear.cu), shared with the kernels
// that fuse a small projection with what follows it (dense_route.cu): one
// body, so a fused kernel's products are bit-identical to mb_kcuda_linear's.
// Private to kernels/cuda/.
#pragma once

#include <type_traits>

#include "kernels/cuda/dense_internal.cuh"
#include "kernels/cuda/moe_cp_async.cuh"

#define MB_LIN_GEMV_MAX_N 8
#define MB_LIN_GEMV_THREADS 128
#define MB_LIN_GEMV_WARPS (MB_LIN_GEMV_THREADS / 32)
#define MB_LIN_NT 8 // tokens a GEMV pass holds accumulators for
// Below this m the tensor-core GEMV (16 rows a block) has too few blocks.
#define MB_LIN_MMA_GEMV_MIN_M 1024

// Rows of W a SIMT GEMV block owns: from 2048 rows four (each x load
// shared four ways), below that one (blocks enough to fill the GPU).
// Eight a block (MB_CUDA_GEMV_ROWS=8, round 7) measured no faster on the
// H100 (0.287 against 0.281 ms of dense decode), so it went.
static inline int mb_lin_rows(uint32_t m)
{
    return m < 2048 ? 1 : 4;
}

// The staged one-token GEMV without a norm (dense_linear.cu, preload
// letter s): rows a block for W [m][k] of wsize-byte elements, one of
// MB_LIN_STAGE_ROWS, 0 where it does not stage; and the most shared bytes
// a staged block takes.
#define MB_LIN_STAGE_ROWS 4, 8, 16
int mb_lin_staged(uint32_t m, uint32_t k, size_t wsize);
size_t mb_lin_stage_max(void);

// f(std::integral_constant<int, R>{}) for rows == R, one of R, Rs...;
// false, calling nothing, for a count it has no instance for.
template <int R, int... Rs, typename F> static inline bool mb_lin_with_rows(int rows, F &&f)
{
    if (rows == R) {
        f(std::integral_constant<int, R>{});
        return true;
    }
    if constexpr (sizeof...(Rs) > 0) return mb_lin_with_rows<Rs...>(rows, static_cast<F &&>(f));
    return false;
}

// f(std::integral_constant<int, R>{}) for R = mb_lin_rows(m).
template <typename F> static inline void mb_lin_by_rows(uint32_t m, F &&f)
{
    if (mb_lin_rows(m) == 4)
        f(std::integral_constant<int, 4>{});
    else
        f(std::integral_constant<int, 1>{});
}

// Rows a block for one token (the decode step's projections, whose
// kernels keep one accumulator a row). More rows a block amortise what
// every block reads besides its rows: x, and with a norm folded in the
// residual addend and the norm's weights (24 KB at k = 2048, more than
// four bf16 rows' 16 KB); fewer rows, more blocks in flight. With the norm
// folded in, 16 rows where that still leaves two blocks an SM of an H100
// (264): on the H100, with weights streamed from memory, the QKV
// projection (5120 x 2048) took 10.1 us against 11.3 with 4 rows and
// lm_head (32768 x 2048) 45.9 against 49.1, while o_proj (2048 x 4096,
// no norm) took 14.9 against 7.5 (test_dense_cuda --bench, cold rows).
// Otherwise mb_lin_rows. MB_CUDA_GEMV1_R (4, 8 or 16; read once) forces
// the rows from 2048 on (8: 0.215 against 0.202 ms of dense decode on the
// H100, round 20). (o_proj's own knob went with round 17's staged GEMV,
// which takes o_proj by default: 8 rows had measured 0.206 against 0.205.)
static inline int mb_lin_rows1(uint32_t m, bool norm)
{
    static const int v = mb_dense_env_int("MB_CUDA_GEMV1_R", 4, 16, 0),
                     forced = v == 4 || v == 8 || v == 16 ? v : 0;
    if (forced && m >= 2048) return forced;
    return norm && m / 16 >= 264 ? 16 : mb_lin_rows(m);
}

template <typename F> static inline void mb_lin_by_rows1(uint32_t m, bool norm, F &&f)
{
    switch (mb_lin_rows1(m, norm)) {
    case 16:
        f(std::integral_constant<int, 16>{});
        break;
    case 8:
        f(std::integral_constant<int, 8>{});
        break;
    case 4:
        f(std::integral_constant<int, 4>{});
        break;
    default:
        f(std::integral_constant<int, 1>{});
        break;
    }
}

// The epilogue both paths share: bias, then the old y when accumulating.
static __device__ __forceinline__ void mb_lin_store(float *y, float acc, const float *bias, uint32_t r, int accumulate)
{
    if (bias) acc += bias[r];
    if (accumulate) acc += *y;
    *y = acc;
}

// VEC: every row of W and of x starts 16-byte aligned and k is a multiple
// of the 16-byte chunk, so a thread loads whole chunks; otherwise chunks
// are single elements.
// An RMSNorm folded into the GEMV's input (NORM, one pass of tokens: n <=
// MB_LIN_NT): the block dots W with nw * (x + a) and scales each token's
// sums by 1 / sqrt(mean((x + a)^2) + eps) at the end; the mean of squares
// (in double, as mb_kcuda_rmsnorm) comes from the same loads, so the norm
// costs no pass of its own. The tokens' factors are left in scale_out, for
// the kernel to write the normalised rows (mb_lin_norm_store_xn) where it
// suits it. ldx is a's and xn's row stride too.
struct mb_lin_norm {
    const float *a;  // added to x first, or nullptr
    const float *nw; // the norm's weights [k]
    float eps;
    float *xn;  // the normalised rows, or nullptr
    void *xn2;  // a second copy (mapped host memory), or nullptr,
    int xn2_dt; // in this dtype (mb_store_as)
};

// The launchers' check of a mb_kcuda_norm_in (dense.h): the row and the
// norm's weights set, the host copy's dtype one the wire carries.
static inline bool mb_lin_norm_in_ok(const mb_kcuda_norm_in *in)
{
    return in && in->x && in->w && mb_dense_wdtype_ok(in->xn2_dtype);
}

// A checked mb_kcuda_norm_in as the kernels take it.
static inline mb_lin_norm mb_lin_norm_of(const mb_kcuda_norm_in *in)
{
    return {in->a, in->w, in->eps, in->xn, in->xn2, in->xn2_dtype};
}

// Whether the GEMV may take 16-byte chunks (VEC) for these operands.
template <typename W>
static inline bool mb_lin_vec_ok(uint32_t k, size_t ldx, const void *w, const float *x,
                                 const mb_lin_norm *nrm)
{
    const auto al = [](const void *p) { return ((uintptr_t)p & 15) == 0; };
    return k % mb_vec16<W>::n == 0 && ldx % 4 == 0 && al(w) && al(x) &&
           (!nrm || (al(nrm->a) && al(nrm->nw)));
}

// This block's share of the normalised rows 0 .. nt (scale[i]: row i's
// factor), as mb_kcuda_rmsnorm_kernel computes them: bit for bit its
// output.
__device__ __forceinline__ void mb_lin_norm_store_xn(const float *__restrict__ x, size_t ldx,
                                                     int nt, uint32_t k, const mb_lin_norm &nrm,
                                                     const float *scale)
{
    if (!nrm.xn) return;
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (int i = 0; i < nt; i++) {
        const float *xr = x + i * ldx, *ar = nrm.a ? nrm.a + i * ldx : nullptr;
        float *o = nrm.xn + i * ldx;
        for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < k; e += step) {
            const float h = ar ? xr[e] + ar[e] : xr[e];
            const float v = nrm.nw[e] * (h * scale[i]);
            o[e] = v;
            if (nrm.xn2) mb_store_as(nrm.xn2, nrm.xn2_dt, i * ldx + e, v);
        }
    }
}

// 16 bytes of W read from shared memory (a staged row, VEC) as floats.
template <typename W, int V>
__device__ __forceinline__ void mb_lin_unpack16(const uint4 &u, float *f)
{
    if constexpr (sizeof(W) == 4) {
        f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
    } else {
        mb_unpack8<W>(u, f);
    }
}

// NT: tokens a pass holds accumulators for (MB_LIN_NT, or 1 for the
// one-token kernels, which then keep R accumulators instead of R x 8).
// Neither R nor NT changes the order in which a row's products are added.
// PRE (one pass, n <= NT): the kernel has not waited for the grid before
// it yet (mb_pdl_enter); the block loads the weights of its threads' first
// PI chunks (as many as the loop below has in flight), which no kernel
// writes, then waits, so that those loads fly while the kernel before it
// finishes.
// STAGE (VEC, one pass, not PRE): the same, for every chunk of the block's
// rows, into the dynamic shared memory (R x k weights, cp.async): the whole
// slice streams in while the kernels before it run (mb_lin_staged says
// when), and the loop reads it from there. Each thread copies exactly the
// chunks it later reads, so its own cp.async wait is the only sync.

template <typename W, int R, bool VEC, bool NORM = false, int NT = MB_LIN_NT, bool PRE = false,
          bool STAGE = false>
__device__ __forceinline__ void
mb_lin_gemv_block(const W *__restrict__ w, uint32_t m, uint32_t k, const float *__restrict__ x,
                  size_t ldx, uint32_t n, float *__restrict__ y, size_t ldy,
                  const float *__restrict__ bias, int accumulate, const mb_lin_norm nrm = {},
                  float *scale_out = nullptr)
{
    constexpr int V = VEC ? mb_vec16<W>::n : 1;
    constexpr int PI = R >= 16 ? 1 : 2;
    static_assert(!STAGE || (VEC && !PRE), "a staged block takes 16-byte chunks, all of them");
    static_assert(R * NT <= MB_LIN_GEMV_THREADS, "a thread a row and token sums the warps");
    __shared__ float red[MB_LIN_GEMV_WARPS][R * NT];
    __shared__ double ssred[MB_LIN_GEMV_WARPS][NT];
    const uint32_t row0 = blockIdx.x * R;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t chunks = k / V;
    // Rows past m load row m - 1 again (in bounds) and are not stored.
    const W *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        wr[r] = w + (size_t)min(row0 + r, m - 1) * k;
    float wpre[PRE ? PI : 1][R][V];
    if constexpr (PRE) {
#pragma unroll
        for (int p = 0; p < PI; p++) {
            const uint32_t c = tid + p * MB_LIN_GEMV_THREADS;
            if (c < chunks) {
#pragma unroll
                for (int r = 0; r < R; r++)
                    mb_loadv<W, V, VEC>(wr[r] + (size_t)c * V, wpre[p][r]);
            }
        }
        mb_pdl_enter();
    }
    const uint4 *stage = nullptr;
    if constexpr (STAGE) {
        extern __shared__ uint4 mb_lin_stage[];
        stage = mb_lin_stage;
        for (uint32_t c = tid; c < chunks; c += MB_LIN_GEMV_THREADS)
#pragma unroll
            for (int r = 0; r < R; r++)
                mb_cp_async16(&mb_lin_stage[(size_t)r * chunks + c], wr[r] + (size_t)c * V, true);
        mb_cp_async_commit();
        mb_pdl_enter();
        mb_cp_async_wait<0>();
    }

    for (uint32_t t0 = 0; t0 < n; t0 += NT) {
        const int nt = (int)min((uint32_t)NT, n - t0);
        float acc[R][NT] = {};
        double ss[NT] = {};
        // Token i's chunk c of the input (with the norm: its addend added,
        // its squares summed, its weights nv applied) into xv.
        const auto input = [&](uint32_t c, int i, const float(&nv)[V], float(&xv)[V]) {
            mb_loadv<float, V, VEC>(x + (t0 + i) * ldx + (size_t)c * V, xv);
            if constexpr (NORM) {
                if (nrm.a) {
                    float av[V];
                    mb_loadv<float, V, VEC>(nrm.a + (t0 + i) * ldx + (size_t)c * V, av);
#pragma unroll
                    for (int v = 0; v < V; v++)
                        xv[v] += av[v];
                }
#pragma unroll
                for (int v = 0; v < V; v++) {
                    ss[i] += (double)xv[v] * (double)xv[v];
                    xv[v] *= nv[v];
                }
            }
        };
        // Chunk c's products with weights wv(r, row r's V floats), added in
        // ascending c. A staged block reads a row at a time from shared
        // memory, so R x V weights need not sit in registers at once; the
        // order of each row's products is the same.
        const auto chunk = [&](uint32_t c, auto &&wv) {
            float nv[V];
            if constexpr (NORM) mb_loadv<float, V, VEC>(nrm.nw + (size_t)c * V, nv);
#pragma unroll
            for (int i = 0; i < NT; i++) {
                if (i >= nt) break;
                float xv[V];
                input(c, i, nv, xv);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float w1[V];
                    wv(r, w1);
#pragma unroll
                    for (int v = 0; v < V; v++)
                        acc[r][i] += w1[v] * xv[v];
                }
            }
        };
        uint32_t c0 = tid;
        if constexpr (STAGE) { // every chunk from shared memory
            for (uint32_t c = tid; c < chunks; c += MB_LIN_GEMV_THREADS)
                chunk(c, [&](int r, float(&o)[V]) {
                    mb_lin_unpack16<W, V>(stage[(size_t)r * chunks + c], o);
                });
        }
        if (PRE && t0 == 0) { // the preloaded chunks first
#pragma unroll
            for (int p = 0; p < (PRE ? PI : 0); p++)
                if (tid + p * MB_LIN_GEMV_THREADS < chunks)
                    chunk(tid + p * MB_LIN_GEMV_THREADS, [&](int r, float(&o)[V]) {
#pragma unroll
                        for (int v = 0; v < V; v++)
                            o[v] = wpre[p][r][v];
                    });
            c0 = tid + PI * MB_LIN_GEMV_THREADS;
        }
        // PI chunks' loads in flight a thread: two, one with 16 rows (whose
        // 64 registers of raw weights are already enough in flight).
        if constexpr (!STAGE) {
#pragma unroll(PI)
            for (uint32_t c = c0; c < chunks; c += MB_LIN_GEMV_THREADS) {
                float wv[R][V];
#pragma unroll
                for (int r = 0; r < R; r++)
                    mb_loadv<W, V, VEC>(wr[r] + (size_t)c * V, wv[r]);
                chunk(c, [&](int r, float(&o)[V]) {
#pragma unroll
                    for (int v = 0; v < V; v++)
                        o[v] = wv[r][v];
                });
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < NT; i++) {
                if (i >= nt) break;
                const float s = mb_warp_sum(acc[r][i]);
                if (lane == 0) red[warp][r * NT + i] = s;
            }
        float scale[NT];
        if constexpr (NORM) {
#pragma unroll
            for (int i = 0; i < NT; i++) {
                if (i >= nt) break;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], o);
                if (lane == 0) ssred[warp][i] = ss[i];
            }
        }
        __syncthreads();
        if constexpr (NORM) { // every thread: the same sums in the same order
#pragma unroll
            for (int i = 0; i < NT; i++) {
                if (i >= nt) break;
                double t = 0.0;
#pragma unroll
                for (int wi = 0; wi < MB_LIN_GEMV_WARPS; wi++)
                    t += ssred[wi][i];
                scale[i] = 1.0f / sqrtf((float)(t / (double)k) + nrm.eps);
            }
        }
        if (tid < R * NT) {
            const int r = tid / NT, i = tid % NT;
            if (i < nt && row0 + r < m) {
                float s = 0.0f;
#pragma unroll
                for (int wi = 0; wi < MB_LIN_GEMV_WARPS; wi++)
                    s += red[wi][tid];
                if constexpr (NORM) s *= scale[i];
                mb_lin_store(y + (t0 + i) * ldy + row0 + r, s, bias, row0 + r, accumulate);
            }
        }
        if constexpr (NORM) {
            for (int i = 0; i < nt; i++)
                scale_out[i] = scale[i];
        }
        __syncthreads(); // red is reused by the next pass
    }
}

