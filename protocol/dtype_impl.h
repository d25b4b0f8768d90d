/* Private to protocol/: the per-instruction-set tables of bulk conversion
 * loops behind mb_dtype_encode_f32/mb_dtype_decode_f32. Each ISA file defines
 * its table as plain data (no code runs to fetch it, so the dispatcher can
 * look at a table before it knows the CPU can run the code it points to). */
#ifndef MB_PROTOCOL_DTYPE_IMPL_H
#define MB_PROTOCOL_DTYPE_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* Every loop takes byte pointers: the wire hands us buffers at any address,
 * so no member may assume float or uint16_t alignment. dst and src do not
 * overlap; n may be 0; each loop writes exactly dst[0..n) and reads exactly
 * src[0..n) (masked loads past n are fault-suppressed and count as not read).
 * Each loop must be bit-identical to the scalar mb_f32_to_f16 and friends on
 * every input, whatever MXCSR holds (the dispatcher masks FP exceptions around
 * tables with uses_mxcsr set). */
typedef void (*mb_dtype_encode_fn)(void *dst, const void *src_f32, size_t n);
typedef void (*mb_dtype_decode_fn)(void *dst_f32, const void *src, size_t n);

typedef struct mb_dtype_simd_ops {
    /* Path name as mb_dtype_simd_name reports it and mb_dtype_force_simd takes it. */
    const char *name;
    /* 1 when the loops use SSE/AVX floating-point conversions, which raise FP
     * exceptions (invalid on a signalling NaN, inexact on rounding): the
     * dispatcher masks them if the caller unmasked any. 0 for integer-only loops. */
    int uses_mxcsr;
    /* NULL when this build did not compile the ISA in: the path is then unavailable. */
    mb_dtype_encode_fn f32_to_f16;
    mb_dtype_decode_fn f16_to_f32;
    mb_dtype_encode_fn f32_to_bf16;
    mb_dtype_decode_fn bf16_to_f32;
} mb_dtype_simd_ops;

/* protocol/dtype.c: portable loops over the scalar conversions. */
extern const mb_dtype_simd_ops mb_dtype_ops_scalar;
/* protocol/dtype_f16c.c: AVX + F16C vcvtps2ph/vcvtph2ps, SSE4.1 integer bf16. */
extern const mb_dtype_simd_ops mb_dtype_ops_f16c;
/* protocol/dtype_avx512.c: AVX-512 F/BW/VL/DQ, integer bf16 rounding. */
extern const mb_dtype_simd_ops mb_dtype_ops_avx512;
/* protocol/dtype_avx512.c: as avx512, f32->bf16 with AVX512_BF16 vcvtneps2bf16
 * plus a fix-up of the f32-subnormal lanes it flushes to zero. */
extern const mb_dtype_simd_ops mb_dtype_ops_avx512bf16;

#endif
