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
 * x row stride ldx (>= k), y row stride ldy (>= m), w rows contiguous (k).
 * Split over the pool by rows of w (and of x for large n). */
void mb_kcpu_gemm(mb_kcpu_pool *pool, int wdtype, const void *w, size_t m, size_t k, const float *x,
                  size_t ldx, size_t n, float *y, size_t ldy, int accumulate);

/* Single-threaded variant for callers that already split the work. */
void mb_kcpu_gemm_serial(int wdtype, const void *w, size_t m, size_t k, const float *x, size_t ldx,
                         size_t n, float *y, size_t ldy, int accumulate);

#endif
