/* Rotary position embedding in transformers' "rotate half" layout (the
 * default rope type of Llama, Mixtral and Qwen): dimension i pairs with
 * i + head_dim/2. Tables are computed once for every position. */
#ifndef MB_BROKER_ROPE_H
#define MB_BROKER_ROPE_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

typedef struct {
    uint32_t head_dim; /* even */
    int interleaved;   /* 0 after init: pairs i, i + head_dim/2 ("rotate half",
                        * ggml NEOX); 1: pairs 2i, 2i+1 (ggml NORM, the layout
                        * GGUF llama checkpoints store q and k in) */
    uint32_t n_pos;    /* positions covered by the tables */
    float *cos;        /* [n_pos][head_dim/2] */
    float *sin;        /* [n_pos][head_dim/2] */
} mb_rope;

/* Fills the tables for positions [0, n_pos) the way transformers does:
 * inv_freq[i] = 1 / theta^(2i/head_dim) and angle = pos * inv_freq[i], both
 * rounded to f32, then cos/sin of that f32 angle. The caller owns r; free
 * with mb_rope_fini. Errors: INVALID_ARG (odd or zero head_dim, n_pos 0,
 * theta not > 0), OVERFLOW, NOMEM. */
mb_status mb_rope_init(mb_rope *r, uint32_t head_dim, uint32_t n_pos, float theta);
void mb_rope_fini(mb_rope *r);

/* Rotates x in place (pairing dimensions as r->interleaved says): x[t] holds n_heads heads of head_dim values
 * (row stride ldx floats) for the token at position pos0 + t.
 * The caller guarantees pos0 + n_tokens <= r->n_pos. Cannot fail. */
void mb_rope_apply(const mb_rope *r, float *x, size_t ldx, uint32_t n_tokens, uint32_t n_heads,
                   uint32_t pos0);

#endif
