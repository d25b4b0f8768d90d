/* Dense products with weights stored row-major in f32, f16 or bf16 and f32
 * activations, accumulated in f32: the coordinator's projections, router and
 * lm_head, and the building block of the expert FFN. */
#ifndef MB_KERNELS_CPU_GEMM_H
#define MB_KERNELS_CPU_GEMM_H

#include <stddef.h>

#include "kernels/cpu/pool.h"

/* Weight element types; values equal protocol's mb_dtype so callers can cast. */
enum { MB_KCPU_F32 = 0, MB_KCPU_F16 = 1, MB_KCPU_BF16 = 2 };

/* y[n][m] = x[n][k] @ w[m][k]^T  (+ y when accumulate).
 * wdtype may also be a quantized type (kernels/cpu/quant.h; k and the row
 * stride then multiples of its block): the activations are then quantized
 * per block as llama.cpp does (mb_kcpu_qgemm).
 * x row stride ldx (>= k), y row stride ldy (>= m), w rows contiguous (k).
 * Split over the pool by rows of w (and of x for large n). */
void mb_kcpu_gemm(mb_kcpu_pool *pool, int wdtype, const void *w, size_t m, size_t k, const float *x,
                  size_t ldx, size_t n, float *y, size_t ldy, int accumulate);

/* Single-threaded variant for callers that already split the work. */
void mb_kcpu_gemm_serial(int wdtype, const void *w, size_t m, size_t k, const float *x, size_t ldx,
                         size_t n, float *y, size_t ldy, int accumulate);

/* As mb_kcpu_gemm with a weight row stride ldw (>= k elements), e.g. for
 * rows padded to a cache line. */
void mb_kcpu_gemm_ex(mb_kcpu_pool *pool, int wdtype, const void *w, size_t ldw, size_t m, size_t k,
                     const float *x, size_t ldx, size_t n, float *y, size_t ldy, int accumulate);

/* Both entry points keep a per-thread buffer of packed activations that grows
 * to the largest n * k seen; it is freed at thread exit. If it cannot grow
 * (out of memory) they fall back to the scalar path, which needs none. */

/* Instruction-set path used by every CPU kernel: "avx512", "avx2" or
 * "scalar", chosen once from the CPU's features. */
const char *mb_kcpu_isa_name(void);

/* For tests and benchmarks: force a path by name ("auto" restores the
 * detected one). Returns 0, or -1 if the name is unknown or this CPU cannot
 * run it. Not thread-safe against running kernels. */
int mb_kcpu_force_isa(const char *name);

#endif
