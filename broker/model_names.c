/* Tensor names per family, as Hugging Face hub checkpoints spell them
 * (per-expert names), plus the fused 3-D expert layout that transformers 5
 * can save. A name is a scope (global, per layer, per expert) and a suffix. */
#include "broker/model_names.h"

#include <stdio.h>

enum { SCOPE_NONE, SCOPE_GLOBAL, SCOPE_LAYER, SCOPE_EXPERT };

typedef struct {
    unsigned char scope;
    const char *a; /* global: the name; layer: after "model.layers.N."; expert: before E */
    const char *b; /* expert: after E */
} name_rule;

#define G(s) {SCOPE_GLOBAL, s, NULL}
#define L(s) {SCOPE_LAYER, s, NULL}
#define E(a, b) {SCOPE_EXPERT, a, b}

/* Shared by all three families. */
#define COMMON_RULES                                                                               \
    [MB_WEIGHT_EMBED] = G("model.embed_tokens.weight"),                                            \
    [MB_WEIGHT_FINAL_NORM] = G("model.norm.weight"), [MB_WEIGHT_LM_HEAD] = G("lm_head.weight"),    \
    [MB_WEIGHT_ATTN_NORM] = L("input_layernorm.weight"),                                           \
    [MB_WEIGHT_WQ] = L("self_attn.q_proj.weight"), [MB_WEIGHT_WK] = L("self_attn.k_proj.weight"),  \
    [MB_WEIGHT_WV] = L("self_attn.v_proj.weight"), [MB_WEIGHT_WO] = L("self_attn.o_proj.weight"),  \
    [MB_WEIGHT_FFN_NORM] = L("post_attention_layernorm.weight"),                                   \
    [MB_WEIGHT_ROUTER_ALT] = L("mlp.gate.weight"),                                                 \
    [MB_WEIGHT_FUSED_GATE_UP] = L("mlp.experts.gate_up_proj"),                                     \
    [MB_WEIGHT_FUSED_DOWN] = L("mlp.experts.down_proj")

/* Qwen2-MoE and Qwen3-MoE share the mlp.* expert naming. */
#define QWEN_EXPERT_RULES                                                                          \
    [MB_WEIGHT_ROUTER] = L("mlp.gate.weight"),                                                     \
    [MB_WEIGHT_EXPERT_GATE] = E("mlp.experts.", ".gate_proj.weight"),                              \
    [MB_WEIGHT_EXPERT_UP] = E("mlp.experts.", ".up_proj.weight"),                                  \
    [MB_WEIGHT_EXPERT_DOWN] = E("mlp.experts.", ".down_proj.weight")

static const name_rule rules[][MB_WEIGHT_COUNT_] = {
    [MB_ARCH_MIXTRAL] = {
        COMMON_RULES,
        [MB_WEIGHT_ROUTER] = L("block_sparse_moe.gate.weight"),
        /* w1 = gate, w3 = up, w2 = down */
        [MB_WEIGHT_EXPERT_GATE] = E("block_sparse_moe.experts.", ".w1.weight"),
        [MB_WEIGHT_EXPERT_UP] = E("block_sparse_moe.experts.", ".w3.weight"),
        [MB_WEIGHT_EXPERT_DOWN] = E("block_sparse_moe.experts.", ".w2.weight"),
    },
    [MB_ARCH_QWEN2_MOE] = {
        COMMON_RULES,
        QWEN_EXPERT_RULES,
        [MB_WEIGHT_BQ] = L("self_attn.q_proj.bias"),
        [MB_WEIGHT_BK] = L("self_attn.k_proj.bias"),
        [MB_WEIGHT_BV] = L("self_attn.v_proj.bias"),
        [MB_WEIGHT_SHARED_GATE] = L("mlp.shared_expert.gate_proj.weight"),
        [MB_WEIGHT_SHARED_UP] = L("mlp.shared_expert.up_proj.weight"),
        [MB_WEIGHT_SHARED_DOWN] = L("mlp.shared_expert.down_proj.weight"),
        [MB_WEIGHT_SHARED_SCALE] = L("mlp.shared_expert_gate.weight"),
    },
    [MB_ARCH_QWEN3_MOE] = {
        COMMON_RULES,
        QWEN_EXPERT_RULES,
        [MB_WEIGHT_Q_NORM] = L("self_attn.q_norm.weight"),
        [MB_WEIGHT_K_NORM] = L("self_attn.k_norm.weight"),
    },
};

int mb_model_weight_name(mb_arch arch, mb_weight_role role, uint32_t layer, uint32_t expert,
                         char *buf, size_t cap)
{
    if ((unsigned)arch >= sizeof(rules) / sizeof(rules[0]) || (unsigned)role >= MB_WEIGHT_COUNT_ ||
        !buf || cap == 0)
        return -1;
    const name_rule *r = &rules[arch][role];
    int n;
    switch (r->scope) {
    case SCOPE_GLOBAL: n = snprintf(buf, cap, "%s", r->a); break;
    case SCOPE_LAYER: n = snprintf(buf, cap, "model.layers.%u.%s", layer, r->a); break;
    case SCOPE_EXPERT:
        n = snprintf(buf, cap, "model.layers.%u.%s%u%s", layer, r->a, expert, r->b);
        break;
    default: return -1;
    }
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}
