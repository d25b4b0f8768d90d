/* CPU backend parity for one weight dtype (argv[1]: f32, f16 or bf16) and
 * every payload dtype, through the public backend wrappers, against the
 * double-precision reference of cpu_test.h: odd (d_model 136, d_ff 72) and
 * normal (256, 512) shapes in two layers of one backend, 1, 3, 17 and 300
 * tokens, 1-3 experts per token with gate weights, tokens without experts,
 * an expert without tokens, outputs poisoned with NaN before each run, and
 * repeat runs bit-identical. The odd shape also runs on every SIMD path
 * this CPU has. Thresholds: ct_threshold() (1e-5 f32, 1e-3 f16, 8e-3 bf16
 * payloads, normalised by max|ref|). */
#include <stdio.h>

#include "cpu_test.h"
#include "kernels/cpu/gemm.h"

typedef struct {
    uint32_t layer, d_model, d_ff, n_experts;
} shape;

static double run_case(mb_backend *b, const shape *s, ct_expert *ex, mb_dtype payload,
                       uint32_t n_tokens, unsigned long long *seed)
{
    /* Routing: token t has (t % 3) + 1 experts, none when t % 5 == 2; the
     * layer's last expert never gets a token. */
    uint32_t n_pairs = 0;
    for (uint32_t t = 0; t < n_tokens; t++)
        n_pairs += t % 5 == 2 ? 0 : t % 3 + 1;
    ct_req r;
    ct_req_init(&r, s->layer, n_tokens, s->d_model, payload, n_pairs, seed);
    double *ref = calloc((size_t)n_tokens * s->d_model + 1, sizeof *ref);
    REQUIRE(ref);
    uint32_t q = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        r.counts[t] = (uint16_t)(t % 5 == 2 ? 0 : t % 3 + 1);
        uint32_t first = (uint32_t)(mb_test_rand_u64(seed) % (s->n_experts - 1));
        for (uint32_t i = 0; i < r.counts[t]; i++, q++) {
            uint32_t e = (first + i) % (s->n_experts - 1);
            r.pairs[q].slot = s->layer * 100 + e;
            r.pairs[q].gate = 0.1f + 0.9f * fabsf(mb_test_rand_f32(seed));
            ct_ref_add(&ex[e], r.act_ref + (size_t)t * s->d_model, r.pairs[q].gate,
                       ref + (size_t)t * s->d_model);
        }
    }
    void *out = ct_out_poisoned(&r.req), *out2 = ct_out_poisoned(&r.req);
    uint64_t ns = 0;
    CHECK_EQ(mb_backend_run(b, &r.req, out, &ns), MB_STATUS_OK);
    CHECK_EQ(mb_backend_run(b, &r.req, out2, NULL), MB_STATUS_OK);
    size_t bytes = (size_t)n_tokens * s->d_model * mb_dtype_size(payload);
    CHECK(memcmp(out, out2, bytes) == 0);
    double err = ct_norm_err(&r.req, out, ref);
    free(out);
    free(out2);
    free(ref);
    ct_req_fini(&r);
    return err;
}

int main(int argc, char **argv)
{
    mb_dtype wd = MB_DTYPE_F32;
    if (argc > 1) REQUIRE(mb_dtype_parse(argv[1], &wd) == MB_STATUS_OK);
    const mb_backend_ops *ops = mb_backend_find("cpu");
    REQUIRE(ops != NULL);
    mb_backend_cpu_options opt = {.n_threads = 2, .numa = MB_NUMA_DEFAULT};
    mb_backend_config cfg = {.device = -1, .max_slots = 512, .options = &opt};
    mb_backend *b = NULL;
    REQUIRE(mb_backend_open(ops, &cfg, &b) == MB_STATUS_OK);

    const shape shapes[2] = {{0, 136, 72, 6}, {2, 256, 512, 9}};
    ct_expert ex[2][9];
    unsigned long long seed = 0xC0FFEEull + (unsigned long long)wd;
    for (int si = 0; si < 2; si++)
        for (uint32_t e = 0; e < shapes[si].n_experts; e++) {
            ct_expert_init(&ex[si][e], wd, shapes[si].d_model, shapes[si].d_ff, &seed);
            CHECK_EQ(ct_load(b, &ex[si][e], shapes[si].layer, shapes[si].layer * 100 + e),
                     MB_STATUS_OK);
        }

    static const uint32_t tokens[] = {1, 3, 17, 300};
    for (int pd = 0; pd < 3; pd++) {
        mb_dtype payload = (mb_dtype)pd;
        for (int si = 0; si < 2; si++)
            for (int ti = 0; ti < 4; ti++) {
                /* The big normal case once per weight dtype keeps ASan runs short. */
                if (si == 1 && tokens[ti] == 300 && pd != (int)wd) continue;
                double err = run_case(b, &shapes[si], ex[si], payload, tokens[ti], &seed);
                printf(
                    "w %-4s payload %-4s d_model %3u d_ff %3u tokens %3u: err %.3g (limit %.0e)\n",
                    mb_dtype_name(wd), mb_dtype_name(payload), shapes[si].d_model, shapes[si].d_ff,
                    tokens[ti], err, ct_threshold(payload));
                CHECK(err <= ct_threshold(payload));
            }
    }

    /* Every SIMD path on the odd shape. */
    static const char *const isas[] = {"scalar", "avx2", "avx512"};
    for (int ii = 0; ii < 3; ii++) {
        if (mb_kcpu_force_isa(isas[ii]) != 0) continue;
        for (int pd = 0; pd < 3; pd++)
            for (int ti = 0; ti < 3; ti++) {
                double err = run_case(b, &shapes[0], ex[0], (mb_dtype)pd, tokens[ti], &seed);
                CHECK_MSG(err <= ct_threshold((mb_dtype)pd),
                          "isa %s payload %s tokens %u: err %.3g", isas[ii], mb_dtype_name(pd),
                          tokens[ti], err);
            }
        printf("isa %s: odd shape ok\n", isas[ii]);
    }
    CHECK(mb_kcpu_force_isa("auto") == 0);

    for (int si = 0; si < 2; si++)
        for (uint32_t e = 0; e < shapes[si].n_experts; e++)
            ct_expert_fini(&ex[si][e]);
    mb_backend_close(b);
    return mb_test_finish("test_cpu_backend_parity");
}
