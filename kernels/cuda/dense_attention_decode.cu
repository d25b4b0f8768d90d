// Decode attention (dense.h mb_kcuda_attention for n <= MB_ATTN_DEC_MAX_N,
// and mb_kcuda_attention_at): split-K over the cached positions. A block
// takes one token, one kv head with up to MB_ATTN_DEC_HEADS of its query
// heads (each key and value row is read once for all of them) and one chunk
// of the token's visible positions, which it walks in tiles of 32: a tile's
// keys and values go to shared memory with all of the block's loads in
// flight at once (the kernel streams the cache, so the bytes in flight per
// SM set its speed), then scores, an online softmax per head and the
// weighted values come out of shared memory. The block leaves the
// unnormalised output with the chunk's max and sum in work, and a merge
// kernel combines a row's chunks in order (log-sum-exp); with one chunk the
// block writes the output itself. The chunk size follows from the call's
// longest row (mb_attn_dec_chunk), which both kernels compute from the
// position they read, so a decode graph replays at any position.
#include "kernels/cuda/dense_qkp.cuh"

#define MB_DEC_TS MB_ATTN_TILE // positions a tile: one a lane in the softmax
#define MB_DEC_GROUPS 4        // (head, 4 dims) output groups a thread owns: 8 heads x 64 / 128 threads

static_assert(MB_DEC_TS == 32, "the softmax gives a lane a position");
static_assert(MB_ATTN_DEC_THREADS == MB_ATTN_TILE_THREADS, "mb_attn_load_tile's block");
static_assert(MB_ATTN_DEC_HEADS * MB_ATTN_MAX_HD / 4 <= MB_DEC_GROUPS * MB_ATTN_DEC_THREADS, "groups cover heads");

// Shared floats: qs [HEADS][ld], ks and vs [TS][ld], sc [HEADS][TS], then
// alpha, m, l [HEADS]; with the head pass (qkp) HEADS floats of padding and
// the token's key and value rows [2][ld]. ld = 4 ceil(hd / 4) + 4 (16-byte
// rows, the extra 4 spreading a column's float4 over the banks).
static size_t mb_dec_smem_floats(uint32_t hd, bool qkp)
{
    const size_t ld = 4 * ((hd + 3) / 4) + 4;
    return (MB_ATTN_DEC_HEADS + 2 * MB_DEC_TS) * ld + MB_ATTN_DEC_HEADS * MB_DEC_TS +
           3 * MB_ATTN_DEC_HEADS + (qkp ? MB_ATTN_DEC_HEADS + 2 * ld : 0);
}

// Partial results of one (token, head, chunk): hd output sums, max, sum.
__device__ __forceinline__ float *mb_attn_part(float *work, const mb_attn_args &a, uint32_t t, uint32_t h,
                                               uint32_t n_split, uint32_t s)
{
    return work + (((size_t)t * a.n_heads + h) * n_split + s) * mb_attn_part_stride(a.hd);
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

// The cache positions [p0, p1) of this block's chunk (blockIdx.x) of its
// token's (blockIdx.z) visible span, the call's first position being pos0;
// empty for a chunk past the span.
__device__ __forceinline__ void mb_dec_range(const mb_attn_args &a, uint32_t want, uint32_t pos0,
                                             uint32_t *p0, uint32_t *p1)
{
    const uint32_t qpos = pos0 + blockIdx.z;
    const uint32_t chunk = mb_attn_dec_chunk(mb_attn_span(pos0 + a.n - 1, a.window), want);
    *p0 = mb_attn_first_visible(qpos, a.window) + blockIdx.x * chunk;
    *p1 = min(*p0 + chunk, qpos + 1);
}

// The chunks of token t's rows that hold positions: a chunk past them
// returns before writing a partial (the merge kernel's count too).
__device__ __forceinline__ uint32_t mb_dec_live(const mb_attn_args &a, uint32_t want,
                                                uint32_t n_split, uint32_t pos0, uint32_t t)
{
    const uint32_t chunk = mb_attn_dec_chunk(mb_attn_span(pos0 + a.n - 1, a.window), want);
    return (uint32_t)min(n_split, (mb_attn_span(pos0 + t, a.window) + chunk - 1) / chunk);
}

// The merge fused into the decode kernel (a.done): each block of a row
// group (token t, kv head, its nh query heads from h0) counts itself done
// after its partials are fenced; the last of the live chunks merges the
// group's heads as mb_kcuda_attn_merge_kernel does (the chunks' maximum,
// weights e^(m_s - M), the denominator), a warp a head for M and the
// denominator, then a thread per (head, 4 dims) adding the chunks in
// order, and returns the counter to 0. sM, sInv: MB_ATTN_DEC_HEADS floats
// of shared memory the kernel is done with.
static __device__ void mb_dec_merge_last(const mb_attn_args &a, uint32_t want, uint32_t n_split,
                                         uint32_t pos0, uint32_t t, uint32_t h0, int nh,
                                         float *work, float *sM, float *sInv)
{
    __shared__ uint32_t live_sh;
    __shared__ int last;
    __threadfence(); // this block's partials are visible device-wide before it counts itself done
    __syncthreads();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid == 0) {
        const uint32_t live = mb_dec_live(a, want, n_split, pos0, t);
        unsigned *c = a.done + (size_t)t * gridDim.y + blockIdx.y;
        last = atomicAdd(c, 1u) + 1u == live;
        if (last) *c = 0; // every live chunk has counted: back to 0 for the next launch
        live_sh = live;
    }
    __syncthreads();
    if (!last) return;
    __threadfence(); // the other chunks' partials are visible to the loads below
    const uint32_t live = live_sh, hd = a.hd, stride = mb_attn_part_stride(hd);
    for (int hb = warp; hb < nh; hb += MB_ATTN_DEC_THREADS / 32) {
        const float *first = mb_attn_part(work, a, t, h0 + hb, n_split, 0);
        float M = -INFINITY;
        for (uint32_t s = lane; s < live; s += 32)
            M = fmaxf(M, __ldcg(first + s * stride + hd));
        M = mb_warp_max(M);
        float den = 0.0f;
        for (uint32_t s = lane; s < live; s += 32)
            den += expf(__ldcg(first + s * stride + hd) - M) * __ldcg(first + s * stride + hd + 1);
        den = mb_warp_sum(den);
        if (lane == 0) {
            sM[hb] = M;
            sInv[hb] = 1.0f / den;
        }
    }
    __syncthreads();
    const uint32_t hd4 = (hd + 3) / 4;
    for (uint32_t gi = tid; gi < (uint32_t)nh * hd4; gi += MB_ATTN_DEC_THREADS) {
        const uint32_t hb = gi / hd4, d = 4 * (gi % hd4);
        const float *first = mb_attn_part(work, a, t, h0 + hb, n_split, 0);
        const float M = sM[hb];
        float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
        for (uint32_t s = 0; s < live; s++) {
            const float *ps = first + s * stride;
            const float wgt = expf(__ldcg(ps + hd) - M);
#pragma unroll
            for (uint32_t i = 0; i < 4; i++)
                if (d + i < hd) o[i] += wgt * __ldcg(ps + d + i);
        }
        float *out = a.out + (size_t)t * a.ldo + (size_t)(h0 + hb) * hd;
#pragma unroll
        for (uint32_t i = 0; i < 4; i++)
            if (d + i < hd) out[d + i] = o[i] * sInv[hb];
    }
}

// pre (one token, the pipelined tiles: mb_dense_preload 'a'): the
// position is read and the first tile's loads issued before the wait for
// the kernel before, which writes the token's own key and value rows: the
// block whose chunk holds them reads them after the wait, into kown and
// vown, and the tile takes them there (as with QKP).
template <bool VEC, bool QKP>
__global__ void __launch_bounds__(MB_ATTN_DEC_THREADS)
    mb_kcuda_attn_decode_kernel(const mb_attn_args a, uint32_t n_hgroups, uint32_t want,
                                uint32_t n_split, float *__restrict__ work, const mb_qkp_args qa,
                                int pre)
{
    if (!pre) mb_pdl_enter();
    extern __shared__ float mb_dec_smem[];
    const uint32_t hd = a.hd, hd4 = (hd + 3) / 4, ld = 4 * hd4 + 4;
    float *qs = mb_dec_smem;
    float *ks = qs + MB_ATTN_DEC_HEADS * ld;
    float *vs = ks + MB_DEC_TS * ld;
    float *sc = vs + MB_DEC_TS * ld;
    float *s_alpha = sc + MB_ATTN_DEC_HEADS * MB_DEC_TS, *s_m = s_alpha + MB_ATTN_DEC_HEADS;
    float *s_l = s_m + MB_ATTN_DEC_HEADS;
    // QKP or pre: the token's own key and value rows, 16-byte aligned
    // (every size before them is a multiple of 4 floats: 4 HEADS floats of
    // alpha, m, l and padding).
    float *kown = s_l + 2 * MB_ATTN_DEC_HEADS, *vown = kown + ld;
    const uint32_t s = blockIdx.x, g = blockIdx.y / n_hgroups, hg = blockIdx.y % n_hgroups, t = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // ceil(n_rep / n_hgroups) <= MB_ATTN_DEC_HEADS query heads a block
    const uint32_t hpb = (a.n_rep + n_hgroups - 1) / n_hgroups;
    const uint32_t h0 = g * a.n_rep + hg * hpb;
    const int nh = (int)min(hpb, a.n_rep - hg * hpb);
    // Queries as float4 where they are aligned: every load issued at once,
    // before the position is read, so that one memory trip covers both
    // (a loop of scalar loads, each waited for before its store, cost
    // several trips); with pre, after the wait, with the own rows'.
    constexpr int QPT = MB_ATTN_DEC_HEADS * (MB_ATTN_MAX_HD / 4) / MB_ATTN_DEC_THREADS;
    const bool qvec = VEC && a.ldq % 4 == 0 && ((uintptr_t)a.q & 15) == 0;
    const int nq4 = nh * (int)hd4;
    const float *qrow = a.q + (size_t)t * a.ldq + (size_t)h0 * hd;
    float4 qr[QPT];
    const auto load_q = [&] {
#pragma unroll
        for (int u = 0; u < QPT; u++) {
            const int i = tid + u * MB_ATTN_DEC_THREADS;
            if (i < nq4)
                qr[u] = __ldg(reinterpret_cast<const float4 *>(qrow + 4 * i)); // hd % 4 == 0
        }
    };
    if (qvec && !pre) load_q();
    uint32_t p0, p1;
    const uint32_t pos0 = a.pos_dev ? *a.pos_dev : a.pos0;
    mb_dec_range(a, want, pos0, &p0, &p1);
    if (p0 >= p1) return; // a chunk past this row's positions: the merge stops before it
    const int len = (int)(p1 - p0);
    const float *kc = a.k + ((size_t)g * a.max_ctx + p0) * hd;
    const float *vc = a.v + ((size_t)g * a.max_ctx + p0) * hd;

    // With hd <= 128 (one load batch a tile) the next tile's loads are
    // issued before this tile's arithmetic, so a chunk of several tiles
    // pays about one memory trip instead of one a tile; same values.
    const bool pipe = VEC && hd * MB_ATTN_TILE <= 4u * MB_ATTN_TILE_THREADS * MB_ATTN_TILE_BATCH;
    mb_attn_tile_regs next;
    if (pipe) mb_attn_fetch_tile(kc, vc, 0, min(MB_DEC_TS, len), hd, next);
    int own = -1;
    if (pre) {
        mb_pdl_enter();
        if (qvec) load_q();
        if (!QKP && pipe &&
            pos0 < p1) { // the last chunk (pos0: the token's position): its own rows
            own = (int)(pos0 - p0);
            const float4 *kr = reinterpret_cast<const float4 *>(kc + (size_t)own * hd),
                         *vr = reinterpret_cast<const float4 *>(vc + (size_t)own * hd);
            // Through L2 (__ldcg): the tile fetched before the wait may have
            // brought these rows' old lines into this SM's L1.
            for (uint32_t i = tid; i < hd4; i += MB_ATTN_DEC_THREADS) {
                reinterpret_cast<float4 *>(kown)[i] = __ldcg(kr + i);
                reinterpret_cast<float4 *>(vown)[i] = __ldcg(vr + i);
            }
        }
    }

    if (qvec) {
#pragma unroll
        for (int u = 0; u < QPT; u++) {
            const int i = tid + u * MB_ATTN_DEC_THREADS;
            if (i < nq4) *reinterpret_cast<float4 *>(qs + (i / hd4) * ld + 4 * (i % hd4)) = qr[u];
        }
    } else { // zero past hd (the key tiles are too)
        for (uint32_t i = tid; i < (uint32_t)nh * 4 * hd4; i += MB_ATTN_DEC_THREADS) {
            const uint32_t hb = i / (4 * hd4), d = i % (4 * hd4);
            qs[hb * ld + d] = d < hd ? qrow[(size_t)hb * hd + d] : 0.0f;
        }
    }
    if (!QKP && own >= 0) __syncthreads(); // kown and vown are in before the tile takes them
    // Warp w keeps the running max and sum of heads w and w + 4; thread tid
    // the outputs of groups tid + 128 j: head gi / hd4, dims 4 (gi % hd4).
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    float4 acc[MB_DEC_GROUPS];
#pragma unroll
    for (int j = 0; j < MB_DEC_GROUPS; j++)
        acc[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const int n_groups = nh * (int)hd4;

    // The head pass (one token, t = 0), while the first tile's loads fly:
    // the block's query heads in qs, and in the chunk holding the token's
    // own position its key and value rows, which also go to the cache. The
    // fetched copy of that row is stale; the tile takes kown and vown.
    if constexpr (QKP) {
        const uint32_t qpos = pos0;
        if (qpos < p1) { // the last chunk: p1 is qpos + 1
            own = (int)(qpos - p0);
            const float *kr = a.q + (size_t)(qa.nh + g) * hd,
                        *vr = a.q + (size_t)(qa.nh + qa.nkv + g) * hd;
            for (uint32_t i = tid; i < hd; i += MB_ATTN_DEC_THREADS) {
                kown[i] = kr[i];
                vown[i] = vr[i];
            }
        }
        __syncthreads(); // the raw query heads (qs) and own rows are in
        for (int hb = warp; hb < nh; hb += MB_ATTN_DEC_THREADS / 32)
            mb_qkp_slot(qs + hb * ld, qs + hb * ld, h0 + hb, qa, qpos, lane);
        if (own >= 0 && warp == nh % (MB_ATTN_DEC_THREADS / 32)) {
            mb_qkp_slot(kown, kown, qa.nh + g, qa, qpos, lane);
            mb_qkp_slot(vown, vown, qa.nh + qa.nkv + g, qa, qpos, lane);
        }
        __syncthreads(); // before the tiles take kown and the scores read qs
    }
    for (int c0 = 0; c0 < len; c0 += MB_DEC_TS) {
        const int rows = min(MB_DEC_TS, len - c0);
        if (pipe) {
            mb_attn_store_tile(next, hd, ld, ks, vs, own - c0, kown, vown);
            if (c0 + MB_DEC_TS < len)
                mb_attn_fetch_tile(kc, vc, (uint32_t)(c0 + MB_DEC_TS),
                                   min(MB_DEC_TS, len - c0 - MB_DEC_TS), hd, next);
        } else {
            mb_attn_load_tile<VEC>(kc, vc, (uint32_t)c0, rows, hd, ld, ks, vs);
        }
        __syncthreads(); // the tile (and the queries) are in; the last tile's readers are done

        // Scores: a thread a (head, position).
        for (int i = tid; i < nh * MB_DEC_TS; i += MB_ATTN_DEC_THREADS) {
            const int hb = i / MB_DEC_TS, c = i % MB_DEC_TS;
            const float4 *qr = reinterpret_cast<const float4 *>(qs + hb * ld);
            const float4 *kr = reinterpret_cast<const float4 *>(ks + c * ld);
            float d = 0.0f;
            for (uint32_t q4 = 0; q4 < hd4; q4++)
                d = mb_dot4(d, qr[q4], kr[q4]);
            sc[hb * MB_DEC_TS + c] = c < rows ? d * a.scale : -INFINITY;
        }
        __syncthreads();

        // Online softmax: a lane a position. Every tile has a visible
        // position, so the new max is finite.
#pragma unroll
        for (int x = 0; x < 2; x++) {
            const int hb = warp + 4 * x;
            if (hb >= nh) break;
            const float v = sc[hb * MB_DEC_TS + lane];
            const float mn = fmaxf(m_run[x], mb_warp_max(v));
            const float alpha = expf(m_run[x] - mn); // 0 on the first tile
            const float e = expf(v - mn);            // 0 where masked
            l_run[x] = l_run[x] * alpha + mb_warp_sum(e);
            m_run[x] = mn;
            sc[hb * MB_DEC_TS + lane] = e;
            if (lane == 0) s_alpha[hb] = alpha;
        }
        __syncthreads();

        // Outputs: rescale, then add the tile's weighted values in order.
#pragma unroll
        for (int j = 0; j < MB_DEC_GROUPS; j++) {
            const int gi = tid + j * MB_ATTN_DEC_THREADS;
            if (gi >= n_groups) break;
            const int hb = gi / (int)hd4, q4 = gi % (int)hd4;
            const float al = s_alpha[hb];
            float4 o = make_float4(acc[j].x * al, acc[j].y * al, acc[j].z * al, acc[j].w * al);
            const float *e = sc + hb * MB_DEC_TS;
            for (int c = 0; c < rows; c++)
                mb_axpy4(o, e[c], *reinterpret_cast<const float4 *>(vs + c * ld + 4 * q4));
            acc[j] = o;
        }
        __syncthreads(); // before the next tile overwrites ks, vs and sc
    }

#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int hb = warp + 4 * x;
        if (hb < nh && lane == 0) {
            s_m[hb] = m_run[x];
            s_l[hb] = l_run[x];
        }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < MB_DEC_GROUPS; j++) {
        const int gi = tid + j * MB_ATTN_DEC_THREADS;
        if (gi >= n_groups) break;
        const int hb = gi / (int)hd4;
        const uint32_t d = 4 * (uint32_t)(gi % (int)hd4);
        float *o = n_split == 1 ? a.out + (size_t)t * a.ldo + (size_t)(h0 + hb) * hd
                                : mb_attn_part(work, a, t, h0 + hb, n_split, s);
        const float scale = n_split == 1 ? 1.0f / s_l[hb] : 1.0f;
        const float v[4] = {acc[j].x, acc[j].y, acc[j].z, acc[j].w};
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (d + i < hd) o[d + i] = v[i] * scale;
        if (n_split > 1 && d == 0) {
            o[hd] = s_m[hb];
            o[hd + 1] = s_l[hb];
        }
    }
    if (n_split > 1 && a.done)
        mb_dec_merge_last(a, want, n_split, pos0, t, h0, nh, work, s_alpha, s_m);
}

// out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s over the row's
// chunks; grid (n_heads, n). The chunks' weights e^(m_s - M) are computed
// once, by the threads together, into shared memory (v3 had every thread
// walk every chunk's max and sum three times over, dependent loads one
// after another: the merge cost as much as the attention); then the
// weighted outputs: with hd % 4 == 0, 128 / (hd / 4) groups of threads
// each add float4 columns of every G-th chunk and the groups are added in
// order (v5; v4 walked all chunks a dimension a thread, eight loads in
// flight, five memory trips at 33 chunks); else a dimension a thread.
#define MB_MERGE_MAX_SPLIT 1024 // chunks the weights' shared memory holds; more: a second pass
#define MB_MERGE_REGS 16        // float4 of outputs a thread may hold from the start
// pos_early (mb_dense_preload 'm'): the position, which no kernel of the
// step writes, is read before the wait for the attention. early (one
// token, a.next_early): the next kernel (o_proj, staged) launches before
// that wait, so that its weights stream in while the attention runs.
__global__ void __launch_bounds__(MB_ATTN_DEC_THREADS)
    mb_kcuda_attn_merge_kernel(const mb_attn_args a, uint32_t want, uint32_t n_split,
                               const float *__restrict__ work, int pos_early, int early)
{
    if (early) mb_pdl_trigger();
    uint32_t pos = 0;
    if (pos_early) pos = a.pos_dev ? *a.pos_dev : a.pos0;
    mb_pdl_enter();
    if (!pos_early) pos = a.pos_dev ? *a.pos_dev : a.pos0;
    __shared__ float wsh[MB_MERGE_MAX_SPLIT];
    __shared__ float red[MB_ATTN_DEC_THREADS / 32];
    __shared__ float4 sums4[MB_ATTN_DEC_THREADS];
    const uint32_t h = blockIdx.x, t = blockIdx.y, hd = a.hd, stride = mb_attn_part_stride(hd);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t live = mb_dec_live(a, want, n_split, pos, t);
    const float *first = work + ((size_t)t * a.n_heads + h) * n_split * stride;
    // Where the float4 path below takes every chunk in MB_MERGE_REGS loads a
    // thread, those loads are issued now, with the maxima's: the outputs
    // do not depend on M, so the kernel pays one memory trip, not two.
    const uint32_t hd4 = hd / 4;
    const bool vec4 = hd % 4 == 0 && hd4 <= MB_ATTN_DEC_THREADS && ((uintptr_t)work & 15) == 0;
    const uint32_t G = vec4 ? MB_ATTN_DEC_THREADS / hd4 : 1, gi = tid / (vec4 ? hd4 : 1),
                   c4 = tid % (vec4 ? hd4 : 1);
    const bool pre = vec4 && live <= G * MB_MERGE_REGS && live <= MB_MERGE_MAX_SPLIT;
    float4 ov[MB_MERGE_REGS];
    if (pre && gi < G) {
#pragma unroll
        for (int u = 0; u < MB_MERGE_REGS; u++) {
            const uint32_t s = gi + (uint32_t)u * G;
            if (s < live) ov[u] = *reinterpret_cast<const float4 *>(first + s * stride + 4 * c4);
        }
    }
    // M: the chunks' maxima, a strided pass then a fixed butterfly and warp order.
    float M = -INFINITY;
    for (uint32_t s = tid; s < live; s += MB_ATTN_DEC_THREADS)
        M = fmaxf(M, first[s * stride + hd]);
    M = mb_warp_max(M);
    if (lane == 0) red[warp] = M;
    __syncthreads();
    M = red[0];
#pragma unroll
    for (int i = 1; i < MB_ATTN_DEC_THREADS / 32; i++)
        M = fmaxf(M, red[i]);
    __syncthreads(); // red is reused below
    // Weights, and the denominator in the same fixed order.
    float den = 0.0f;
    for (uint32_t s = tid; s < live; s += MB_ATTN_DEC_THREADS) {
        const float w = expf(first[s * stride + hd] - M);
        if (s < MB_MERGE_MAX_SPLIT) wsh[s] = w;
        den += w * first[s * stride + hd + 1];
    }
    den = mb_warp_sum(den);
    if (lane == 0) red[warp] = den;
    __syncthreads();
    den = 0.0f;
#pragma unroll
    for (int i = 0; i < MB_ATTN_DEC_THREADS / 32; i++)
        den += red[i];
    const float inv = 1.0f / den;
    if (vec4) {
        // Thread (group gi, column c4) adds 4 dims of chunks gi, gi + G, ...
        // (a few float4 loads a thread, all in flight together, or already
        // in ov), then the first hd4 threads add the G groups in order.
        if (gi < G) {
            float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (pre) {
#pragma unroll
                for (int u = 0; u < MB_MERGE_REGS; u++) {
                    const uint32_t s = gi + (uint32_t)u * G;
                    if (s < live) mb_axpy4(o, wsh[s], ov[u]);
                }
            } else {
#pragma unroll 8
                for (uint32_t s = gi; s < live; s += G) {
                    const float w =
                        s < MB_MERGE_MAX_SPLIT ? wsh[s] : expf(first[s * stride + hd] - M);
                    mb_axpy4(o, w, *reinterpret_cast<const float4 *>(first + s * stride + 4 * c4));
                }
            }
            sums4[tid] = o;
        }
        __syncthreads();
        if ((uint32_t)tid < hd4) {
            float4 o = sums4[tid];
            for (uint32_t g2 = 1; g2 < G; g2++) {
                const float4 v = sums4[g2 * hd4 + tid];
                o.x += v.x;
                o.y += v.y;
                o.z += v.z;
                o.w += v.w;
            }
            float *out = a.out + (size_t)t * a.ldo + (size_t)h * hd + 4 * tid;
            out[0] = o.x * inv;
            out[1] = o.y * inv;
            out[2] = o.z * inv;
            out[3] = o.w * inv;
        }
        return;
    }
    for (uint32_t d = tid; d < hd; d += MB_ATTN_DEC_THREADS) {
        float o = 0.0f;
#pragma unroll 8
        for (uint32_t s = 0; s < live; s++) {
            const float w = s < MB_MERGE_MAX_SPLIT ? wsh[s] : expf(first[s * stride + hd] - M);
            o += w * first[s * stride + d];
        }
        a.out[(size_t)t * a.ldo + (size_t)h * hd + d] = o * inv;
    }
}

template <bool VEC, bool QKP>
static cudaError_t mb_dec_launch(const mb_attn_args &a, uint32_t n_hgroups, uint32_t want,
                                 uint32_t n_split, float *work, cudaStream_t stream,
                                 const mb_qkp_args &qa)
{
    const bool pre = a.n == 1 && mb_dense_preload('a');
    const size_t smem = mb_dec_smem_floats(a.hd, QKP || pre) * sizeof(float);
    // Above 48 KiB (head_dim > 160, or 160 with the own rows): the most
    // any call of this kernel takes.
    const cudaError_t e = mb_dense_opt_in<mb_kcuda_attn_decode_kernel<VEC, QKP>>(
        smem, mb_dec_smem_floats(MB_ATTN_MAX_HD, true) * sizeof(float));
    if (e != cudaSuccess) return e;
    const dim3 grid(n_split, a.n_kv * n_hgroups, a.n);
    mb_dense_launch(mb_kcuda_attn_decode_kernel<VEC, QKP>, grid, MB_ATTN_DEC_THREADS, smem, stream,
                    a, n_hgroups, want, n_split, work, qa, (int)pre);
    return cudaGetLastError();
}

cudaError_t mb_kcuda_attn_decode_launch(const mb_attn_args &a, uint32_t n_hgroups, uint32_t want,
                                        uint32_t n_split, float *work, cudaStream_t stream,
                                        const mb_qkp_args *qkp)
{
    const bool vec = a.hd % 4 == 0 && ((uintptr_t)a.k & 15) == 0 && ((uintptr_t)a.v & 15) == 0;
    const mb_qkp_args none = {};
    cudaError_t e;
    if (qkp) {
        if (!vec || a.hd > 4u * MB_ATTN_TILE_THREADS * MB_ATTN_TILE_BATCH / MB_ATTN_TILE ||
            a.n != 1)
            return cudaErrorInvalidValue; // the head pass rides on the pipelined tiles
        e = mb_dec_launch<true, true>(a, n_hgroups, want, n_split, work, stream, *qkp);
    } else {
        e = vec ? mb_dec_launch<true, false>(a, n_hgroups, want, n_split, work, stream, none)
                : mb_dec_launch<false, false>(a, n_hgroups, want, n_split, work, stream, none);
    }
    if (e != cudaSuccess || n_split == 1 || a.done) return e; // a.done: merged by the last blocks
    const dim3 mgrid(a.n_heads, a.n);
    mb_dense_launch(mb_kcuda_attn_merge_kernel, mgrid, MB_ATTN_DEC_THREADS, 0, stream, a, want,
                    n_split, work, (int)mb_dense_preload('m'), (int)(a.n == 1 && a.next_early));
    return cudaGetLastError();
}
