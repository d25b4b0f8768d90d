// Fusions of a decode layer's small operations (dense.h): at one token a
// layer was ~18 kernels of a few microseconds each against ~13 us of weight
// traffic, so every kernel that goes saves its fixed cost. Each fusion
// computes exactly what the unfused sequence computes, in the same order:
// the results are bit-identical to it (test_dense_cuda checks).
//   mb_kcuda_qk_rope_store(_at): after one projection into qkv[t][q | k | v],
//     per head and token one warp does Qwen3's head RMSNorm, RoPE and, for
//     key and value heads, the store into the cache.
//   mb_kcuda_qkv_rope_store(_at): the one-token projection with its norm
//     folded in (mb_kcuda_linear_norm) and the above in one launch: the
//     block that finishes a head's last rows, found by a counter a head,
//     does that head's norm, rotation and store.
// The residual add folded into the next RMSNorm is in dense_norm.cu.
#include "kernels/cuda/dense_gemv.cuh"
#include "kernels/cuda/dense_qkp.cuh"

#define MB_QKP_THREADS 256
#define MB_QKP_WARPS (MB_QKP_THREADS / 32)

// Warp w of the grid owns slot s = w % slots of token t = w / slots. The
// warp loads its head's row into shared memory with every load at once
// (issued before the position is read, so one memory trip covers both)
// and asks L1 for the norm's weights and the position's rotation rows
// meanwhile; mb_qkp_slot then works on the shared row and writes the
// result back (the pass read the row, the weights and the tables from L2
// one after another: about 4.7 us a layer on the H100). The same values;
// a head_dim above MB_ATTN_MAX_HD works in place as before.
// pre (mb_dense_preload 'h', one token): the position is read and the
// weights and rows asked for before the wait for the projection.
__global__ void __launch_bounds__(MB_QKP_THREADS)
    mb_kcuda_qk_rope_store_kernel(float *__restrict__ qkv, size_t ld, uint32_t n,
                                  const mb_qkp_args a, int pre)
{
    if (!pre) mb_pdl_enter();
    __shared__ float hs[MB_QKP_WARPS][MB_ATTN_MAX_HD];
    const uint32_t slots = a.nh + 2 * a.nkv, hd = a.hd, lane = threadIdx.x & 31;
    const size_t wid = (size_t)blockIdx.x * MB_QKP_WARPS + threadIdx.x / 32;
    if (wid >= (size_t)n * slots) return; // a whole warp: no block barrier below
    const uint32_t t = (uint32_t)(wid / slots), s = (uint32_t)(wid % slots);
    float *h = qkv + (size_t)t * ld + (size_t)s * hd;
    if (hd > MB_ATTN_MAX_HD) { // longer than the shared row: in place, from L2
        if (pre) mb_pdl_enter();
        mb_qkp_slot(h, h, s, a, (a.pos_dev ? *a.pos_dev : a.pos0) + t, lane);
        return;
    }
    uint32_t pos = 0;
    const auto ask = [&] { // the norm's weights and the position's rotation rows into L1
        pos = (a.pos_dev ? *a.pos_dev : a.pos0) + t;
        if (s < a.nh + a.nkv) { // a query or key head: norm and rotation
            const float *nw = s >= a.nh ? a.kn : a.qn;
            if (nw && 32 * lane < hd) mb_l1_prefetch(nw + 32 * lane);
            const uint32_t half = hd / 2;
            if (pos < a.max_ctx && 32 * lane < half) {
                mb_l1_prefetch(a.cos + (size_t)pos * half + 32 * lane);
                mb_l1_prefetch(a.sin + (size_t)pos * half + 32 * lane);
            }
        }
    };
    if (pre) {
        ask();
        mb_pdl_enter();
    }
    float v[MB_ATTN_MAX_HD / 32];
#pragma unroll
    for (uint32_t j = 0; j < MB_ATTN_MAX_HD / 32; j++)
        if (lane + 32 * j < hd) v[j] = h[lane + 32 * j];
    if (!pre) ask();
    float *hw = hs[threadIdx.x / 32];
#pragma unroll
    for (uint32_t j = 0; j < MB_ATTN_MAX_HD / 32; j++)
        if (lane + 32 * j < hd) hw[lane + 32 * j] = v[j];
    __syncwarp();
    mb_qkp_slot(hw, h, s, a, pos, lane);
}

// The fused projection: mb_kcuda_linear_norm's GEMV blocks (the same body,
// so qkv is bit for bit its output), each then counting its rows into the
// counters of the heads they belong to (R rows touch at most R / 2 + 1
// heads: hd is even); the block that completes a head copies the head's
// row through L2 into shared memory and runs the head pass on it, a warp
// a head. A completed counter returns to 0 for the next launch.
template <typename W, int R, bool VEC>
__global__ void __launch_bounds__(MB_LIN_GEMV_THREADS)
    mb_kcuda_qkv_rope_kernel(const W *__restrict__ w, uint32_t m, uint32_t k,
                             const float *__restrict__ x, const float *__restrict__ bias,
                             const mb_lin_norm nrm, float *qkv, const mb_qkp_args a, unsigned *cnt)
{
    constexpr int MAXS = R / 2 + 1;
    static_assert(MAXS <= MB_LIN_GEMV_THREADS, "a thread for each head a block touches");
    mb_pdl_enter();
    __shared__ float hs[MB_LIN_GEMV_WARPS][MB_ATTN_MAX_HD];
    __shared__ int done_slot[MAXS];
    float scale[MB_LIN_NT];
    mb_lin_gemv_block<W, R, VEC, true>(w, m, k, x, k, 1, qkv, m, bias, 0, nrm, scale);
    __threadfence(); // this block's rows are visible device-wide before it counts them
    __syncthreads();
    if (threadIdx.x < MAXS) {
        const uint32_t row0 = blockIdx.x * R, row1 = min(row0 + R, m);
        const uint32_t s = row0 / a.hd + threadIdx.x;
        const uint32_t lo = max(row0, s * a.hd), hi = min(row1, (s + 1) * a.hd);
        int slot = -1;
        if (lo < hi) {
            const unsigned rows = hi - lo;
            if (atomicAdd(cnt + s, rows) + rows == a.hd) {
                cnt[s] = 0; // all of head s is in: no block counts it again in this launch
                slot = (int)s;
            }
        }
        done_slot[threadIdx.x] = slot;
    }
    __syncthreads();
    mb_lin_norm_store_xn(x, k, 1, k, nrm, scale);
    __threadfence(); // the other blocks' rows of a completed head are visible to the loads below
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t pos = a.pos_dev ? *a.pos_dev : a.pos0;
    for (int j = (int)warp; j < MAXS; j += MB_LIN_GEMV_WARPS) {
        if (done_slot[j] < 0) continue;
        const uint32_t s = (uint32_t)done_slot[j];
        float *row = qkv + (size_t)s * a.hd;
        for (uint32_t i = lane; i < a.hd; i += 32)
            hs[warp][i] = __ldcg(row + i); // through L2: other blocks wrote most of the row
        __syncwarp();
        mb_qkp_slot(hs[warp], row, s, a, pos, lane);
        __syncwarp(); // hs[warp] is reused by the warp's next head
    }
}

static bool mb_qkp_ok(uint32_t n, uint32_t n_heads, uint32_t pos0, const uint32_t *pos_dev,
                      const float *cos, const float *sin, const mb_kcuda_kv *kv)
{
    if (!cos || !sin || !kv || !kv->k || !kv->v || n == 0 || n_heads == 0 || kv->n_kv_heads == 0 ||
        kv->head_dim == 0 || (kv->head_dim & 1u))
        return false;
    return pos_dev || (pos0 <= kv->max_ctx && n <= kv->max_ctx - pos0);
}

static mb_qkp_args mb_qkp_make(uint32_t n_heads, const float *q_norm, const float *k_norm,
                               float eps, uint32_t pos0, const uint32_t *pos_dev, const float *cos,
                               const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    return mb_qkp_args{n_heads,     kv->n_kv_heads, kv->head_dim, q_norm,     k_norm,
                       eps,         pos0,           pos_dev,      cos,        sin,
                       interleaved, kv->k,          kv->v,        kv->max_ctx};
}

static int mb_qkp_launch(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads, const float *q_norm,
                         const float *k_norm, float eps, uint32_t pos0, const uint32_t *pos_dev, const float *cos,
                         const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    if (!qkv || !mb_qkp_ok(n, n_heads, pos0, pos_dev, cos, sin, kv) ||
        ld < (size_t)(n_heads + 2 * kv->n_kv_heads) * kv->head_dim)
        return (int)cudaErrorInvalidValue;
    const size_t warps = (size_t)n * (n_heads + 2 * kv->n_kv_heads);
    const size_t blocks = (warps + MB_QKP_WARPS - 1) / MB_QKP_WARPS;
    if (blocks > INT32_MAX) return (int)cudaErrorInvalidValue;
    mb_dense_launch(
        mb_kcuda_qk_rope_store_kernel, (unsigned)blocks, MB_QKP_THREADS, 0, mb_dense_stream(stream),
        qkv, ld, n,
        mb_qkp_make(n_heads, q_norm, k_norm, eps, pos0, pos_dev, cos, sin, interleaved, kv),
        (int)(n == 1 && mb_dense_preload('h')));
    return mb_dense_launched();
}

extern "C" int mb_kcuda_qk_rope_store(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads,
                                      const float *q_norm, const float *k_norm, float eps, uint32_t pos0,
                                      const float *cos, const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    return mb_qkp_launch(stream, qkv, ld, n, n_heads, q_norm, k_norm, eps, pos0, NULL, cos, sin, interleaved, kv);
}

extern "C" int mb_kcuda_qk_rope_store_at(void *stream, float *qkv, size_t ld, uint32_t n, uint32_t n_heads,
                                         const float *q_norm, const float *k_norm, float eps, const uint32_t *pos,
                                         const float *cos, const float *sin, int interleaved, const mb_kcuda_kv *kv)
{
    if (!pos) return (int)cudaErrorInvalidValue;
    return mb_qkp_launch(stream, qkv, ld, n, n_heads, q_norm, k_norm, eps, 0, pos, cos, sin, interleaved, kv);
}

static int mb_qkv_rope_launch(void *stream, int wdtype, const void *w, uint32_t k,
                              const mb_kcuda_norm_in *in, float *qkv, const float *bias,
                              uint32_t n_heads, const float *q_norm, const float *k_norm, float eps,
                              uint32_t pos0, const uint32_t *pos_dev, const float *cos,
                              const float *sin, int interleaved, const mb_kcuda_kv *kv,
                              unsigned *cnt)
{
    if (!w || !mb_lin_norm_in_ok(in) || !qkv || !cnt || k == 0 ||
        !mb_qkp_ok(1, n_heads, pos0, pos_dev, cos, sin, kv) || kv->head_dim > MB_ATTN_MAX_HD)
        return (int)cudaErrorInvalidValue;
    const uint64_t m64 = (uint64_t)(n_heads + 2ull * kv->n_kv_heads) * kv->head_dim;
    if (m64 > INT32_MAX) return (int)cudaErrorInvalidValue;
    const uint32_t m = (uint32_t)m64;
    const mb_lin_norm nrm = mb_lin_norm_of(in);
    const mb_qkp_args a =
        mb_qkp_make(n_heads, q_norm, k_norm, eps, pos0, pos_dev, cos, sin, interleaved, kv);
    const cudaStream_t s = mb_dense_stream(stream);
    return mb_dense_by_wdtype(wdtype, [&](auto tag) {
        using W = decltype(tag);
        const bool vec = mb_lin_vec_ok<W>(k, k, w, in->x, &nrm);
        // mb_lin_gemv's rows a block, so the products are its own.
        mb_lin_by_rows(m, [&](auto r) {
            constexpr int R = decltype(r)::value;
            mb_dense_by_flag(vec, [&](auto v) {
                mb_dense_launch(mb_kcuda_qkv_rope_kernel<W, R, decltype(v)::value>,
                                (unsigned)mb_dense_cdiv(m, R), MB_LIN_GEMV_THREADS, 0, s,
                                (const W *)w, m, k, in->x, bias, nrm, qkv, a, cnt);
            });
        });
        return mb_dense_launched();
    });
}

extern "C" int mb_kcuda_qkv_rope_store(void *stream, int wdtype, const void *w, uint32_t k,
                                       const mb_kcuda_norm_in *in, float *qkv, const float *bias,
                                       uint32_t n_heads, const float *q_norm, const float *k_norm,
                                       float eps, uint32_t pos0, const float *cos, const float *sin,
                                       int interleaved, const mb_kcuda_kv *kv, unsigned *cnt)
{
    return mb_qkv_rope_launch(stream, wdtype, w, k, in, qkv, bias, n_heads, q_norm, k_norm, eps,
                              pos0, NULL, cos, sin, interleaved, kv, cnt);
}

extern "C" int mb_kcuda_qkv_rope_store_at(void *stream, int wdtype, const void *w, uint32_t k,
                                          const mb_kcuda_norm_in *in, float *qkv, const float *bias,
                                          uint32_t n_heads, const float *q_norm,
                                          const float *k_norm, float eps, const uint32_t *pos,
                                          const float *cos, const float *sin, int interleaved,
                                          const mb_kcuda_kv *kv, unsigned *cnt)
{
    if (!pos) return (int)cudaErrorInvalidValue;
    return mb_qkv_rope_launch(stream, wdtype, w, k, in, qkv, bias, n_heads, q_norm, k_norm, eps, 0,
                              pos, cos, sin, interleaved, kv, cnt);
}
