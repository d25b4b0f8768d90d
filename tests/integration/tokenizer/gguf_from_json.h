/* Writes the tokenizer.ggml.* metadata llama.cpp's converter
 * (convert_hf_to_gguf.py) would write for a Hugging Face tokenizer.json, as
 * an in-memory GGUF image: tokens by id (added tokens included, UNUSED
 * [PADn] filling gaps and a few past the end), token types (added special
 * tokens CONTROL, other added tokens USER_DEFINED, <0xXX> BYTE, the unk
 * token UNKNOWN), BOS/EOS/UNK ids from tokenizer_config.json, and per model:
 * byte-level ("gpt2") with its merges as "A B" strings and the pre-tokenizer
 * family given, or SentencePiece ("llama") with scores and no merges, so the
 * loader derives them. A SentencePiece model's scores are what Hugging
 * Face's converter ranked the merges by, so each piece's score here is minus
 * the rank of the first merge that makes it (pieces no merge makes score
 * below all of those). Test-only; aborts on malformed input. */
#ifndef MB_TESTS_INTEGRATION_GGUF_FROM_JSON_H
#define MB_TESTS_INTEGRATION_GGUF_FROM_JSON_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/model/gguf_testutil.h"

enum { GJ_NORMAL = 1, GJ_UNKNOWN = 2, GJ_CONTROL = 3, GJ_USER_DEFINED = 4, GJ_UNUSED = 5, GJ_BYTE = 6 };

static inline void gj_key(tg_buf *b, const char *key, uint32_t type)
{
    tg_str(b, key);
    tg_u32(b, type);
}

static inline void gj_kv_str(tg_buf *b, const char *key, const char *v)
{
    gj_key(b, key, 8);
    tg_str(b, v);
}

static inline void gj_kv_u32(tg_buf *b, const char *key, uint32_t v)
{
    gj_key(b, key, 4);
    tg_u32(b, v);
}

static inline void gj_kv_bool(tg_buf *b, const char *key, int v)
{
    const uint8_t x = (uint8_t)(v != 0);
    gj_key(b, key, 7);
    tg_put(b, &x, 1);
}

/* An id from tokenizer_config.json's "name" token (a string or
 * {"content": ...}) looked up in texts; -1 when absent. */
typedef struct {
    const char *text;
    int id;
} gj_entry;

static inline int gj_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const gj_entry *)a)->text, ((const gj_entry *)b)->text);
}

/* scores[id] = -(rank of the first merge making piece id), or -(n_merges +
 * id) when none makes it. */
static inline void gj_scores(char **texts, int n, const cJSON *merges, float *scores)
{
    gj_entry *sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted) abort();
    for (int i = 0; i < n; i++)
        sorted[i] = (gj_entry){texts[i], i};
    qsort(sorted, (size_t)n, sizeof *sorted, gj_entry_cmp);
    const int n_merges = cJSON_GetArraySize(merges);
    for (int i = 0; i < n; i++)
        scores[i] = -(float)(n_merges + i);
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        char joined[1024];
        const char *sp = strchr(m->valuestring, ' ');
        if (!cJSON_IsString(m) || !sp) abort();
        snprintf(joined, sizeof joined, "%.*s%s", (int)(sp - m->valuestring), m->valuestring, sp + 1);
        gj_entry key = {joined, 0}, *hit = bsearch(&key, sorted, (size_t)n, sizeof *sorted, gj_entry_cmp);
        if (hit && scores[hit->id] < -(float)rank) scores[hit->id] = -(float)rank;
        rank++;
    }
    free(sorted);
}

static inline int gj_config_id(const cJSON *cfg, const char *name, char **texts, int n)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsObject(j)) j = cJSON_GetObjectItemCaseSensitive(j, "content");
    for (int i = 0; cJSON_IsString(j) && i < n; i++)
        if (texts[i] && !strcmp(texts[i], j->valuestring)) return i;
    return -1;
}

/* The GGUF image for tokenizer.json text json and tokenizer_config.json
 * text cfg_text; spm selects "llama" over "gpt2" (then pre is written). */
static inline tg_buf gj_build(const char *json, const char *cfg_text, int spm, const char *pre)
{
    cJSON *root = cJSON_Parse(json), *cfg = cJSON_Parse(cfg_text);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *e;
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges) || !cJSON_IsObject(cfg)) abort();
    int n = 0;
    cJSON_ArrayForEach(e, vocab) if ((int)e->valuedouble + 1 > n) n = (int)e->valuedouble + 1;
    cJSON_ArrayForEach(e, added)
    {
        const int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        if (id + 1 > n) n = id + 1;
    }
    n += 4; /* padding past the end, as vocab_size rounds up */
    char **texts = calloc((size_t)n, sizeof *texts);
    int32_t *types = calloc((size_t)n, sizeof *types);
    if (!texts || !types) abort();
    cJSON_ArrayForEach(e, vocab)
    {
        const int id = (int)e->valuedouble;
        texts[id] = strdup(e->string);
        types[id] = spm && !strncmp(e->string, "<0x", 3) && strlen(e->string) == 6 ? GJ_BYTE : GJ_NORMAL;
    }
    cJSON_ArrayForEach(e, added)
    {
        const int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        free(texts[id]);
        texts[id] = strdup(cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring);
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) ? GJ_CONTROL : GJ_USER_DEFINED;
    }
    for (int i = 0; i < n; i++) {
        if (texts[i]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%d]", i);
        texts[i] = strdup(pad);
        types[i] = GJ_UNUSED;
    }
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    int unk_id = -1;
    for (int i = 0; cJSON_IsString(unk) && i < n; i++)
        if (!strcmp(texts[i], unk->valuestring)) unk_id = i;
    if (unk_id >= 0) types[unk_id] = GJ_UNKNOWN;
    const int bos = gj_config_id(cfg, "bos_token", texts, n), eos = gj_config_id(cfg, "eos_token", texts, n);

    tg_buf b = {0};
    tg_u32(&b, 0x46554747u); /* "GGUF" */
    tg_u32(&b, 3);
    tg_u64(&b, 0); /* tensors */
    const size_t n_kv_at = b.len;
    tg_u64(&b, 0);
    uint64_t n_kv = 0;
    gj_kv_str(&b, "tokenizer.ggml.model", spm ? "llama" : "gpt2"), n_kv++;
    if (!spm) gj_kv_str(&b, "tokenizer.ggml.pre", pre), n_kv++;
    gj_key(&b, "tokenizer.ggml.tokens", 9), n_kv++;
    tg_u32(&b, 8);
    tg_u64(&b, (uint64_t)n);
    for (int i = 0; i < n; i++)
        tg_str(&b, texts[i]);
    gj_key(&b, "tokenizer.ggml.token_type", 9), n_kv++;
    tg_u32(&b, 5); /* I32 */
    tg_u64(&b, (uint64_t)n);
    tg_put(&b, types, (size_t)n * sizeof *types);
    if (spm) {
        gj_key(&b, "tokenizer.ggml.scores", 9), n_kv++;
        tg_u32(&b, 6); /* F32 */
        tg_u64(&b, (uint64_t)n);
        float *scores = malloc((size_t)n * sizeof *scores);
        if (!scores) abort();
        gj_scores(texts, n, merges, scores);
        tg_put(&b, scores, (size_t)n * sizeof *scores);
        free(scores);
    } else {
        gj_key(&b, "tokenizer.ggml.merges", 9), n_kv++;
        tg_u32(&b, 8);
        tg_u64(&b, (uint64_t)cJSON_GetArraySize(merges));
        cJSON_ArrayForEach(e, merges)
        {
            char m[1024];
            if (cJSON_IsString(e))
                snprintf(m, sizeof m, "%s", e->valuestring);
            else
                snprintf(m, sizeof m, "%s %s", cJSON_GetArrayItem(e, 0)->valuestring,
                         cJSON_GetArrayItem(e, 1)->valuestring);
            tg_str(&b, m);
        }
    }
    if (bos >= 0) gj_kv_u32(&b, "tokenizer.ggml.bos_token_id", (uint32_t)bos), n_kv++;
    if (eos >= 0) gj_kv_u32(&b, "tokenizer.ggml.eos_token_id", (uint32_t)eos), n_kv++;
    if (unk_id >= 0) gj_kv_u32(&b, "tokenizer.ggml.unknown_token_id", (uint32_t)unk_id), n_kv++;
    gj_kv_bool(&b, "tokenizer.ggml.add_bos_token", spm), n_kv++;
    tg_set64(&b, n_kv_at, n_kv);
    tg_pad(&b, 32);
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(types);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return b;
}

#endif
