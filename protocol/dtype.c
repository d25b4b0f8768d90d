/* The dtype table (names, sizes, parsing), the scalar f32 <-> f16/bf16
 * conversions that define the exact results every SIMD path must reproduce,
 * and the run-time choice of bulk path. Scalar code is integer-only, so it
 * does not depend on MXCSR (rounding mode, DAZ/FTZ, exception masks). */
#include "protocol/dtype.h"

#include <stdatomic.h>
#include <string.h>

#include "protocol/dtype_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <xmmintrin.h>
#define MB_DTYPE_X86_ 1
#endif

/* ---- table ---------------------------------------------------------------- */

static const struct {
    const char *name;
    const char *long_name;
    uint32_t block_elems;
    uint32_t block_bytes;
} mb_dtype_table_[MB_DTYPE_COUNT_] = {
    [MB_DTYPE_F32] = {"f32", "float32", 1, 4},
    [MB_DTYPE_F16] = {"f16", "float16", 1, 2},
    [MB_DTYPE_BF16] = {"bf16", "bfloat16", 1, 2},
    [MB_DTYPE_Q8_0] = {"q8_0", "q8_0", 32, 34},
    [MB_DTYPE_Q4_0] = {"q4_0", "q4_0", 32, 18},
    [MB_DTYPE_Q4_K] = {"q4_k", "q4_k", 256, 144},
    [MB_DTYPE_Q5_K] = {"q5_k", "q5_k", 256, 176},
    [MB_DTYPE_Q6_K] = {"q6_k", "q6_k", 256, 210},
};

int mb_dtype_valid(int dtype)
{
    return dtype >= 0 && dtype <= MB_DTYPE_BF16;
}

int mb_dtype_weight_valid(int dtype)
{
    return dtype >= 0 && dtype < MB_DTYPE_COUNT_;
}

int mb_dtype_is_quant(int dtype)
{
    return mb_dtype_weight_valid(dtype) && !mb_dtype_valid(dtype);
}

size_t mb_dtype_size(int dtype)
{
    return mb_dtype_valid(dtype) ? mb_dtype_table_[dtype].block_bytes : 0;
}

uint32_t mb_dtype_block_elems(int dtype)
{
    return mb_dtype_weight_valid(dtype) ? mb_dtype_table_[dtype].block_elems : 0;
}

uint32_t mb_dtype_block_bytes(int dtype)
{
    return mb_dtype_weight_valid(dtype) ? mb_dtype_table_[dtype].block_bytes : 0;
}

mb_status mb_dtype_row_bytes(int dtype, uint64_t n, uint64_t *bytes)
{
    if (!bytes) return MB_STATUS_INVALID_ARG;
    if (!mb_dtype_weight_valid(dtype)) return MB_STATUS_BAD_DTYPE;
    const uint32_t be = mb_dtype_table_[dtype].block_elems;
    if (n % be) return MB_STATUS_BAD_SHAPE;
    if (__builtin_mul_overflow(n / be, (uint64_t)mb_dtype_table_[dtype].block_bytes, bytes))
        return MB_STATUS_OVERFLOW;
    return MB_STATUS_OK;
}

const char *mb_dtype_name(int dtype)
{
    return mb_dtype_weight_valid(dtype) ? mb_dtype_table_[dtype].name : "?";
}

/* ASCII case-insensitive equality, independent of the C locale. */
static int mb_dtype_name_eq_(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned char ca = (unsigned char)*a, cb = (unsigned char)*b;
        if (ca >= 'A' && ca <= 'Z') ca = (unsigned char)(ca - 'A' + 'a');
        if (cb >= 'A' && cb <= 'Z') cb = (unsigned char)(cb - 'A' + 'a');
        if (ca != cb) return 0;
        if (ca == 0) return 1;
    }
}

/* Accepts the short and long names in any ASCII case. Errors: INVALID_ARG for
 * NULL arguments, BAD_DTYPE for any other text; *out is written only on success. */
mb_status mb_dtype_parse(const char *text, mb_dtype *out)
{
    if (!text || !out) return MB_STATUS_INVALID_ARG;
    for (int d = 0; d <= MB_DTYPE_BF16; d++) {
        if (mb_dtype_name_eq_(text, mb_dtype_table_[d].name) ||
            mb_dtype_name_eq_(text, mb_dtype_table_[d].long_name)) {
            *out = (mb_dtype)d;
            return MB_STATUS_OK;
        }
    }
    return MB_STATUS_BAD_DTYPE;
}

/* ---- scalar conversions --------------------------------------------------- */

static uint32_t mb_f32_bits_(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float mb_f32_from_bits_(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* NaNs: quiet bit set, sign and the top 10 payload bits kept, as vcvtps2ph
 * does; the quiet bit alone keeps a payload that truncates to zero a NaN. */
uint16_t mb_f32_to_f16(float x)
{
    uint32_t u = mb_f32_bits_(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    /* 65520 = 65504 + half an ulp; 65504 has an odd mantissa, so ties go up. */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        /* Normal in f16: rebias the exponent (127 - 15) and round off 13 bits
         * to nearest even; a carry out of the mantissa bumps the exponent. */
        uint32_t r = a - 0x38000000u;
        r += 0x0fffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    /* Below 2^-25 (and at it, a tie that goes to even 0) the result is zero. */
    if (a <= 0x33000000u) return sign;
    /* f16 subnormal: the result counts units of 2^-24. a is a normal f32 with
     * biased exponent e in [102, 112], value m * 2^(e - 150), so the count is
     * m >> (126 - e) rounded to nearest even; 1024 becomes the smallest normal. */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x007fffffu) | 0x00800000u;
    uint32_t shift = 126u - e;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

/* NaNs come out quiet with the payload in the top bits, as vcvtph2ps does. */
float mb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;

    if (e == 0x1f) {
        if (m) return mb_f32_from_bits_(sign | 0x7fc00000u | (m << 13));
        return mb_f32_from_bits_(sign | 0x7f800000u);
    }
    if (e == 0) {
        if (!m) return mb_f32_from_bits_(sign);
        /* Subnormal m * 2^-24: normalise so bit 10 is the implicit one; each
         * shift lowers the exponent from that of 2^-14 (biased 113). */
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        return mb_f32_from_bits_(sign | (e << 23) | ((m & 0x3ffu) << 13));
    }
    return mb_f32_from_bits_(sign | ((e + 112u) << 23) | (m << 13));
}

/* bf16 is the top half of an f32, so subnormals, infinities and overflow
 * need no special case: adding 0x7fff plus the kept lsb rounds to nearest
 * even and carries into the exponent (up to infinity) where it must.
 * NaNs: quiet bit set, sign and top 7 payload bits kept, as vcvtneps2bf16 does. */
uint16_t mb_f32_to_bf16(float x)
{
    uint32_t u = mb_f32_bits_(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* NaNs come out quiet (bit 22 set), like the f16 decoder. */
float mb_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
    return mb_f32_from_bits_(u);
}

/* ---- scalar bulk loops ---------------------------------------------------- */

static void mb_dtype_scalar_f32_to_f16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, s + 4 * i, 4);
        uint16_t h = mb_f32_to_f16(x);
        memcpy(d + 2 * i, &h, 2);
    }
}

static void mb_dtype_scalar_f16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        float x = mb_f16_to_f32(h);
        memcpy(d + 4 * i, &x, 4);
    }
}

static void mb_dtype_scalar_f32_to_bf16_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, s + 4 * i, 4);
        uint16_t b = mb_f32_to_bf16(x);
        memcpy(d + 2 * i, &b, 2);
    }
}

static void mb_dtype_scalar_bf16_to_f32_(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t b;
        memcpy(&b, s + 2 * i, 2);
        float x = mb_bf16_to_f32(b);
        memcpy(d + 4 * i, &x, 4);
    }
}

const mb_dtype_simd_ops mb_dtype_ops_scalar = {
    .name = "scalar",
    .uses_mxcsr = 0,
    .f32_to_f16 = mb_dtype_scalar_f32_to_f16_,
    .f16_to_f32 = mb_dtype_scalar_f16_to_f32_,
    .f32_to_bf16 = mb_dtype_scalar_f32_to_bf16_,
    .bf16_to_f32 = mb_dtype_scalar_bf16_to_f32_,
};

/* ---- run-time dispatch ---------------------------------------------------- */

#ifdef MB_DTYPE_X86_
/* XCR0 bits the OS must enable: SSE, AVX (ymm upper), and for AVX-512 also
 * opmask, zmm upper halves of zmm0-15 and zmm16-31. */
#define MB_XCR0_AVX_ 0x06u
#define MB_XCR0_AVX512_ 0xe6u

static uint32_t mb_dtype_xcr0_(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return lo;
}

/* F16C is CPUID leaf 1 ECX bit 29 (clang 14's __builtin_cpu_supports does
 * not know the name). */
static int mb_dtype_cpu_has_f16c_(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

/* AVX512_BF16 is CPUID leaf 7 subleaf 1, EAX bit 5 (gcc 12's
 * __builtin_cpu_supports may not know the name). */
static int mb_dtype_cpu_has_avx512bf16_(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 1, a, b, c, d);
    return (a >> 5) & 1u;
}

/* Whether this CPU and OS can run the code behind a table: every flag the
 * file was compiled with (cmake/simd.cmake) must be present, and the OS must
 * save the registers it uses. */
static int mb_dtype_ops_runnable_(const mb_dtype_simd_ops *ops)
{
    if (!ops->f32_to_f16) return 0;
    if (ops == &mb_dtype_ops_scalar) return 1;
    __builtin_cpu_init();
    uint32_t xcr0 = mb_dtype_xcr0_();
    int f16c = (xcr0 & MB_XCR0_AVX_) == MB_XCR0_AVX_ && __builtin_cpu_supports("avx") &&
               mb_dtype_cpu_has_f16c_();
    if (ops == &mb_dtype_ops_f16c) return f16c;
    int avx512 = f16c && (xcr0 & MB_XCR0_AVX512_) == MB_XCR0_AVX512_ &&
                 __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                 __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (ops == &mb_dtype_ops_avx512) return avx512;
    if (ops == &mb_dtype_ops_avx512bf16) return avx512 && mb_dtype_cpu_has_avx512bf16_();
    return 0;
}

/* Best first. */
static const mb_dtype_simd_ops *const mb_dtype_paths_[] = {
    &mb_dtype_ops_avx512bf16,
    &mb_dtype_ops_avx512,
    &mb_dtype_ops_f16c,
    &mb_dtype_ops_scalar,
};
#else
static int mb_dtype_ops_runnable_(const mb_dtype_simd_ops *ops)
{
    return ops == &mb_dtype_ops_scalar;
}

static const mb_dtype_simd_ops *const mb_dtype_paths_[] = {&mb_dtype_ops_scalar};
#endif

#define MB_DTYPE_N_PATHS_ (sizeof mb_dtype_paths_ / sizeof mb_dtype_paths_[0])

/* The chosen table. Every thread that finds it unset computes the same answer,
 * so racing first calls are harmless; the atomic keeps them free of data races. */
static _Atomic(const mb_dtype_simd_ops *) mb_dtype_ops_;

static const mb_dtype_simd_ops *mb_dtype_ops_best_(void)
{
    for (size_t i = 0; i < MB_DTYPE_N_PATHS_; i++)
        if (mb_dtype_ops_runnable_(mb_dtype_paths_[i])) return mb_dtype_paths_[i];
    return &mb_dtype_ops_scalar;
}

static const mb_dtype_simd_ops *mb_dtype_ops_get_(void)
{
    const mb_dtype_simd_ops *ops = atomic_load_explicit(&mb_dtype_ops_, memory_order_acquire);
    if (!ops) {
        ops = mb_dtype_ops_best_();
        atomic_store_explicit(&mb_dtype_ops_, ops, memory_order_release);
    }
    return ops;
}

const char *mb_dtype_simd_name(void)
{
    return mb_dtype_ops_get_()->name;
}

/* Also takes "auto" to go back to the path chosen by CPU detection. Affects
 * every thread; meant for tests and benchmarks, not for calls racing with
 * conversions that care which path they get (each conversion still gets
 * exact results). Errors: INVALID_ARG for NULL or an unknown name,
 * UNSUPPORTED when this CPU or build cannot run the named path. */
mb_status mb_dtype_force_simd(const char *name)
{
    if (!name) return MB_STATUS_INVALID_ARG;
    const mb_dtype_simd_ops *ops = NULL;
    if (strcmp(name, "auto") == 0) {
        ops = mb_dtype_ops_best_();
    } else {
        const mb_dtype_simd_ops *all[] = {&mb_dtype_ops_scalar, &mb_dtype_ops_f16c,
                                          &mb_dtype_ops_avx512, &mb_dtype_ops_avx512bf16};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (strcmp(name, all[i]->name) == 0) ops = all[i];
        if (!ops) return MB_STATUS_INVALID_ARG;
        if (!mb_dtype_ops_runnable_(ops)) return MB_STATUS_UNSUPPORTED;
    }
    atomic_store_explicit(&mb_dtype_ops_, ops, memory_order_release);
    return MB_STATUS_OK;
}

/* Hardware conversions raise FP exceptions (invalid on a signalling NaN,
 * inexact when rounding); results are the same either way, but a caller that
 * unmasked an exception would get SIGFPE. Mask them for the call and restore
 * MXCSR after (its sticky flags included). Returns whether to restore. */
static int mb_dtype_fp_enter_(const mb_dtype_simd_ops *ops, unsigned *saved)
{
#ifdef MB_DTYPE_X86_
    if (!ops->uses_mxcsr) return 0;
    unsigned csr = _mm_getcsr();
    if ((csr & 0x1f80u) == 0x1f80u) return 0;
    *saved = csr;
    _mm_setcsr(csr | 0x1f80u);
    return 1;
#else
    (void)ops;
    (void)saved;
    return 0;
#endif
}

static void mb_dtype_fp_leave_(int restore, unsigned saved)
{
#ifdef MB_DTYPE_X86_
    if (restore) _mm_setcsr(saved);
#else
    (void)restore;
    (void)saved;
#endif
}

/* A dst_dtype that is not a dtype leaves dst untouched: callers validate wire
 * values with mb_dtype_valid first. Cannot fail otherwise; does not block. */
void mb_dtype_encode_f32(mb_dtype dst_dtype, void *dst, const float *src, size_t n)
{
    if (n == 0) return;
    if (dst_dtype == MB_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    if (dst_dtype != MB_DTYPE_F16 && dst_dtype != MB_DTYPE_BF16) return;
    const mb_dtype_simd_ops *ops = mb_dtype_ops_get_();
    unsigned saved = 0;
    int restore = mb_dtype_fp_enter_(ops, &saved);
    if (dst_dtype == MB_DTYPE_F16)
        ops->f32_to_f16(dst, src, n);
    else
        ops->f32_to_bf16(dst, src, n);
    mb_dtype_fp_leave_(restore, saved);
}

/* A src_dtype that is not a dtype leaves dst untouched (see encode). */
void mb_dtype_decode_f32(mb_dtype src_dtype, float *dst, const void *src, size_t n)
{
    if (n == 0) return;
    if (src_dtype == MB_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    if (src_dtype != MB_DTYPE_F16 && src_dtype != MB_DTYPE_BF16) return;
    const mb_dtype_simd_ops *ops = mb_dtype_ops_get_();
    unsigned saved = 0;
    int restore = mb_dtype_fp_enter_(ops, &saved);
    if (src_dtype == MB_DTYPE_F16)
        ops->f16_to_f32(dst, src, n);
    else
        ops->bf16_to_f32(dst, src, n);
    mb_dtype_fp_leave_(restore, saved);
}
