// Causal grouped-query attention over the device KV cache (dense.h
// mb_kcuda_attention), f32 throughout, softmax as broker/attention.c
// (scores scaled after the dot product, expf, masked keys excluded).
//   Decode (n <= MB_ATTN_DEC_MAX_N): split-K over the cached positions,
//   kernels in dense_attention_decode.cu; here, how many chunks and blocks
//   (the chunk count aims at a couple of blocks per SM).
//   Prefill: flash attention, on tensor cores (dense_attention_mma.cu) for
//   head_dim a multiple of 8 up to 128 (unless MB_CUDA_DENSE=simt), else
//   here in SIMT f32: a block
//   takes 64 queries of one head and walks the visible keys in tiles of 32
//   through shared memory with an online softmax; 256 threads, each two
//   query rows by four keys of the score tile and two rows by head_dim/8
//   columns of the output. Bound by shared-memory loads and FMAs.
// Summation orders depend only on the shape: deterministic.
#include "kernels/cuda/dense_qkp.cuh"

#define MB_ATTN_DEC_TARGET_BLOCKS 264 // two per SM of an H100

// The decode kernel's target block count: MB_ATTN_DEC_TARGET_BLOCKS, or
// MB_CUDA_ATTN_BLOCKS (8 to 4096; read once). Fewer blocks mean longer
// chunks (more tiles a block, walked one after another) and fewer partial
// results for the merge to read.
static size_t mb_attn_dec_target()
{
    static const int t =
        mb_dense_env_int("MB_CUDA_ATTN_BLOCKS", 8, 4096, MB_ATTN_DEC_TARGET_BLOCKS);
    return (size_t)t;
}

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
    const size_t base = (size_t)n_kv * n_hgroups * n, target = mb_attn_dec_target();
    return base >= target ? 1 : mb_dense_cdiv(target, base);
}

// Query heads a decode block takes: MB_ATTN_DEC_HEADS, or
// MB_CUDA_ATTN_HEADS (1 to MB_ATTN_DEC_HEADS; read once): fewer heads, more
// blocks, each reading its kv head's rows (from L2 after the first).
static uint32_t mb_attn_dec_heads()
{
    static const int h =
        mb_dense_env_int("MB_CUDA_ATTN_HEADS", 1, MB_ATTN_DEC_HEADS, MB_ATTN_DEC_HEADS);
    return (uint32_t)h;
}

// Blocks along a kv head's query heads; the kernel gives each
// ceil(n_rep / n_hgroups) of them.
static uint32_t mb_attn_dec_hgroups(uint32_t n_rep)
{
    const uint32_t hb = mb_attn_dec_heads();
    return (n_rep + hb - 1) / hb;
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
    mb_pdl_enter();
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
    const cudaError_t e = mb_dense_opt_in<mb_kcuda_attn_flash_kernel<HD>>(smem, smem);
    if (e != cudaSuccess) return e;
    const dim3 grid((unsigned)mb_dense_cdiv(a.n, MB_FA_BQ), a.n_heads);
    mb_dense_launch(mb_kcuda_attn_flash_kernel<HD>, grid, MB_FA_THREADS, smem, stream, a);
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
        const size_t need = (size_t)nn * s->n_heads * split * mb_attn_part_stride(kv->head_dim);
        if (need > most) most = need;
    }
    return most;
}

static_assert(MB_KCUDA_MAX_HEAD_DIM == MB_ATTN_MAX_HD, "dense.h's head_dim bound is the kernels'");
static_assert(
    MB_ATTN_DEC_MAX_N <= 8 && MB_ATTN_DEC_HEADS >= 1,
    "MB_KCUDA_ATTN_MERGE_COUNTERS (dense.h): 8 decode rows by at most n_heads row groups");

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
    a.next_early = s->next_early;
    a.done = s->merge_done;
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
static int mb_attn_decode_launch(const mb_attn_args &a, uint32_t max_span, bool exact, float *work,
                                 size_t work_floats, cudaStream_t st,
                                 const mb_qkp_args *qkp = nullptr)
{
    const mb_attn_dec_plan p = mb_attn_dec_plan_for(a.n_kv, a.n_rep, a.n, max_span, exact);
    if (p.n_split > 1) {
        const size_t need = (size_t)a.n * a.n_heads * p.n_split * mb_attn_part_stride(a.hd);
        if (!work || work_floats < need) return (int)cudaErrorInvalidValue;
    }
    return (int)mb_kcuda_attn_decode_launch(a, p.n_hgroups, p.want, p.n_split, work, st, qkp);
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

extern "C" int mb_kcuda_qkp_attention(void *stream, const float *qkv, size_t ld,
                                      const float *q_norm, const float *k_norm, float eps,
                                      const float *cos, const float *sin, int interleaved,
                                      const mb_kcuda_kv *kv, const mb_kcuda_attn_shape *s,
                                      uint32_t pos0, const uint32_t *pos, float *out, size_t ldo,
                                      float *work, size_t work_floats)
{
    if (!mb_attn_call_ok(kv, s, 1, qkv, ld, out, ldo) || !cos || !sin || (kv->head_dim & 1u) ||
        ld < (size_t)(s->n_heads + 2 * kv->n_kv_heads) * kv->head_dim ||
        (!pos && pos0 >= kv->max_ctx))
        return (int)cudaErrorInvalidValue;
    const mb_attn_args a = mb_attn_args_for(kv, s, pos0, pos, 1, qkv, ld, out, ldo);
    const mb_qkp_args qa = {s->n_heads,  kv->n_kv_heads, kv->head_dim, q_norm,     k_norm,
                            eps,         pos0,           pos,          cos,        sin,
                            interleaved, kv->k,          kv->v,        kv->max_ctx};
    // As mb_kcuda_attention (the exact span at pos0) or mb_kcuda_attention_at
    // (blocks for the longest span the cache allows).
    const uint32_t span =
        pos ? mb_attn_max_span(0, kv->max_ctx, a.window) : mb_attn_max_span(pos0, 1, a.window);
    return mb_attn_decode_launch(a, span, !pos, work, work_floats, mb_dense_stream(stream), &qa);
}
