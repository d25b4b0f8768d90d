/* Payload and weight element types and the f32 <-> f16 <-> bf16 codecs.
 * Weights may also be block-quantized (GGUF's Q8_0, Q4_0, Q4_K, Q5_K, Q6_K):
 * those are weight dtypes only, never payloads, and have no per-element size
 * (mb_dtype_block_elems/_bytes and mb_dtype_row_bytes say how big they are).
 * Conversions follow IEEE 754 binary16 and bfloat16 exactly: round to nearest
 * even, NaN stays NaN (made quiet), infinities kept, overflow to infinity,
 * subnormals kept. Bulk paths pick SIMD at run time and are bit-identical to
 * the scalar path. */
#ifndef MB_PROTOCOL_DTYPE_H
#define MB_PROTOCOL_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

/* Values travel in wire fields: keep them stable. */
typedef enum {
    MB_DTYPE_F32 = 0,
    MB_DTYPE_F16 = 1,
    MB_DTYPE_BF16 = 2,
    /* Block-quantized weights, laid out exactly as ggml stores them (block
     * structs in kernels/cpu/quant.h). Weights only. */
    MB_DTYPE_Q8_0 = 3, /* 32 elements: f16 d, int8 q[32]; 34 bytes */
    MB_DTYPE_Q4_0 = 4, /* 32 elements: f16 d, 4-bit q[32] - 8; 18 bytes */
    MB_DTYPE_Q4_K = 5, /* 256 elements: f16 d, dmin, 6-bit scales/mins, 4-bit q; 144 bytes */
    MB_DTYPE_Q5_K = 6, /* 256 elements: as Q4_K plus one high bit per q; 176 bytes */
    MB_DTYPE_Q6_K = 7, /* 256 elements: 6-bit q, int8 scale per 16, f16 d; 210 bytes */
    MB_DTYPE_COUNT_
} mb_dtype;

#define MB_DTYPE_MASK(d) (1u << (unsigned)(d))
/* The element dtypes: every payload dtype, and the unquantized weights. */
#define MB_DTYPE_MASK_ALL (MB_DTYPE_MASK(MB_DTYPE_F32) | MB_DTYPE_MASK(MB_DTYPE_F16) | MB_DTYPE_MASK(MB_DTYPE_BF16))
#define MB_DTYPE_MASK_QUANT                                                                        \
    (MB_DTYPE_MASK(MB_DTYPE_Q8_0) | MB_DTYPE_MASK(MB_DTYPE_Q4_0) | MB_DTYPE_MASK(MB_DTYPE_Q4_K) |  \
     MB_DTYPE_MASK(MB_DTYPE_Q5_K) | MB_DTYPE_MASK(MB_DTYPE_Q6_K))
/* Everything a weight may be. */
#define MB_DTYPE_MASK_WEIGHTS (MB_DTYPE_MASK_ALL | MB_DTYPE_MASK_QUANT)

/* Bytes per element of an element dtype; 0 for a quantized dtype (it has
 * none: see mb_dtype_row_bytes) or a value that is not a dtype. */
size_t mb_dtype_size(int dtype);
/* "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k"; "?" for a
 * value that is not a dtype. */
const char *mb_dtype_name(int dtype);
/* Parses "f32"|"f16"|"bf16" (also "float32", "float16", "bfloat16"): the
 * element dtypes only, so a payload or config dtype can never be quantized. */
mb_status mb_dtype_parse(const char *text, mb_dtype *out);
/* 1 if the value names an element dtype (f32, f16, bf16): the payload
 * dtypes, and the weights every path computes with. */
int mb_dtype_valid(int dtype);
/* 1 if the value names any weight dtype, quantized ones included. */
int mb_dtype_weight_valid(int dtype);
/* 1 if the value names a block-quantized dtype. */
int mb_dtype_is_quant(int dtype);
/* Elements and bytes per block (1 and the element size for element dtypes);
 * 0 for a value that is not a weight dtype. */
uint32_t mb_dtype_block_elems(int dtype);
uint32_t mb_dtype_block_bytes(int dtype);
/* *bytes = storage of a row of n elements. Errors: BAD_DTYPE (not a weight
 * dtype), BAD_SHAPE (n not a multiple of the block), OVERFLOW. */
mb_status mb_dtype_row_bytes(int dtype, uint64_t n, uint64_t *bytes);

/* Scalar conversions, exact per IEEE. */
uint16_t mb_f32_to_f16(float x);
float mb_f16_to_f32(uint16_t h);
uint16_t mb_f32_to_bf16(float x);
float mb_bf16_to_f32(uint16_t b);

/* Bulk conversions, SIMD chosen at run time (see mb_dtype_simd_name).
 * dst and src must not overlap. n may be 0. */
void mb_dtype_encode_f32(mb_dtype dst_dtype, void *dst, const float *src, size_t n);
void mb_dtype_decode_f32(mb_dtype src_dtype, float *dst, const void *src, size_t n);

/* Which bulk path mb_dtype_encode_f32/decode_f32 use on this CPU. */
const char *mb_dtype_simd_name(void);

/* For tests: force a path ("scalar", "f16c", "avx512", "avx512bf16").
 * Returns MB_STATUS_UNSUPPORTED if this CPU cannot run it. */
mb_status mb_dtype_force_simd(const char *name);

#endif
