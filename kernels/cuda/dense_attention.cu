// Causal grouped-query attention over the device KV cache (dense.h
// mb_kcuda_attention), f32 throughout, softmax as broker/attention.c
// (scores scaled after the dot product, expf, masked keys excluded).
//   Decode (n <= MB_ATTN_DEC_MAX_N): split-K. A block takes one token, one
//   kv head with up to MB_ATTN_DEC_HEADS of its query heads (each key and
//   value row is read once for all of them) and one chunk of the token's
//   visible positions; it leaves the unnormalised output with the chunk's
//   max and sum in work, and a merge kernel combines the chunks in order
//   (log-sum-exp). With one chunk the block writes the output itself.
//   Bandwidth-bound on the cache; the chunk count aims at a couple of
//   blocks per SM.
//   Prefill: flash attention, on tensor cores (dense_attention_mma.cu) for
//   head_dim a multiple of 8 up to 128 (unless MB_CUDA_DENSE=simt), else
//   here in SIMT f32: a block
//   takes 64 queries of one head and walks the visible keys in tiles of 32
//   through shared memory with an online softmax; 256 threads, each two
//   query rows by four keys of the score tile and two rows by head_dim/8
//   columns of the output. Bound by shared-memory loads and FMAs.
// Summation orders depend only on the shape: deterministic.
#include "kernels/cuda/dense_internal.cuh"

#define MB_ATTN_MAX_HD 256
#define MB_ATTN_DEC_MAX_N 8
#define MB_ATTN_DEC_HEADS 8
#define MB_ATTN_DEC_THREADS 128
#define MB_ATTN_DEC_CHUNK_MIN 64
#define MB_ATTN_DEC_CHUNK_MAX 256
#define MB_ATTN_DEC_TARGET_BLOCKS 264 // two per SM of an H100

// ---- decode: split-K over positions ---------------------------------------

struct mb_attn_dec_plan {
    uint32_t n_hgroups; // blocks per kv head along its query heads
    uint32_t want;      // chunks wanted per row (mb_attn_dec_chunk)
    uint32_t n_split;   // blocks per row: at least the chunks of the longest row
};

// Blocks per chunk index wanted for n tokens: enough chunks that
// n_kv * n_hgroups * n * n_split reaches the target.
static size_t mb_attn_dec_want(uint32_t n_kv, uint32_t n_hgroups, uint32_t n)
{
    const size_t base = (size_t)n_kv * n_hgroups * n;
    return base >= MB_ATTN_DEC_TARGET_BLOCKS ? 1 : mb_dense_cdiv(MB_ATTN_DEC_TARGET_BLOCKS, base);
}

static uint32_t mb_attn_dec_hgroups(uint32_t n_rep)
{
    return (n_rep + MB_ATTN_DEC_HEADS - 1) / MB_ATTN_DEC_HEADS;
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

// exact: the rows' longest span is max_span, so n_split is its chunk
// count; otherwise max_span only bounds it (the position is read on the
// device) and n_split is the bound above: chunks past a row's last are
// blocks that return at once, and the merge does not read them.
static mb_attn_dec_plan mb_attn_dec_plan_for(uint32_t n_kv, uint32_t n_rep, uint32_t n, uint32_t max_span, bool exact)
{
    mb_attn_dec_plan p;
    p.n_hgroups = mb_attn_dec_hgroups(n_rep);
    p.want = (uint32_t)mb_attn_dec_want(n_kv, p.n_hgroups, n);
    const uint32_t by_len = (uint32_t)mb_dense_cdiv(max_span, MB_ATTN_DEC_CHUNK_MAX);
    p.n_split = exact ? (uint32_t)mb_dense_cdiv(max_span, mb_attn_dec_chunk(max_span, p.want))
                      : (p.want > by_len ? p.want : by_len);
    return p;
}

// Partial results of one (token, head, chunk): hd output sums, max, sum.
__device__ __forceinline__ float *mb_attn_part(float *work, const mb_attn_args &a, uint32_t t, uint32_t h,
                                               uint32_t n_split, uint32_t s)
{
    return work + (((size_t)t * a.n_heads + h) * n_split + s) * (a.hd + 2);
}

// Four consecutive values p[d..d+4), zeros past hd. VEC: hd % 4 == 0 and
// the cache 16-byte aligned, so one float4 load.
template <bool VEC> __device__ __forceinline__ float4 mb_attn_ld4(const float *p, uint32_t d, uint32_t hd)
{
    if (VEC) return d < hd ? __ldg(reinterpret_cast<const float4 *>(p + d)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v;
    v.x = d < hd ? __ldg(p + d) : 0.0f;
    v.y = d + 1 < hd ? __ldg(p + d + 1) : 0.0f;
    v.z = d + 2 < hd ? __ldg(p + d + 2) : 0.0f;
    v.w = d + 3 < hd ? __ldg(p + d + 3) : 0.0f;
    return v;
}

__device__ __forceinline__ float mb_dot4(float acc, float4 a, float4 b)
{
    acc += a.x * b.x;
    acc += a.y * b.y;
    acc += a.z * b.z;
    return acc + a.w * b.w;
}

__device__ __forceinline__ void mb_axpy4(float4 &acc, float e, float4 v)
{
    acc.x += e * v.x;
    acc.y += e * v.y;
    acc.z += e * v.z;
    acc.w += e * v.w;
}

#define MB_ATTN_DEC_SETS 2                       // positions a lane group dots at once
#define MB_ATTN_DEC_STEP (16 * MB_ATTN_DEC_SETS) // positions a block dots at once
#define MB_ATTN_DEC_Q4 (MB_ATTN_MAX_HD / 32)     // float4 of a key row a lane may hold

// grid: (n_split, n_kv * n_hgroups, n). Loads are issued all together
// (predicated, not branched) so that each lane keeps several in flight: the
// kernel streams the cache.
template <bool VEC>
__global__ void __launch_bounds__(MB_ATTN_DEC_THREADS)
mb_kcuda_attn_decode_kernel(const mb_attn_args a, uint32_t n_hgroups, uint32_t want, uint32_t n_split,
                            float *__restrict__ work)
{
    __shared__ __align__(16) float qs[MB_ATTN_DEC_HEADS][MB_ATTN_MAX_HD];
    __shared__ float sc[MB_ATTN_DEC_HEADS][MB_ATTN_DEC_CHUNK_MAX];
    __shared__ float s_m[MB_ATTN_DEC_HEADS], s_l[MB_ATTN_DEC_HEADS];
    const uint32_t s = blockIdx.x, g = blockIdx.y / n_hgroups, hg = blockIdx.y % n_hgroups, t = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t pos0 = a.pos_dev ? *a.pos_dev : a.pos0, hd = a.hd, qpos = pos0 + t;
    const uint32_t chunk = mb_attn_dec_chunk(mb_attn_span(pos0 + a.n - 1, a.window), want);
    const uint32_t h0 = g * a.n_rep + hg * MB_ATTN_DEC_HEADS;
    const int nh = (int)min((uint32_t)MB_ATTN_DEC_HEADS, a.n_rep - hg * MB_ATTN_DEC_HEADS);
    const uint32_t p0 = mb_attn_first_visible(qpos, a.window) + s * chunk;
    const uint32_t p1 = min(p0 + chunk, qpos + 1);

    if (p0 >= p1) return; // a chunk past this row's positions: the merge stops before it
    const int len = (int)(p1 - p0);
    // Queries, zero-padded to whole 32-dim steps (the padding meets keys
    // loaded as zeros).
    const uint32_t nq = (hd + 31) / 32, hd32 = nq * 32;
    for (uint32_t i = tid; i < (uint32_t)nh * hd32; i += MB_ATTN_DEC_THREADS) {
        const uint32_t hb = i / hd32, d = i % hd32;
        qs[hb][d] = d < hd ? a.q[(size_t)t * a.ldq + (size_t)(h0 + hb) * hd + d] : 0.0f;
    }
    __syncthreads();

    // Scores: a group of eight lanes dots a position, lane sub taking dims
    // 4 sub + 32 j; groups take positions b + 16 i + 4 warp + grp. The loop
    // is uniform over the block (the shuffles need whole warps); groups
    // past the chunk dot position p0 and drop it.
    const float *kc = a.k + ((size_t)g * a.max_ctx + p0) * hd;
    const int sub = lane & 7, grp = lane >> 3;
    for (int b = 0; b < len; b += MB_ATTN_DEC_STEP) {
        int pp[MB_ATTN_DEC_SETS];
        float4 kv[MB_ATTN_DEC_SETS][MB_ATTN_DEC_Q4];
#pragma unroll
        for (int i = 0; i < MB_ATTN_DEC_SETS; i++) {
            pp[i] = b + 16 * i + 4 * warp + grp;
            const float *kr = kc + (size_t)(pp[i] < len ? pp[i] : 0) * hd;
#pragma unroll
            for (int j = 0; j < MB_ATTN_DEC_Q4; j++)
                kv[i][j] =
                    (uint32_t)j < nq ? mb_attn_ld4<VEC>(kr, 32 * j + 4 * sub, hd) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        float acc[MB_ATTN_DEC_SETS][MB_ATTN_DEC_HEADS] = {};
#pragma unroll
        for (int j = 0; j < MB_ATTN_DEC_Q4; j++) {
            if ((uint32_t)j >= nq) break;
#pragma unroll
            for (int hb = 0; hb < MB_ATTN_DEC_HEADS; hb++) {
                if (hb >= nh) break;
                const float4 qv = *reinterpret_cast<const float4 *>(&qs[hb][32 * j + 4 * sub]);
#pragma unroll
                for (int i = 0; i < MB_ATTN_DEC_SETS; i++)
                    acc[i][hb] = mb_dot4(acc[i][hb], qv, kv[i][j]);
            }
        }
#pragma unroll
        for (int i = 0; i < MB_ATTN_DEC_SETS; i++)
#pragma unroll
            for (int hb = 0; hb < MB_ATTN_DEC_HEADS; hb++) {
                if (hb >= nh) break;
                float v = acc[i][hb];
                v += __shfl_xor_sync(0xffffffffu, v, 4);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                if (pp[i] < len && sub == 0) sc[hb][pp[i]] = v * a.scale;
            }
    }
    __syncthreads();

    // Softmax pieces per head: a warp a head.
    for (int hb = warp; hb < nh; hb += MB_ATTN_DEC_THREADS / 32) {
        float m = -INFINITY;
        for (int i = lane; i < len; i += 32)
            m = fmaxf(m, sc[hb][i]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float l = 0.0f;
        for (int i = lane; i < len; i += 32) {
            const float e = expf(sc[hb][i] - m);
            sc[hb][i] = e;
            l += e;
        }
        l = mb_warp_sum(l);
        if (lane == 0) {
            s_m[hb] = m;
            s_l[hb] = l;
        }
    }
    __syncthreads();

    // o[h][d] = sum_p e[h][p] * V[p][d]: warp w takes heads w and w + 4
    // (one V load serves both), lane dims 4 lane + 128 jq.
    const int ha = warp, hb2 = warp + 4;
    if (ha >= nh) return;
    const bool two = hb2 < nh;
    const float *vc = a.v + ((size_t)g * a.max_ctx + p0) * hd;
    float4 acc[2][2] = {};
#pragma unroll 4
    for (int pp = 0; pp < len; pp++) {
        const float ea = sc[ha][pp], eb = two ? sc[hb2][pp] : 0.0f;
#pragma unroll
        for (int jq = 0; jq < 2; jq++) {
            const uint32_t d = 4 * lane + 128 * jq;
            if (d >= hd) break;
            const float4 v = mb_attn_ld4<VEC>(vc + (size_t)pp * hd, d, hd);
            mb_axpy4(acc[0][jq], ea, v);
            mb_axpy4(acc[1][jq], eb, v);
        }
    }
#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (x == 1 && !two) break;
        const int hb = x ? hb2 : ha;
        float *o = n_split == 1 ? a.out + (size_t)t * a.ldo + (size_t)(h0 + hb) * hd
                                : mb_attn_part(work, a, t, h0 + hb, n_split, s);
        const float scale = n_split == 1 ? 1.0f / s_l[hb] : 1.0f;
#pragma unroll
        for (int jq = 0; jq < 2; jq++) {
            const uint32_t d = 4 * lane + 128 * jq;
            const float v[4] = {acc[x][jq].x, acc[x][jq].y, acc[x][jq].z, acc[x][jq].w};
#pragma unroll
            for (int i = 0; i < 4; i++)
                if (d + i < hd) o[d + i] = v[i] * scale;
        }
        if (n_split > 1 && lane == 0) {
            o[hd] = s_m[hb];
            o[hd + 1] = s_l[hb];
        }
    }
}

// out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s over the row's
// chunks, in order; grid (n_heads, n).
__global__ void __launch_bounds__(MB_ATTN_DEC_THREADS)
mb_kcuda_attn_merge_kernel(const mb_attn_args a, uint32_t want, uint32_t n_split, const float *__restrict__ work)
{
    const uint32_t h = blockIdx.x, t = blockIdx.y, hd = a.hd, stride = hd + 2;
    const uint32_t pos0 = a.pos_dev ? *a.pos_dev : a.pos0;
    const uint32_t chunk = mb_attn_dec_chunk(mb_attn_span(pos0 + a.n - 1, a.window), want);
    const uint32_t live = (uint32_t)min(n_split, (mb_attn_span(pos0 + t, a.window) + chunk - 1) / chunk);
    const float *first = work + ((size_t)t * a.n_heads + h) * n_split * stride;
    float M = -INFINITY;
    for (uint32_t s = 0; s < live; s++)
        M = fmaxf(M, first[s * stride + hd]);
    float denom = 0.0f;
    for (uint32_t s = 0; s < live; s++)
        denom += expf(first[s * stride + hd] - M) * first[s * stride + hd + 1];
    const float inv = 1.0f / denom;
    for (uint32_t d = threadIdx.x; d < hd; d += MB_ATTN_DEC_THREADS) {
        float o = 0.0f;
        for (uint32_t s = 0; s < live; s++)
            o += expf(first[s * stride + hd] - M) * first[s * stride + d];
        a.out[(size_t)t * a.ldo + (size_t)h * hd + d] = o * inv;
    }
}

// ---- prefill: flash attention ---------------------------------------------

#define MB_FA_BQ 64
#define MB_FA_BC 32
#define MB_FA_THREADS 256
#define MB_FA_LDQ (MB_FA_BQ + 1) // padded strides: conflict-free transposed stores
#define MB_FA_LDK (MB_FA_BC + 1)
#define MB_FA_LDP (MB_FA_BC + 1)

// Shared memory of the kernel for head dims up to HD (floats):
// qs[HD][LDQ] (queries transposed), ks[HD][LDK] (keys transposed),
// vs[BC][HD], ps[BQ][LDP] (probabilities of the tile).
static constexpr size_t mb_fa_smem_floats(int hd)
{
    return (size_t)hd * MB_FA_LDQ + (size_t)hd * MB_FA_LDK + (size_t)MB_FA_BC * hd + (size_t)MB_FA_BQ * MB_FA_LDP;
}

// grid: (ceil(n / BQ), n_heads). Thread tid: rows 2 * (tid / 8) + {0, 1},
// score columns 4 * (tid % 8) + {0..3}, output dims tid % 8 + 8 j.
template <int HD> __global__ void __launch_bounds__(MB_FA_THREADS) mb_kcuda_attn_flash_kernel(const mb_attn_args a)
{
    extern __shared__ float mb_fa_smem[];
    float *qs = mb_fa_smem;
    float *ks = qs + HD * MB_FA_LDQ;
    float *vs = ks + HD * MB_FA_LDK;
    float *ps = vs + MB_FA_BC * HD;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const uint32_t h = blockIdx.y, g = h / a.n_rep, hd = a.hd;
    const uint32_t t0 = blockIdx.x * MB_FA_BQ;
    const uint32_t rows = min((uint32_t)MB_FA_BQ, a.n - t0);
    const int r0 = 2 * ty;

    // Columns hd..HD of vs are never loaded; zeros keep the unused
    // accumulators finite.
    for (uint32_t i = tid; i < MB_FA_BC * (HD - hd); i += MB_FA_THREADS)
        vs[(i / (HD - hd)) * HD + hd + i % (HD - hd)] = 0.0f;
    for (uint32_t i = tid; i < MB_FA_BQ * hd; i += MB_FA_THREADS) {
        const uint32_t r = i / hd, d = i % hd;
        qs[d * MB_FA_LDQ + r] = r < rows ? a.q[(size_t)(t0 + r) * a.ldq + (size_t)h * hd + d] : 0.0f;
    }
    // Positions the block's rows see: from the first row's window start to
    // the last row's own position.
    const uint32_t kv_lo = mb_attn_first_visible(a.pos0 + t0, a.window);
    const uint32_t kv_hi = a.pos0 + t0 + rows - 1;
    uint32_t qpos[2], qlo[2];
    bool live[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        live[i] = (uint32_t)(r0 + i) < rows;
        qpos[i] = a.pos0 + t0 + r0 + i;
        qlo[i] = mb_attn_first_visible(qpos[i], a.window);
    }
    const float *kc = a.k + (size_t)g * a.max_ctx * hd;
    const float *vc = a.v + (size_t)g * a.max_ctx * hd;

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[2][HD / 8] = {};
    for (uint32_t kb = kv_lo; kb <= kv_hi; kb += MB_FA_BC) {
        __syncthreads(); // the previous tile's ks, vs and ps are consumed
        for (uint32_t i = tid; i < MB_FA_BC * hd; i += MB_FA_THREADS) {
            const uint32_t c = i / hd, d = i % hd, p = kb + c;
            const bool ok = p <= kv_hi;
            ks[d * MB_FA_LDK + c] = ok ? __ldg(kc + (size_t)p * hd + d) : 0.0f;
            vs[c * HD + d] = ok ? __ldg(vc + (size_t)p * hd + d) : 0.0f;
        }
        __syncthreads();

        float sv[2][4] = {};
        for (uint32_t d = 0; d < hd; d++) {
            const float qa = qs[d * MB_FA_LDQ + r0], qb = qs[d * MB_FA_LDQ + r0 + 1];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float kv = ks[d * MB_FA_LDK + tx * 4 + j];
                sv[0][j] += qa * kv;
                sv[1][j] += qb * kv;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float mt = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint32_t p = kb + tx * 4 + j;
                const bool vis = live[i] && p <= qpos[i] && p >= qlo[i];
                sv[i][j] = vis ? sv[i][j] * a.scale : -INFINITY;
                mt = fmaxf(mt, sv[i][j]);
            }
            // The row's 32 scores live in 8 adjacent lanes.
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 4));
            const float mn = fmaxf(m[i], mt);
            // A row with nothing visible yet keeps m = -inf, l = 0, o = 0.
            const float alpha = mn == -INFINITY ? 1.0f : expf(m[i] - mn);
            float ls = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float e = mn == -INFINITY ? 0.0f : expf(sv[i][j] - mn);
                ps[(r0 + i) * MB_FA_LDP + tx * 4 + j] = e;
                ls += e;
            }
            ls += __shfl_xor_sync(0xffffffffu, ls, 1);
            ls += __shfl_xor_sync(0xffffffffu, ls, 2);
            ls += __shfl_xor_sync(0xffffffffu, ls, 4);
            l[i] = l[i] * alpha + ls;
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < HD / 8; j++)
                o[i][j] *= alpha;
        }
        __syncthreads();

        for (int c = 0; c < MB_FA_BC; c++) {
            const float pa = ps[r0 * MB_FA_LDP + c], pb = ps[(r0 + 1) * MB_FA_LDP + c];
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                const float vv = vs[c * HD + tx + 8 * j];
                o[0][j] += pa * vv;
                o[1][j] += pb * vv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!live[i]) continue;
        const float inv = 1.0f / l[i];
        float *orow = a.out + (size_t)(t0 + r0 + i) * a.ldo + (size_t)h * hd;
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            const uint32_t d = tx + 8 * j;
            if (d < hd) orow[d] = o[i][j] * inv;
        }
    }
}

template <int HD> static cudaError_t mb_attn_flash_launch(const mb_attn_args &a, cudaStream_t stream)
{
    constexpr size_t smem = mb_fa_smem_floats(HD) * sizeof(float);
    // Above 48 KiB a kernel must opt in, once per device; setting the
    // attribute twice is harmless, so racing first calls are fine.
    static bool opted[64];
    int dev = 0;
    if (smem > 48 * 1024) {
        cudaError_t e = cudaGetDevice(&dev);
        if (e != cudaSuccess) return e;
        if (dev < 0 || dev >= 64 || !opted[dev]) {
            e = cudaFuncSetAttribute(mb_kcuda_attn_flash_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem);
            if (e != cudaSuccess) return e;
            if (dev >= 0 && dev < 64) opted[dev] = true;
        }
    }
    const dim3 grid((unsigned)mb_dense_cdiv(a.n, MB_FA_BQ), a.n_heads);
    mb_kcuda_attn_flash_kernel<HD><<<grid, MB_FA_THREADS, smem, stream>>>(a);
    return cudaGetLastError();
}

// ---- entry points ------------------------------------------------------------

// Positions the longest of n rows starting at pos0 sees.
static uint32_t mb_attn_max_span(uint32_t pos0, uint32_t n, uint32_t window)
{
    const uint32_t last = pos0 + n - 1;
    return last - mb_attn_first_visible(last, window) + 1;
}

static bool mb_attn_shape_ok(const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s)
{
    return kv && s && kv->n_kv_heads && kv->head_dim && kv->head_dim <= MB_ATTN_MAX_HD && kv->max_ctx && s->n_heads &&
           s->n_heads % kv->n_kv_heads == 0;
}

extern "C" size_t mb_kcuda_attention_work(const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t n)
{
    if (!mb_attn_shape_ok(kv, s) || n == 0) return 0;
    // The most any call of up to n tokens may need, so one size serves a
    // caller's every step: decode calls (n' <= MB_ATTN_DEC_MAX_N tokens)
    // over the longest span the cache allows.
    const uint32_t span = mb_attn_max_span(0, kv->max_ctx, s->window);
    const uint32_t n_rep = s->n_heads / kv->n_kv_heads;
    size_t most = 0;
    for (uint32_t nn = 1; nn <= n && nn <= MB_ATTN_DEC_MAX_N; nn++) {
        const size_t split = mb_attn_dec_plan_for(kv->n_kv_heads, n_rep, nn, span, false).n_split;
        if (split <= 1) continue; // one chunk writes the output directly
        const size_t need = (size_t)nn * s->n_heads * split * ((size_t)kv->head_dim + 2);
        if (need > most) most = need;
    }
    return most;
}

// Fills the arguments both entry points share.
static mb_attn_args mb_attn_args_for(const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t pos0,
                                     const uint32_t *pos_dev, uint32_t n, const float *q, size_t ldq, float *out,
                                     size_t ldo)
{
    mb_attn_args a;
    a.k = kv->k;
    a.v = kv->v;
    a.n_kv = kv->n_kv_heads;
    a.hd = kv->head_dim;
    a.max_ctx = kv->max_ctx;
    a.n_heads = s->n_heads;
    a.n_rep = s->n_heads / kv->n_kv_heads;
    a.window = s->window;
    a.scale = s->scale;
    a.pos0 = pos0;
    a.pos_dev = pos_dev;
    a.n = n;
    a.q = q;
    a.ldq = ldq;
    a.out = out;
    a.ldo = ldo;
    return a;
}

static bool mb_attn_call_ok(const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t n, const float *q, size_t ldq,
                            const float *out, size_t ldo)
{
    const size_t row = mb_attn_shape_ok(kv, s) ? (size_t)s->n_heads * kv->head_dim : 0;
    return row && kv->k && kv->v && q && out && n && ldq >= row && ldo >= row;
}

// The split-K decode over rows of up to max_span positions (exactly, or at
// most: see mb_attn_dec_plan_for).
static int mb_attn_decode_launch(const mb_attn_args &a, uint32_t max_span, bool exact, float *work, size_t work_floats,
                                 cudaStream_t st)
{
    const mb_attn_dec_plan p = mb_attn_dec_plan_for(a.n_kv, a.n_rep, a.n, max_span, exact);
    if (p.n_split > 1) {
        const size_t need = (size_t)a.n * a.n_heads * p.n_split * ((size_t)a.hd + 2);
        if (!work || work_floats < need) return (int)cudaErrorInvalidValue;
    }
    const dim3 grid(p.n_split, a.n_kv * p.n_hgroups, a.n);
    const bool vec = a.hd % 4 == 0 && ((uintptr_t)a.k & 15) == 0 && ((uintptr_t)a.v & 15) == 0;
    if (vec)
        mb_kcuda_attn_decode_kernel<true>
            <<<grid, MB_ATTN_DEC_THREADS, 0, st>>>(a, p.n_hgroups, p.want, p.n_split, work);
    else
        mb_kcuda_attn_decode_kernel<false>
            <<<grid, MB_ATTN_DEC_THREADS, 0, st>>>(a, p.n_hgroups, p.want, p.n_split, work);
    if (p.n_split > 1) {
        const dim3 mgrid(a.n_heads, a.n);
        mb_kcuda_attn_merge_kernel<<<mgrid, MB_ATTN_DEC_THREADS, 0, st>>>(a, p.want, p.n_split, work);
    }
    return mb_dense_launched();
}

extern "C" int mb_kcuda_attention(void *stream, const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s, uint32_t pos0,
                                  uint32_t n, const float *q, size_t ldq, float *out, size_t ldo, float *work,
                                  size_t work_floats)
{
    if (!mb_attn_call_ok(kv, s, n, q, ldq, out, ldo) || pos0 > kv->max_ctx || n > kv->max_ctx - pos0)
        return (int)cudaErrorInvalidValue;
    const cudaStream_t st = mb_dense_stream(stream);
    const mb_attn_args a = mb_attn_args_for(kv, s, pos0, NULL, n, q, ldq, out, ldo);
    if (n > MB_ATTN_DEC_MAX_N) {
        if (a.hd % 8 == 0 && a.hd <= 128 && !mb_dense_force_simt()) return (int)mb_kcuda_attn_flash_mma_launch(a, st);
        cudaError_t e;
        if (a.hd <= 64)
            e = mb_attn_flash_launch<64>(a, st);
        else if (a.hd <= 128)
            e = mb_attn_flash_launch<128>(a, st);
        else
            e = mb_attn_flash_launch<256>(a, st);
        return (int)e;
    }
    return mb_attn_decode_launch(a, mb_attn_max_span(pos0, n, a.window), true, work, work_floats, st);
}

extern "C" int mb_kcuda_attention_at(void *stream, const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s,
                                     const uint32_t *pos, uint32_t n, const float *q, size_t ldq, float *out,
                                     size_t ldo, float *work, size_t work_floats)
{
    if (!mb_attn_call_ok(kv, s, n, q, ldq, out, ldo) || !pos || n > MB_ATTN_DEC_MAX_N || n > kv->max_ctx)
        return (int)cudaErrorInvalidValue;
    const mb_attn_args a = mb_attn_args_for(kv, s, 0, pos, n, q, ldq, out, ldo);
    // Blocks for the longest span the cache allows; the kernels size the
    // chunks from the position they read, and blocks past a row's last
    // chunk return at once.
    return mb_attn_decode_launch(a, mb_attn_max_span(0, kv->max_ctx, a.window), false, work, work_floats,
                                 mb_dense_stream(stream));
}
