/* The Vulkan backend's quantized weights below the parity tests' error
 * bounds: moe_qdequant (through mb_qdeq16, the loader every shader that
 * reads quantized weights uses) gives kernels/cpu/quant.c's f32 values bit
 * for bit, for Q8_0, Q4_K and Q6_K blocks with any finite scale (negative,
 * zero, subnormal, large) and block counts odd and even (the last f16
 * scale read as a word); a mixed-type expert (Q4_K gate and up, Q6_K down)
 * loads at its quantized size (the backend's weight bytes), and a Q4_0 or
 * Q5_K one is refused. Drives the backend's table and internals directly.
 * Exits 77 without a Vulkan device. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "backends/vulkan/vk_internal.h"
#include "kernels/vulkan/quant_layout.h"
#include "tests/quant_testutil.h"
#include "tests/testutil.h"
#include "tests/unit/vulkan/vk_testutil.h"

static const mb_backend_ops *vq_ops;

/* Runs moe_qdequant of type q over w (device layout, [rows][k]) into out
 * (f32 [rows][k]) on be's device, waiting for it. */
static void vq_dequant(mb_vk_backend *be, int q, const mb_vk_buffer *w, const mb_vk_buffer *out, uint32_t rows,
                       uint32_t k)
{
    const uint32_t spec[MB_VK_SPECS] = {(uint32_t)q};
    const mb_kvk_qdequant_pc pc = {.w = w->addr, .out = out->addr, .rows = rows, .K = k};
    const uint32_t runs = rows * (k / 16);
    mb_vk_test_dispatch(be, "moe_qdequant", spec, &pc, sizeof pc,
                        (runs + MB_KVK_QDEQUANT_THREADS - 1) / MB_KVK_QDEQUANT_THREADS);
}

/* rows x k weights of type q, scales of mode (quant_testutil.h), packed
 * into the device layout, dequantized there and compared bit for bit. */
static void vq_bitwise(mb_vk_backend *be, int q, uint32_t rows, uint32_t k, int mode, unsigned long long seed)
{
    const size_t be_elems = mb_kcpu_block_elems(q), n_blocks = (size_t)rows * k / be_elems;
    const size_t bytes = n_blocks * mb_kcpu_block_bytes(q), n = (size_t)rows * k;
    void *blocks = mb_test_quant_blocks(q, n_blocks, mode, &seed);
    mb_vk_buffer w = {0}, out = {0};
    REQUIRE(mb_vk_buffer_create(&be->ctx, bytes + 4, MB_VK_MEM_UPLOAD, 0, &w) == MB_STATUS_OK);
    REQUIRE(mb_vk_buffer_create(&be->ctx, n * sizeof(float), MB_VK_MEM_READBACK, 0, &out) == MB_STATUS_OK);
    mb_kq_section sec[MB_KQ_SECTIONS_MAX];
    const int n_sec = mb_kq_sections(q, sec);
    REQUIRE(n_sec > 0);
    char *dst = w.map;
    for (int s = 0; s < n_sec; s++) {
        mb_kq_section_pack(q, sec[s], blocks, 0, n_blocks, dst);
        dst += n_blocks * sec[s].bytes;
    }
    REQUIRE(dst == (char *)w.map + bytes);
    memset(out.map, 0xff, n * sizeof(float));
    vq_dequant(be, q, &w, &out, rows, k);

    float *ref = malloc(n * sizeof *ref);
    REQUIRE(ref);
    const size_t rb = mb_kcpu_row_bytes(q, k);
    for (uint32_t r = 0; r < rows; r++)
        mb_kcpu_dequant_row(q, (const char *)blocks + r * rb, ref + (size_t)r * k, k);
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&ref[i], (const float *)out.map + i, sizeof(float)) != 0) {
            if (first == n) first = i;
            bad++;
        }
    printf("vulkan dequant %-4s %ux%u scales mode %d: %zu of %zu differ\n", mb_dtype_name(q), rows, k, mode, bad,
           n);
    CHECK_MSG(bad == 0, "%s: element %zu: device %.9g, cpu %.9g", mb_dtype_name(q), first,
              first < n ? ((const float *)out.map)[first] : 0.0, first < n ? ref[first] : 0.0);
    free(ref);
    free(blocks);
    mb_vk_buffer_destroy(&be->ctx, &w);
    mb_vk_buffer_destroy(&be->ctx, &out);
}

/* A Q4_K_M-style expert (Q4_K gate and up, Q6_K down) counts its quantized
 * bytes; reloading the slot replaces them; Q4_0 and Q5_K are refused. */
static void vq_load(mb_vk_backend *be)
{
    const uint32_t d_model = 512, d_ff = 256;
    unsigned long long seed = 0x10adull;
    const mb_dtype t[3] = {MB_DTYPE_Q4_K, MB_DTYPE_Q4_K, MB_DTYPE_Q6_K};
    void *m[3];
    uint64_t want = 0;
    for (int i = 0; i < 3; i++) {
        const size_t n_blocks = (size_t)d_model * d_ff / 256;
        m[i] = mb_test_quant_blocks((int)t[i], n_blocks, 0, &seed);
        want += n_blocks * mb_dtype_block_bytes(t[i]);
    }
    mb_backend_caps caps;
    REQUIRE(vq_ops->caps(be, &caps) == MB_STATUS_OK);
    CHECK_EQ(caps.weight_dtype_mask & MB_DTYPE_MASK_QUANT,
             MB_DTYPE_MASK(MB_DTYPE_Q8_0) | MB_DTYPE_MASK(MB_DTYPE_Q4_K) | MB_DTYPE_MASK(MB_DTYPE_Q6_K));
    const mb_expert_weights w = {0, 0, 0, d_model, d_ff, {t[0], t[1], t[2]}, m[0], m[1], m[2]};
    CHECK_EQ(vq_ops->load_expert(be, &w), MB_STATUS_OK);
    CHECK_EQ(vq_ops->load_finish(be), MB_STATUS_OK);
    printf("vulkan q4_k/q4_k/q6_k expert %ux%u: %llu weight bytes (f32 would take %llu)\n", d_model, d_ff,
           (unsigned long long)be->weight_bytes, (unsigned long long)d_model * d_ff * 12);
    CHECK_EQ(be->weight_bytes, want);
    CHECK_EQ(vq_ops->load_expert(be, &w), MB_STATUS_OK);
    CHECK_EQ(vq_ops->load_finish(be), MB_STATUS_OK);
    CHECK_EQ(be->weight_bytes, want);
    for (int i = 0; i < 2; i++) {
        const mb_dtype bad = i ? MB_DTYPE_Q5_K : MB_DTYPE_Q4_0;
        const mb_expert_weights wb = {1, 1, 1, d_model, d_ff, {bad, bad, bad}, m[0], m[1], m[2]};
        CHECK_EQ(vq_ops->load_expert(be, &wb), MB_STATUS_BAD_DTYPE);
    }
    for (int i = 0; i < 3; i++)
        free(m[i]);
}

int main(void)
{
    vq_ops = mb_vk_test_ops();
    mb_vk_backend *be = mb_vk_test_open(vq_ops, 16, 16, NULL);
    static const int types[] = {MB_KCPU_Q8_0, MB_KCPU_Q4_K, MB_KCPU_Q6_K};
    for (size_t i = 0; i < 3; i++)
        for (int mode = 0; mode < 2; mode++) {
            vq_bitwise(be, types[i], 3, 512, mode, 0x9e37ull + 31 * i + (unsigned long long)mode);
            vq_bitwise(be, types[i], 4, 256, mode, 0x7f4aull + 17 * i + (unsigned long long)mode);
        }
    vq_load(be);
    vq_ops->close(be);
    return mb_test_finish("test_vk_quant");
}
