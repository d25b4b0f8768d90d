/* CPU backend parity for quantized experts (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K),
 * through the public backend wrappers: random blocks (sane f16 scales),
 * loaded as they are, 1, 5 and 40 tokens, against the double-precision
 * reference of cpu_test.h on the exactly dequantized weights. The backend
 * quantizes activations and SiLU products to 8 bits per block as llama.cpp
 * does, so the bound is that of 8-bit activations: normalised error
 * (max|diff| / max|ref|) <= 5e-2 (random blocks with random mins cancel a lot,
 * which magnifies the 8-bit activation error). Also: the caps name every quantized type,
 * and rows that are not whole blocks are refused. */
#include <stdio.h>

#include "cpu_test.h"
#include "kernels/cpu/quant.h"
#include "tests/quant_testutil.h"

static void *rand_blocks(mb_dtype t, size_t rows, size_t cols, unsigned long long *seed)
{
    return mb_test_quant_blocks_exp((int)t, rows * cols / mb_dtype_block_elems(t), 3, seed);
}

static void expert_init(ct_expert *e, mb_dtype t, uint32_t d_model, uint32_t d_ff,
                        unsigned long long *seed)
{
    e->d_model = d_model;
    e->d_ff = d_ff;
    e->wd = t;
    float *row = malloc(sizeof(float) * (d_model > d_ff ? d_model : d_ff));
    REQUIRE(row);
    for (int m = 0; m < 3; m++) {
        const size_t rows = m == 2 ? d_model : d_ff, cols = m == 2 ? d_ff : d_model;
        e->w[m] = rand_blocks(t, rows, cols, seed);
        e->wr[m] = malloc(sizeof(double) * rows * cols);
        REQUIRE(e->wr[m]);
        const size_t rb = mb_kcpu_row_bytes(t, cols);
        for (size_t r = 0; r < rows; r++) {
            mb_kcpu_dequant_row(t, (const char *)e->w[m] + r * rb, row, cols);
            for (size_t c = 0; c < cols; c++)
                e->wr[m][r * cols + c] = row[c];
        }
    }
    free(row);
}

static double run_case(mb_backend *b, ct_expert *ex, uint32_t n_ex, mb_dtype payload,
                       uint32_t n_tokens, unsigned long long *seed)
{
    const uint32_t d = ex[0].d_model;
    uint32_t n_pairs = 0;
    for (uint32_t t = 0; t < n_tokens; t++)
        n_pairs += t % 4 == 3 ? 0 : 2;
    ct_req r;
    ct_req_init(&r, 0, n_tokens, d, payload, n_pairs, seed);
    double *ref = calloc((size_t)n_tokens * d, sizeof *ref);
    REQUIRE(ref);
    uint32_t q = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        r.counts[t] = (uint16_t)(t % 4 == 3 ? 0 : 2);
        for (uint32_t i = 0; i < r.counts[t]; i++, q++) {
            const uint32_t e = (t + i) % n_ex;
            r.pairs[q].slot = e;
            r.pairs[q].gate = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
            ct_ref_add(&ex[e], r.act_ref + (size_t)t * d, r.pairs[q].gate, ref + (size_t)t * d);
        }
    }
    void *out = ct_out_poisoned(&r.req);
    CHECK_EQ(mb_backend_run(b, &r.req, out, NULL), MB_STATUS_OK);
    const double err = ct_norm_err(&r.req, out, ref);
    free(out);
    free(ref);
    ct_req_fini(&r);
    return err;
}

int main(void)
{
    static const mb_dtype types[] = {MB_DTYPE_Q8_0, MB_DTYPE_Q4_0, MB_DTYPE_Q4_K, MB_DTYPE_Q5_K,
                                     MB_DTYPE_Q6_K};
    unsigned long long seed = 99;
    const mb_backend_ops *ops = mb_backend_find("cpu");
    REQUIRE(ops);
    mb_backend_cpu_options o = {.n_threads = 2};
    mb_backend_config cfg = {.device = -1, .max_slots = 16, .options = &o};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        mb_backend *b = NULL;
        REQUIRE(mb_backend_open(ops, &cfg, &b) == MB_STATUS_OK);
        mb_backend_caps caps;
        REQUIRE(mb_backend_caps_get(b, &caps) == MB_STATUS_OK);
        CHECK(caps.weight_dtype_mask & MB_DTYPE_MASK(types[ti]));
        CHECK(!(caps.payload_dtype_mask & MB_DTYPE_MASK(types[ti])));
        ct_expert ex[3];
        for (uint32_t e = 0; e < 3; e++) {
            expert_init(&ex[e], types[ti], 256, 512, &seed);
            CHECK_EQ(ct_load(b, &ex[e], 0, e), MB_STATUS_OK);
        }
        /* A row that is not whole blocks is refused. */
        mb_expert_weights bad = {1, 9, 9, 250, 512, {types[ti], types[ti], types[ti]}, ex[0].w[0], ex[0].w[1], ex[0].w[2]};
        CHECK_EQ(mb_backend_load_expert(b, &bad), MB_STATUS_BAD_SHAPE);
        const mb_dtype payloads[] = {MB_DTYPE_F32, MB_DTYPE_BF16};
        for (int p = 0; p < 2; p++)
            for (uint32_t n = 1; n <= 40; n = n == 1 ? 5 : 40 + (n == 40)) {
                const double err = run_case(b, ex, 3, payloads[p], n, &seed);
                printf("%s %s payload, %u tokens: normalised error %.3g\n",
                       mb_dtype_name(types[ti]), mb_dtype_name(payloads[p]), n, err);
                CHECK_MSG(err <= 5e-2, "%s: error %g", mb_dtype_name(types[ti]), err);
            }
        for (uint32_t e = 0; e < 3; e++)
            ct_expert_fini(&ex[e]);
        mb_backend_close(b);
    }
    return mb_test_finish("test_cpu_backend_quant");
}
