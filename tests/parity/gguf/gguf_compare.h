/* How the GGUF parity tests compare logits with llama.cpp's
 * (tests/data/gguf/README.md): llama.cpp quantizes activations to 8 bits
 * inside its quantized dot products, as our kernels do, but sums in another
 * order with an f16 KV cache, and a near-tie in routing can flip one
 * position's experts. So: rms(diff) <= MB_GGUF_RMS_BOUND * rms(reference)
 * over all positions, and the same argmax at >= MB_GGUF_ARGMAX_SHARE of
 * them. Header-only; each test executable includes it once. */
#ifndef MB_TESTS_PARITY_GGUF_COMPARE_H
#define MB_TESTS_PARITY_GGUF_COMPARE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "broker/model.h"
#include "broker/safetensors.h"
#include "tests/testutil.h"

#define MB_GGUF_RMS_BOUND 0.08
#define MB_GGUF_ARGMAX_SHARE 0.85

/* The fixtures under $MB_TEST_DATA/gguf a test runs when given none. The
 * q4_k_m ones keep the last layer's ffn_down_exps in Q6_K beside Q4_K
 * gate/up (the README lists every tensor's type). */
static const char *const mb_gguf_fixtures[] = {"qwen3moe-f16",    "qwen3moe-q8_0", "qwen3moe-q4_k_m",
                                               "qwen2moe-q8_0",   "qwen2moe-q4_k_m", "llama-q8_0",
                                               "llama-q4_k_m"};
#define MB_GGUF_N_FIXTURES (sizeof mb_gguf_fixtures / sizeof mb_gguf_fixtures[0])

/* Loads fixture name under root/gguf and its llama.cpp logits. Returns 0
 * when the fixture is absent (skipped), 1 with *m and *ref loaded, -1 when
 * it failed to load (a failed check). */
static inline int mb_gguf_fixture_open(const char *root, const char *name, mb_model **m, mb_reference *ref)
{
    char dir[4096], path[4200], err[512] = "";
    snprintf(dir, sizeof dir, "%s/gguf/%s", root, name);
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "%s: no %s, skipped\n", name, path);
        return 0;
    }
    mb_status st = mb_model_load(dir, m, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_OK, "%s: load: %s: %s", name, mb_status_name(st), err);
    if (st != MB_STATUS_OK) return -1;
    REQUIRE(mb_reference_init(ref, path, err, sizeof err) == MB_STATUS_OK);
    REQUIRE(ref->vocab == (*m)->cfg.vocab);
    return 1;
}

/* Runs fn on each fixture named on the command line (else on
 * mb_gguf_fixtures) found under $MB_TEST_DATA/gguf; skips the test when
 * MB_TEST_DATA is not set or no fixture is there. */
typedef void (*mb_gguf_fixture_fn)(const char *name, const mb_model *m, const mb_reference *ref, void *ctx);
static inline void mb_gguf_for_fixtures(int argc, char **argv, mb_gguf_fixture_fn fn, void *ctx)
{
    const char *root = getenv("MB_TEST_DATA");
    if (!root) MB_TEST_SKIP("MB_TEST_DATA is not set");
    const int n = argc > 1 ? argc - 1 : (int)MB_GGUF_N_FIXTURES;
    const char *const *names = argc > 1 ? (const char *const *)(argv + 1) : mb_gguf_fixtures;
    int ran = 0;
    for (int i = 0; i < n; i++) {
        mb_model *m = NULL;
        mb_reference ref;
        const int open = mb_gguf_fixture_open(root, names[i], &m, &ref);
        ran += open != 0;
        if (open <= 0) continue;
        fn(names[i], m, &ref, ctx);
        mb_reference_fini(&ref);
        mb_model_destroy(m);
    }
    if (!ran) MB_TEST_SKIP("no GGUF fixtures under %s/gguf", root);
}

static inline uint32_t mb_gguf_argmax(const float *x, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Compares got[n_tokens][vocab] with ref[n_tokens][vocab], prints the
 * figures under what, and checks the bounds above. Returns rms(diff) /
 * rms(ref). */
static inline double mb_gguf_compare(const char *what, const float *got, const float *ref, uint32_t n_tokens,
                                     uint32_t vocab)
{
    double max_diff = 0, sq_diff = 0, sq_ref = 0, max_ref = 0;
    uint32_t argmax_ok = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        const float *a = got + (size_t)t * vocab, *b = ref + (size_t)t * vocab;
        for (uint32_t i = 0; i < vocab; i++) {
            const double d = (double)a[i] - b[i];
            /* A NaN must fail the bound, not slip past the comparisons. */
            max_diff = !(fabs(d) <= max_diff) ? (isnan(d) ? INFINITY : fabs(d)) : max_diff;
            max_ref = fabs(b[i]) > max_ref ? fabs(b[i]) : max_ref;
            sq_diff += isnan(d) ? INFINITY : d * d;
            sq_ref += (double)b[i] * b[i];
        }
        argmax_ok += mb_gguf_argmax(a, vocab) == mb_gguf_argmax(b, vocab);
    }
    const double rel = sqrt(sq_diff / sq_ref), share = (double)argmax_ok / n_tokens;
    printf("%s: %u positions: rms(diff)/rms(ref) %.4f, max|diff| %.4f (max|ref| %.3f), "
           "argmax agrees at %u/%u\n",
           what, n_tokens, rel, max_diff, max_ref, argmax_ok, n_tokens);
    CHECK_MSG(rel <= MB_GGUF_RMS_BOUND, "%s: relative rms %.4f > %.4f", what, rel, MB_GGUF_RMS_BOUND);
    CHECK_MSG(share >= MB_GGUF_ARGMAX_SHARE, "%s: argmax agreement %.3f < %.3f", what, share,
              MB_GGUF_ARGMAX_SHARE);
    return rel;
}

#endif
