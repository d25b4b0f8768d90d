/* Independent reference for the dtype codec tests: values are computed with
 * double arithmetic (frexp, ldexp, nearbyint under the default
 * round-to-nearest-even mode), not with the implementation's bit tricks.
 * One routine per direction serves both formats, described by their widths. */
#ifndef MB_TESTS_DTYPE_REF_H
#define MB_TESTS_DTYPE_REF_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tests/testutil.h"

typedef struct {
    int man_bits; /* stored mantissa bits: 10 for f16, 7 for bf16 */
    int exp_bits; /* exponent bits: 5 for f16, 8 for bf16 */
} ref_fmt;

static const ref_fmt REF_F16 = {10, 5};
static const ref_fmt REF_BF16 = {7, 8};

static inline uint32_t ref_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float ref_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline int ref_bias(const ref_fmt *f)
{
    return (1 << (f->exp_bits - 1)) - 1;
}

/* The all-ones exponent field, in place. */
static inline uint32_t ref_exp_ones(const ref_fmt *f)
{
    return (uint32_t)((1 << f->exp_bits) - 1) << f->man_bits;
}

/* f32 -> 16-bit format, by value: find the spacing of representable numbers
 * around |x|, count spacings with round-half-even, then write the fields. */
static inline uint16_t ref_encode(const ref_fmt *f, float x)
{
    uint32_t sign = signbit(x) ? 0x8000u : 0u;
    if (isnan(x)) {
        /* Quiet NaN, sign kept, payload = the f32 payload's leading bits. */
        uint32_t f32_payload = ref_bits(x) & 0x7fffffu;
        uint32_t kept = f32_payload / (1u << (23 - f->man_bits));
        uint32_t quiet = 1u << (f->man_bits - 1);
        return (uint16_t)(sign | ref_exp_ones(f) | quiet | kept);
    }
    if (isinf(x)) return (uint16_t)(sign | ref_exp_ones(f));
    double a = fabs((double)x);
    if (a == 0.0) return (uint16_t)sign;

    int emin = 1 - ref_bias(f), emax = ref_bias(f);
    int e;
    (void)frexp(a, &e);
    e -= 1; /* a in [2^e, 2^(e+1)) */
    if (e < emin) e = emin;
    double spacing = ldexp(1.0, e - f->man_bits);
    double count = nearbyint(a / spacing);
    double r = count * spacing;
    if (r >= ldexp(1.0, emax + 1)) return (uint16_t)(sign | ref_exp_ones(f));
    if (r < ldexp(1.0, emin)) return (uint16_t)(sign | (uint32_t)count); /* subnormal */
    (void)frexp(r, &e);
    e -= 1;
    double frac = ldexp(r, -e) - 1.0; /* [0, 1) */
    uint32_t man = (uint32_t)ldexp(frac, f->man_bits);
    return (uint16_t)(sign | ((uint32_t)(e + ref_bias(f)) << f->man_bits) | man);
}

/* 16-bit format -> f32 bits, by value: (-1)^s * m * 2^(e - bias - man_bits)
 * with the implicit one for normals. NaNs: quiet, sign kept, payload moved
 * to the top of the f32 payload. */
static inline uint32_t ref_decode(const ref_fmt *f, uint16_t h)
{
    uint32_t man_mask = (1u << f->man_bits) - 1u;
    uint32_t m = h & man_mask;
    uint32_t e = (h & 0x7fffu) >> f->man_bits;
    int neg = (h & 0x8000u) != 0;
    uint32_t e_ones = (1u << f->exp_bits) - 1u;
    if (e == e_ones) {
        if (m == 0) return neg ? ref_bits(-INFINITY) : ref_bits(INFINITY);
        uint32_t payload = m * (1u << (23 - f->man_bits));
        return (neg ? 0x80000000u : 0u) | 0x7f800000u | 0x00400000u | payload;
    }
    double v;
    if (e == 0)
        v = ldexp((double)m, 1 - ref_bias(f) - f->man_bits);
    else
        v = ldexp((double)(m + (1u << f->man_bits)), (int)e - ref_bias(f) - f->man_bits);
    return ref_bits((float)(neg ? -v : v));
}

/* Hand-worked f32 inputs with the bits they must encode to. */
typedef struct {
    uint32_t in;
    uint16_t want;
} ref_edge;

#define REF_EDGES_MAX 64

static inline uint32_t ref_fbits(double v)
{
    return ref_bits((float)v);
}

/* Fills out[REF_EDGES_MAX] with the f32 -> f16 cases; returns how many. */
static inline size_t ref_edges_f16(ref_edge *out)
{
    const ref_edge c[] = {
        {0x00000000u, 0x0000},                        /* +0 */
        {0x80000000u, 0x8000},                        /* -0 */
        {0x7f800000u, 0x7c00},                        /* +inf */
        {0xff800000u, 0xfc00},                        /* -inf */
        {0x7fc00000u, 0x7e00},                        /* quiet NaN */
        {0xffc00000u, 0xfe00},                        /* negative quiet NaN */
        {0x7f800001u, 0x7e00},                        /* sNaN, payload truncates to 0: still NaN */
        {0x7fa00000u, 0x7f00},                        /* sNaN, payload bit kept */
        {0x7fbfe000u, 0x7fff},                        /* sNaN, all kept payload bits set */
        {0xff802000u, 0xfe01},                        /* negative sNaN, lowest kept bit */
        {0x7fffffffu, 0x7fff},                        /* quiet NaN, all payload bits */
        {ref_fbits(65504.0), 0x7bff},                 /* max f16 */
        {0x477fefffu, 0x7bff},                        /* just below 65520 */
        {ref_fbits(65520.0), 0x7c00},                 /* halfway to 65536: ties to even = inf */
        {ref_fbits(65536.0), 0x7c00},                 /* overflow */
        {ref_fbits(-65520.0), 0xfc00},                /* negative overflow */
        {0x7f7fffffu, 0x7c00},                        /* FLT_MAX */
        {ref_fbits(1.0), 0x3c00},                     /* one */
        {ref_fbits(1.0 + 0x1p-11), 0x3c00},           /* halfway, even is below */
        {ref_fbits(1.0 + 3 * 0x1p-11), 0x3c02},       /* halfway, even is above */
        {ref_fbits(1.0 + 0x1p-11 + 0x1p-23), 0x3c01}, /* just above halfway */
        {ref_fbits(1.0 + 0x1p-11 - 0x1p-24), 0x3c00}, /* just below halfway */
        {ref_fbits(-2.0), 0xc000},                    /* minus two */
        {ref_fbits(0x1p-14), 0x0400},                 /* smallest normal */
        {ref_fbits(0x1p-14 - 0x1p-25), 0x0400},       /* halfway from 0x3ff, odd: up */
        {ref_fbits(1023 * 0x1p-24), 0x03ff},          /* largest subnormal */
        {ref_fbits(0x1p-14 * (1 + 0x1p-11)), 0x0400}, /* halfway above the smallest normal */
        {ref_fbits(0x1p-24), 0x0001},                 /* smallest subnormal */
        {ref_fbits(0x1p-25), 0x0000},                 /* halfway below it: ties to even 0 */
        {ref_fbits(-0x1p-25), 0x8000},                /* negative: -0 */
        {ref_fbits(0x1p-25 * (1 + 0x1p-23)), 0x0001}, /* just above that halfway */
        {ref_fbits(3 * 0x1p-25), 0x0002},             /* 1.5 units: up to even */
        {ref_fbits(5 * 0x1p-25), 0x0002},             /* 2.5 units: down to even */
        {ref_fbits(0x1p-26), 0x0000},                 /* a quarter unit */
        {0x00000001u, 0x0000},                        /* f32 smallest subnormal */
        {0x80000001u, 0x8000},                        /* and negative */
        {0x007fffffu, 0x0000},                        /* f32 largest subnormal */
    };
    memcpy(out, c, sizeof c);
    return sizeof c / sizeof c[0];
}

/* Fills out[REF_EDGES_MAX] with the f32 -> bf16 cases; returns how many. */
static inline size_t ref_edges_bf16(ref_edge *out)
{
    const ref_edge c[] = {
        {0x00000000u, 0x0000}, /* +0 */
        {0x80000000u, 0x8000}, /* -0 */
        {0x7f800000u, 0x7f80}, /* +inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x7fc00000u, 0x7fc0}, /* quiet NaN */
        {0x7f800001u, 0x7fc0}, /* sNaN, payload truncates to 0: still NaN */
        {0xff810000u, 0xffc1}, /* negative sNaN, lowest kept bit */
        {0x7fbfffffu, 0x7fff}, /* sNaN, all payload bits */
        {0x7fffffffu, 0x7fff}, /* NaN that would round up into the sign if rounded */
        {ref_fbits(1.0), 0x3f80},
        {ref_fbits(1.0 + 0x1p-8), 0x3f80},           /* halfway, even is below */
        {ref_fbits(1.0 + 3 * 0x1p-8), 0x3f82},       /* halfway, even is above */
        {ref_fbits(1.0 + 0x1p-8 + 0x1p-23), 0x3f81}, /* just above halfway */
        {0x7f7f0000u, 0x7f7f},                       /* max bf16 */
        {0x7f7f7fffu, 0x7f7f},                       /* just below halfway to 2^128 */
        {0x7f7f8000u, 0x7f80},                       /* halfway: ties to even = inf */
        {0x7f7fffffu, 0x7f80},                       /* FLT_MAX */
        {0xff7fffffu, 0xff80},                       /* -FLT_MAX */
        {0x7f7e8000u, 0x7f7e},                       /* halfway below max, even is below */
        {0x00800000u, 0x0080},                       /* smallest f32 normal */
        {0x007fffffu, 0x0080},                       /* largest f32 subnormal rounds up to it */
        {0x807fffffu, 0x8080},                       /* and negative */
        {0x00400000u, 0x0040},                       /* f32 subnormal kept */
        {0x00010000u, 0x0001},                       /* smallest bf16 subnormal */
        {0x00008000u, 0x0000},                       /* halfway below it: ties to even 0 */
        {0x00008001u, 0x0001},                       /* just above */
        {0x00018000u, 0x0002},                       /* 1.5 units: up to even */
        {0x00028000u, 0x0002},                       /* 2.5 units: down to even */
        {0x00000001u, 0x0000},                       /* f32 smallest subnormal */
        {0x80000001u, 0x8000},
    };
    memcpy(out, c, sizeof c);
    return sizeof c / sizeof c[0];
}

/* Random f32 patterns of four kinds: any bits; exponents around the f16
 * range; exponents at the ends (f32 subnormals, huge, inf/NaN); and values at
 * or one f32 ulp next to a rounding tie (f16 normal, f16 subnormal, bf16). */
static inline uint32_t ref_random_f32_bits(unsigned long long *s, uint32_t i)
{
    uint32_t u = (uint32_t)(mb_test_rand_u64(s) >> 32);
    uint32_t sign_man = u & 0x807fffffu;
    uint32_t r = (uint32_t)(mb_test_rand_u64(s) >> 40); /* 24 random bits */
    uint32_t f16_exp = (98u + (r >> 8) % 50u) << 23;
    uint32_t nudge = (r >> 2) % 3u; /* 0: on the tie, 1: one ulp above, 2: one below */
    switch (i & 3u) {
    case 0:
        return u;
    case 1:
        return sign_man | f16_exp;
    case 2: {
        static const uint32_t ends[] = {0, 1, 2, 253, 254, 255};
        return sign_man | (ends[r % 6u] << 23);
    }
    default: {
        uint32_t t;
        if ((r & 3u) == 0) {
            t = (sign_man & ~0x1fffu) | 0x1000u | f16_exp;
        } else if ((r & 3u) == 1) {
            double odd_halves = (double)(2u * ((r >> 4) % 1024u) + 1u); /* below 2^-14 */
            t = ref_fbits(ldexp(odd_halves, -25)) | (u & 0x80000000u);
        } else {
            t = (u & ~0xffffu) | 0x8000u;
        }
        return nudge == 0 ? t : nudge == 1 ? t + 1u : t - 1u;
    }
    }
}

#endif
