/* Block-quantized weights as ggml stores them (Q8_0, Q4_0, Q4_K, Q5_K,
 * Q6_K): exact dequantization (bit-identical to gguf-py's), the 8-bit
 * activation quantization llama.cpp's CPU backend uses for its dot products
 * (Q8_0 blocks against Q8_0/Q4_0 weights, Q8_K against the K-quants), and
 * those dot products. Type values equal protocol's mb_dtype. */
#ifndef MB_KERNELS_CPU_QUANT_H
#define MB_KERNELS_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"

enum {
    MB_KCPU_Q8_0 = 3,
    MB_KCPU_Q4_0 = 4,
    MB_KCPU_Q4_K = 5,
    MB_KCPU_Q5_K = 6,
    MB_KCPU_Q6_K = 7,
};

#define MB_KCPU_QK 256 /* elements of a K-quant super-block */

/* ggml's blocks, byte for byte (f16 fields as raw bits). */
typedef struct {
    uint16_t d;
    int8_t qs[32];
} mb_kcpu_block_q8_0; /* 34 bytes */

typedef struct {
    uint16_t d;
    uint8_t qs[16]; /* element i < 16: low nibble of qs[i]; i >= 16: high nibble of qs[i-16] */
} mb_kcpu_block_q4_0; /* 18 bytes */

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 six-bit scales and 8 six-bit mins */
    uint8_t qs[128];
} mb_kcpu_block_q4_k; /* 144 bytes */

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32]; /* bit j of qh[l]: high bit of element 32j + l */
    uint8_t qs[128];
} mb_kcpu_block_q5_k; /* 176 bytes */

typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16]; /* one per 16 elements */
    uint16_t d;
} mb_kcpu_block_q6_k; /* 210 bytes */

/* Activations quantized for the K-quant dot products: d is f32, bsums are
 * the sums of each 16 qs (for the mins and Q6_K's offset). */
typedef struct {
    float d;
    int8_t qs[MB_KCPU_QK];
    int16_t bsums[MB_KCPU_QK / 16];
} mb_kcpu_block_q8_k; /* 292 bytes */

_Static_assert(sizeof(mb_kcpu_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(mb_kcpu_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(mb_kcpu_block_q4_k) == 144, "q4_k block");
_Static_assert(sizeof(mb_kcpu_block_q5_k) == 176, "q5_k block");
_Static_assert(sizeof(mb_kcpu_block_q6_k) == 210, "q6_k block");
_Static_assert(sizeof(mb_kcpu_block_q8_k) == 292, "q8_k block");

/* 1 for a quantized type value. */
int mb_kcpu_quant_valid(int wdtype);
/* Elements and bytes per block of any weight type (f32/f16/bf16: 1 and the
 * element size); 0 for an unknown value. */
size_t mb_kcpu_block_elems(int wdtype);
size_t mb_kcpu_block_bytes(int wdtype);
/* Bytes of a row of k elements (k a multiple of the block). */
static inline size_t mb_kcpu_row_bytes(int wdtype, size_t k)
{
    size_t be = mb_kcpu_block_elems(wdtype);
    return be ? k / be * mb_kcpu_block_bytes(wdtype) : 0;
}

/* dst[k] = the row's values as f32, exactly as gguf-py's dequantize
 * computes them (f32 arithmetic, no fused multiply-add). Any weight type;
 * k a multiple of its block. Cannot fail. */
void mb_kcpu_dequant_row(int wdtype, const void *src, float *dst, size_t k);

/* Bytes of k activations quantized for weights of wdtype (k a multiple of
 * the block): Q8_0 blocks for Q8_0/Q4_0, Q8_K blocks for the K-quants. */
size_t mb_kcpu_qact_row_bytes(int wdtype, size_t k);

/* 1 when weights of types a and b take the same quantized activations
 * (both Q8_0 blocks, or both Q8_K). */
int mb_kcpu_qact_same(int a, int b);

/* Quantizes x[k] for dot products with weights of wdtype into dst
 * (mb_kcpu_qact_row_bytes bytes), with llama.cpp's rounding: Q8_0 blocks
 * scale by 127 / max|x| and round half to even (its AVX2 path); Q8_K blocks
 * scale by -127 / x_maxabs and round half to even (quantize_row_q8_K_ref). */
void mb_kcpu_qact_row(int wdtype, const float *x, void *dst, size_t k);

/* dst[k] = the values of activations xq quantized by mb_kcpu_qact_row for
 * wdtype, as the dot products see them (block scale times 8-bit value, f32
 * products): what lets a path over f32 weights compute the same sums as
 * the dots. Cannot fail. */
void mb_kcpu_qact_dequant_row(int wdtype, const void *xq, float *dst, size_t k);

/* sum over k of w[i] * x[i], with w a quantized row and xq from
 * mb_kcpu_qact_row for the same type and k. Integer sums per block, one
 * f32 scale per block (llama.cpp's vec_dot_<type>_q8_<0|K>). */
float mb_kcpu_qdot(int wdtype, const void *w, const void *xq, size_t k);

/* y[n][m] = x[n][k] @ w[m][k]^T (+ y when accumulate) with w quantized
 * (rows of mb_kcpu_row_bytes(wdtype, k) bytes at stride ldw_bytes) and the
 * activations quantized per block first, as llama.cpp does. Split over the
 * pool by rows of w. Returns 0, or -1 when out of memory for the quantized
 * activations (y untouched). */
int mb_kcpu_qgemm(mb_kcpu_pool *pool, int wdtype, const void *w, size_t ldw_bytes, size_t m,
                  size_t k, const float *x, size_t ldx, size_t n, float *y, size_t ldy,
                  int accumulate);

/* Which dot-product path runs ("avx2" or "scalar"); for benchmarks. */
const char *mb_kcpu_quant_isa_name(void);

#endif
