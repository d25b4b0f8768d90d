/* Payload and weight element types and the f32 <-> f16 <-> bf16 codecs.
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
    MB_DTYPE_COUNT_
} mb_dtype;

#define MB_DTYPE_MASK(d) (1u << (unsigned)(d))
#define MB_DTYPE_MASK_ALL (MB_DTYPE_MASK(MB_DTYPE_F32) | MB_DTYPE_MASK(MB_DTYPE_F16) | MB_DTYPE_MASK(MB_DTYPE_BF16))

/* Bytes per element; 0 for a value that is not a dtype. */
size_t mb_dtype_size(int dtype);
/* "f32", "f16", "bf16"; "?" for a value that is not a dtype. */
const char *mb_dtype_name(int dtype);
/* Parses "f32"|"f16"|"bf16" (also "float32", "float16", "bfloat16"). */
mb_status mb_dtype_parse(const char *text, mb_dtype *out);
/* 1 if the value names a dtype. */
int mb_dtype_valid(int dtype);

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
