/* Writes a Qwen3-30B-A3B-shaped qwen3moe GGUF with seeded random weights, through
 * ggml's own gguf writer (gguf.h), for the llama.cpp comparison: metadata keys,
 * tensor names, ggml shapes and dtypes as convert_hf_to_gguf.py writes them
 * (matrices BF16 or F16, norms and the router F32), and a synthetic GPT-2 byte-level
 * BPE vocabulary of the requested size. Built against llama.cpp's ggml-base by
 * build_llamacpp.sh; not part of moe-broker's build.
 *
 *   write_qwen3moe_gguf OUT.gguf [--layers N] [--vocab V] [--seed S] [--type bf16|f16]
 *
 * The metadata is written first, then each tensor's data is generated and appended
 * one tensor at a time, so memory stays at one tensor (an expert stack, 400 MB). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "gguf.h"

/* Qwen3-30B-A3B's shapes, except the layer count and the vocabulary. */
enum { D_MODEL = 2048, N_HEAD = 32, N_HEAD_KV = 4, HEAD_DIM = 128, N_EXPERT = 128,
       N_EXPERT_USED = 8, FF_EXPERT = 768, FF_DENSE = 6144, CTX = 40960 };

/* llama_ftype values general.file_type records. */
enum { FTYPE_F16 = 1, FTYPE_BF16 = 32 };

/* How a tensor's values are drawn: normal(0, std) + mean. */
typedef struct {
    float mean, std;
} draw;

static const draw W_MATRIX = {0.0f, 0.02f};  /* projections, experts, embeddings */
static const draw W_ROUTER = {0.0f, 0.05f};  /* router logits spread ~2.3 at d 2048 */
static const draw W_NORM = {1.0f, 0.1f};     /* 1 + 0.1 * normal, as the fixtures */

static uint64_t rng_state;

static uint64_t splitmix(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Two standard normals per call (Box-Muller on two 32-bit uniforms in (0, 1]). */
static void normal2(float *a, float *b)
{
    uint64_t r = splitmix();
    double u1 = ((double)(uint32_t)r + 1.0) / 4294967296.0;
    double u2 = (double)(uint32_t)(r >> 32) / 4294967296.0;
    double m = sqrt(-2.0 * log(u1));
    *a = (float)(m * cos(6.283185307179586 * u2));
    *b = (float)(m * sin(6.283185307179586 * u2));
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; values here are finite */
    return (uint16_t)(u >> 16);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* Appends n values drawn from d, in the tensor's type, then the alignment padding. */
static void write_data(FILE *f, enum ggml_type type, int64_t n, draw d, size_t align)
{
    size_t esz = type == GGML_TYPE_F32 ? 4 : 2;
    unsigned char *buf = xmalloc((size_t)n * esz);
    for (int64_t i = 0; i < n; i += 2) {
        float v[2];
        normal2(&v[0], &v[1]);
        for (int j = 0; j < 2 && i + j < n; j++) {
            float x = d.mean + d.std * v[j];
            if (type == GGML_TYPE_F32) {
                memcpy(buf + (size_t)(i + j) * 4, &x, 4);
            } else {
                uint16_t h = type == GGML_TYPE_BF16 ? to_bf16(x) : ggml_fp32_to_fp16(x);
                memcpy(buf + (size_t)(i + j) * 2, &h, 2);
            }
        }
    }
    size_t bytes = (size_t)n * esz, pad = (align - bytes % align) % align;
    static const unsigned char zeros[64];
    if (fwrite(buf, 1, bytes, f) != bytes || fwrite(zeros, 1, pad, f) != pad) {
        fprintf(stderr, "write failed\n");
        exit(1);
    }
    free(buf);
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100.. */
static void byte_token(int b, char out[8])
{
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int n = 0;
        for (int c = 0; c < b; c++)
            if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = 0;
    }
}

/* 256 byte tokens, 8 merged tokens, [PADi] (UNUSED) up to vocab-2, then <s> </s>. */
static void set_vocab(struct gguf_context *g, int vocab)
{
    static const char *merges[] = {"Ġ t", "h e", "i n", "e r", "a n", "r e", "o n", "Ġ a"};
    static const char *merged[] = {"Ġt", "he", "in", "er", "an", "re", "on", "Ġa"};
    const int n_merge = 8;
    char **tok = xmalloc(sizeof(char *) * (size_t)vocab);
    int32_t *type = xmalloc(sizeof(int32_t) * (size_t)vocab);
    for (int i = 0; i < vocab; i++) {
        tok[i] = xmalloc(24);
        type[i] = 1; /* NORMAL */
        if (i < 256) {
            byte_token(i, tok[i]);
        } else if (i < 256 + n_merge) {
            strcpy(tok[i], merged[i - 256]);
        } else if (i < vocab - 2) {
            snprintf(tok[i], 24, "[PAD%d]", i);
            type[i] = 5; /* UNUSED */
        } else {
            strcpy(tok[i], i == vocab - 2 ? "<s>" : "</s>");
            type[i] = 3; /* CONTROL */
        }
    }
    gguf_set_val_str(g, "tokenizer.ggml.model", "gpt2");
    gguf_set_val_str(g, "tokenizer.ggml.pre", "default");
    gguf_set_arr_str(g, "tokenizer.ggml.tokens", (const char **)tok, (size_t)vocab);
    gguf_set_arr_data(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, type, (size_t)vocab);
    gguf_set_arr_str(g, "tokenizer.ggml.merges", merges, (size_t)n_merge);
    gguf_set_val_u32(g, "tokenizer.ggml.bos_token_id", (uint32_t)(vocab - 2));
    gguf_set_val_u32(g, "tokenizer.ggml.eos_token_id", (uint32_t)(vocab - 1));
    gguf_set_val_bool(g, "tokenizer.ggml.add_bos_token", 0);
    for (int i = 0; i < vocab; i++) free(tok[i]);
    free(tok);
    free(type);
}

typedef struct {
    struct ggml_tensor *t;
    draw d;
} planned;

int main(int argc, char **argv)
{
    const char *out = NULL;
    int n_layer = 4, vocab = 32768;
    unsigned long long seed = 1;
    enum ggml_type wtype = GGML_TYPE_BF16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) n_layer = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            const char *t = argv[++i];
            if (!strcmp(t, "bf16")) wtype = GGML_TYPE_BF16;
            else if (!strcmp(t, "f16")) wtype = GGML_TYPE_F16;
            else { fprintf(stderr, "--type bf16|f16\n"); return 2; }
        } else if (argv[i][0] != '-' && !out) out = argv[i];
        else {
            fprintf(stderr, "usage: %s OUT.gguf [--layers N] [--vocab V] [--seed S] [--type bf16|f16]\n", argv[0]);
            return 2;
        }
    }
    if (!out || n_layer < 1 || vocab < 300) {
        fprintf(stderr, "usage: %s OUT.gguf [--layers N>=1] [--vocab V>=300] [--seed S] [--type bf16|f16]\n", argv[0]);
        return 2;
    }
    rng_state = seed;

    struct gguf_context *g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "qwen3moe");
    gguf_set_val_str(g, "general.name", "qwen3moe-30b-a3b-shaped-random");
    gguf_set_val_u32(g, "qwen3moe.block_count", (uint32_t)n_layer);
    gguf_set_val_u32(g, "qwen3moe.context_length", CTX);
    gguf_set_val_u32(g, "qwen3moe.embedding_length", D_MODEL);
    gguf_set_val_u32(g, "qwen3moe.attention.head_count", N_HEAD);
    gguf_set_val_u32(g, "qwen3moe.attention.head_count_kv", N_HEAD_KV);
    gguf_set_val_f32(g, "qwen3moe.rope.freq_base", 1000000.0f);
    gguf_set_val_f32(g, "qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_set_val_u32(g, "qwen3moe.expert_count", N_EXPERT);
    gguf_set_val_u32(g, "qwen3moe.expert_used_count", N_EXPERT_USED);
    gguf_set_val_u32(g, "qwen3moe.feed_forward_length", FF_DENSE);
    gguf_set_val_u32(g, "qwen3moe.expert_feed_forward_length", FF_EXPERT);
    gguf_set_val_u32(g, "qwen3moe.attention.key_length", HEAD_DIM);
    gguf_set_val_u32(g, "qwen3moe.attention.value_length", HEAD_DIM);
    gguf_set_val_u32(g, "general.file_type", wtype == GGML_TYPE_BF16 ? FTYPE_BF16 : FTYPE_F16);
    gguf_set_val_u32(g, "general.quantization_version", 2);
    set_vocab(g, vocab);

    /* Tensor descriptors only (no_alloc): the data is generated while writing. */
    size_t n_tensors = 3 + 12 * (size_t)n_layer;
    struct ggml_init_params ip = {n_tensors * ggml_tensor_overhead() + 1024, NULL, 1};
    struct ggml_context *ctx = ggml_init(ip);
    planned *plan = xmalloc(sizeof(planned) * n_tensors);
    size_t np = 0;
#define ADD(NAME, TYPE, DRAW, ...)                                                   \
    do {                                                                             \
        int64_t ne_[] = {__VA_ARGS__};                                               \
        int nd_ = (int)(sizeof(ne_) / sizeof(ne_[0]));                               \
        struct ggml_tensor *t_ = ggml_new_tensor(ctx, TYPE, nd_, ne_);               \
        ggml_set_name(t_, NAME);                                                     \
        gguf_add_tensor(g, t_);                                                      \
        plan[np++] = (planned){t_, DRAW};                                            \
    } while (0)
    char nm[64];
    /* ggml ne order: ne[0] is the contiguous (input) dimension. */
    ADD("token_embd.weight", wtype, W_MATRIX, D_MODEL, vocab);
    for (int l = 0; l < n_layer; l++) {
#define BLK(S) (snprintf(nm, sizeof nm, "blk.%d." S, l), nm)
        ADD(BLK("attn_norm.weight"), GGML_TYPE_F32, W_NORM, D_MODEL);
        ADD(BLK("attn_q.weight"), wtype, W_MATRIX, D_MODEL, N_HEAD * HEAD_DIM);
        ADD(BLK("attn_k.weight"), wtype, W_MATRIX, D_MODEL, N_HEAD_KV * HEAD_DIM);
        ADD(BLK("attn_v.weight"), wtype, W_MATRIX, D_MODEL, N_HEAD_KV * HEAD_DIM);
        ADD(BLK("attn_output.weight"), wtype, W_MATRIX, N_HEAD * HEAD_DIM, D_MODEL);
        ADD(BLK("attn_q_norm.weight"), GGML_TYPE_F32, W_NORM, HEAD_DIM);
        ADD(BLK("attn_k_norm.weight"), GGML_TYPE_F32, W_NORM, HEAD_DIM);
        ADD(BLK("ffn_norm.weight"), GGML_TYPE_F32, W_NORM, D_MODEL);
        ADD(BLK("ffn_gate_inp.weight"), GGML_TYPE_F32, W_ROUTER, D_MODEL, N_EXPERT);
        ADD(BLK("ffn_gate_exps.weight"), wtype, W_MATRIX, D_MODEL, FF_EXPERT, N_EXPERT);
        ADD(BLK("ffn_up_exps.weight"), wtype, W_MATRIX, D_MODEL, FF_EXPERT, N_EXPERT);
        ADD(BLK("ffn_down_exps.weight"), wtype, W_MATRIX, FF_EXPERT, D_MODEL, N_EXPERT);
#undef BLK
    }
    ADD("output_norm.weight", GGML_TYPE_F32, W_NORM, D_MODEL);
    ADD("output.weight", wtype, W_MATRIX, D_MODEL, vocab);
#undef ADD

    if (!gguf_write_to_file(g, out, /*only_meta=*/1)) {
        fprintf(stderr, "%s: cannot write the metadata\n", out);
        return 1;
    }
    FILE *f = fopen(out, "ab");
    if (!f) {
        perror(out);
        return 1;
    }
    size_t align = gguf_get_alignment(g);
    for (size_t i = 0; i < np; i++)
        write_data(f, plan[i].t->type, ggml_nelements(plan[i].t), plan[i].d, align);
    if (fclose(f)) {
        perror(out);
        return 1;
    }
    fprintf(stderr, "%s: %d layers, vocab %d, %zu tensors, %s matrices\n", out, n_layer, vocab, np,
            ggml_type_name(wtype));
    free(plan);
    ggml_free(ctx);
    gguf_free(g);
    return 0;
}
