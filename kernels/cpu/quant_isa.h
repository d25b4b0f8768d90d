/* Private to the quantized kernels (quant.c, quant_avx2.c, the expert FFN):
 * the per-instruction-set dot products and the scale unpacking they share. */
#ifndef MB_KERNELS_CPU_QUANT_ISA_H
#define MB_KERNELS_CPU_QUANT_ISA_H

#include <stddef.h>
#include <stdint.h>

/* sum over k of w . x for a quantized row and its quantized activations;
 * every path computes the same integer sums per block. */
typedef float (*mb_kcpu_qdot_fn)(int wdtype, const void *w, const void *xq, size_t k);

float mb_kcpu_qdot_scalar(int wdtype, const void *w, const void *xq, size_t k);
/* quant_avx2.c; falls back to the scalar code for types it lacks. */
float mb_kcpu_qdot_avx2(int wdtype, const void *w, const void *xq, size_t k);

/* out[0] = w0 . x and out[1] = w1 . x for two rows of the same type and
 * k against the same activations (gate and up of a row, or two rows of
 * down): the SIMD paths load each activation block once for both rows.
 * Each result is bit-identical to the single-row function's. */
typedef void (*mb_kcpu_qdot2_fn)(int wdtype, const void *w0, const void *w1, const void *xq,
                                 size_t k, float out[2]);

void mb_kcpu_qdot2_scalar(int wdtype, const void *w0, const void *w1, const void *xq, size_t k,
                          float out[2]);
void mb_kcpu_qdot2_avx2(int wdtype, const void *w0, const void *w1, const void *xq, size_t k,
                        float out[2]);

/* out0[i] = (w0 + i * row_bytes) . x and out1[i] = (w1 + i * row_bytes) . x
 * for i < n: n row pairs of one type in one call (gate and up rows [r0,
 * r1), or down rows [c0, c0 + n) beside [c0 + n, c0 + 2n): two read
 * streams). Each result is bit-identical to mb_kcpu_qdot2's. */
typedef void (*mb_kcpu_qdot2_rows_fn)(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                                      size_t n, const void *xq, size_t k, float *out0, float *out1);

void mb_kcpu_qdot2_rows_scalar(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                               size_t n, const void *xq, size_t k, float *out0, float *out1);
void mb_kcpu_qdot2_rows_avx2(int wdtype, const void *w0, const void *w1, size_t row_bytes, size_t n,
                             const void *xq, size_t k, float *out0, float *out1);
mb_kcpu_qdot2_rows_fn mb_kcpu_qdot2_rows_get(void);

/* Tokens a multi-token dot kernel takes at once (its accumulators fill the
 * 16 ymm registers of AVX2 at 4). */
#define MB_KCPU_QDOT_NT 4

/* The row pairs of mb_kcpu_qdot2_rows for nt tokens at once (prefill):
 * out0[t * ld_out + i] = (w0 + i * row_bytes) . xq[t] and out1[t * ld_out +
 * i] = (w1 + i * row_bytes) . xq[t] for i < n, t < nt. The SIMD paths unpack
 * each weight block once for up to MB_KCPU_QDOT_NT tokens (more are taken
 * in groups). Each result is bit-identical to mb_kcpu_qdot2_rows's for
 * that token alone: the same integer sums and the same f32 operations in
 * the same order. Cannot fail. */
typedef void (*mb_kcpu_qdot2_rows_nt_fn)(int wdtype, const void *w0, const void *w1,
                                         size_t row_bytes, size_t n, const void *const *xq,
                                         size_t nt, size_t k, float *out0, float *out1,
                                         size_t ld_out);

void mb_kcpu_qdot2_rows_nt_scalar(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                                  size_t n, const void *const *xq, size_t nt, size_t k, float *out0,
                                  float *out1, size_t ld_out);
void mb_kcpu_qdot2_rows_nt_avx2(int wdtype, const void *w0, const void *w1, size_t row_bytes,
                                size_t n, const void *const *xq, size_t nt, size_t k, float *out0,
                                float *out1, size_t ld_out);
mb_kcpu_qdot2_rows_nt_fn mb_kcpu_qdot2_rows_nt_get(void);

/* dst[k] = the quantized row src as f32, bit-identical to
 * mb_kcpu_dequant_row (k a multiple of the type's block). Returns 0, writing
 * nothing, for a type the path lacks. dequant_avx2.c. */
int mb_kcpu_dequant_avx2(int wdtype, const void *src, float *dst, size_t k);

/* Dequantization into f32 tiles for the prefill GEMM: the fastest exact
 * path this CPU has, for any quantized type. */
typedef void (*mb_kcpu_dequant_fn)(int wdtype, const void *src, float *dst, size_t k);
mb_kcpu_dequant_fn mb_kcpu_dequant_get(void);

/* The dot product this CPU runs (chosen once), for loops that call it per
 * row and should not pay for the dispatch each time. */
mb_kcpu_qdot_fn mb_kcpu_qdot_get(void);
mb_kcpu_qdot2_fn mb_kcpu_qdot2_get(void);

/* Sub-block j's 6-bit scale and min from a Q4_K/Q5_K scales[12]. */
void mb_kcpu_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m);

#endif
