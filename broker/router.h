/* Top-k expert routing from router logits, as transformers computes it for
 * Mixtral, Qwen2-MoE and Qwen3-MoE: softmax over every expert in f32, the k
 * largest probabilities, then (optionally) renormalised to sum to one. */
#ifndef MB_BROKER_ROUTER_H
#define MB_BROKER_ROUTER_H

#include <stdint.h>

#include "broker/model.h"

typedef struct {
    uint32_t n_experts; /* >= 1 */
    uint32_t top_k;     /* 1..n_experts */
    int renorm;         /* divide the k weights by their sum */
} mb_router;

/* The routing rule of a model family: Mixtral always renormalises
 * (MixtralTopKRouter has no switch); the Qwen families follow
 * norm_topk_prob. Errors: INVALID_ARG when top_k is 0 or exceeds n_experts. */
mb_status mb_router_init(mb_router *r, const mb_model_config *cfg);

/* For each of n_tokens rows of logits[n_tokens][n_experts], in one pass:
 * softmax in place (logits becomes the probabilities), top-k into
 * expert_ids[t][0..k) in descending probability (ties: lower index first)
 * and their weights into gate[t][0..k), renormalised when r->renorm.
 * Allocates nothing, waits on nothing. Cannot fail. */
void mb_router_select(const mb_router *r, float *logits, uint32_t n_tokens, int32_t *expert_ids,
                      float *gate);

#endif
