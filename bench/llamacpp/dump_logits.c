/* llama.cpp's side of the agreement check: runs a prompt of token ids through
 * libllama (one llama_decode with logits at every position), then greedy-decodes
 * N tokens, and writes every position's logits as `moe-broker run --logits-out`
 * does (safetensors, f32 "logits" [positions][vocab]), so bench/tools/compare_logits
 * compares the two engines. Prints the generated ids on one line, as run does.
 * Built against llama.cpp by build_llamacpp.sh; not part of moe-broker's build.
 *
 *   dump_logits MODEL.gguf IDS_FILE N_GEN OUT.safetensors [THREADS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet_log(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

/* Reads ids separated by commas or whitespace; returns the count, -1 on error. */
static int read_ids(const char *path, int32_t **out)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0, cap = 1024;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    long v;
    for (;;) {
        int c = fgetc(f);
        while (c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '\r') c = fgetc(f);
        if (c == EOF) break;
        ungetc(c, f);
        if (fscanf(f, "%ld", &v) != 1) {
            fclose(f);
            free(ids);
            return -1;
        }
        if (n == cap) ids = realloc(ids, sizeof *ids * (size_t)(cap *= 2));
        ids[n++] = (int32_t)v;
    }
    fclose(f);
    *out = ids;
    return n;
}

static int write_logits(const char *path, const float *logits, int rows, int cols)
{
    char hdr[256];
    size_t bytes = (size_t)rows * (size_t)cols * 4;
    int len = snprintf(hdr, sizeof hdr,
                       "{\"logits\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}", rows,
                       cols, bytes);
    while (len % 8) hdr[len++] = ' '; /* keep the data 8-aligned */
    uint64_t n = (uint64_t)len;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(&n, 8, 1, f) == 1 && fwrite(hdr, 1, (size_t)len, f) == (size_t)len &&
             fwrite(logits, 1, bytes, f) == bytes;
    return fclose(f) == 0 && ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.gguf IDS_FILE N_GEN OUT.safetensors [THREADS]\n", argv[0]);
        return 2;
    }
    int32_t *ids = NULL;
    int n_prompt = read_ids(argv[2], &ids), n_gen = atoi(argv[3]);
    int threads = argc > 5 ? atoi(argv[5]) : 2;
    if (n_prompt < 1 || n_gen < 0) {
        fprintf(stderr, "dump_logits: bad ids file or N_GEN\n");
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_context_params cp = llama_context_default_params();
    int total = n_prompt + n_gen;
    cp.n_ctx = (uint32_t)(total + 16);
    cp.n_batch = cp.n_ubatch = (uint32_t)n_prompt;
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;

    float *all = malloc(sizeof *all * (size_t)total * (size_t)n_vocab);
    int32_t *gen = malloc(sizeof *gen * (size_t)(n_gen + 1));
    struct llama_batch b = llama_batch_init(n_prompt, 0, 1);
    b.n_tokens = n_prompt;
    for (int i = 0; i < n_prompt; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    if (llama_decode(ctx, b)) return 1;
    for (int i = 0; i < n_prompt; i++)
        memcpy(all + (size_t)i * n_vocab, llama_get_logits_ith(ctx, i), sizeof(float) * (size_t)n_vocab);
    for (int g = 0; g < n_gen; g++) {
        const float *row = all + (size_t)(n_prompt + g - 1) * n_vocab;
        int32_t best = 0;
        for (int v = 1; v < n_vocab; v++)
            if (row[v] > row[best]) best = v;
        gen[g] = best;
        b.n_tokens = 1;
        b.token[0] = best;
        b.pos[0] = n_prompt + g;
        b.logits[0] = 1;
        if (llama_decode(ctx, b)) return 1;
        memcpy(all + (size_t)(n_prompt + g) * n_vocab, llama_get_logits_ith(ctx, 0),
               sizeof(float) * (size_t)n_vocab);
    }
    printf("generated:");
    for (int g = 0; g < n_gen; g++) printf(" %d", gen[g]);
    printf("\n");
    int rc = write_logits(argv[4], all, total, n_vocab) ? 1 : 0;
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    free(all);
    free(gen);
    free(ids);
    return rc;
}
