/* Causal GQA attention with the KV cache against a naive double-precision
 * reference that recomputes over the whole history, across a sequence of
 * prefill and decode steps, on a thread pool and without one. */
#include <string.h>

#include "broker/attention.h"
#include "tests/testutil.h"

enum { L = 2, H = 8, KV = 2, HD = 20, MAX_CTX = 500 };

/* All keys/values ever stored, per layer: [L][MAX_CTX][KV*HD]. */
static float hist_k[L][MAX_CTX][KV * HD], hist_v[L][MAX_CTX][KV * HD];

static void ref_attn(uint32_t layer, uint32_t pos, uint32_t window, const float *q, double *out)
{
    uint32_t lo = window && pos + 1 > window ? pos + 1 - window : 0;
    for (int h = 0; h < H; h++) {
        int kvh = h / (H / KV);
        double s[MAX_CTX], mx = -1e300, sum = 0;
        for (uint32_t p = lo; p <= pos; p++) {
            double d = 0;
            for (int i = 0; i < HD; i++)
                d += (double)q[h * HD + i] * hist_k[layer][p][kvh * HD + i];
            s[p] = d / sqrt((double)HD);
            mx = s[p] > mx ? s[p] : mx;
        }
        for (uint32_t p = lo; p <= pos; p++) {
            s[p] = exp(s[p] - mx);
            sum += s[p];
        }
        for (int i = 0; i < HD; i++) {
            double o = 0;
            for (uint32_t p = lo; p <= pos; p++)
                o += s[p] / sum * hist_v[layer][p][kvh * HD + i];
            out[h * HD + i] = o;
        }
    }
}

static void run(mb_kcpu_pool *pool, int n_threads, uint32_t window)
{
    unsigned long long seed = 99;
    mb_attn a;
    REQUIRE(mb_attn_init(&a, L, H, KV, HD, MAX_CTX, window, n_threads) == MB_STATUS_OK);
    memset(hist_k, 0, sizeof(hist_k));
    memset(hist_v, 0, sizeof(hist_v));
    /* prefill, decode, more prefills appended, decodes; the long prefill
     * makes the decodes after it split the positions across the pool */
    const uint32_t steps[] = {13, 1, 9, 1, 1, 17, 1, 1, 1, 19, 420, 1, 1, 1, 1};
    uint32_t pos = 0;
    const size_t ldq = H * HD + 1, ldkv = KV * HD + 3, ldo = H * HD + 2;
    static float q[MAX_CTX * (H * HD + 1)], k[MAX_CTX * (KV * HD + 3)], v[MAX_CTX * (KV * HD + 3)];
    static float out[MAX_CTX * (H * HD + 2)];
    double worst = 0;
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        uint32_t n = steps[s];
        REQUIRE(pos + n <= MAX_CTX);
        for (uint32_t layer = 0; layer < L; layer++) {
            for (size_t i = 0; i < n * ldq; i++)
                q[i] = 2.0f * mb_test_rand_f32(&seed);
            for (uint32_t t = 0; t < n; t++)
                for (int i = 0; i < KV * HD; i++) {
                    k[t * ldkv + i] = hist_k[layer][pos + t][i] = 2.0f * mb_test_rand_f32(&seed);
                    v[t * ldkv + i] = hist_v[layer][pos + t][i] = mb_test_rand_f32(&seed);
                }
            mb_attn_store(&a, layer, pos, n, k, ldkv, v, ldkv);
            for (size_t i = 0; i < n * ldo; i++)
                out[i] = 1234.0f; /* must be overwritten, padding kept */
            mb_attn_compute(&a, pool, layer, pos, n, q, ldq, out, ldo);
            for (uint32_t t = 0; t < n; t++) {
                double want[H * HD];
                ref_attn(layer, pos + t, window, q + t * ldq, want);
                for (int i = 0; i < H * HD; i++) {
                    double d = fabs(out[t * ldo + i] - want[i]);
                    worst = d > worst ? d : worst;
                    CHECK_MSG(d <= 1e-5, "step %zu layer %u t %u i %d: %g vs %g", s, layer, t, i,
                              out[t * ldo + i], want[i]);
                }
                CHECK(out[t * ldo + H * HD] == 1234.0f);
            }
        }
        pos += n;
    }
    printf("attention threads %d window %u: max |diff| %.3g over %u positions\n", n_threads, window,
           worst, pos);
    mb_attn_fini(&a);
}

int main(void)
{
    mb_attn a;
    CHECK_EQ(mb_attn_init(&a, 1, 6, 4, 8, 16, 0, 1), MB_STATUS_INVALID_ARG); /* 6 % 4 */
    CHECK_EQ(mb_attn_init(&a, 1, 4, 2, 8, 0, 0, 1), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_attn_init(&a, 1, 4, 2, 8, 0xffffffffu, 0, 1 << 30), MB_STATUS_OVERFLOW);
    /* a window as wide as the cache hides nothing: plain causal */
    REQUIRE(mb_attn_init(&a, 1, 4, 2, 8, 16, 16, 1) == MB_STATUS_OK);
    CHECK_EQ(a.window, 0);
    mb_attn_fini(&a);
    run(NULL, 1, 0);
    mb_kcpu_pool *pool = mb_kcpu_pool_create(3, -1);
    REQUIRE(pool);
    run(pool, mb_kcpu_pool_threads(pool), 0);
    /* sliding windows shorter than a step, than a query block, and 1 */
    run(pool, mb_kcpu_pool_threads(pool), 11);
    run(pool, mb_kcpu_pool_threads(pool), 3); /* narrower than a block of queries */
    run(pool, mb_kcpu_pool_threads(pool), 300); /* split decode with a window */
    run(NULL, 1, 1);
    mb_kcpu_pool_destroy(pool);
    return mb_test_finish("test_attention");
}
