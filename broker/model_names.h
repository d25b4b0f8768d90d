/* Hugging Face tensor names of each weight, per family: the one place that
 * knows how checkpoints spell things. Private to the loader and its tests. */
#ifndef MB_BROKER_MODEL_NAMES_H
#define MB_BROKER_MODEL_NAMES_H

#include <stddef.h>
#include <stdint.h>

#include "broker/model.h"

typedef enum {
    MB_WEIGHT_EMBED,       /* model.embed_tokens.weight */
    MB_WEIGHT_FINAL_NORM,  /* model.norm.weight */
    MB_WEIGHT_LM_HEAD,     /* lm_head.weight */
    MB_WEIGHT_ATTN_NORM,   /* per layer from here on */
    MB_WEIGHT_WQ,
    MB_WEIGHT_WK,
    MB_WEIGHT_WV,
    MB_WEIGHT_WO,
    MB_WEIGHT_BQ,          /* Qwen2-MoE */
    MB_WEIGHT_BK,
    MB_WEIGHT_BV,
    MB_WEIGHT_Q_NORM,      /* Qwen3-MoE */
    MB_WEIGHT_K_NORM,
    MB_WEIGHT_FFN_NORM,
    MB_WEIGHT_ROUTER,      /* hub name (Mixtral: block_sparse_moe.gate) */
    MB_WEIGHT_ROUTER_ALT,  /* transformers 5 module name (Mixtral: mlp.gate) */
    MB_WEIGHT_EXPERT_GATE, /* per expert: w1 / gate_proj */
    MB_WEIGHT_EXPERT_UP,   /* w3 / up_proj */
    MB_WEIGHT_EXPERT_DOWN, /* w2 / down_proj */
    MB_WEIGHT_FUSED_GATE_UP, /* [E][2*d_ff][d_model], gate rows first */
    MB_WEIGHT_FUSED_DOWN,    /* [E][d_model][d_ff] */
    MB_WEIGHT_SHARED_GATE,   /* Qwen2-MoE shared expert gate_proj */
    MB_WEIGHT_SHARED_UP,
    MB_WEIGHT_SHARED_DOWN,
    MB_WEIGHT_SHARED_SCALE,  /* Qwen2-MoE shared_expert_gate (sigmoid) */
    MB_WEIGHT_COUNT_
} mb_weight_role;

/* Writes the tensor name of role (layer and expert where they apply) into
 * buf. Returns 0, or -1 when the family has no such weight or buf is too
 * small. Cannot fail otherwise; allocates nothing. */
int mb_model_weight_name(mb_arch arch, mb_weight_role role, uint32_t layer, uint32_t expert,
                         char *buf, size_t cap);

#endif
