/* The sampler: llama.cpp's default chain (penalties, top-k, top-p, min-p,
 * temperature, draw) over one step's logits. Probabilities for top-p and
 * min-p come from the untempered logits, as in llama.cpp; temperature only
 * shapes the final draw. */
#include "broker/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t id;
    float logit;
} candidate;

struct mb_sampler {
    mb_sampler_params p;
    uint32_t n_vocab;
    candidate *cand; /* [n_vocab] */
    int32_t *history; /* ring of the last repeat_last_n ids */
    uint32_t n_history, history_head;
    uint64_t rng;
};

mb_status mb_sampler_create(const mb_sampler_params *p, uint32_t n_vocab, mb_sampler **out)
{
    if (!p || !out || n_vocab == 0) return MB_STATUS_INVALID_ARG;
    /* Written as negations so NaN fails every test. */
    if (!(p->temperature >= 0) || !(p->top_p >= 0 && p->top_p <= 1) ||
        !(p->min_p >= 0 && p->min_p <= 1) || !(p->repeat_penalty > 0) || !isfinite(p->temperature) ||
        !isfinite(p->repeat_penalty))
        return MB_STATUS_INVALID_ARG;
    mb_sampler *s = calloc(1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->history = p->repeat_last_n ? malloc((size_t)p->repeat_last_n * sizeof *s->history) : NULL;
    if (!s->cand || (p->repeat_last_n && !s->history)) {
        mb_sampler_destroy(s);
        return MB_STATUS_NOMEM;
    }
    *out = s;
    return MB_STATUS_OK;
}

void mb_sampler_destroy(mb_sampler *s)
{
    if (!s) return;
    free(s->cand);
    free(s->history);
    free(s);
}

void mb_sampler_accept(mb_sampler *s, int32_t id)
{
    if (!s || s->p.repeat_last_n == 0) return;
    s->history[s->history_head] = id;
    s->history_head = (s->history_head + 1) % s->p.repeat_last_n;
    if (s->n_history < s->p.repeat_last_n) s->n_history++;
}

/* splitmix64: a uniform double in [0, 1). */
static double next_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* Each distinct id in the history once, as llama.cpp's penalty does. */
static void apply_repeat_penalty(mb_sampler *s, float *logits)
{
    float pen = (float)s->p.repeat_penalty;
    if (pen == 1.0f) return;
    for (uint32_t i = 0; i < s->n_history; i++) {
        int32_t id = s->history[i];
        int seen = 0;
        for (uint32_t j = 0; j < i && !seen; j++)
            seen = s->history[j] == id;
        if (seen || id < 0 || (uint32_t)id >= s->n_vocab) continue;
        logits[id] = logits[id] > 0 ? logits[id] / pen : logits[id] * pen;
    }
}

/* Descending by logit, ties by id so the order never depends on qsort. */
static int by_logit_desc(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Min-heap sift-down on logits for the top-k selection. */
static void heap_down(candidate *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && by_logit_desc(&h[l], &h[m]) > 0) m = l;
        if (r < n && by_logit_desc(&h[r], &h[m]) > 0) m = r;
        if (m == i) return;
        candidate t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

int32_t mb_sampler_sample(mb_sampler *s, float *logits)
{
    apply_repeat_penalty(s, logits);
    const uint32_t n = s->n_vocab;
    int32_t pick = 0;
    if (s->p.temperature <= 0) {
        for (uint32_t i = 1; i < n; i++)
            if (logits[i] > logits[pick]) pick = (int32_t)i;
        mb_sampler_accept(s, pick);
        return pick;
    }

    /* Top-k: a heap of the k best, so a large vocabulary costs O(n log k). */
    uint32_t k = s->p.top_k && s->p.top_k < n ? s->p.top_k : n;
    candidate *c = s->cand;
    if (k < n) {
        for (uint32_t i = 0; i < k; i++)
            c[i] = (candidate){(int32_t)i, logits[i]};
        for (uint32_t i = k / 2; i-- > 0;)
            heap_down(c, k, i);
        for (uint32_t i = k; i < n; i++) {
            candidate x = {(int32_t)i, logits[i]};
            if (by_logit_desc(&x, &c[0]) < 0) {
                c[0] = x;
                heap_down(c, k, 0);
            }
        }
    } else {
        for (uint32_t i = 0; i < n; i++)
            c[i] = (candidate){(int32_t)i, logits[i]};
    }
    float max_logit = c[0].logit;
    for (uint32_t i = 1; i < k; i++)
        max_logit = c[i].logit > max_logit ? c[i].logit : max_logit;

    /* Softmax normaliser over the top-k set, then min-p as a logit
     * threshold (p_i / p_max = exp(l_i - l_max)) before sorting, so a full
     * vocabulary sorts only the survivors. */
    double sum = 0;
    for (uint32_t i = 0; i < k; i++)
        sum += exp((double)c[i].logit - max_logit);
    uint32_t kept = k;
    if (s->p.min_p > 0) {
        double floor_logit = max_logit + log(s->p.min_p);
        kept = 0;
        for (uint32_t i = 0; i < k; i++)
            if (c[i].logit >= floor_logit) c[kept++] = c[i];
        if (kept == 0) kept = 1; /* cannot happen: the max passes; kept for clarity */
    }
    qsort(c, kept, sizeof *c, by_logit_desc);
    if (s->p.top_p < 1) {
        double cum = 0;
        uint32_t i = 0;
        for (; i < kept; i++) {
            cum += exp((double)c[i].logit - max_logit) / sum;
            if (cum >= s->p.top_p) break;
        }
        kept = i + 1 < kept ? i + 1 : kept;
    }

    /* Temperature, then one draw. */
    double inv_t = 1.0 / s->p.temperature, total = 0;
    for (uint32_t i = 0; i < kept; i++)
        total += exp(((double)c[i].logit - max_logit) * inv_t);
    double r = next_uniform(&s->rng) * total, acc = 0;
    pick = c[kept - 1].id;
    for (uint32_t i = 0; i < kept; i++) {
        acc += exp(((double)c[i].logit - max_logit) * inv_t);
        if (r < acc) {
            pick = c[i].id;
            break;
        }
    }
    mb_sampler_accept(s, pick);
    return pick;
}
