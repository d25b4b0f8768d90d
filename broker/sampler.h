/* Token sampling from a step's logits, with llama.cpp's knobs and meanings:
 * repeat penalty over the last N tokens, then top-k, top-p and min-p
 * truncation, then temperature and a draw from a seeded generator.
 * Temperature 0 is greedy (argmax after the penalty): the same logits give
 * the same token on every run. A sampler is one sequence's state; not
 * thread-safe. */
#ifndef MB_BROKER_SAMPLER_H
#define MB_BROKER_SAMPLER_H

#include <stdint.h>

#include "protocol/status.h"

typedef struct {
    double temperature;     /* 0 = greedy; > 0 divides the logits before the draw */
    uint32_t top_k;         /* keep the k most likely; 0 = all */
    double top_p;           /* keep the fewest whose probabilities sum to >= p; 1 = all */
    double min_p;           /* drop p < min_p * p_max; 0 = off */
    double repeat_penalty;  /* > 0; 1 = off */
    uint32_t repeat_last_n; /* tokens of history the penalty sees; 0 = none */
    uint64_t seed;          /* the generator's seed */
} mb_sampler_params;

typedef struct mb_sampler mb_sampler;

/* Creates a sampler for logits of n_vocab entries (allocates its candidate
 * buffers now; sampling allocates nothing). Errors: MB_STATUS_INVALID_ARG
 * (NULL, n_vocab 0, a parameter out of range: temperature < 0, top_p or
 * min_p outside [0, 1], repeat_penalty <= 0, anything NaN), MB_STATUS_NOMEM. */
mb_status mb_sampler_create(const mb_sampler_params *p, uint32_t n_vocab, mb_sampler **out);

/* Frees the sampler; NULL is a no-op. */
void mb_sampler_destroy(mb_sampler *s);

/* Records a token of the sequence (prompt or generated) in the history the
 * repeat penalty looks at. Cannot fail. */
void mb_sampler_accept(mb_sampler *s, int32_t id);

/* Picks the next token from logits[n_vocab] and records it with
 * mb_sampler_accept. The repeat penalty is applied to logits in place.
 * Returns an id in [0, n_vocab). Cannot fail. */
int32_t mb_sampler_sample(mb_sampler *s, float *logits);

#endif
