/* Dequantization against gguf-py's (gguf.quants.dequantize, numpy): every
 * tensor in tests/data/gguf/<fixture>/dequant.safetensors (one per
 * quantized type of that file: Q8_0, Q4_K, Q6_K) must come out of
 * mb_kcpu_dequant_row bit for bit, and out of the SIMD dequantization the
 * expert FFN's prefill tiles use (mb_kcpu_dequant_get) too. */
#include <string.h>

#include "broker/gguf.h"
#include "broker/safetensors.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_isa.h"
#include "tests/testutil.h"

static int check_fixture(const char *root, const char *name)
{
    char path[4096], err[512] = "";
    snprintf(path, sizeof path, "%s/gguf/%s/dequant.safetensors", root, name);
    mb_safetensors *ref = NULL;
    if (mb_safetensors_open(path, &ref, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "%s: %s, skipped\n", name, err);
        return 0;
    }
    snprintf(path, sizeof path, "%s/gguf/%s/model.gguf", root, name);
    mb_gguf *g = NULL;
    REQUIRE(mb_gguf_open(path, &g, err, sizeof err) == MB_STATUS_OK);
    for (uint32_t i = 0; i < mb_safetensors_count(ref); i++) {
        const mb_st_tensor *r = mb_safetensors_at(ref, i);
        const mb_gguf_tensor *t = mb_gguf_tensor_find(g, r->name);
        CHECK_MSG(t != NULL, "%s: no tensor %s", name, r->name);
        if (!t) continue;
        REQUIRE(r->dtype == MB_ST_DTYPE_F32 && r->n_elems == t->ne[0] * t->ne[1] * t->ne[2]);
        const size_t k = t->ne[0], rows = r->n_elems / k;
        const size_t rb = mb_kcpu_row_bytes(t->dtype, k);
        float *out = malloc(sizeof(float) * k), *want = malloc(sizeof(float) * k);
        REQUIRE(out && want);
        size_t bad = 0, bad_simd = 0;
        for (size_t row = 0; row < rows; row++) {
            mb_kcpu_dequant_row(t->dtype, (const char *)t->data + row * rb, out, k);
            memcpy(want, (const char *)r->data + row * k * sizeof(float), k * sizeof(float));
            bad += memcmp(out, want, k * sizeof(float)) != 0;
            mb_kcpu_dequant_get()(t->dtype, (const char *)t->data + row * rb, out, k);
            bad_simd += memcmp(out, want, k * sizeof(float)) != 0;
        }
        CHECK_MSG(bad_simd == 0, "%s: %s: %zu of %zu rows of the %s dequantization differ", name,
                  r->name, bad_simd, rows, mb_kcpu_quant_isa_name());
        CHECK_MSG(bad == 0, "%s: %s (%s): %zu of %zu rows differ from gguf-py", name, r->name,
                  mb_gguf_type_name(t->ggml_type), bad, rows);
        printf("%s: %s %s: %zu rows bit-identical to gguf-py\n", name, r->name,
               mb_gguf_type_name(t->ggml_type), rows - bad);
        free(out);
        free(want);
    }
    mb_gguf_close(g);
    mb_safetensors_close(ref);
    return 1;
}

int main(void)
{
    const char *root = getenv("MB_TEST_DATA");
    if (!root) MB_TEST_SKIP("MB_TEST_DATA is not set");
    int ran = check_fixture(root, "qwen3moe-q8_0") + check_fixture(root, "qwen3moe-q4_k_m");
    if (!ran) MB_TEST_SKIP("no dequant.safetensors fixtures");
    return mb_test_finish("test_gguf_dequant");
}
