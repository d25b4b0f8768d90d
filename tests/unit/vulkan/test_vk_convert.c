/* moe_convert's 16-bit outputs, which feed the matrix-unit GEMMs: OUT 1
 * (f16, two a word) and 2 (f16 high and low halves) in token order, OUT 3
 * and 4, the same gathered into grouped order through perm_token, the form
 * moe_gemm_cm2 reads, and OUT 5 and 6, gathered bf16 (rounded, or split
 * into halves bit for bit: moe_gemm_cm2_bf16's input) (a GPU-only shader, so CI checks its input
 * here, on lavapipe). For every payload dtype and random rows (normal, tiny below f16's normal
 * range, zero): each output row is its token's row; f16 payloads come out exact; the high half of a
 * split is x with its mantissa cut to 10 bits (exactly mb_split_f16's masking), and high + low is x
 * to within 2^-21 of |x| (2^-25 absolute below f16's normal range); the plain f16 form is within
 * half an f16 ulp (the rounding direction of packHalf2x16 is the driver's); nothing past the output
 * is written. Drives the backend's pipelines directly. Exits 77 without a Vulkan device. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/dtype.h"
#include "tests/testutil.h"
#include "tests/unit/vulkan/vk_testutil.h"

/* Runs moe_convert (payload pd, output out) over the request in pc on be's
 * device, waiting for it: fewer workgroups than items, so the grid-stride
 * loop runs twice. */
static void vc_run(mb_vk_backend *be, uint32_t pd, uint32_t out, const mb_kvk_convert_pc *pc, uint32_t items)
{
    const uint32_t spec[MB_VK_SPECS] = {pd, out};
    mb_vk_test_dispatch(be, "moe_convert", spec, pc, sizeof *pc,
                        (items + 2 * MB_KVK_CONVERT_THREADS - 1) / (2 * MB_KVK_CONVERT_THREADS));
}

static uint32_t vc_f32_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* One element's bf16 output(s) against its source value x (OUT 5, 6):
 * rounded to nearest even, or split into the top 16 bits and the rest
 * rounded; both bit for bit. */
static void vc_check_bf16(float x, uint16_t hi, const uint16_t *lo)
{
    if (!lo) {
        CHECK_EQ(hi, mb_f32_to_bf16(x));
        return;
    }
    const uint32_t b = vc_f32_bits(x);
    CHECK_EQ(hi, (uint16_t)(b >> 16));
    float h;
    const uint32_t hb = b & 0xffff0000u;
    memcpy(&h, &hb, sizeof h);
    CHECK_EQ(*lo, mb_f32_to_bf16(x - h));
}

/* One element's f16 output(s) against its source value x. */
static void vc_check(float x, uint16_t hi, const uint16_t *lo, int exact)
{
    const float h = mb_f16_to_f32(hi);
    if (lo) {
        /* mb_split_f16: the mantissa cut to 10 bits, or a signed zero below
         * 2^-14; the rest in the low half. */
        const uint32_t b = vc_f32_bits(x);
        const uint32_t want = (b & 0x7fffffffu) < 0x38800000u ? b & 0x80000000u : b & 0xffffe000u;
        CHECK_EQ(vc_f32_bits(h), want);
        const double sum = (double)h + (double)mb_f16_to_f32(*lo);
        const double tol = fabs((double)x) < 0x1p-14 ? 0x1p-25 : fabs((double)x) * 0x1p-21;
        CHECK(fabs(sum - (double)x) <= tol);
        return;
    }
    if (exact) {
        CHECK_EQ(vc_f32_bits(h), vc_f32_bits(x));
        return;
    }
    /* Half an ulp of f16 when rounded to nearest, a whole one when cut;
     * below the normal range the subnormal step is 2^-24. */
    const double ulp = fabs((double)x) < 0x1p-14 ? 0x1p-24 : ldexp(1.0, ilogb(x) - 10);
    CHECK(fabs((double)h - (double)x) <= ulp);
}

/* n_tokens rows of k values in payload dtype pd, converted with OUT in
 * {1, 2} (token order) and {3..6} (gathered through a random perm_token of
 * n_rows rows), compared element by element. */
static void vc_case(mb_vk_backend *be, mb_dtype pd, uint32_t n_tokens, uint32_t n_rows, uint32_t k,
                    unsigned long long seed)
{
    const size_t esz = mb_dtype_size(pd), n_act = (size_t)n_tokens * k;
    float *src = malloc(n_act * sizeof *src);
    int32_t *perm = malloc(n_rows * sizeof *perm);
    REQUIRE(src && perm);
    for (size_t i = 0; i < n_act; i++) {
        const unsigned long long r = mb_test_rand_u64(&seed) % 8;
        float v = mb_test_rand_f32(&seed) * 4.0f;
        if (r == 0) v *= 0x1p-17f; /* below f16's normal range */
        if (r == 1) v = 0.0f;
        src[i] = v;
    }
    for (uint32_t r = 0; r < n_rows; r++)
        perm[r] = (int32_t)(mb_test_rand_u64(&seed) % n_tokens);
    mb_vk_buffer act = {0}, pbuf = {0}, out = {0};
    /* Room for the largest output (n 16-bit values and as many low halves)
     * and a guard of 64 bytes after it, which must stay untouched. */
    const size_t out_bytes = (size_t)(n_rows > n_tokens ? n_rows : n_tokens) * k * 4 + 64;
    REQUIRE(mb_vk_buffer_create(&be->ctx, n_act * esz + 4, MB_VK_MEM_UPLOAD, 0, &act) == MB_STATUS_OK);
    REQUIRE(mb_vk_buffer_create(&be->ctx, n_rows * sizeof *perm, MB_VK_MEM_UPLOAD, 0, &pbuf) == MB_STATUS_OK);
    REQUIRE(mb_vk_buffer_create(&be->ctx, out_bytes, MB_VK_MEM_READBACK, 0, &out) == MB_STATUS_OK);
    mb_dtype_encode_f32(pd, act.map, src, n_act);
    /* The source as the shader sees it: the payload decoded. */
    mb_dtype_decode_f32(pd, src, act.map, n_act);
    memcpy(pbuf.map, perm, n_rows * sizeof *perm);
    for (uint32_t o = 1; o <= 6; o++) {
        const int gather = o >= 3, split = o % 2 == 0, bf16 = o >= 5;
        const uint32_t rows = gather ? n_rows : n_tokens;
        const size_t n = (size_t)rows * k;
        memset(out.map, 0xa5, out_bytes);
        const mb_kvk_convert_pc pc = {
            .act = act.addr, .x = out.addr, .perm_token = pbuf.addr, .n = (uint32_t)n, .k = k};
        vc_run(be, (uint32_t)pd, o, &pc, (uint32_t)(n / 2));
        const uint16_t *h = out.map;
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t c = 0; c < k; c++) {
                const size_t i = (size_t)r * k + c;
                const float x = src[(size_t)(gather ? (uint32_t)perm[r] : r) * k + c];
                if (bf16)
                    vc_check_bf16(x, h[i], split ? &h[n + i] : NULL);
                else
                    vc_check(x, h[i], split ? &h[n + i] : NULL, pd == MB_DTYPE_F16);
            }
        /* Nothing past the output: n values, and n low halves when split. */
        const unsigned char *tail = (const unsigned char *)out.map + n * 2 * (split ? 2 : 1);
        const size_t tail_n = out_bytes - n * 2 * (split ? 2 : 1);
        size_t touched = 0;
        for (size_t i = 0; i < tail_n; i++)
            touched += tail[i] != 0xa5;
        CHECK_EQ(touched, 0);
    }
    mb_vk_buffer_destroy(&be->ctx, &act);
    mb_vk_buffer_destroy(&be->ctx, &pbuf);
    mb_vk_buffer_destroy(&be->ctx, &out);
    free(src);
    free(perm);
}

int main(void)
{
    const mb_backend_ops *ops = mb_vk_test_ops();
    mb_vk_backend *be = mb_vk_test_open(ops, 16, 16, NULL);
    static const mb_dtype pds[] = {MB_DTYPE_F32, MB_DTYPE_F16, MB_DTYPE_BF16};
    for (size_t i = 0; i < 3; i++) {
        vc_case(be, pds[i], 5, 9, 24, 0x51ull + i);      /* more grouped rows than tokens (top-k > 1) */
        vc_case(be, pds[i], 7, 3, 2, 0x77ull + 3 * i);    /* fewer, and the shortest even rows */
        vc_case(be, pds[i], 3, 700, 64, 0x3bull + 5 * i); /* several workgroups, grid-stride */
    }
    ops->close(be);
    return mb_test_finish("test_vk_convert");
}
