// Prefill attention on tensor cores (dense.h mb_kcuda_attention, n >
// MB_ATTN_DEC_MAX_N, head_dim a multiple of 8 up to 128): flash attention
// with both products, S = Q K^T and O += P V, as 3xTF32 MMAs (every f32
// operand split into two TF32 terms, dense_mma.cuh), so scores and outputs
// keep close to f32 precision. A block takes 64 queries of one head, a warp
// 16 of them; keys and values come in tiles of 32 through shared memory.
// The probabilities never leave registers: the P V step numbers the keys of
// each 8-key slice so that the score accumulators are the A fragment
// (column i is key 2i, column i + 4 key 2i + 1) and reads V's rows in the
// same order. The online softmax follows dense_attention.cu's SIMT kernel.
#include "kernels/cuda/dense_internal.cuh"
#include "kernels/cuda/dense_mma.cuh"

#define MB_FAM_BQ 64
#define MB_FAM_BC 32
#define MB_FAM_THREADS 128

static_assert(MB_FAM_BC == MB_ATTN_TILE && MB_FAM_THREADS == MB_ATTN_TILE_THREADS, "mb_attn_load_tile's tile");

// Shared floats for head dims up to HD: q [BQ][HD + 4], k and v [BC][HD + 4]
// (the padding makes every fragment read conflict-free).
static constexpr size_t mb_fam_smem_floats(int hd)
{
    return (size_t)(MB_FAM_BQ + 2 * MB_FAM_BC) * (hd + 4);
}

// grid: (ceil(n / BQ), n_heads). VEC: float4 cache loads.
template <int HD, bool VEC>
__global__ void __launch_bounds__(MB_FAM_THREADS) mb_kcuda_attn_flash_mma_kernel(const mb_attn_args a)
{
    mb_pdl_enter();
    constexpr int LD = HD + 4;
    extern __shared__ float mb_fam_smem[];
    float *qs = mb_fam_smem;
    float *ks = qs + MB_FAM_BQ * LD;
    float *vs = ks + MB_FAM_BC * LD;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, qi = lane & 3;
    const uint32_t h = blockIdx.y, kvh = h / a.n_rep, hd = a.hd, n8 = hd / 8;
    const uint32_t t0 = blockIdx.x * MB_FAM_BQ;
    const uint32_t rows = min((uint32_t)MB_FAM_BQ, a.n - t0);

    for (uint32_t i = tid; i < MB_FAM_BQ * hd; i += MB_FAM_THREADS) {
        const uint32_t r = i / hd, d = i % hd;
        qs[r * LD + d] = r < rows ? a.q[(size_t)(t0 + r) * a.ldq + (size_t)h * hd + d] : 0.0f;
    }
    // This lane's rows: warp * 16 + g and + 8.
    const int r0 = warp * 16 + g;
    uint32_t qpos[2], qlo[2];
    bool live[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        live[x] = (uint32_t)(r0 + 8 * x) < rows;
        qpos[x] = a.pos0 + t0 + r0 + 8 * x;
        qlo[x] = mb_attn_first_visible(qpos[x], a.window);
    }
    const uint32_t kv_lo = mb_attn_first_visible(a.pos0 + t0, a.window);
    const uint32_t kv_hi = a.pos0 + t0 + rows - 1;
    const float *kc = a.k + (size_t)kvh * a.max_ctx * hd;
    const float *vc = a.v + (size_t)kvh * a.max_ctx * hd;

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[HD / 8][4] = {};
    for (uint32_t kb = kv_lo; kb <= kv_hi; kb += MB_FAM_BC) {
        __syncthreads(); // the previous tile is consumed (and q is stored)
        // All of a tile's loads in flight at once; rows past kv_hi repeat
        // row kb (VEC) or are zeros, and are masked below.
        mb_attn_load_tile<VEC>(kc, vc, kb, (int)min((uint32_t)MB_FAM_BC, kv_hi - kb + 1), hd, LD, ks, vs);
        __syncthreads();

        // S[16 x 32] of this warp: four 8-key tiles.
        float s[MB_FAM_BC / 8][4] = {};
        for (uint32_t kk = 0; kk < n8; kk++) {
            const float *qa = qs + r0 * LD + kk * 8 + qi;
            uint32_t ab[4], as[4];
            mb_tf32_split(qa[0], ab[0], as[0]);
            mb_tf32_split(qa[8 * LD], ab[1], as[1]);
            mb_tf32_split(qa[4], ab[2], as[2]);
            mb_tf32_split(qa[8 * LD + 4], ab[3], as[3]);
#pragma unroll
            for (int nt = 0; nt < MB_FAM_BC / 8; nt++) {
                const float *kb_ = ks + (nt * 8 + g) * LD + kk * 8 + qi;
                uint32_t bb[2], bs[2];
                mb_tf32_split(kb_[0], bb[0], bs[0]);
                mb_tf32_split(kb_[4], bb[1], bs[1]);
                mb_mma_3xtf32(s[nt], ab, as, bb, bs);
            }
        }

        // Online softmax of rows g (c0, c1) and g + 8 (c2, c3); a row's 32
        // scores sit in the four lanes of a quad.
#pragma unroll
        for (int x = 0; x < 2; x++) {
            float mt = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < MB_FAM_BC / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const uint32_t p = kb + nt * 8 + 2 * qi + e;
                    const bool vis = live[x] && p <= qpos[x] && p >= qlo[x];
                    float &v = s[nt][2 * x + e];
                    v = vis ? v * a.scale : -INFINITY;
                    mt = fmaxf(mt, v);
                }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
            const float mn = fmaxf(m[x], mt);
            // A row with nothing visible yet keeps m = -inf, l = 0, o = 0.
            const float alpha = mn == -INFINITY ? 1.0f : expf(m[x] - mn);
            float ls = 0.0f;
#pragma unroll
            for (int nt = 0; nt < MB_FAM_BC / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &v = s[nt][2 * x + e];
                    v = mn == -INFINITY ? 0.0f : expf(v - mn);
                    ls += v;
                }
            ls += __shfl_xor_sync(0xffffffffu, ls, 1);
            ls += __shfl_xor_sync(0xffffffffu, ls, 2);
            l[x] = l[x] * alpha + ls;
            m[x] = mn;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                o[dt][2 * x] *= alpha;
                o[dt][2 * x + 1] *= alpha;
            }
        }

        // O += P V, one 8-key slice at a time (keys renumbered, see above).
#pragma unroll
        for (int j = 0; j < MB_FAM_BC / 8; j++) {
            uint32_t pb[4], ps[4];
            mb_tf32_split(s[j][0], pb[0], ps[0]);
            mb_tf32_split(s[j][2], pb[1], ps[1]);
            mb_tf32_split(s[j][1], pb[2], ps[2]);
            mb_tf32_split(s[j][3], pb[3], ps[3]);
            const float *vr = vs + (j * 8 + 2 * qi) * LD + g;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                if ((uint32_t)dt >= n8) break;
                uint32_t bb[2], bs[2];
                mb_tf32_split(vr[dt * 8], bb[0], bs[0]);
                mb_tf32_split(vr[LD + dt * 8], bb[1], bs[1]);
                mb_mma_3xtf32(o[dt], pb, ps, bb, bs);
            }
        }
    }

#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (!live[x]) continue;
        const float inv = 1.0f / l[x];
        float *orow = a.out + (size_t)(t0 + r0 + 8 * x) * a.ldo + (size_t)h * hd;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            if ((uint32_t)dt >= n8) break;
            orow[dt * 8 + 2 * qi] = o[dt][2 * x] * inv;
            orow[dt * 8 + 2 * qi + 1] = o[dt][2 * x + 1] * inv;
        }
    }
}

template <int HD> static cudaError_t mb_fam_launch(const mb_attn_args &a, cudaStream_t stream)
{
    constexpr size_t smem = mb_fam_smem_floats(HD) * sizeof(float);
    const bool vec = ((uintptr_t)a.k & 15) == 0 && ((uintptr_t)a.v & 15) == 0; // hd % 8 == 0 already
    auto kern = vec ? mb_kcuda_attn_flash_mma_kernel<HD, true> : mb_kcuda_attn_flash_mma_kernel<HD, false>;
    const cudaError_t e =
        vec ? mb_dense_opt_in<mb_kcuda_attn_flash_mma_kernel<HD, true>>(smem, smem)
            : mb_dense_opt_in<mb_kcuda_attn_flash_mma_kernel<HD, false>>(smem, smem);
    if (e != cudaSuccess) return e;
    const dim3 grid((unsigned)mb_dense_cdiv(a.n, MB_FAM_BQ), a.n_heads);
    mb_dense_launch(kern, grid, MB_FAM_THREADS, smem, stream, a);
    return cudaGetLastError();
}

cudaError_t mb_kcuda_attn_flash_mma_launch(const mb_attn_args &a, cudaStream_t stream)
{
    return a.hd <= 64 ? mb_fam_launch<64>(a, stream) : mb_fam_launch<128>(a, stream);
}
