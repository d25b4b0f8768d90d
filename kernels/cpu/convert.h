/* Scalar f16/bf16 -> f32 widening for the CPU kernels (exact: every f16 and
 * bf16 value is representable in f32). Kernels depend on nothing outside
 * kernels/, so they carry their own copy instead of protocol's codec. */
#ifndef MB_KERNELS_CPU_CONVERT_H
#define MB_KERNELS_CPU_CONVERT_H

#include <stdint.h>
#include <string.h>

static inline float mb_kcpu_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float mb_kcpu_bf16_f32(uint16_t b)
{
    return mb_kcpu_bits_f32((uint32_t)b << 16);
}

static inline float mb_kcpu_f16_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return mb_kcpu_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, nan */
    if (exp != 0) return mb_kcpu_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return mb_kcpu_bits_f32(sign);
    /* Subnormal: value = man * 2^-24, exact in f32. */
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

/* Weight element kk of a row in wdtype (0 f32, 1 f16, 2 bf16) as f32. */
static inline float mb_kcpu_load_w(int wdtype, const void *row, size_t kk)
{
    if (wdtype == 0) return ((const float *)row)[kk];
    uint16_t v = ((const uint16_t *)row)[kk];
    return wdtype == 1 ? mb_kcpu_f16_f32(v) : mb_kcpu_bf16_f32(v);
}

#endif
