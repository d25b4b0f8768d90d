// A CPU emulator for the CUDA kernels of kernels/cuda/ (run.sh):
// each CUDA thread of a block is a fiber on its own stack; blocks run one
// after another, so function-scope __shared__ arrays become statics. __syncthreads, __syncwarp
// and shuffles are barriers of the block or of the warp; a barrier nobody can
// pass (divergence) or a shuffle from an exited lane aborts with a message.
#pragma once
#define MB_CUDA_EMU 1 // kernels/cuda/ leaves out what only a GPU has (griddepcontrol, %globaltimer)
#define __host__
#define __device__
#define __global__
#define __shared__ static
#define __STORAGE__ extern
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#undef __launch_bounds__
#define __launch_bounds__(...)
#include <cmath>
#include <cstring>
#include <functional>
#include <type_traits>
#include <cstdint>

extern "C" {
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
}
template <class T> static inline cudaError_t cudaFuncSetAttribute(T *f, cudaFuncAttribute a, int v)
{
    return cudaFuncSetAttribute((const void *)f, a, v);
}
// kernels/cuda/moe_cublas.cu's dlopen, dlsym and dlclose (gen.py renames
// them): they find the emulator's cuBLAS (emu.cpp), a plain GEMM.
void *mb_emu_dlopen(const char *name, int flags);
void *mb_emu_dlsym(void *handle, const char *symbol);
int mb_emu_dlclose(void *handle);
void mb_emu_cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t s = 0);
void mb_emu_run(const std::function<void()> &body);
void *mb_emu_dyn_smem();
void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
void mb_emu_xchg(const void *v, void *out, size_t bytes, int src_lane);
int mb_emu_lane();
unsigned long long mb_emu_now_ns(); // CLOCK_MONOTONIC, for %globaltimer
int mb_emu_warp();

template <class T> static inline T __shfl_xor_sync(unsigned, T v, int lm, int = 32)
{
    T r;
    mb_emu_xchg(&v, &r, sizeof(T), mb_emu_lane() ^ lm);
    return r;
}
template <class T> static inline T __shfl_sync(unsigned, T v, int src, int = 32)
{
    T r;
    mb_emu_xchg(&v, &r, sizeof(T), src & 31);
    return r;
}
// redux.sync's warp-wide maximum and minimum, by a butterfly.
static inline unsigned __reduce_max_sync(unsigned, unsigned v)
{
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}
static inline unsigned __reduce_min_sync(unsigned, unsigned v)
{
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w < v ? w : v;
    }
    return v;
}
template <class T> static inline T __ldg(const T *p) { return *p; }
template <class T> static inline T __ldcg(const T *p) { return *p; }
// Blocks run one after another, and a block's fibers switch only at
// barriers and shuffles: a fence orders nothing, an atomic is a plain
// read-modify-write.
static inline void __threadfence() {}
template <class T> static inline T atomicAdd(T *p, T v)
{
    T o = *p;
    *p = o + v;
    return o;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
// Byte i of the result is byte (selector nibble i & 7) of y:x (no sign mode).
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; n++)
        r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu) << (8 * n);
    return r;
}
#define __expf(x) expf(x)
static inline float __uint_as_float(unsigned u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// WMMA, emulated whole-tile per lane: every lane of the warp holds the full
// 16 x 16 fragment (same values, so the lanes' identical stores do not
// conflict); mma_sync shares the product out, each lane computing 8 of
// its 256 sums.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment {
    float v[16 * 16]; // [row][col] of the logical matrix
};
template <class F> static inline void fill_fragment(F &f, float x)
{
    for (int i = 0; i < 256; i++)
        f.v[i] = x;
}
template <class T> static inline float emu_f(T x) { return (float)x; }
static inline float emu_f(__nv_bfloat16 x) { return __bfloat162float(x); }
static inline float emu_f(__half x) { return __half2float(x); }
template <class Use, class T, class L> static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm)
{
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.v[r * 16 + c] = std::is_same<L, col_major>::value ? emu_f(p[c * ldm + r]) : emu_f(p[r * ldm + c]);
    __syncwarp();
}
template <class TA, class LA, class TB, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, TB, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c)
{
    static float out[32][256]; // per warp of the running block
    float *o = out[mb_emu_warp()];
    for (int e = mb_emu_lane(); e < 256; e += 32) {
        const int i = e / 16, j = e % 16;
        float s = c.v[e];
        for (int k = 0; k < 16; k++)
            s += a.v[i * 16 + k] * b.v[k * 16 + j];
        o[e] = s;
    }
    __syncwarp();
    memcpy(d.v, o, sizeof d.v);
    __syncwarp();
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t l)
{
    __syncwarp();
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r * 16 + c];
    __syncwarp();
}
} // namespace wmma
} // namespace nvcuda

// Vector loads must be aligned on the GPU (a fault there, silence on x86).
#include <cstdio>
#include <cstdlib>
template <class T> static inline T mb_emu_ldg_aligned(const T *p)
{
    if ((uintptr_t)p % sizeof(T)) {
        fprintf(stderr, "EMU: misaligned %zu-byte load at %p\n", sizeof(T), (const void *)p);
        abort();
    }
    return *p;
}
static inline float4 __ldg(const float4 *p) { return mb_emu_ldg_aligned(p); }
static inline uint4 __ldg(const uint4 *p) { return mb_emu_ldg_aligned(p); }
static inline uint2 __ldg(const uint2 *p)
{
    return mb_emu_ldg_aligned(p);
}
/* Loads through L2 only (ld.global.cg): a cache hint, the same value. */
static inline float4 __ldcg(const float4 *p)
{
    return mb_emu_ldg_aligned(p);
}
