/* config.json parsing: the current and the older form of each family, derived
 * values (head_dim), per-family quirks (Qwen2's qkv biases, Qwen3's two
 * expert-count keys), refusals by name (unknown architecture, dense layers,
 * rope scaling) and a CONFIG error naming every missing required field. */
#include "broker/model.h"
#include "broker/model_names.h"

#include <math.h>

#include "tests/unit/model/st_testutil.h"

static char err[512];

/* transformers 5 form, as saved for the fixtures. */
static const char *mixtral_new =
    "{\"architectures\":[\"MixtralForCausalLM\"],\"dtype\":\"bfloat16\",\"head_dim\":16,"
    "\"hidden_act\":\"silu\",\"hidden_size\":128,\"intermediate_size\":256,"
    "\"max_position_embeddings\":256,\"model_type\":\"mixtral\",\"num_attention_heads\":8,"
    "\"num_experts_per_tok\":2,\"num_hidden_layers\":4,\"num_key_value_heads\":2,"
    "\"num_local_experts\":8,\"rms_norm_eps\":1e-05,"
    "\"rope_parameters\":{\"rope_theta\":1000000.0,\"rope_type\":\"default\"},"
    "\"sliding_window\":null,\"tie_word_embeddings\":false,\"vocab_size\":512}";

/* Older form (Mixtral-8x7B style): rope_theta, torch_dtype, no head_dim. */
static const char *mixtral_old =
    "{\"architectures\":[\"MixtralForCausalLM\"],\"torch_dtype\":\"float16\","
    "\"hidden_act\":\"silu\",\"hidden_size\":4096,\"intermediate_size\":14336,"
    "\"max_position_embeddings\":32768,\"model_type\":\"mixtral\",\"num_attention_heads\":32,"
    "\"num_experts_per_tok\":2,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"num_local_experts\":8,\"rms_norm_eps\":1e-05,\"rope_theta\":1000000.0,"
    "\"sliding_window\":4096,\"tie_word_embeddings\":false,\"vocab_size\":32000}";

/* Qwen1.5-MoE style: older form, no qkv_bias key, no head_dim. */
static const char *qwen2_old =
    "{\"architectures\":[\"Qwen2MoeForCausalLM\"],\"torch_dtype\":\"bfloat16\","
    "\"decoder_sparse_step\":1,\"hidden_act\":\"silu\",\"hidden_size\":2048,"
    "\"intermediate_size\":5632,\"max_position_embeddings\":8192,\"max_window_layers\":21,"
    "\"model_type\":\"qwen2_moe\",\"moe_intermediate_size\":1408,\"norm_topk_prob\":false,"
    "\"num_attention_heads\":16,\"num_experts\":60,\"num_experts_per_tok\":4,"
    "\"num_hidden_layers\":24,\"num_key_value_heads\":16,\"rms_norm_eps\":1e-06,"
    "\"rope_theta\":1000000.0,\"rope_scaling\":null,\"shared_expert_intermediate_size\":5632,"
    "\"sliding_window\":32768,\"tie_word_embeddings\":false,\"use_sliding_window\":false,"
    "\"vocab_size\":151936}";

/* Qwen3-MoE, current form, with num_local_experts as transformers 5 saves. */
static const char *qwen3_new =
    "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"attention_bias\":false,"
    "\"decoder_sparse_step\":1,\"dtype\":\"bfloat16\",\"head_dim\":64,\"hidden_size\":128,"
    "\"intermediate_size\":256,\"max_position_embeddings\":256,\"mlp_only_layers\":[],"
    "\"model_type\":\"qwen3_moe\",\"moe_intermediate_size\":64,\"norm_topk_prob\":true,"
    "\"num_attention_heads\":4,\"num_experts_per_tok\":4,\"num_hidden_layers\":3,"
    "\"num_key_value_heads\":2,\"num_local_experts\":16,\"rms_norm_eps\":1e-06,"
    "\"rope_parameters\":{\"rope_theta\":10000.0,\"rope_type\":\"default\"},"
    "\"tie_word_embeddings\":true,\"use_sliding_window\":false,\"vocab_size\":512}";

static mb_status parse(const char *text, mb_model_config *cfg)
{
    err[0] = 0;
    return mb_model_config_parse(text, cfg, err, sizeof(err));
}

/* Parses base after edit() changed it; returns the status. */
static mb_status parse_edited(const char *base, void (*edit)(cJSON *, const void *),
                              const void *arg, mb_model_config *cfg)
{
    cJSON *root = cJSON_Parse(base);
    REQUIRE(root);
    edit(root, arg);
    char *text = cJSON_PrintUnformatted(root);
    REQUIRE(text);
    mb_status st = parse(text, cfg);
    free(text);
    cJSON_Delete(root);
    return st;
}

static void del_key(cJSON *root, const void *key)
{
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
}

typedef struct {
    const char *key;
    const char *json;
} set_arg;

static void set_key(cJSON *root, const void *arg)
{
    const set_arg *a = arg;
    cJSON *v = cJSON_Parse(a->json);
    REQUIRE(v);
    if (cJSON_GetObjectItemCaseSensitive(root, a->key))
        cJSON_ReplaceItemInObjectCaseSensitive(root, a->key, v);
    else
        cJSON_AddItemToObject(root, a->key, v);
}

static mb_status with(const char *base, const char *key, const char *json, mb_model_config *cfg)
{
    set_arg a = {key, json};
    return parse_edited(base, set_key, &a, cfg);
}

static void test_forms(void)
{
    mb_model_config c;
    REQUIRE(parse(mixtral_new, &c) == MB_STATUS_OK);
    CHECK_EQ(c.arch, MB_ARCH_MIXTRAL);
    CHECK_EQ(c.n_layers, 4);
    CHECK_EQ(c.d_model, 128);
    CHECK_EQ(c.n_heads, 8);
    CHECK_EQ(c.n_kv_heads, 2);
    CHECK_EQ(c.head_dim, 16);
    CHECK_EQ(c.vocab, 512);
    CHECK_EQ(c.n_experts, 8);
    CHECK_EQ(c.top_k, 2);
    CHECK_EQ(c.d_ff_expert, 256);
    CHECK_EQ(c.d_ff_shared, 0);
    CHECK_EQ(c.max_positions, 256);
    CHECK(fabsf(c.rms_eps - 1e-5f) < 1e-12f);
    CHECK(c.rope_theta == 1e6f);
    CHECK_EQ(c.norm_topk_prob, 1);
    CHECK_EQ(c.qkv_bias, 0);
    CHECK_EQ(c.qk_norm, 0);
    CHECK_EQ(c.tie_embeddings, 0);
    CHECK_EQ(c.sliding_window, 0);
    CHECK_EQ(c.dtype, MB_DTYPE_BF16);

    REQUIRE(parse(mixtral_old, &c) == MB_STATUS_OK);
    CHECK_EQ(c.head_dim, 4096 / 32); /* derived */
    CHECK_EQ(c.n_layers, 32);
    CHECK_EQ(c.d_ff_expert, 14336);
    CHECK(c.rope_theta == 1e6f);
    CHECK_EQ(c.dtype, MB_DTYPE_F16);
    CHECK_EQ(c.sliding_window, 4096);
    CHECK_EQ(c.vocab, 32000);

    REQUIRE(parse(qwen2_old, &c) == MB_STATUS_OK);
    CHECK_EQ(c.arch, MB_ARCH_QWEN2_MOE);
    CHECK_EQ(c.head_dim, 2048 / 16);
    CHECK_EQ(c.n_experts, 60);
    CHECK_EQ(c.d_ff_expert, 1408);
    CHECK_EQ(c.d_ff_shared, 5632);
    CHECK_EQ(c.qkv_bias, 1);
    CHECK_EQ(c.qk_norm, 0);
    CHECK_EQ(c.norm_topk_prob, 0);
    CHECK_EQ(c.sliding_window, 0);
    /* qkv_bias: false does not remove Qwen2's biases. */
    CHECK_EQ(with(qwen2_old, "qkv_bias", "false", &c), MB_STATUS_OK);
    CHECK_EQ(c.qkv_bias, 1);

    REQUIRE(parse(qwen3_new, &c) == MB_STATUS_OK);
    CHECK_EQ(c.arch, MB_ARCH_QWEN3_MOE);
    CHECK_EQ(c.head_dim, 64); /* given, differs from 128 / 4 */
    CHECK_EQ(c.n_experts, 16);
    CHECK_EQ(c.d_ff_expert, 64);
    CHECK_EQ(c.qk_norm, 1);
    CHECK_EQ(c.qkv_bias, 0);
    CHECK_EQ(c.norm_topk_prob, 1);
    CHECK_EQ(c.tie_embeddings, 1);
    CHECK(c.rope_theta == 1e4f);
    /* Either expert-count key; both must agree. */
    CHECK_EQ(parse_edited(qwen3_new, del_key, "num_local_experts", &c), MB_STATUS_CONFIG);
    CHECK(tst_contains(err, "num_experts"));
    CHECK_EQ(with(qwen3_new, "num_experts", "16", &c), MB_STATUS_OK);
    CHECK_EQ(with(qwen3_new, "num_experts", "8", &c), MB_STATUS_CONFIG);
    CHECK(tst_contains(err, "num_experts") && tst_contains(err, "num_local_experts"));
    /* model_type stands in for a missing architectures list. */
    CHECK_EQ(parse_edited(qwen3_new, del_key, "architectures", &c), MB_STATUS_OK);
    CHECK_EQ(c.arch, MB_ARCH_QWEN3_MOE);
    /* No dtype at all: left for the loader to fill from the file. */
    CHECK_EQ(parse_edited(qwen3_new, del_key, "dtype", &c), MB_STATUS_OK);
    CHECK_EQ(c.dtype, MB_DTYPE_COUNT_);
    CHECK(strcmp(mb_model_arch_name(MB_ARCH_QWEN2_MOE), "Qwen2MoeForCausalLM") == 0);
    CHECK(strcmp(mb_model_arch_name(99), "?") == 0);
}

static void test_refusals(void)
{
    mb_model_config c;
    memset(&c, 0x5a, sizeof(c));
    const mb_model_config before = c;
    CHECK_EQ(with(mixtral_new, "architectures", "[\"LlamaForCausalLM\"]", &c),
             MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "LlamaForCausalLM"));
    CHECK(memcmp(&c, &before, sizeof(c)) == 0); /* untouched on failure */
    CHECK_EQ(with(qwen3_new, "decoder_sparse_step", "2", &c), MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "decoder_sparse_step") && tst_contains(err, "dense"));
    CHECK_EQ(with(qwen2_old, "mlp_only_layers", "[0, 3]", &c), MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "mlp_only_layers"));
    CHECK_EQ(with(qwen2_old, "use_sliding_window", "true", &c), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(with(qwen3_new, "attention_bias", "true", &c), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(with(mixtral_new, "hidden_act", "\"gelu\"", &c), MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "gelu"));
    CHECK_EQ(with(mixtral_new, "rope_parameters", "{\"rope_theta\":1e6,\"rope_type\":\"yarn\"}",
                  &c), MB_STATUS_UNSUPPORTED);
    CHECK(tst_contains(err, "yarn"));
    CHECK_EQ(with(qwen2_old, "rope_scaling", "{\"type\":\"linear\",\"factor\":2}", &c),
             MB_STATUS_UNSUPPORTED);
    CHECK_EQ(with(mixtral_new, "dtype", "\"float8_e4m3fn\"", &c), MB_STATUS_UNSUPPORTED);
    CHECK_EQ(with(mixtral_new, "layer_types", "[\"full_attention\",\"sliding_attention\"]", &c),
             MB_STATUS_UNSUPPORTED);

    /* Invalid values name their field. */
    struct {
        const char *key, *json;
    } bad[] = {
        {"hidden_size", "-1"},          {"hidden_size", "12.5"},   {"hidden_size", "\"128\""},
        {"hidden_size", "1e12"},        {"num_hidden_layers", "0"}, {"vocab_size", "true"},
        {"num_key_value_heads", "3"},   {"num_experts_per_tok", "9"}, {"rms_norm_eps", "0"},
        {"rms_norm_eps", "-1e-5"},      {"head_dim", "15"},        {"tie_word_embeddings", "1"},
        {"num_local_experts", "0"},     {"rope_parameters", "{\"rope_theta\":-5}"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mb_status st = with(mixtral_new, bad[i].key, bad[i].json, &c);
        CHECK_MSG(st == MB_STATUS_CONFIG, "%s = %s gave %s", bad[i].key, bad[i].json,
                  mb_status_name(st));
        const char *name = strcmp(bad[i].key, "num_local_experts") == 0 ? "experts" : bad[i].key;
        if (strcmp(bad[i].key, "num_key_value_heads") == 0 ||
            strcmp(bad[i].key, "num_experts_per_tok") == 0)
            name = bad[i].key; /* the consistency message names both sides */
        if (strcmp(bad[i].key, "rope_parameters") == 0)
            name = "rope_theta";
        CHECK_MSG(tst_contains(err, name), "message for %s: %s", bad[i].key, err);
    }
    CHECK_EQ(with(mixtral_old, "hidden_size", "4001", &c), MB_STATUS_CONFIG); /* 4001 % 32 */
    CHECK(tst_contains(err, "head_dim"));
    CHECK_EQ(parse("{\"architectures\":", &c), MB_STATUS_CONFIG);
    CHECK_EQ(parse("[1,2]", &c), MB_STATUS_CONFIG);
    CHECK_EQ(parse("", &c), MB_STATUS_CONFIG);
}

/* Removing any required field gives CONFIG with that field in the message. */
static void test_missing_fields(void)
{
    struct {
        const char *base;
        const char *keys[16];
    } cases[] = {
        {mixtral_new,
         {"num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
          "vocab_size", "num_experts_per_tok", "max_position_embeddings", "num_local_experts",
          "intermediate_size", "rms_norm_eps", "rope_parameters", NULL}},
        {mixtral_old, {"rope_theta", NULL}},
        {qwen2_old, {"moe_intermediate_size", "shared_expert_intermediate_size", "num_experts",
                     NULL}},
        {qwen3_new, {"moe_intermediate_size", NULL}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        for (int k = 0; cases[i].keys[k]; k++) {
            const char *key = cases[i].keys[k];
            mb_model_config c;
            mb_status st = parse_edited(cases[i].base, del_key, key, &c);
            CHECK_MSG(st == MB_STATUS_CONFIG, "without %s: %s", key, mb_status_name(st));
            const char *want = strcmp(key, "rope_parameters") == 0 ? "rope_theta" : key;
            CHECK_MSG(tst_contains(err, want), "without %s: message '%s'", key, err);
        }
    mb_model_config c;
    CHECK_EQ(parse("{\"hidden_size\":4}", &c), MB_STATUS_CONFIG);
    CHECK(tst_contains(err, "architectures"));
}

static void test_names(void)
{
    char b[256];
    CHECK_EQ(mb_model_weight_name(MB_ARCH_MIXTRAL, MB_WEIGHT_EXPERT_UP, 3, 7, b, sizeof(b)), 0);
    CHECK(strcmp(b, "model.layers.3.block_sparse_moe.experts.7.w3.weight") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_MIXTRAL, MB_WEIGHT_EXPERT_DOWN, 0, 1, b, sizeof(b)), 0);
    CHECK(strcmp(b, "model.layers.0.block_sparse_moe.experts.1.w2.weight") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_MIXTRAL, MB_WEIGHT_ROUTER, 2, 0, b, sizeof(b)), 0);
    CHECK(strcmp(b, "model.layers.2.block_sparse_moe.gate.weight") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN2_MOE, MB_WEIGHT_SHARED_SCALE, 1, 0, b, sizeof(b)),
             0);
    CHECK(strcmp(b, "model.layers.1.mlp.shared_expert_gate.weight") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN2_MOE, MB_WEIGHT_BK, 0, 0, b, sizeof(b)), 0);
    CHECK(strcmp(b, "model.layers.0.self_attn.k_proj.bias") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN3_MOE, MB_WEIGHT_EXPERT_GATE, 2, 15, b, sizeof(b)),
             0);
    CHECK(strcmp(b, "model.layers.2.mlp.experts.15.gate_proj.weight") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN3_MOE, MB_WEIGHT_FUSED_GATE_UP, 0, 0, b, sizeof(b)),
             0);
    CHECK(strcmp(b, "model.layers.0.mlp.experts.gate_up_proj") == 0);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN3_MOE, MB_WEIGHT_EMBED, 0, 0, b, sizeof(b)), 0);
    CHECK(strcmp(b, "model.embed_tokens.weight") == 0);
    /* Weights a family lacks, and a buffer too small. */
    CHECK_EQ(mb_model_weight_name(MB_ARCH_MIXTRAL, MB_WEIGHT_BQ, 0, 0, b, sizeof(b)), -1);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN3_MOE, MB_WEIGHT_SHARED_UP, 0, 0, b, sizeof(b)), -1);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN2_MOE, MB_WEIGHT_Q_NORM, 0, 0, b, sizeof(b)), -1);
    CHECK_EQ(mb_model_weight_name(MB_ARCH_QWEN3_MOE, MB_WEIGHT_WQ, 0, 0, b, 10), -1);
}

int main(void)
{
    test_forms();
    test_refusals();
    test_missing_fields();
    test_names();
    return mb_test_finish("test_model_config");
}
