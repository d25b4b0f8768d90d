/* The sampler against llama.cpp's meanings: temperature 0 is argmax; the
 * same seed draws the same tokens; top-k, top-p and min-p keep the sets they
 * should, with the renormalised probabilities (checked by frequency over
 * many draws); temperature flattens or sharpens; the repeat penalty divides
 * positive and multiplies negative logits of recent tokens. */
#include <math.h>
#include <string.h>

#include "broker/sampler.h"
#include "tests/testutil.h"

static mb_sampler_params plain(void)
{
    return (mb_sampler_params){.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0,
                               .repeat_penalty = 1, .repeat_last_n = 0, .seed = 7};
}

/* Frequencies of each token over n draws from fixed logits. */
static void frequencies(const mb_sampler_params *p, const float *logits, uint32_t vocab, int n,
                        double *freq)
{
    mb_sampler *s = NULL;
    REQUIRE(mb_sampler_create(p, vocab, &s) == MB_STATUS_OK);
    float buf[16];
    memset(freq, 0, vocab * sizeof *freq);
    for (int i = 0; i < n; i++) {
        memcpy(buf, logits, vocab * sizeof *buf);
        int32_t id = mb_sampler_sample(s, buf);
        REQUIRE(id >= 0 && (uint32_t)id < vocab);
        freq[id] += 1.0 / n;
    }
    mb_sampler_destroy(s);
}

static void expect_freq(const char *what, const double *freq, const double *want, uint32_t vocab)
{
    for (uint32_t i = 0; i < vocab; i++)
        CHECK_MSG(fabs(freq[i] - want[i]) < 0.015, "%s: token %u drawn %.4f, expected %.4f", what, i,
                  freq[i], want[i]);
}

int main(void)
{
    /* p = 0.5, 0.3, 0.15, 0.05 */
    const float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    double f[4];
    mb_sampler_params p = plain();
    const int N = 40000;

    frequencies(&p, logits, 4, N, f);
    expect_freq("plain", f, (double[]){0.5, 0.3, 0.15, 0.05}, 4);
    p.top_k = 2;
    frequencies(&p, logits, 4, N, f);
    expect_freq("top-k 2", f, (double[]){0.625, 0.375, 0, 0}, 4);
    p = plain();
    p.top_p = 0.7; /* 0.5 < 0.7 <= 0.8: two tokens */
    frequencies(&p, logits, 4, N, f);
    expect_freq("top-p 0.7", f, (double[]){0.625, 0.375, 0, 0}, 4);
    p = plain();
    p.min_p = 0.25; /* keeps p >= 0.125 */
    frequencies(&p, logits, 4, N, f);
    expect_freq("min-p 0.25", f, (double[]){0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}, 4);
    p = plain();
    p.temperature = 2; /* p^(1/2), renormalised */
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.15) + sqrt(0.05);
    frequencies(&p, logits, 4, N, f);
    expect_freq("temperature 2", f,
                (double[]){sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.15) / z, sqrt(0.05) / z}, 4);
    p = plain();
    p.top_k = 1;
    frequencies(&p, logits, 4, 1000, f);
    expect_freq("top-k 1", f, (double[]){1, 0, 0, 0}, 4);

    /* Greedy, and the same seed twice gives the same draws. */
    p = plain();
    p.temperature = 0;
    frequencies(&p, logits, 4, 100, f);
    expect_freq("greedy", f, (double[]){1, 0, 0, 0}, 4);
    mb_sampler *a = NULL, *b = NULL, *c = NULL;
    p = plain();
    REQUIRE(mb_sampler_create(&p, 4, &a) == MB_STATUS_OK);
    REQUIRE(mb_sampler_create(&p, 4, &b) == MB_STATUS_OK);
    p.seed = 8;
    REQUIRE(mb_sampler_create(&p, 4, &c) == MB_STATUS_OK);
    int same = 1, differ = 0;
    for (int i = 0; i < 200; i++) {
        float x[4], y[4], w[4];
        memcpy(x, logits, sizeof x);
        memcpy(y, logits, sizeof y);
        memcpy(w, logits, sizeof w);
        int32_t ia = mb_sampler_sample(a, x), ib = mb_sampler_sample(b, y), ic = mb_sampler_sample(c, w);
        same &= ia == ib;
        differ |= ia != ic;
    }
    CHECK(same);
    CHECK(differ);
    mb_sampler_destroy(a);
    mb_sampler_destroy(b);
    mb_sampler_destroy(c);

    /* Repeat penalty: 2.0 -> 1.0 for a recent token (greedy then picks
     * token 1), -1 -> -2 for a negative one; each distinct token once. */
    p = plain();
    p.temperature = 0;
    p.repeat_penalty = 2;
    p.repeat_last_n = 4;
    REQUIRE(mb_sampler_create(&p, 3, &a) == MB_STATUS_OK);
    mb_sampler_accept(a, 0);
    mb_sampler_accept(a, 0);
    mb_sampler_accept(a, 2);
    float l[3] = {2.0f, 1.5f, -1.0f};
    CHECK_EQ(mb_sampler_sample(a, l), 1);
    CHECK(l[0] == 1.0f && l[1] == 1.5f && l[2] == -2.0f);
    /* The window slides: after four more tokens, 0 and 2 are forgotten. */
    for (int i = 0; i < 4; i++)
        mb_sampler_accept(a, 1);
    float l2[3] = {2.0f, 1.5f, -1.0f};
    CHECK_EQ(mb_sampler_sample(a, l2), 0);
    CHECK(l2[1] == 0.75f);
    mb_sampler_destroy(a);

    /* A large vocabulary through the heap path: top-k 40 of 100000. */
    enum { V = 100000 };
    float *big = malloc(V * sizeof *big);
    REQUIRE(big);
    for (int i = 0; i < V; i++)
        big[i] = (float)((i * 7919) % V) / 1000.0f;
    p = plain();
    p.top_k = 40;
    REQUIRE(mb_sampler_create(&p, V, &a) == MB_STATUS_OK);
    for (int i = 0; i < 200; i++) {
        float *copy = malloc(V * sizeof *copy);
        REQUIRE(copy);
        memcpy(copy, big, V * sizeof *copy);
        int32_t id = mb_sampler_sample(a, copy);
        CHECK_MSG(big[id] >= (float)(V - 40) / 1000.0f, "drew %d (logit %f) outside the top 40", id, big[id]);
        free(copy);
    }
    mb_sampler_destroy(a);
    free(big);

    /* Out-of-range parameters. */
    static const mb_sampler_params bad[] = {
        {.temperature = -1, .top_p = 1, .repeat_penalty = 1},
        {.temperature = NAN, .top_p = 1, .repeat_penalty = 1},
        {.temperature = 1, .top_p = 1.5, .repeat_penalty = 1},
        {.temperature = 1, .top_p = 1, .min_p = -0.1, .repeat_penalty = 1},
        {.temperature = 1, .top_p = 1, .repeat_penalty = 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(mb_sampler_create(&bad[i], 4, &a), MB_STATUS_INVALID_ARG);
    return mb_test_finish("sampler_test");
}
