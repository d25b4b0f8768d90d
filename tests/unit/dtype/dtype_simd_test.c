/* Every bulk path this CPU can run (scalar, f16c, avx512, avx512bf16) must be
 * bit-identical to the scalar conversions: on every f16/bf16 pattern, the
 * f32 edge cases and a million random f32 patterns; on lengths 0..67 at every
 * misalignment, writing nothing outside dst; and whatever MXCSR holds
 * (DAZ/FTZ set, FP exceptions unmasked). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/dtype.h"
#include "tests/testutil.h"
#include "tests/unit/dtype/dtype_ref.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#endif

#define N_RANDOM 1000000u
#define N_PATTERNS 0x10000u
#define MAX_LEN 67
#define GUARD 64

static const char *const PATHS[] = {"scalar", "f16c", "avx512", "avx512bf16"};
#define N_PATHS (sizeof PATHS / sizeof PATHS[0])

/* Inputs and the scalar results every path must reproduce. */
static struct {
    float *f32; /* encoder inputs */
    size_t n_f32;
    uint16_t *f16_of;  /* [n_f32] mb_f32_to_f16 of each */
    uint16_t *bf16_of; /* [n_f32] mb_f32_to_bf16 of each */
    uint16_t *pat;     /* [N_PATTERNS] every 16-bit pattern */
    float *from_f16;   /* [N_PATTERNS] mb_f16_to_f32 of each */
    float *from_bf16;  /* [N_PATTERNS] mb_bf16_to_f32 of each */
} in;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    REQUIRE(p);
    return p;
}

/* Encoder inputs, specials first so that short slices near the start hit
 * them: the edge cases, every f16 and bf16 value, then random patterns. */
static void build_inputs(void)
{
    ref_edge e16[REF_EDGES_MAX], ebf[REF_EDGES_MAX];
    size_t n16 = ref_edges_f16(e16), nbf = ref_edges_bf16(ebf);
    in.n_f32 = n16 + nbf + 2 * N_PATTERNS + N_RANDOM;
    in.f32 = xmalloc(in.n_f32 * sizeof(float));
    in.f16_of = xmalloc(in.n_f32 * 2);
    in.bf16_of = xmalloc(in.n_f32 * 2);
    in.pat = xmalloc(N_PATTERNS * 2);
    in.from_f16 = xmalloc(N_PATTERNS * sizeof(float));
    in.from_bf16 = xmalloc(N_PATTERNS * sizeof(float));

    size_t k = 0;
    for (size_t i = 0; i < n16; i++)
        in.f32[k++] = ref_float(e16[i].in);
    for (size_t i = 0; i < nbf; i++)
        in.f32[k++] = ref_float(ebf[i].in);
    for (uint32_t i = 0; i < N_PATTERNS; i++) {
        in.pat[i] = (uint16_t)i;
        in.from_f16[i] = mb_f16_to_f32((uint16_t)i);
        in.from_bf16[i] = mb_bf16_to_f32((uint16_t)i);
        in.f32[k++] = in.from_f16[i];
        in.f32[k++] = in.from_bf16[i];
    }
    unsigned long long s = 0x2545f4914f6cdd1dULL;
    for (uint32_t i = 0; i < N_RANDOM; i++)
        in.f32[k++] = ref_float(ref_random_f32_bits(&s, i));
    REQUIRE(k == in.n_f32);
    for (size_t i = 0; i < in.n_f32; i++) {
        in.f16_of[i] = mb_f32_to_f16(in.f32[i]);
        in.bf16_of[i] = mb_f32_to_bf16(in.f32[i]);
    }
}

/* One bulk operation: its direction, element sizes and scalar expectation. */
typedef struct {
    const char *name;
    int encode; /* 1: f32 -> dtype, 0: dtype -> f32 */
    mb_dtype dtype;
} op_desc;

static const op_desc OPS[] = {
    {"f32->f16", 1, MB_DTYPE_F16},   {"f32->bf16", 1, MB_DTYPE_BF16},
    {"f32->f32", 1, MB_DTYPE_F32},   {"f16->f32", 0, MB_DTYPE_F16},
    {"bf16->f32", 0, MB_DTYPE_BF16}, {"f32->f32 (decode)", 0, MB_DTYPE_F32},
};
#define N_OPS (sizeof OPS / sizeof OPS[0])

static size_t op_src_size(const op_desc *op)
{
    return op->encode ? 4 : mb_dtype_size(op->dtype);
}

static size_t op_dst_size(const op_desc *op)
{
    return op->encode ? mb_dtype_size(op->dtype) : 4;
}

/* Elements the op can take from the input pools. */
static size_t op_pool_len(const op_desc *op)
{
    return op->encode || op->dtype == MB_DTYPE_F32 ? in.n_f32 : N_PATTERNS;
}

static const void *op_src(const op_desc *op, size_t first)
{
    if (op->encode || op->dtype == MB_DTYPE_F32) return in.f32 + first;
    return in.pat + first;
}

static const void *op_want(const op_desc *op, size_t first)
{
    if (op->dtype == MB_DTYPE_F32) return in.f32 + first;
    if (op->encode) return (op->dtype == MB_DTYPE_F16 ? in.f16_of : in.bf16_of) + first;
    return (op->dtype == MB_DTYPE_F16 ? in.from_f16 : in.from_bf16) + first;
}

static void op_run(const op_desc *op, void *dst, const void *src, size_t n)
{
    if (op->encode)
        mb_dtype_encode_f32(op->dtype, dst, (const float *)src, n);
    else
        mb_dtype_decode_f32(op->dtype, (float *)dst, src, n);
}

/* Compares n elements of dst_size bytes; reports the first few mismatches.
 * Integer compares only: this also runs with FP exceptions unmasked. */
static int compare(const char *path, const op_desc *op, const unsigned char *got,
                   const unsigned char *want, size_t n, const char *what)
{
    size_t sz = op_dst_size(op);
    if (memcmp(got, want, n * sz) == 0) return 0;
    int shown = 0;
    for (size_t i = 0; i < n && shown < 5; i++) {
        if (memcmp(got + i * sz, want + i * sz, sz) == 0) continue;
        uint32_t g = 0, w = 0;
        memcpy(&g, got + i * sz, sz);
        memcpy(&w, want + i * sz, sz);
        fprintf(stderr, "%s %s %s [%zu]: got %08x want %08x\n", path, op->name, what, i, g, w);
        shown++;
    }
    return 1;
}

/* The whole pools in one call per op. */
static void check_full(const char *path, const char *what)
{
    for (size_t o = 0; o < N_OPS; o++) {
        const op_desc *op = &OPS[o];
        size_t n = op_pool_len(op);
        unsigned char *dst = xmalloc(n * op_dst_size(op));
        op_run(op, dst, op_src(op, 0), n);
        CHECK(!compare(path, op, dst, op_want(op, 0), n, what));
        free(dst);
    }
}

/* Every length 0..MAX_LEN at every src and dst misalignment, the source in
 * an exactly sized heap block (so sanitizers see over-reads) and the
 * destination between guard bytes that must stay untouched. */
static void check_lengths(const char *path)
{
    int bad = 0;
    for (size_t o = 0; o < N_OPS; o++) {
        const op_desc *op = &OPS[o];
        size_t ss = op_src_size(op), ds = op_dst_size(op);
        for (size_t n = 0; n <= MAX_LEN; n++) {
            for (size_t sa = 0; sa < 4; sa++) {
                for (size_t da = 0; da < 4; da++) {
                    /* Slices that start among the specials, different each time. */
                    size_t first = (n * 131 + sa * 37 + da * 11 + o * 7) % 4096;
                    unsigned char *src = xmalloc(sa + n * ss);
                    memcpy(src + sa, op_src(op, first), n * ss);
                    unsigned char *dst = xmalloc(2 * GUARD + da + n * ds);
                    memset(dst, 0xa5, 2 * GUARD + da + n * ds);
                    op_run(op, dst + GUARD + da, src + sa, n);
                    bad += compare(path, op, dst + GUARD + da, op_want(op, first), n, "short");
                    for (size_t i = 0; i < GUARD + da; i++)
                        bad += dst[i] != 0xa5;
                    for (size_t i = 0; i < GUARD; i++)
                        bad += dst[GUARD + da + n * ds + i] != 0xa5;
                    free(dst);
                    free(src);
                }
            }
        }
    }
    CHECK_MSG(bad == 0, "%s: %d mismatches or guard bytes overwritten", path, bad);
}

/* A dtype that is not one leaves dst untouched. */
static void check_invalid_dtype(void)
{
    float f[3] = {1.0f, 2.0f, 3.0f};
    unsigned char d[16];
    memset(d, 0x5a, sizeof d);
    mb_dtype_encode_f32((mb_dtype)MB_DTYPE_COUNT_, d, f, 3);
    mb_dtype_decode_f32((mb_dtype)-1, (float *)(void *)d, f, 3);
    for (size_t i = 0; i < sizeof d; i++)
        CHECK(d[i] == 0x5a);
}

#ifdef HAVE_MXCSR
/* DAZ and FTZ set must not flush anything; unmasked FP exceptions must not
 * trap (signalling NaNs, inexact results are in the pools), and MXCSR must
 * come back as it was. */
static void check_mxcsr(const char *path)
{
    unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u); /* FTZ | DAZ */
    check_full(path, "DAZ+FTZ");
    _mm_setcsr((saved & ~0x1f80u & ~0x3fu) | 0x8040u); /* all exceptions unmasked, flags clear */
    unsigned before = _mm_getcsr();
    check_full(path, "exceptions unmasked");
    unsigned after = _mm_getcsr();
    _mm_setcsr(saved);
    CHECK_MSG(before == after, "%s: MXCSR %08x before, %08x after", path, before, after);
}
#endif

int main(void)
{
    build_inputs();
    check_invalid_dtype();
    CHECK_EQ(mb_dtype_force_simd(NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_dtype_force_simd("sse9"), MB_STATUS_INVALID_ARG);

    const char *best = NULL;
    for (size_t p = 0; p < N_PATHS; p++) {
        mb_status st = mb_dtype_force_simd(PATHS[p]);
        if (st == MB_STATUS_UNSUPPORTED) {
            printf("path %-10s: not supported by this CPU, skipped\n", PATHS[p]);
            continue;
        }
        CHECK_EQ(st, MB_STATUS_OK);
        CHECK(strcmp(mb_dtype_simd_name(), PATHS[p]) == 0);
        best = PATHS[p];
        check_full(PATHS[p], "full");
        check_lengths(PATHS[p]);
#ifdef HAVE_MXCSR
        check_mxcsr(PATHS[p]);
#endif
        printf("path %-10s: checked\n", PATHS[p]);
    }
    /* "auto" picks the best path this CPU runs; PATHS is ordered worst first. */
    CHECK_EQ(mb_dtype_force_simd("auto"), MB_STATUS_OK);
    CHECK(best && strcmp(mb_dtype_simd_name(), best) == 0);
    printf("auto path: %s\n", mb_dtype_simd_name());

    free(in.f32);
    free(in.f16_of);
    free(in.bf16_of);
    free(in.pat);
    free(in.from_f16);
    free(in.from_bf16);
    return mb_test_finish("dtype_simd_test");
}
