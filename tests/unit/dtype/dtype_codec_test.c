/* Scalar dtype codecs against an independent double-arithmetic reference:
 * every f16 and bf16 bit pattern both ways, hand-worked f32 edge cases with
 * their expected bits, and a million random f32 patterns; plus the dtype
 * table (names, sizes, parsing). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "protocol/dtype.h"
#include "tests/testutil.h"
#include "tests/unit/dtype/dtype_ref.h"

static void test_table(void)
{
    CHECK_EQ(mb_dtype_size(MB_DTYPE_F32), 4);
    CHECK_EQ(mb_dtype_size(MB_DTYPE_F16), 2);
    CHECK_EQ(mb_dtype_size(MB_DTYPE_BF16), 2);
    CHECK_EQ(mb_dtype_size(-1), 0);
    CHECK_EQ(mb_dtype_size(MB_DTYPE_COUNT_), 0);
    CHECK(strcmp(mb_dtype_name(MB_DTYPE_F32), "f32") == 0);
    CHECK(strcmp(mb_dtype_name(MB_DTYPE_F16), "f16") == 0);
    CHECK(strcmp(mb_dtype_name(MB_DTYPE_BF16), "bf16") == 0);
    CHECK(strcmp(mb_dtype_name(77), "?") == 0);
    CHECK(mb_dtype_valid(MB_DTYPE_BF16));
    CHECK(!mb_dtype_valid(-1));
    CHECK(!mb_dtype_valid(MB_DTYPE_COUNT_));
    CHECK_EQ(MB_DTYPE_MASK_ALL, 7);

    static const struct {
        const char *text;
        int want; /* -1: BAD_DTYPE */
    } cases[] = {
        {"f32", MB_DTYPE_F32},
        {"float32", MB_DTYPE_F32},
        {"f16", MB_DTYPE_F16},
        {"float16", MB_DTYPE_F16},
        {"bf16", MB_DTYPE_BF16},
        {"bfloat16", MB_DTYPE_BF16},
        {"BF16", MB_DTYPE_BF16},
        {"Float32", MB_DTYPE_F32},
        {"", -1},
        {"f64", -1},
        {"f1", -1},
        {"bf16 ", -1},
        {"float", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mb_dtype d = (mb_dtype)99;
        mb_status st = mb_dtype_parse(cases[i].text, &d);
        if (cases[i].want < 0) {
            CHECK_EQ(st, MB_STATUS_BAD_DTYPE);
            CHECK_EQ(d, 99); /* untouched on failure */
        } else {
            CHECK_EQ(st, MB_STATUS_OK);
            CHECK_EQ(d, cases[i].want);
        }
    }
    mb_dtype d;
    CHECK_EQ(mb_dtype_parse(NULL, &d), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_dtype_parse("f16", NULL), MB_STATUS_INVALID_ARG);
}

/* Every 16-bit pattern: decode against the reference, then encode the result
 * back (to the same bits; a NaN to itself made quiet). */
static void test_all_patterns(const ref_fmt *f, const char *name, float (*dec)(uint16_t),
                              uint16_t (*enc)(float))
{
    int bad = 0;
    uint16_t quiet = (uint16_t)(1u << (f->man_bits - 1));
    for (uint32_t i = 0; i < 0x10000u; i++) {
        uint16_t h = (uint16_t)i;
        float x = dec(h);
        uint32_t got = ref_bits(x), want = ref_decode(f, h);
        int is_nan = (h & 0x7fffu) > (ref_exp_ones(f) & 0x7fffu);
        uint16_t back_want = is_nan ? (uint16_t)(h | quiet) : h;
        uint16_t back = enc(x);
        if ((got != want || back != back_want || ref_encode(f, x) != back_want ||
             (is_nan && !isnan(x))) &&
            bad++ < 10)
            fprintf(stderr, "%s %04x: decoded %08x want %08x, back %04x want %04x\n", name, h, got,
                    want, back, back_want);
    }
    CHECK_EQ(bad, 0);
}

static void check_edges(const char *name, const ref_fmt *f, size_t (*fill)(ref_edge *),
                        uint16_t (*enc)(float))
{
    ref_edge c[REF_EDGES_MAX];
    size_t n = fill(c);
    for (size_t i = 0; i < n; i++) {
        float x = ref_float(c[i].in);
        uint16_t got = enc(x), ref = ref_encode(f, x);
        CHECK_MSG(got == c[i].want && ref == c[i].want,
                  "%s(%08x) = %04x, reference %04x, want %04x", name, c[i].in, got, ref, c[i].want);
    }
}

static void test_random(void)
{
    unsigned long long s = 0x9e3779b97f4a7c15ULL;
    int bad16 = 0, badbf = 0;
    for (uint32_t i = 0; i < 1000000u; i++) {
        float x = ref_float(ref_random_f32_bits(&s, i));
        uint16_t h = mb_f32_to_f16(x), hr = ref_encode(&REF_F16, x);
        uint16_t b = mb_f32_to_bf16(x), br = ref_encode(&REF_BF16, x);
        if (h != hr && bad16++ < 10)
            fprintf(stderr, "f32_to_f16(%08x) = %04x, reference %04x\n", ref_bits(x), h, hr);
        if (b != br && badbf++ < 10)
            fprintf(stderr, "f32_to_bf16(%08x) = %04x, reference %04x\n", ref_bits(x), b, br);
    }
    CHECK_EQ(bad16, 0);
    CHECK_EQ(badbf, 0);
}

int main(void)
{
    test_table();
    test_all_patterns(&REF_F16, "f16", mb_f16_to_f32, mb_f32_to_f16);
    test_all_patterns(&REF_BF16, "bf16", mb_bf16_to_f32, mb_f32_to_bf16);
    check_edges("f32_to_f16", &REF_F16, ref_edges_f16, mb_f32_to_f16);
    check_edges("f32_to_bf16", &REF_BF16, ref_edges_bf16, mb_f32_to_bf16);
    test_random();
    return mb_test_finish("dtype_codec_test");
}
