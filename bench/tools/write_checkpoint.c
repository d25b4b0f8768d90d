/* write_checkpoint: writes a synthetic model (broker/synthetic.h's seeded
 * random weights) to disk as a Hugging Face checkpoint folder, config.json
 * and one model.safetensors with hub tensor names, so that benchmarks can
 * run `moe-broker run --model DIR` on the large shapes no fixture has.
 *   write_checkpoint --shape qwen3-30b|mixtral-8x7b|small-qwen3|small-mixtral
 *                    [--layers N] [--seed S] DIR
 * The small shapes are the embedded default's (d_model 1024), for runs on a
 * CPU. The whole model is generated in memory first (as big as the file). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/model.h"
#include "broker/model_names.h"
#include "broker/synthetic.h"

/* The header under construction: a growable string. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} wc_text;

static void wc_append(wc_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wc_append(wc_text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 1 << 16;
        while (cap < t->len + (size_t)n + 1) cap *= 2;
        char *p = realloc(t->buf, cap);
        if (!p) {
            t->failed = 1;
            return;
        }
        t->buf = p;
        t->cap = cap;
    }
}

/* One tensor to write: its name and its view in the synthetic model. */
typedef struct {
    char name[160];
    const mb_tensor *t;
} wc_entry;

typedef struct {
    wc_entry *v;
    size_t n, cap;
} wc_list;

static int wc_add(wc_list *l, const mb_model *m, mb_weight_role role, uint32_t layer, uint32_t expert,
                  const mb_tensor *t)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        wc_entry *v = realloc(l->v, cap * sizeof *v);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    if (mb_model_weight_name(m->cfg.arch, role, layer, expert, l->v[l->n].name, sizeof l->v[l->n].name) != 0)
        return -1;
    l->v[l->n++].t = t;
    return 0;
}

/* Every tensor the loader binds, in the order the hub files list them. */
static int wc_collect(const mb_model *m, wc_list *l)
{
    const mb_model_config *c = &m->cfg;
    if (wc_add(l, m, MB_WEIGHT_EMBED, 0, 0, &m->embed) || wc_add(l, m, MB_WEIGHT_FINAL_NORM, 0, 0, &m->final_norm) ||
        wc_add(l, m, MB_WEIGHT_LM_HEAD, 0, 0, &m->lm_head))
        return -1;
    for (uint32_t i = 0; i < c->n_layers; i++) {
        const mb_layer_weights *w = &m->layers[i];
        if (wc_add(l, m, MB_WEIGHT_ATTN_NORM, i, 0, &w->attn_norm) || wc_add(l, m, MB_WEIGHT_WQ, i, 0, &w->wq) ||
            wc_add(l, m, MB_WEIGHT_WK, i, 0, &w->wk) || wc_add(l, m, MB_WEIGHT_WV, i, 0, &w->wv) ||
            wc_add(l, m, MB_WEIGHT_WO, i, 0, &w->wo) || wc_add(l, m, MB_WEIGHT_FFN_NORM, i, 0, &w->ffn_norm) ||
            wc_add(l, m, MB_WEIGHT_ROUTER, i, 0, &w->router))
            return -1;
        if (c->qk_norm &&
            (wc_add(l, m, MB_WEIGHT_Q_NORM, i, 0, &w->q_norm) || wc_add(l, m, MB_WEIGHT_K_NORM, i, 0, &w->k_norm)))
            return -1;
        for (uint32_t e = 0; e < c->n_experts; e++) {
            const mb_expert_tensors *x = &w->experts[e];
            if (wc_add(l, m, MB_WEIGHT_EXPERT_GATE, i, e, &x->gate) ||
                wc_add(l, m, MB_WEIGHT_EXPERT_UP, i, e, &x->up) || wc_add(l, m, MB_WEIGHT_EXPERT_DOWN, i, e, &x->down))
                return -1;
        }
    }
    return 0;
}

static int wc_write_config(const char *dir, const mb_model_config *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "write_checkpoint: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    const int mixtral = c->arch == MB_ARCH_MIXTRAL;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
            mixtral ? "MixtralForCausalLM" : "Qwen3MoeForCausalLM", mixtral ? "mixtral" : "qwen3_moe");
    fprintf(f,
            "  \"dtype\": \"bfloat16\",\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": %u,\n"
            "  \"num_hidden_layers\": %u,\n  \"num_attention_heads\": %u,\n  \"num_key_value_heads\": %u,\n"
            "  \"head_dim\": %u,\n  \"vocab_size\": %u,\n  \"max_position_embeddings\": %u,\n"
            "  \"rms_norm_eps\": %g,\n  \"rope_theta\": %.1f,\n  \"num_experts_per_tok\": %u,\n"
            "  \"tie_word_embeddings\": false,\n  \"attention_bias\": false,\n",
            c->d_model, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab, c->max_positions,
            (double)c->rms_eps, (double)c->rope_theta, c->top_k);
    if (mixtral)
        fprintf(f, "  \"num_local_experts\": %u,\n  \"intermediate_size\": %u,\n  \"sliding_window\": null\n}\n",
                c->n_experts, c->d_ff_expert);
    else
        fprintf(f,
                "  \"num_experts\": %u,\n  \"moe_intermediate_size\": %u,\n  \"intermediate_size\": %u,\n"
                "  \"norm_topk_prob\": %s,\n  \"decoder_sparse_step\": 1,\n  \"mlp_only_layers\": [],\n"
                "  \"use_sliding_window\": false\n}\n",
                c->n_experts, c->d_ff_expert, 4 * c->d_ff_expert, c->norm_topk_prob ? "true" : "false");
    if (fclose(f) != 0) {
        fprintf(stderr, "write_checkpoint: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* model.safetensors: le64 header length, the JSON header padded with spaces
 * to a multiple of 8, then every tensor back to back in list order. */
static int wc_write_safetensors(const char *dir, const wc_list *l)
{
    wc_text h = {0};
    uint64_t off = 0;
    wc_append(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < l->n; i++) {
        const mb_tensor *t = l->v[i].t;
        uint64_t bytes = t->rows * t->cols * mb_dtype_size(t->dtype);
        if (t->rows == 1) /* norms are 1-D in hub checkpoints */
            wc_append(&h, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}", l->v[i].name,
                      (unsigned long long)t->cols, (unsigned long long)off, (unsigned long long)(off + bytes));
        else
            wc_append(&h, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu,%llu],\"data_offsets\":[%llu,%llu]}",
                      l->v[i].name, (unsigned long long)t->rows, (unsigned long long)t->cols,
                      (unsigned long long)off, (unsigned long long)(off + bytes));
        off += bytes;
    }
    wc_append(&h, "}");
    while (!h.failed && h.len % 8) wc_append(&h, " ");
    if (h.failed) {
        fprintf(stderr, "write_checkpoint: out of memory for the header\n");
        free(h.buf);
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "write_checkpoint: cannot create %s: %s\n", path, strerror(errno));
        free(h.buf);
        return -1;
    }
    unsigned char len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int ok = fwrite(len_le, 1, 8, f) == 8 && fwrite(h.buf, 1, h.len, f) == h.len;
    for (size_t i = 0; ok && i < l->n; i++) {
        const mb_tensor *t = l->v[i].t;
        size_t bytes = (size_t)(t->rows * t->cols * mb_dtype_size(t->dtype));
        ok = fwrite(t->data, 1, bytes, f) == bytes;
    }
    ok = (fclose(f) == 0) && ok;
    free(h.buf);
    if (!ok) {
        fprintf(stderr, "write_checkpoint: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    printf("write_checkpoint: %s: %zu tensors, %.2f GiB\n", path, l->n, (double)(8 + h.len + off) / (1 << 30));
    return 0;
}

static int wc_shape(const char *name, uint32_t layers, mb_model_config *c)
{
    if (strcmp(name, "qwen3-30b") == 0) {
        mb_synthetic_qwen3_30b_config(c, layers ? layers : 4);
        return 0;
    }
    mb_synthetic_default_config(c);
    if (strcmp(name, "small-qwen3") == 0) {
        c->n_layers = layers ? layers : 2;
        return 0;
    }
    if (strcmp(name, "mixtral-8x7b") == 0 || strcmp(name, "small-mixtral") == 0) {
        const int big = name[0] == 'm';
        c->arch = MB_ARCH_MIXTRAL;
        c->qk_norm = 0;
        c->norm_topk_prob = 1;
        c->rms_eps = 1e-5f;
        c->n_experts = 8;
        c->top_k = 2;
        c->n_layers = layers ? layers : 2;
        if (big) { /* Mixtral-8x7B: 32 heads / 8 KV heads of 128, d_ff 14336, vocab 32000 */
            c->d_model = 4096;
            c->n_heads = 32;
            c->n_kv_heads = 8;
            c->head_dim = 128;
            c->d_ff_expert = 14336;
            c->vocab = 32000;
            c->max_positions = 32768;
        } else {
            c->d_ff_expert = 1024;
        }
        return 0;
    }
    return -1;
}

static void wc_usage(void)
{
    fprintf(stderr, "usage: write_checkpoint --shape qwen3-30b|mixtral-8x7b|small-qwen3|small-mixtral "
                    "[--layers N] [--seed S] DIR\n");
}

int main(int argc, char **argv)
{
    const char *shape = NULL, *dir = NULL;
    unsigned long layers = 0;
    unsigned long long seed = 7;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) shape = argv[++i];
        else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) layers = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            wc_usage();
            return 2;
        }
    }
    mb_model_config cfg;
    if (!shape || !dir || layers > 1024 || wc_shape(shape, (uint32_t)layers, &cfg) != 0) {
        wc_usage();
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "write_checkpoint: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char err[512] = "";
    mb_model *m = NULL;
    mb_status st = mb_synthetic_create(&cfg, seed, 0, &m, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "write_checkpoint: %s\n", err[0] ? err : mb_status_str(st));
        return 1;
    }
    wc_list l = {0};
    int rc = 0;
    if (wc_collect(m, &l) != 0) {
        fprintf(stderr, "write_checkpoint: out of memory or an unnamed tensor\n");
        rc = 1;
    } else if (wc_write_config(dir, &cfg) != 0 || wc_write_safetensors(dir, &l) != 0) {
        rc = 1;
    }
    free(l.v);
    mb_model_destroy(m);
    return rc;
}
