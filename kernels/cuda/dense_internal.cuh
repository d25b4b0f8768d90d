// Shared pieces of the dense-layer kernels (kernels/cuda/dense_*.cu, the API
// of dense.h): the stream cast, grid sizing and the launch epilogue. Private
// to kernels/cuda/.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/dense.h"
#include "kernels/cuda/moe_internal.cuh"

static inline cudaStream_t mb_dense_stream(void *stream)
{
    return (cudaStream_t)stream;
}

static inline size_t mb_dense_cdiv(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

// Blocks of `threads` for a grid-stride loop over `count` elements: enough
// to fill any current GPU several times over, few enough for grid.x.
static inline unsigned mb_dense_blocks(size_t count, unsigned threads)
{
    const size_t b = mb_dense_cdiv(count, threads);
    return (unsigned)(b < 65536 ? (b ? b : 1) : 65536);
}

// Programmatic dependent launch (sm_90+): a dense kernel is launched so that
// it may start while the kernel before it on the stream finishes, and that
// one lets it start once each of its own blocks is running. So every dense
// kernel begins with mb_pdl_enter(): wait until the previous grid has
// completed and its writes are visible (before touching memory at all),
// then allow the next grid to launch. What the overlap saves is the launch
// and the block ramp-up between two small kernels, a few microseconds each
// in a decode step. MB_CUDA_PDL=0 launches them plainly (read once).
__device__ __forceinline__ void mb_pdl_enter()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Lets the next grid launch before this one waits (the merge before a
// staged GEMV, mb_lin_staged): that grid's wait then still follows this
// one's completion, and this one's wait the grid before it, so what it
// reads after its wait is as complete as with mb_pdl_enter alone. Its
// blocks take only what the running ones leave; every block of this grid
// is running by then, so none waits on them.
__device__ __forceinline__ void mb_pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The device's global nanosecond clock (%globaltimer), the same on every SM.
__device__ __forceinline__ unsigned long long mb_dense_globaltimer()
{
#ifdef MB_CUDA_EMU
    return mb_emu_now_ns();
#else
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
#endif
}

static int mb_dense_pdl_state = -1; // per file: -1 unread, 0 off, 1 on

static inline bool mb_dense_pdl(void)
{
    int &cached = mb_dense_pdl_state;
    if (cached < 0) {
        const char *e = getenv("MB_CUDA_PDL");
        int dev = 0, major = 0;
        cached =
            !(e && strcmp(e, "0") == 0) && cudaGetDevice(&dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            major >= 9;
    }
    return cached != 0;
}

// The integer in environment variable name (a knob for measuring; the
// caller reads it once) where it is all digits within [lo, hi], else dflt.
static inline int mb_dense_env_int(const char *name, int lo, int hi, int dflt)
{
    const char *e = getenv(name);
    if (!e || !*e) return dflt;
    char *end = nullptr;
    const long v = strtol(e, &end, 10);
    return *end == '\0' && v >= lo && v <= hi ? (int)v : dflt;
}

// Loads a kernel issues before its wait for the kernel before it
// (mb_pdl_enter), of data no kernel of the step writes: weights, the KV
// cache's older rows, the step's position. They fly while that kernel
// finishes. MB_CUDA_PRELOAD (read once) picks the kernels that do, by
// letter: n the one-token GEMVs with a norm folded in (QKV, lm_head), g the
// other one-token GEMVs (o_proj), r the router, h the head pass, a the
// decode attention, m its merge, s the one-token GEMVs without a norm
// (o_proj) staging all their weights in shared memory while the attention
// runs (mb_lin_staged); default "rhams" ("0" none): on an H200
// (round 14) n cost 0.011 ms of the dense decode step (QKV's weights then
// race the experts' before it) and g gained nothing; s gained 0.002 ms on
// the H100 (round 17). (A letter q staged QKV's weights while the local
// experts ran: on the H100 the experts' down kernel slowed by what QKV
// gained, the step by nothing, so it went after round 24.) Only where PDL is
// on (else a kernel starts after the one before it anyway), but always on
// the emulator (tests/unit/cuda_dense/emu), which runs kernels one after
// another.
static inline bool mb_dense_preload(char what)
{
    static char set[16] = {0};
    static int read = 0;
    if (!read) {
        const char *e = getenv("MB_CUDA_PRELOAD");
        snprintf(set, sizeof set, "%s", e ? e : "rhams");
        read = 1;
    }
#ifdef MB_CUDA_EMU // no PDL there, but the paths are worth running
    return strchr(set, what) != nullptr;
#else
    return mb_dense_pdl() && strchr(set, what) != nullptr;
#endif
}

// Asks L1 for the 128-byte line holding p: a hint for read-only data a
// thread reads soon (none on the emulator).
__device__ __forceinline__ void mb_l1_prefetch(const void *p)
{
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

// A row's copy for the experts' links, in the payload dtype the wire
// carries (dt: MB_KCUDA_F32, F16 or BF16): element e is v rounded to
// nearest even, as the CPU's mb_dtype_encode_f32 rounds a finite value,
// so the dispatcher sends these bytes as they are.
__device__ __forceinline__ void mb_store_as(void *p, int dt, size_t e, float v)
{
    if (dt == MB_KCUDA_BF16)
        static_cast<__nv_bfloat16 *>(p)[e] = __float2bfloat16_rn(v);
    else if (dt == MB_KCUDA_F16)
        static_cast<__half *>(p)[e] = __float2half_rn(v);
    else
        static_cast<float *>(p)[e] = v;
}

// Device attribute a of the current device (cached per device and
// attribute slot; 0 when unknown).
template <cudaDeviceAttr A> static inline int mb_dense_attr(void)
{
    static int v[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
    if (!v[dev] && cudaDeviceGetAttribute(&v[dev], A, dev) != cudaSuccess) v[dev] = 0;
    return v[dev];
}

// The device's SM count, and the most dynamic shared memory a block may
// opt in to (99 KiB on consumer Ada and Blackwell, 227 on an H100).
static inline int mb_dense_sms(void)
{
    return mb_dense_attr<cudaDevAttrMultiProcessorCount>();
}
static inline size_t mb_dense_smem_optin(void)
{
    return (size_t)mb_dense_attr<cudaDevAttrMaxSharedMemoryPerBlockOptin>();
}

// Lets kernel KERN take up to most bytes of dynamic shared memory, where
// a launch needs more than 48 KiB (smem): the attribute is set once a
// device (setting it twice, from racing first calls, is harmless).
template <auto KERN> static inline cudaError_t mb_dense_opt_in(size_t smem, size_t most)
{
    static bool opted[64];
    if (smem <= 48 * 1024) return cudaSuccess;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess || (dev >= 0 && dev < 64 && opted[dev])) return e;
    e = cudaFuncSetAttribute(KERN, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most);
    if (e == cudaSuccess && dev >= 0 && dev < 64) opted[dev] = true;
    return e;
}

// Launches kern(args...) on grid x block, smem, s, allowed to overlap the kernel
// before it (mb_dense_pdl); the kernel must start with mb_pdl_enter().
template <typename... KArgs, typename... Args>
static inline void mb_dense_launch(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                   cudaStream_t s, Args... args)
{
#ifndef MB_CUDA_EMU
    if (mb_dense_pdl()) {
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = s;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        if (cudaLaunchKernelEx(&cfg, kern, args...) == cudaSuccess) return;
        // A driver that refuses the attribute: plain launches from now on
        // (the launch error is not left for mb_dense_launched to report).
        (void)cudaGetLastError();
        mb_dense_pdl_state = 0;
    }
#endif
    kern<<<grid, block, smem, s>>>(args...);
}

// The value a dense.h function returns after its launches.
static inline int mb_dense_launched(void)
{
    return (int)cudaGetLastError();
}

// f(W{}) for the weight type wdtype names (float, __half, __nv_bfloat16);
// cudaErrorInvalidValue for any other.
template <typename F> static inline int mb_dense_by_wdtype(int wdtype, F &&f)
{
    switch (wdtype) {
    case MB_KCUDA_F32:
        return f(float{});
    case MB_KCUDA_F16:
        return f(__half{});
    case MB_KCUDA_BF16:
        return f(__nv_bfloat16{});
    default:
        return (int)cudaErrorInvalidValue;
    }
}

// f(A{}) with A std::true_type or std::false_type as a is: a run-time
// choice made a template argument (a kernel's variants).
template <typename F> static inline void mb_dense_by_flag(bool a, F &&f)
{
    if (a)
        f(std::true_type{});
    else
        f(std::false_type{});
}

// The same for two choices: f(A{}, B{}).
template <typename F> static inline void mb_dense_by_flags(bool a, bool b, F &&f)
{
    mb_dense_by_flag(a, [&](auto av) { mb_dense_by_flag(b, [&](auto bv) { f(av, bv); }); });
}

static inline bool mb_dense_wdtype_ok(int wdtype)
{
    return wdtype == MB_KCUDA_F32 || wdtype == MB_KCUDA_F16 || wdtype == MB_KCUDA_BF16;
}

// Bytes a weight of wdtype takes; 0 for a dtype the dense kernels lack.
static inline size_t mb_dense_wsize(int wdtype)
{
    return wdtype == MB_KCUDA_F32 ? 4 : mb_dense_wdtype_ok(wdtype) ? 2 : 0;
}

// MB_CUDA_DENSE=simt keeps every dense kernel off the tensor cores (the
// SIMT GEMV, GEMM and flash attention): for tests, and a way out should a
// tensor-core kernel misbehave on some device. Read once per file.
static inline bool mb_dense_force_simt(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *e = getenv("MB_CUDA_DENSE");
        cached = e && strcmp(e, "simt") == 0;
    }
    return cached != 0;
}

// mb_kcuda_linear's tensor-core GEMV for 2..8 rows and bf16 weights
// (dense_linear_mma.cu); x rows and W 16-byte aligned, k % 8 == 0.
cudaError_t mb_kcuda_linear_mma_gemv_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k,
                                            const float *x, size_t ldx, uint32_t n, float *y, size_t ldy,
                                            const float *bias, int accumulate);

// mb_kcuda_linear's tensor-core GEMM for bf16 weights (dense_linear_mma.cu).
cudaError_t mb_kcuda_linear_mma_launch(cudaStream_t s, const __nv_bfloat16 *w, uint32_t m, uint32_t k, const float *x,
                                       size_t ldx, uint32_t n, float *y, size_t ldy, const float *bias, int accumulate);

// One attention call's arguments, as the kernels take them.
struct mb_attn_args {
    const float *k, *v; // cache [n_kv][max_ctx][hd]
    uint32_t n_kv, hd, max_ctx, n_heads, n_rep, window;
    float scale;
    uint32_t pos0, n;
    const uint32_t *pos_dev; // when not NULL, pos0 is read here on the device (decode graphs)
    const float *q;
    size_t ldq;
    float *out;
    size_t ldo;
    unsigned
        *done; // decode: merge in the last block of a row group (mb_kcuda_attn_shape.merge_done)
    int next_early; // mb_kcuda_attn_shape.next_early
};

#define MB_ATTN_MAX_HD 256  // head_dim attention takes
#define MB_ATTN_DEC_MAX_N 8 // query rows the split-K decode path takes
#define MB_ATTN_DEC_HEADS 8
#define MB_ATTN_DEC_THREADS 128
#define MB_ATTN_DEC_CHUNK_MIN 32
#define MB_ATTN_DEC_CHUNK_MAX 256

// The first cache position visible from the query at position qpos under a
// sliding window (0: none), as broker/attention.c: q - window < p <= q.
__host__ __device__ __forceinline__ uint32_t mb_attn_first_visible(uint32_t qpos, uint32_t window)
{
    return window && qpos + 1 > window ? qpos + 1 - window : 0;
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

// Floats of one (token, head, chunk) partial in the decode's work: hd
// output sums, then the chunk's max and sum (at hd, hd + 1), rows padded
// to 16 bytes so that the merge reads them as float4.
__host__ __device__ __forceinline__ uint32_t mb_attn_part_stride(uint32_t hd)
{
    return 4 * ((hd + 3) / 4) + 4;
}

#define MB_ATTN_TILE 32          // cache rows a tile (decode and the tensor-core flash kernel)
#define MB_ATTN_TILE_THREADS 128 // the block that loads it
#define MB_ATTN_TILE_BATCH 8     // float4 of keys (and of values) a thread loads at once

// One batch of a tile in registers: MB_ATTN_TILE_BATCH float4 of keys and
// of values a thread. Decode with hd <= MB_ATTN_TILE_THREADS *
// MB_ATTN_TILE_BATCH * 4 / MB_ATTN_TILE has a whole tile in one batch, so
// it loads the next tile while it computes on this one.
struct mb_attn_tile_regs {
    float4 k[MB_ATTN_TILE_BATCH], v[MB_ATTN_TILE_BATCH];
};

// The loads of the batch from float4 base of rows [r0, r0 + rows) of one
// head's keys and values (hd floats a row, hd % 4 == 0, 16-byte aligned);
// float4 past the tile and rows past `rows` load row r0 again (in bounds).
__device__ __forceinline__ void mb_attn_fetch_tile(const float *__restrict__ kc,
                                                   const float *__restrict__ vc, uint32_t r0,
                                                   int rows, uint32_t hd, mb_attn_tile_regs &t,
                                                   int base = 0)
{
    const int hd4 = (int)hd / 4, n4 = MB_ATTN_TILE * hd4;
#pragma unroll
    for (int u = 0; u < MB_ATTN_TILE_BATCH; u++) {
        const int i = base + (int)threadIdx.x + u * MB_ATTN_TILE_THREADS;
        const int c = i < n4 ? i / hd4 : 0, d4 = i < n4 ? i % hd4 : 0;
        const size_t at = (size_t)(r0 + (c < rows ? c : 0)) * hd + 4 * d4;
        t.k[u] = __ldg(reinterpret_cast<const float4 *>(kc + at));
        t.v[u] = __ldg(reinterpret_cast<const float4 *>(vc + at));
    }
}

// The batch's stores into ks and vs (ld floats a row). own >= 0: the
// tile's row own takes kown and vown (16-byte aligned, shared memory)
// instead of what was fetched (a row the kernel computes itself and has
// not read back from the cache).
__device__ __forceinline__ void mb_attn_store_tile(const mb_attn_tile_regs &t, uint32_t hd,
                                                   uint32_t ld, float *ks, float *vs, int own = -1,
                                                   const float *kown = nullptr,
                                                   const float *vown = nullptr, int base = 0)
{
    const int hd4 = (int)hd / 4, n4 = MB_ATTN_TILE * hd4;
#pragma unroll
    for (int u = 0; u < MB_ATTN_TILE_BATCH; u++) {
        const int i = base + (int)threadIdx.x + u * MB_ATTN_TILE_THREADS;
        if (i >= n4) break;
        const int c = i / hd4, d4 = i % hd4;
        const bool mine = c == own;
        *reinterpret_cast<float4 *>(ks + c * ld + 4 * d4) =
            mine ? *reinterpret_cast<const float4 *>(kown + 4 * d4) : t.k[u];
        *reinterpret_cast<float4 *>(vs + c * ld + 4 * d4) =
            mine ? *reinterpret_cast<const float4 *>(vown + 4 * d4) : t.v[u];
    }
}

// Copies rows [r0, r0 + rows) of one head's keys and values (hd floats a
// row, global) into ks and vs (ld floats a row); rows up to MB_ATTN_TILE past
// `rows` are filled too (VEC: with row r0 again, else zeros) and masked by
// the caller. VEC: hd % 4 == 0 and the cache 16-byte aligned; a batch's
// loads are all issued before its stores.
template <bool VEC>
__device__ __forceinline__ void
mb_attn_load_tile(const float *__restrict__ kc, const float *__restrict__ vc, uint32_t r0, int rows,
                  uint32_t hd, uint32_t ld, float *ks, float *vs)
{
    if (VEC) {
        const int n4 = MB_ATTN_TILE * ((int)hd / 4);
        for (int base = 0; base < n4; base += MB_ATTN_TILE_THREADS * MB_ATTN_TILE_BATCH) {
            mb_attn_tile_regs t;
            mb_attn_fetch_tile(kc, vc, r0, rows, hd, t, base);
            mb_attn_store_tile(t, hd, ld, ks, vs, -1, nullptr, nullptr, base);
        }
    } else {
        const uint32_t w = ld - 4; // hd rounded up to 4: the tail is zeros
        for (uint32_t i = threadIdx.x; i < MB_ATTN_TILE * w; i += MB_ATTN_TILE_THREADS) {
            const uint32_t c = i / w, d = i % w;
            const bool ok = (int)c < rows && d < hd;
            const size_t at = (size_t)(r0 + c) * hd + d;
            ks[c * ld + d] = ok ? __ldg(kc + at) : 0.0f;
            vs[c * ld + d] = ok ? __ldg(vc + at) : 0.0f;
        }
    }
}

// The split-K decode kernels (dense_attention_decode.cu): grid (n_split,
// n_kv * n_hgroups, n), then the merge when n_split > 1 (work holds
// [n][n_heads][n_split][hd + 2] partials).
struct mb_qkp_args;
// qkp: one token whose query and key heads are still raw in a.q's row
// (qkv: q heads, then k, then v): the blocks run the head pass on their
// own query heads, and the block whose chunk holds the token's position
// on its key and value head, which it stores into the cache (as
// mb_kcuda_qk_rope_store) and uses without reading it back. Needs the
// pipelined tiles (hd % 4 == 0, hd <= 128, 16-byte aligned cache).
cudaError_t mb_kcuda_attn_decode_launch(const mb_attn_args &a, uint32_t n_hgroups, uint32_t want,
                                        uint32_t n_split, float *work, cudaStream_t stream,
                                        const mb_qkp_args *qkp = nullptr);

// The prefill attention kernel on tensor cores (dense_attention_mma.cu),
// for head_dim a multiple of 8 up to 128.
cudaError_t mb_kcuda_attn_flash_mma_launch(const mb_attn_args &a, cudaStream_t stream);
