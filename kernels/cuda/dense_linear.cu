// y[n][m] = x[n][k] @ W[m][k]^T (+ bias) (+ y): the coordinator's
// projections (dense.h mb_kcuda_linear), with W in f32, f16 or bf16 widened
// as it is read and f32 accumulation.
//   GEMV (n <= MB_LIN_GEMV_MAX_N, decode): bf16 weights with 2..8 rows
//   take the tensor-core GEMV of dense_linear_mma.cu; otherwise a block owns R rows of W and
//   streams them once, 16 bytes a thread a load, dotting each chunk with all
//   n tokens; the block's threads split k, then a warp butterfly and a fixed
//   pass over the warps add the partial sums. Bandwidth-bound by design.
//   GEMM (prefill): 64 x 64 output tiles, 16-deep k slices through shared
//   memory (register-prefetched, double-buffered), 4 x 4 outputs a thread,
//   f32 FMA, for f32 and f16 weights (and for bf16 with MB_CUDA_DENSE=simt);
//   bf16 weights take the tensor-core GEMM of dense_linear_mma.cu instead.
// Every output's summation order depends only on the shape: deterministic.
#include <initializer_list>

#include "kernels/cuda/dense_gemv.cuh"

// The GEMV kernel: one block body (dense_gemv.cuh) per grid block; NORM
// (one token): the RMSNorm folded in (mb_kcuda_linear_norm), the blocks
// then writing their shares of the normalised row when asked to. NT: 1
// for one token (mb_lin_rows1 rows a block), else MB_LIN_NT.
// PRE (one token): the first weights loaded before the wait
// (mb_dense_preload).
template <typename W, int R, bool VEC, bool NORM, int NT, bool PRE>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_linear_gemv_kernel(const W *__restrict__ w, uint32_t m, uint32_t k,
                                const float *__restrict__ x, size_t ldx, uint32_t n,
                                float *__restrict__ y, size_t ldy, const float *__restrict__ bias,
                                int accumulate, const mb_lin_norm nrm)
{
    if constexpr (!PRE) mb_pdl_enter();
    float scale[NT];
    mb_lin_gemv_block<W, R, VEC, NORM, NT, PRE>(w, m, k, x, ldx, n, y, ldy, bias, accumulate, nrm,
                                                scale);
    if constexpr (NORM) mb_lin_norm_store_xn(x, ldx, (int)n, k, nrm, scale);
}

// The staged one-token GEMV (mb_lin_staged): the block's rows stream into
// shared memory before the wait.
template <typename W, int R>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_linear_gemv_staged_kernel(const W *__restrict__ w, uint32_t m, uint32_t k,
                                       const float *__restrict__ x, float *__restrict__ y,
                                       const float *__restrict__ bias, int accumulate)
{
    mb_lin_gemv_block<W, R, true, false, 1, false, true>(w, m, k, x, k, 1, y, m, bias, accumulate);
}

#define MB_LIN_STAGE_MAX (160u * 1024u) // shared bytes a staged block may take

// Rows a block of the staged one-token GEMV (no norm, 16-byte chunks, the
// preload letter s): the fewest of MB_LIN_STAGE_ROWS that fit the grid in
// one wave of a block an SM, where those rows' weights fit
// mb_lin_stage_max(); else 0, the plain GEMV. One wave, so that every block
// is running, its weights in flight, while the attention before it runs
// (its merge launches it early); o_proj at 2048 rows of 4096 bf16 on 132
// SMs: 16 rows, 128 KB.
// The most a staged block takes: MB_LIN_STAGE_MAX, or less where the
// device allows less (its opt-in bound less 4 KiB for the static arrays).
size_t mb_lin_stage_max(void)
{
    const size_t optin = mb_dense_smem_optin();
    return optin < MB_LIN_STAGE_MAX + 4096 ? (optin > 4096 ? optin - 4096 : 0) : MB_LIN_STAGE_MAX;
}

int mb_lin_staged(uint32_t m, uint32_t k, size_t wsize)
{
    if (!mb_dense_preload('s')) return 0;
    const size_t sms = (size_t)mb_dense_sms();
    for (int r : {MB_LIN_STAGE_ROWS})
        if (mb_dense_cdiv(m, r) <= sms) return (size_t)r * k * wsize <= mb_lin_stage_max() ? r : 0;
    return 0;
}

template <typename W, int R>
static void mb_lin_staged_launch(cudaStream_t s, const W *w, uint32_t m, uint32_t k, const float *x,
                                 float *y, const float *bias, int acc)
{
    constexpr auto kern = mb_kcuda_linear_gemv_staged_kernel<W, R>;
    const size_t smem = (size_t)R * k * sizeof(W);
    if (mb_dense_opt_in<kern>(smem, mb_lin_stage_max()) != cudaSuccess)
        return; // the error stays for mb_dense_launched
    mb_dense_launch(kern, (unsigned)mb_dense_cdiv(m, R), MB_LIN_GEMV_THREADS, smem, s, w, m, k, x,
                    y, bias, acc);
}

#define MB_LIN_BM 64 // tokens per tile
#define MB_LIN_BN 64 // rows of W per tile
#define MB_LIN_BK 16
#define MB_LIN_LDS (MB_LIN_BM + 4) // keeps float4 reads aligned
#define MB_LIN_GEMM_THREADS 256
#define MB_LIN_LOADS (MB_LIN_BM * MB_LIN_BK / MB_LIN_GEMM_THREADS) // elements a thread stages per operand

static_assert(MB_LIN_BM == MB_LIN_BN, "one staging index map serves both operands");

// Thread tid computes tokens ty*4..+4 by rows tx*4..+4 of the tile. Each
// k slice is staged transposed (xs[kk][token], ws[kk][row]) so both
// operands come out of shared memory as float4.
template <typename W>
__global__ void __launch_bounds__(MB_LIN_GEMM_THREADS)
mb_kcuda_linear_gemm_kernel(const W *__restrict__ w, uint32_t m, uint32_t k, const float *__restrict__ x,
                            size_t ldx, uint32_t n, float *__restrict__ y, size_t ldy,
                            const float *__restrict__ bias, int accumulate)
{
    mb_pdl_enter();
    __shared__ __align__(16) float xs[2][MB_LIN_BK][MB_LIN_LDS];
    __shared__ __align__(16) float ws[2][MB_LIN_BK][MB_LIN_LDS];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const uint32_t r0 = blockIdx.x * MB_LIN_BN, t0 = blockIdx.y * MB_LIN_BM;

    // Staging: element e = tid + 256 i of a 64 x 16 slice is (e / 16, e % 16):
    // 16 threads read 16 consecutive k of one row.
    float xr[MB_LIN_LOADS], wr[MB_LIN_LOADS];
    auto fetch = [&](uint32_t k0) {
#pragma unroll
        for (int i = 0; i < MB_LIN_LOADS; i++) {
            const int e = tid + i * MB_LIN_GEMM_THREADS, row = e / MB_LIN_BK, kk = e % MB_LIN_BK;
            const uint32_t kc = k0 + kk;
            const bool kin = kc < k;
            xr[i] = kin && t0 + row < n ? x[(size_t)(t0 + row) * ldx + kc] : 0.0f;
            wr[i] = kin && r0 + row < m ? mb_to_f32<W>(w[(size_t)(r0 + row) * k + kc]) : 0.0f;
        }
    };
    auto stage = [&](int b) {
#pragma unroll
        for (int i = 0; i < MB_LIN_LOADS; i++) {
            const int e = tid + i * MB_LIN_GEMM_THREADS, row = e / MB_LIN_BK, kk = e % MB_LIN_BK;
            xs[b][kk][row] = xr[i];
            ws[b][kk][row] = wr[i];
        }
    };

    float acc[4][4] = {};
    const uint32_t nk = (k + MB_LIN_BK - 1) / MB_LIN_BK;
    fetch(0);
    for (uint32_t kt = 0; kt < nk; kt++) {
        const int b = kt & 1;
        stage(b);
        __syncthreads();
        // The next slice's loads fly while this one is multiplied; the
        // other buffer is free: every thread passed this iteration's sync
        // after finishing the previous slice.
        if (kt + 1 < nk) fetch((kt + 1) * MB_LIN_BK);
#pragma unroll
        for (int kk = 0; kk < MB_LIN_BK; kk++) {
            const float4 a = *reinterpret_cast<const float4 *>(&xs[b][kk][ty * 4]);
            const float4 c = *reinterpret_cast<const float4 *>(&ws[b][kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, cv[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] += av[i] * cv[j];
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t t = t0 + ty * 4 + i;
        if (t >= n) break;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t r = r0 + tx * 4 + j;
            if (r < m) mb_lin_store(y + (size_t)t * ldy + r, acc[i][j], bias, r, accumulate);
        }
    }
}

// The SIMT GEMV (nrm: the norm folded in, n == 1; or nullptr), R rows a
// block as mb_lin_rows says (mb_lin_rows1 for one token).
template <typename W>
static void mb_lin_gemv(cudaStream_t s, bool vec, const W *w, uint32_t m, uint32_t k,
                        const float *x, size_t ldx, uint32_t n, float *y, size_t ldy,
                        const float *bias, int acc, const mb_lin_norm *nrm = nullptr)
{
    const mb_lin_norm none = {};
    if (vec && n == 1 && !nrm && ldx == k && ldy >= m &&
        mb_lin_with_rows<MB_LIN_STAGE_ROWS>(mb_lin_staged(m, k, sizeof(W)), [&](auto r) {
            mb_lin_staged_launch<W, decltype(r)::value>(s, w, m, k, x, y, bias, acc);
        }))
        return;
    const bool pre = vec && n == 1 && mb_dense_preload(nrm ? 'n' : 'g');
    const auto launch = [&](auto r, auto nt) {
        constexpr int R = decltype(r)::value, NT = decltype(nt)::value;
        const unsigned blocks = (unsigned)mb_dense_cdiv(m, R);
        mb_dense_by_flags(vec, nrm != nullptr, [&](auto v, auto nm) {
            constexpr bool VEC = decltype(v)::value, NORM = decltype(nm)::value;
            if constexpr (VEC && NT == 1) {
                if (pre) {
                    mb_dense_launch(mb_kcuda_linear_gemv_kernel<W, R, true, NORM, 1, true>, blocks,
                                    MB_LIN_GEMV_THREADS, 0, s, w, m, k, x, ldx, n, y, ldy, bias,
                                    acc, nrm ? *nrm : none);
                    return;
                }
            }
            mb_dense_launch(mb_kcuda_linear_gemv_kernel<W, R, VEC, NORM, NT, false>, blocks,
                            MB_LIN_GEMV_THREADS, 0, s, w, m, k, x, ldx, n, y, ldy, bias, acc,
                            nrm ? *nrm : none);
        });
    };
    if (n == 1)
        mb_lin_by_rows1(m, nrm != nullptr,
                        [&](auto r) { launch(r, std::integral_constant<int, 1>{}); });
    else
        mb_lin_by_rows(m, [&](auto r) { launch(r, std::integral_constant<int, MB_LIN_NT>{}); });
}

template <typename W>
static int mb_lin_typed(cudaStream_t s, const void *wv, uint32_t m, uint32_t k, const float *x, size_t ldx, uint32_t n,
                        float *y, size_t ldy, const float *bias, int acc)
{
    const W *w = (const W *)wv;
    if (n <= MB_LIN_GEMV_MAX_N) {
        const bool vec = mb_lin_vec_ok<W>(k, ldx, w, x, nullptr);
        if constexpr (std::is_same<W, __nv_bfloat16>::value) {
            if (vec && n >= 2 && m >= MB_LIN_MMA_GEMV_MIN_M && !mb_dense_force_simt())
                return (int)mb_kcuda_linear_mma_gemv_launch(s, w, m, k, x, ldx, n, y, ldy, bias, acc);
        }
        mb_lin_gemv<W>(s, vec, w, m, k, x, ldx, n, y, ldy, bias, acc);
    } else if (std::is_same<W, __nv_bfloat16>::value && !mb_dense_force_simt()) {
        return (int)mb_kcuda_linear_mma_launch(s, (const __nv_bfloat16 *)w, m, k, x, ldx, n, y, ldy, bias, acc);
    } else {
        const dim3 grid((unsigned)mb_dense_cdiv(m, MB_LIN_BN), (unsigned)mb_dense_cdiv(n, MB_LIN_BM));
        mb_dense_launch(mb_kcuda_linear_gemm_kernel<W>, grid, MB_LIN_GEMM_THREADS, 0, s, w, m, k, x,
                        ldx, n, y, ldy, bias, acc);
    }
    return mb_dense_launched();
}

extern "C" int mb_kcuda_linear(void *stream, int wdtype, const void *w, uint32_t m, uint32_t k, const float *x,
                               size_t ldx, uint32_t n, float *y, size_t ldy, const float *bias, int accumulate)
{
    if (!w || !x || !y || m == 0 || k == 0 || n == 0 || ldx < k || ldy < m || n > 65535u * MB_LIN_BM)
        return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        return mb_lin_typed<decltype(tag)>(s, w, m, k, x, ldx, n, y, ldy, bias, accumulate);
    });
}

extern "C" int mb_kcuda_linear_staged(int wdtype, uint32_t m, uint32_t k)
{
    const size_t wsize = mb_dense_wsize(wdtype);
    return wsize && mb_lin_staged(m, k, wsize) != 0;
}

extern "C" int mb_kcuda_linear_norm(void *stream, int wdtype, const void *w, uint32_t m, uint32_t k,
                                    const mb_kcuda_norm_in *in, float *y, const float *bias,
                                    int accumulate)
{
    if (!w || !mb_lin_norm_in_ok(in) || !y || m == 0 || k == 0) return (int)cudaErrorInvalidValue;
    const cudaStream_t s = mb_dense_stream(stream);
    const mb_lin_norm nrm = mb_lin_norm_of(in);
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        const bool vec = mb_lin_vec_ok<W>(k, k, w, in->x, &nrm);
        mb_lin_gemv<W>(s, vec, (const W *)w, m, k, in->x, k, 1, y, m, bias, accumulate, &nrm);
        return mb_dense_launched();
    });
}
