/* config.json -> mb_model_config for the supported MoE families. Accepts both
 * the transformers 5 form (rope_parameters, dtype) and the older one
 * (rope_theta, torch_dtype), and refuses, by name, every setting that would
 * make this build compute something other than what transformers computes. */
#include "broker/model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Upper bounds that keep every derived size comfortably inside 64 bits and
 * every per-layer allocation sane, whatever a config claims. */
#define MAX_LAYERS 4096u
#define MAX_DIM (1u << 20)
#define MAX_HEADS 4096u
#define MAX_VOCAB (1u << 24)
#define MAX_EXPERTS 65536u
#define MAX_POSITIONS (1u << 24)

static const struct {
    const char *arch_name;
    const char *model_type;
} archs[] = {
    [MB_ARCH_MIXTRAL] = {"MixtralForCausalLM", "mixtral"},
    [MB_ARCH_QWEN2_MOE] = {"Qwen2MoeForCausalLM", "qwen2_moe"},
    [MB_ARCH_QWEN3_MOE] = {"Qwen3MoeForCausalLM", "qwen3_moe"},
};
#define N_ARCHS (sizeof(archs) / sizeof(archs[0]))

typedef struct {
    const cJSON *root;
    char *err;
    size_t cap;
} ctx;

static mb_status fail(ctx *c, mb_status st, const char *fmt, ...)
{
    if (c->err && c->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->cap, fmt, ap);
        va_end(ap);
    }
    return st;
}

const char *mb_model_arch_name(int arch)
{
    return arch >= 0 && (size_t)arch < N_ARCHS ? archs[arch].arch_name : "?";
}

/* The item for key, treating an explicit JSON null as absent. */
static const cJSON *item(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

/* Reads an integer field into *out, which keeps its value when the field is
 * absent and present is non-NULL (optional field); required otherwise. */
static mb_status get_u32(ctx *c, const char *key, uint32_t min, uint32_t max, uint32_t *out,
                         int *present)
{
    const cJSON *v = item(c->root, key);
    if (present)
        *present = v != NULL;
    if (!v) {
        if (present)
            return MB_STATUS_OK;
        return fail(c, MB_STATUS_CONFIG, "required field '%s' is missing", key);
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)min && d <= (double)max) || d != floor(d))
        return fail(c, MB_STATUS_CONFIG, "field '%s' must be an integer in [%u, %u]", key, min,
                    max);
    *out = (uint32_t)d;
    return MB_STATUS_OK;
}

static mb_status get_bool(ctx *c, const char *key, int dflt, int *out)
{
    const cJSON *v = item(c->root, key);
    if (!v) {
        *out = dflt;
        return MB_STATUS_OK;
    }
    if (!cJSON_IsBool(v))
        return fail(c, MB_STATUS_CONFIG, "field '%s' must be true or false", key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return MB_STATUS_OK;
}

/* A finite positive number; name is how the message spells the field. */
static mb_status positive(ctx *c, const cJSON *v, const char *name, float *out)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d > 0.0 && d < 1e30))
        return fail(c, MB_STATUS_CONFIG, "field '%s' must be a positive number", name);
    *out = (float)d;
    return MB_STATUS_OK;
}

static mb_status parse_arch(ctx *c, mb_arch *arch)
{
    const cJSON *list = item(c->root, "architectures");
    const char *name = NULL;
    if (list) {
        const cJSON *first = cJSON_GetArrayItem(list, 0);
        if (!cJSON_IsArray(list) || !cJSON_IsString(first))
            return fail(c, MB_STATUS_CONFIG, "field 'architectures' must be a list of names");
        name = first->valuestring;
        for (size_t i = 0; i < N_ARCHS; i++)
            if (strcmp(name, archs[i].arch_name) == 0) {
                *arch = (mb_arch)i;
                return MB_STATUS_OK;
            }
    } else {
        const cJSON *mt = item(c->root, "model_type");
        if (!cJSON_IsString(mt))
            return fail(c, MB_STATUS_CONFIG,
                        "required field 'architectures' (or 'model_type') is missing");
        name = mt->valuestring;
        for (size_t i = 0; i < N_ARCHS; i++)
            if (strcmp(name, archs[i].model_type) == 0) {
                *arch = (mb_arch)i;
                return MB_STATUS_OK;
            }
    }
    return fail(c, MB_STATUS_UNSUPPORTED,
                "architecture '%.100s' is not supported (supported: MixtralForCausalLM, "
                "Qwen2MoeForCausalLM, Qwen3MoeForCausalLM)", name);
}

/* rope_parameters.rope_theta (current) or rope_theta (older); any scaling
 * other than the default one changes the frequencies, so it is refused. */
static mb_status parse_rope(ctx *c, float *theta)
{
    const cJSON *params = item(c->root, "rope_parameters");
    const cJSON *scaling = item(c->root, "rope_scaling");
    const cJSON *v = NULL;
    const char *name = "rope_theta";
    if (params) {
        if (!cJSON_IsObject(params))
            return fail(c, MB_STATUS_CONFIG, "field 'rope_parameters' must be an object");
        v = item(params, "rope_theta");
        name = "rope_parameters.rope_theta";
    }
    if (!v)
        v = item(c->root, "rope_theta");
    if (!v)
        return fail(c, MB_STATUS_CONFIG, "required field '%s' is missing", name);
    mb_status st = positive(c, v, name, theta);
    if (st != MB_STATUS_OK)
        return st;
    const cJSON *objs[2] = {params, scaling};
    for (int i = 0; i < 2; i++) {
        if (!objs[i])
            continue;
        if (!cJSON_IsObject(objs[i]))
            return fail(c, MB_STATUS_CONFIG, "field 'rope_scaling' must be an object or null");
        const cJSON *type = item(objs[i], "rope_type");
        if (!type)
            type = item(objs[i], "type");
        if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "default") != 0))
            return fail(c, MB_STATUS_UNSUPPORTED, "rope type '%.40s' is not supported (only "
                        "'default')", cJSON_IsString(type) ? type->valuestring : "?");
    }
    return MB_STATUS_OK;
}

static mb_status parse_dtype(ctx *c, mb_dtype *dtype)
{
    const char *key = "dtype";
    const cJSON *v = item(c->root, key);
    if (!v) {
        key = "torch_dtype";
        v = item(c->root, key);
    }
    *dtype = MB_DTYPE_COUNT_;
    if (!v)
        return MB_STATUS_OK;
    if (!cJSON_IsString(v))
        return fail(c, MB_STATUS_CONFIG, "field '%s' must be a string", key);
    if (mb_dtype_parse(v->valuestring, dtype) != MB_STATUS_OK)
        return fail(c, MB_STATUS_UNSUPPORTED, "field '%s': weight dtype '%.40s' is not supported "
                    "(float32, float16, bfloat16)", key, v->valuestring);
    return MB_STATUS_OK;
}

/* Features of the Qwen families this build does not run: dense MLP layers
 * between MoE ones, sliding-window layers, Qwen3's attention biases. */
static mb_status qwen_limits(ctx *c, mb_arch arch)
{
    uint32_t step = 1;
    int present, flag;
    mb_status st = get_u32(c, "decoder_sparse_step", 0, UINT32_MAX, &step, &present);
    if (st != MB_STATUS_OK)
        return st;
    if (step != 1)
        return fail(c, MB_STATUS_UNSUPPORTED, "decoder_sparse_step %u: dense MLP layers are not "
                    "supported yet (every layer must be MoE)", step);
    const cJSON *dense = item(c->root, "mlp_only_layers");
    if (dense && (!cJSON_IsArray(dense) || cJSON_GetArraySize(dense) > 0))
        return fail(c, MB_STATUS_UNSUPPORTED, "mlp_only_layers is not empty: dense MLP layers are "
                    "not supported yet (every layer must be MoE)");
    if ((st = get_bool(c, "use_sliding_window", 0, &flag)) != MB_STATUS_OK)
        return st;
    if (flag)
        return fail(c, MB_STATUS_UNSUPPORTED, "use_sliding_window is true: sliding-window "
                    "attention is not supported for %s", archs[arch].arch_name);
    if (arch == MB_ARCH_QWEN3_MOE) {
        if ((st = get_bool(c, "attention_bias", 0, &flag)) != MB_STATUS_OK)
            return st;
        if (flag)
            return fail(c, MB_STATUS_UNSUPPORTED, "attention_bias is true: Qwen3-MoE attention "
                        "biases are not supported");
    }
    return MB_STATUS_OK;
}

/* Fields shared by all families, then the ones that differ. */
static mb_status parse_sizes(ctx *c, mb_model_config *m)
{
    mb_status st;
    int present;
    if ((st = get_u32(c, "num_hidden_layers", 1, MAX_LAYERS, &m->n_layers, NULL)) ||
        (st = get_u32(c, "hidden_size", 1, MAX_DIM, &m->d_model, NULL)) ||
        (st = get_u32(c, "num_attention_heads", 1, MAX_HEADS, &m->n_heads, NULL)) ||
        (st = get_u32(c, "num_key_value_heads", 1, MAX_HEADS, &m->n_kv_heads, NULL)) ||
        (st = get_u32(c, "vocab_size", 1, MAX_VOCAB, &m->vocab, NULL)) ||
        (st = get_u32(c, "num_experts_per_tok", 1, MAX_EXPERTS, &m->top_k, NULL)) ||
        (st = get_u32(c, "max_position_embeddings", 1, MAX_POSITIONS, &m->max_positions, NULL)))
        return st;
    if ((st = get_u32(c, "head_dim", 1, MAX_DIM, &m->head_dim, &present)))
        return st;
    if (!present) {
        if (m->d_model % m->n_heads)
            return fail(c, MB_STATUS_CONFIG, "head_dim is absent and hidden_size %u is not a "
                        "multiple of num_attention_heads %u", m->d_model, m->n_heads);
        m->head_dim = m->d_model / m->n_heads;
    }
    /* Mixtral names the expert count num_local_experts, Qwen2-MoE
     * num_experts; transformers 5 writes either for Qwen3-MoE. Accept both
     * everywhere, but never two that disagree. */
    uint32_t n_local = 0, n_exp = 0;
    int has_local, has_exp;
    if ((st = get_u32(c, "num_local_experts", 1, MAX_EXPERTS, &n_local, &has_local)) ||
        (st = get_u32(c, "num_experts", 1, MAX_EXPERTS, &n_exp, &has_exp)))
        return st;
    if (has_local && has_exp && n_local != n_exp)
        return fail(c, MB_STATUS_CONFIG, "fields 'num_local_experts' (%u) and 'num_experts' (%u) "
                    "disagree", n_local, n_exp);
    if (!has_local && !has_exp)
        return fail(c, MB_STATUS_CONFIG, "required field '%s' is missing",
                    m->arch == MB_ARCH_MIXTRAL ? "num_local_experts" : "num_experts");
    m->n_experts = has_local ? n_local : n_exp;

    const char *dff_key = m->arch == MB_ARCH_MIXTRAL ? "intermediate_size" : "moe_intermediate_size";
    if ((st = get_u32(c, dff_key, 1, MAX_DIM, &m->d_ff_expert, NULL)))
        return st;
    m->d_ff_shared = 0;
    if (m->arch == MB_ARCH_QWEN2_MOE &&
        (st = get_u32(c, "shared_expert_intermediate_size", 1, MAX_DIM, &m->d_ff_shared, NULL)))
        return st;
    return MB_STATUS_OK;
}

static mb_status check_consistency(ctx *c, const mb_model_config *m)
{
    if (m->n_kv_heads > m->n_heads || m->n_heads % m->n_kv_heads)
        return fail(c, MB_STATUS_CONFIG, "num_attention_heads %u is not a multiple of "
                    "num_key_value_heads %u", m->n_heads, m->n_kv_heads);
    if (m->head_dim % 2)
        return fail(c, MB_STATUS_CONFIG, "head_dim %u must be even for rotary embeddings",
                    m->head_dim);
    if ((uint64_t)m->n_heads * m->head_dim > MAX_DIM)
        return fail(c, MB_STATUS_CONFIG, "num_attention_heads * head_dim = %llu is too large",
                    (unsigned long long)m->n_heads * m->head_dim);
    if (m->top_k > m->n_experts)
        return fail(c, MB_STATUS_CONFIG, "num_experts_per_tok %u exceeds the expert count %u",
                    m->top_k, m->n_experts);
    return MB_STATUS_OK;
}

/* Only silu-gated experts and all-full-attention layer lists are run. */
static mb_status common_limits(ctx *c)
{
    const cJSON *act = item(c->root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return fail(c, MB_STATUS_UNSUPPORTED, "hidden_act '%.40s' is not supported (only silu)",
                    cJSON_IsString(act) ? act->valuestring : "?");
    const cJSON *types = item(c->root, "layer_types");
    if (types) {
        if (!cJSON_IsArray(types))
            return fail(c, MB_STATUS_CONFIG, "field 'layer_types' must be a list");
        for (const cJSON *t = types->child; t; t = t->next)
            if (!cJSON_IsString(t) || strcmp(t->valuestring, "full_attention") != 0)
                return fail(c, MB_STATUS_UNSUPPORTED, "layer_types lists '%.40s': only "
                            "full_attention layers are supported",
                            cJSON_IsString(t) ? t->valuestring : "?");
    }
    return MB_STATUS_OK;
}

mb_status mb_model_config_parse(const char *json_text, mb_model_config *cfg, char *err,
                                size_t err_cap)
{
    if (!json_text || !cfg)
        return MB_STATUS_INVALID_ARG;
    cJSON *root = cJSON_ParseWithOpts(json_text, NULL, 1); /* nothing but spaces after */
    ctx c = {root, err, err_cap};
    mb_model_config m;
    memset(&m, 0, sizeof(m));
    mb_status st;
    if (!cJSON_IsObject(root)) {
        st = fail(&c, MB_STATUS_CONFIG, "malformed JSON or not an object");
        goto out;
    }
    if ((st = parse_arch(&c, &m.arch)) || (st = common_limits(&c)) ||
        (st = parse_sizes(&c, &m)) || (st = check_consistency(&c, &m)) ||
        (st = parse_rope(&c, &m.rope_theta)) || (st = parse_dtype(&c, &m.dtype)) ||
        (st = get_bool(&c, "tie_word_embeddings", 0, &m.tie_embeddings)))
        goto out;
    const cJSON *eps = item(root, "rms_norm_eps");
    if (!eps) {
        st = fail(&c, MB_STATUS_CONFIG, "required field 'rms_norm_eps' is missing");
        goto out;
    }
    if ((st = positive(&c, eps, "rms_norm_eps", &m.rms_eps)))
        goto out;

    switch (m.arch) {
    case MB_ARCH_MIXTRAL: {
        /* Mixtral's router softmaxes all logits and renormalises the top-k,
         * which equals norm_topk_prob. */
        m.norm_topk_prob = 1;
        int present;
        if ((st = get_u32(&c, "sliding_window", 0, UINT32_MAX, &m.sliding_window, &present)))
            goto out;
        /* A window no sequence can exceed is no window. */
        if (!present || m.sliding_window >= m.max_positions)
            m.sliding_window = 0;
        break;
    }
    case MB_ARCH_QWEN2_MOE:
    case MB_ARCH_QWEN3_MOE:
        if ((st = qwen_limits(&c, m.arch)) ||
            (st = get_bool(&c, "norm_topk_prob", 0, &m.norm_topk_prob)))
            goto out;
        /* Qwen2 attention always has q/k/v biases, whatever qkv_bias says. */
        m.qkv_bias = m.arch == MB_ARCH_QWEN2_MOE;
        m.qk_norm = m.arch == MB_ARCH_QWEN3_MOE;
        break;
    }
    *cfg = m;
    st = MB_STATUS_OK;
out:
    cJSON_Delete(root);
    return st;
}
