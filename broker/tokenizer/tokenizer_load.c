/* Loading a tokenizer: reads tokenizer.json (and tokenizer_config.json),
 * checks every field it uses, and builds the vocabulary, merge and added-token
 * tables. The pipeline stages are parsed in tokenizer_stages.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/tokenizer/tokenizer_impl.h"

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static const char *token_text(const mb_tokenizer *tok, int32_t id, size_t *len)
{
    uint64_t ref = tok->text_ref[id];
    if (ref == UINT64_MAX) return NULL;
    *len = (size_t)(ref & 0xffffff);
    return tok->arena + (ref >> 24);
}

int32_t mb_tok_vocab_find(const mb_tokenizer *tok, const char *text, size_t n)
{
    uint32_t mask = tok->n_slots - 1;
    for (uint32_t i = (uint32_t)hash_bytes(text, n) & mask;; i = (i + 1) & mask) {
        int32_t id = tok->slots[i];
        if (id < 0) return -1;
        size_t len = 0;
        const char *t = token_text(tok, id, &len);
        if (t && len == n && memcmp(t, text, n) == 0) return id;
    }
}

int mb_tok_merge_find(const mb_tokenizer *tok, int32_t left, int32_t right, uint32_t *rank,
                      int32_t *merged)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t mask = tok->n_merge_slots - 1;
    for (uint32_t i = (uint32_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (tok->merge_keys[i] == UINT64_MAX) return -1;
        if (tok->merge_keys[i] == key) {
            *rank = (uint32_t)(tok->merge_vals[i] >> 32);
            *merged = (int32_t)(uint32_t)tok->merge_vals[i];
            return 0;
        }
    }
}

static uint32_t pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

/* Adds text as the model token id (a later duplicate text wins, as in a
 * JSON map read by serde). */
static mb_status vocab_add(mb_tokenizer *tok, const char *text, size_t n, int32_t id)
{
    if (n >= (1u << 24)) return MB_STATUS_FORMAT;
    if (tok->arena_len + n > tok->arena_cap) {
        size_t cap = tok->arena_cap ? tok->arena_cap : 1 << 16;
        while (cap < tok->arena_len + n)
            cap *= 2;
        char *grown = realloc(tok->arena, cap);
        if (!grown) return MB_STATUS_NOMEM;
        tok->arena = grown;
        tok->arena_cap = cap;
    }
    memcpy(tok->arena + tok->arena_len, text, n);
    tok->text_ref[id] = (uint64_t)tok->arena_len << 24 | n;
    tok->arena_len += n;
    uint32_t mask = tok->n_slots - 1;
    for (uint32_t i = (uint32_t)hash_bytes(text, n) & mask;; i = (i + 1) & mask) {
        int32_t other = tok->slots[i];
        size_t len = 0;
        const char *t = other >= 0 && other != id ? token_text(tok, other, &len) : NULL;
        if (other < 0 || other == id || (t && len == n && memcmp(t, text, n) == 0)) {
            tok->slots[i] = id;
            return MB_STATUS_OK;
        }
    }
}

static int json_id(const cJSON *j, int32_t *id)
{
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > MB_TOKENIZER_MAX_ID ||
        j->valuedouble != (double)(int32_t)j->valuedouble)
        return -1;
    *id = (int32_t)j->valuedouble;
    return 0;
}

static int json_flag(const cJSON *obj, const char *name, int dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}

/* A merge's two halves: "a b" (split at the first space) or ["a", "b"]. */
static int merge_halves(const cJSON *m, const char **a, size_t *a_len, const char **b,
                        size_t *b_len)
{
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp) return -1;
        *a = s;
        *a_len = (size_t)(sp - s);
        *b = sp + 1;
        *b_len = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = cJSON_GetArrayItem(m, 0), *y = cJSON_GetArrayItem(m, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y)) return -1;
        *a = x->valuestring;
        *a_len = strlen(x->valuestring);
        *b = y->valuestring;
        *b_len = strlen(y->valuestring);
        return 0;
    }
    return -1;
}

static mb_status load_merges(mb_tokenizer *tok, const cJSON *merges, char *err, size_t err_cap)
{
    size_t n = (size_t)cJSON_GetArraySize(merges);
    tok->n_merge_slots = pow2_at_least(2 * n + 1);
    tok->merge_keys = malloc((size_t)tok->n_merge_slots * sizeof *tok->merge_keys);
    tok->merge_vals = malloc((size_t)tok->n_merge_slots * sizeof *tok->merge_vals);
    char *joined = NULL;
    size_t joined_cap = 0;
    if (!tok->merge_keys || !tok->merge_vals) return MB_STATUS_NOMEM;
    memset(tok->merge_keys, 0xff, (size_t)tok->n_merge_slots * sizeof *tok->merge_keys);
    mb_status st = MB_STATUS_OK;
    uint32_t rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        const char *a, *b;
        size_t a_len, b_len;
        if (merge_halves(m, &a, &a_len, &b, &b_len)) {
            mb_tok_errf(err, err_cap, "merge %u is not \"A B\" or [\"A\", \"B\"]", rank);
            st = MB_STATUS_FORMAT;
            goto done;
        }
        if (a_len + b_len > joined_cap) {
            joined_cap = 2 * (a_len + b_len);
            free(joined);
            joined = malloc(joined_cap);
            if (!joined) {
                st = MB_STATUS_NOMEM;
                goto done;
            }
        }
        memcpy(joined, a, a_len);
        memcpy(joined + a_len, b, b_len);
        int32_t left = mb_tok_vocab_find(tok, a, a_len), right = mb_tok_vocab_find(tok, b, b_len);
        int32_t merged = mb_tok_vocab_find(tok, joined, a_len + b_len);
        if (left < 0 || right < 0 || merged < 0) {
            mb_tok_errf(err, err_cap, "merge %u (\"%.*s\" + \"%.*s\") names a token not in the vocab",
                        rank, (int)(a_len > 40 ? 40 : a_len), a, (int)(b_len > 40 ? 40 : b_len), b);
            st = MB_STATUS_FORMAT;
            goto done;
        }
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint32_t mask = tok->n_merge_slots - 1, i = (uint32_t)hash_u64(key) & mask;
        while (tok->merge_keys[i] != UINT64_MAX && tok->merge_keys[i] != key)
            i = (i + 1) & mask;
        if (tok->merge_keys[i] == UINT64_MAX) { /* the first (best) rank of a pair stays */
            tok->merge_keys[i] = key;
            tok->merge_vals[i] = (uint64_t)rank << 32 | (uint32_t)merged;
        }
        rank++;
    }
done:
    free(joined);
    return st;
}

static mb_status load_added(mb_tokenizer *tok, const cJSON *added, char *err, size_t err_cap)
{
    size_t n = added ? (size_t)cJSON_GetArraySize(added) : 0;
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return MB_STATUS_NOMEM;
    const cJSON *a;
    cJSON_ArrayForEach(a, added)
    {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        int32_t id;
        if (!cJSON_IsObject(a) || !cJSON_IsString(content) || content->valuestring[0] == '\0' ||
            json_id(cJSON_GetObjectItemCaseSensitive(a, "id"), &id)) {
            mb_tok_errf(err, err_cap, "added_tokens[%u]: needs a non-empty \"content\" and an "
                        "\"id\" in 0..%d", tok->n_added, MB_TOKENIZER_MAX_ID);
            return MB_STATUS_FORMAT;
        }
        mb_tok_added *t = &tok->added[tok->n_added];
        t->text = strdup(content->valuestring);
        if (!t->text) return MB_STATUS_NOMEM;
        t->len = strlen(t->text);
        t->id = id;
        t->special = (uint8_t)json_flag(a, "special", 0);
        t->normalized = (uint8_t)json_flag(a, "normalized", !t->special);
        t->lstrip = (uint8_t)json_flag(a, "lstrip", 0);
        t->rstrip = (uint8_t)json_flag(a, "rstrip", 0);
        t->single_word = (uint8_t)json_flag(a, "single_word", 0);
        tok->added_of_id[id] = (int32_t)tok->n_added++;
    }
    return MB_STATUS_OK;
}

/* Builds one matching set: tokens with normalized == want, bucketed by
 * first byte, longest first. */
static mb_status added_set_build(mb_tokenizer *tok, mb_tok_added_set *set, int want)
{
    set->order = malloc((tok->n_added ? tok->n_added : 1) * sizeof *set->order);
    if (!set->order) return MB_STATUS_NOMEM;
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; b++) {
        set->first[b] = n;
        uint32_t start = n;
        for (uint32_t i = 0; i < tok->n_added; i++) {
            const mb_tok_added *t = &tok->added[i];
            if ((int)t->normalized != want || (unsigned char)t->text[0] != b) continue;
            uint32_t k = n++; /* insertion sort, longest first */
            while (k > start && tok->added[set->order[k - 1]].len < t->len) {
                set->order[k] = set->order[k - 1];
                k--;
            }
            set->order[k] = i;
        }
    }
    set->first[256] = n;
    return MB_STATUS_OK;
}

/* A config token: "text" or {"content": "text"}; -1 when absent. */
static int32_t config_token(const mb_tokenizer *tok, const cJSON *cfg, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsObject(j)) j = cJSON_GetObjectItemCaseSensitive(j, "content");
    if (!cJSON_IsString(j)) return -1;
    size_t n = strlen(j->valuestring);
    for (uint32_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && memcmp(tok->added[i].text, j->valuestring, n) == 0)
            return tok->added[i].id;
    return mb_tok_vocab_find(tok, j->valuestring, n);
}

static mb_status load_model(mb_tokenizer *tok, const cJSON *root, char *err, size_t err_cap)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(model)) {
        mb_tok_errf(err, err_cap, "no \"model\" object");
        return MB_STATUS_FORMAT;
    }
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)) {
        mb_tok_errf(err, err_cap, "model type %s is not supported (only BPE)",
                    cJSON_IsString(type) ? type->valuestring : "(not a string)");
        return MB_STATUS_UNSUPPORTED;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges) || (added && !cJSON_IsArray(added))) {
        mb_tok_errf(err, err_cap, "model needs a \"vocab\" object and a \"merges\" array, "
                                  "\"added_tokens\" must be an array");
        return MB_STATUS_FORMAT;
    }
    const char *knobs[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(model, knobs[i]);
        if (cJSON_IsString(j) && j->valuestring[0]) {
            mb_tok_errf(err, err_cap, "BPE %s is not supported", knobs[i]);
            return MB_STATUS_UNSUPPORTED;
        }
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        mb_tok_errf(err, err_cap, "BPE dropout is not supported");
        return MB_STATUS_UNSUPPORTED;
    }

    /* Ids size every table: take the largest first. */
    int32_t id, max_id = -1;
    size_t n_vocab = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        if (json_id(e, &id)) {
            mb_tok_errf(err, err_cap, "vocab entry \"%.40s\": id must be an integer in 0..%d",
                        e->string, MB_TOKENIZER_MAX_ID);
            return MB_STATUS_FORMAT;
        }
        if (id > max_id) max_id = id;
        n_vocab++;
    }
    cJSON_ArrayForEach(e, added)
    {
        if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) == 0 && id > max_id) max_id = id;
    }
    if (max_id < 0) {
        mb_tok_errf(err, err_cap, "empty vocabulary");
        return MB_STATUS_FORMAT;
    }
    tok->n_ids = (uint32_t)max_id + 1;
    tok->n_slots = pow2_at_least(2 * n_vocab + 1);
    tok->text_ref = malloc((size_t)tok->n_ids * sizeof *tok->text_ref);
    tok->added_of_id = malloc((size_t)tok->n_ids * sizeof *tok->added_of_id);
    tok->slots = malloc((size_t)tok->n_slots * sizeof *tok->slots);
    if (!tok->text_ref || !tok->added_of_id || !tok->slots) return MB_STATUS_NOMEM;
    memset(tok->text_ref, 0xff, (size_t)tok->n_ids * sizeof *tok->text_ref);
    memset(tok->added_of_id, 0xff, (size_t)tok->n_ids * sizeof *tok->added_of_id);
    memset(tok->slots, 0xff, (size_t)tok->n_slots * sizeof *tok->slots);
    cJSON_ArrayForEach(e, vocab)
    {
        json_id(e, &id);
        mb_status st = vocab_add(tok, e->string, strlen(e->string), id);
        if (st != MB_STATUS_OK) return st;
    }

    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    tok->unk_id = cJSON_IsString(unk) ? mb_tok_vocab_find(tok, unk->valuestring,
                                                          strlen(unk->valuestring))
                                      : -1;
    tok->fuse_unk = json_flag(model, "fuse_unk", 0);
    tok->byte_fallback = json_flag(model, "byte_fallback", 0);
    tok->ignore_merges = json_flag(model, "ignore_merges", 0);
    for (uint32_t cp = 0; cp < MB_TOK_CP_TABLE; cp++) {
        char s[2];
        size_t n = cp < 0x80 ? 1 : 2;
        s[0] = cp < 0x80 ? (char)cp : (char)(0xc0 | (cp >> 6));
        if (n == 2) s[1] = (char)(0x80 | (cp & 0x3f));
        tok->cp_id[cp] = mb_tok_vocab_find(tok, s, n);
    }
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        tok->byte_id[b] = mb_tok_vocab_find(tok, s, 6);
    }

    mb_status st = load_merges(tok, merges, err, err_cap);
    if (st == MB_STATUS_OK) st = load_added(tok, added, err, err_cap);
    if (st == MB_STATUS_OK) st = added_set_build(tok, &tok->raw_set, 0);
    if (st == MB_STATUS_OK) st = added_set_build(tok, &tok->norm_set, 1);
    return st;
}

mb_status mb_tok_build(const cJSON *root, mb_tokenizer **out, char *err, size_t err_cap)
{
    mb_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return MB_STATUS_NOMEM;
    tok->bos_id = tok->eos_id = -1;
    mb_status st = load_model(tok, root, err, err_cap);
    if (st == MB_STATUS_OK)
        st = mb_tok_parse_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                                     err, err_cap);
    if (st == MB_STATUS_OK)
        st = mb_tok_parse_pre_tokenizer(
            tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err, err_cap);
    if (st == MB_STATUS_OK)
        st = mb_tok_parse_post_processor(
            tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err, err_cap);
    if (st == MB_STATUS_OK)
        st = mb_tok_parse_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err,
                                  err_cap);
    if (st != MB_STATUS_OK) {
        mb_tokenizer_destroy(tok);
        return st;
    }
    *out = tok;
    return MB_STATUS_OK;
}

mb_status mb_tokenizer_load_json(const char *json, size_t json_bytes, const char *config,
                                 size_t config_bytes, mb_tokenizer **out, char *err,
                                 size_t err_cap)
{
    if (!json || !out) return MB_STATUS_INVALID_ARG;
    if (err && err_cap) err[0] = '\0';
    cJSON *root = cJSON_ParseWithLength(json, json_bytes), *cfg = NULL;
    mb_tokenizer *tok = NULL;
    mb_status st = MB_STATUS_OK;
    if (!cJSON_IsObject(root)) {
        mb_tok_errf(err, err_cap, "not a JSON object (malformed or truncated JSON)");
        st = MB_STATUS_FORMAT;
        goto done;
    }
    st = mb_tok_build(root, &tok, err, err_cap);
    if (st != MB_STATUS_OK) goto done;
    if (config) {
        cfg = cJSON_ParseWithLength(config, config_bytes);
        if (!cJSON_IsObject(cfg)) {
            mb_tok_errf(err, err_cap, "tokenizer_config.json: not a JSON object");
            st = MB_STATUS_FORMAT;
            goto done;
        }
        tok->bos_id = config_token(tok, cfg, "bos_token");
        tok->eos_id = config_token(tok, cfg, "eos_token");
    }
done:
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (st != MB_STATUS_OK) {
        if (st == MB_STATUS_NOMEM && err && err_cap && !err[0]) mb_tok_errf(err, err_cap, "out of memory");
        mb_tokenizer_destroy(tok);
        return st;
    }
    *out = tok;
    return MB_STATUS_OK;
}

/* Reads a whole file; *data is malloc'd (NUL-terminated). */
static mb_status read_file(const char *path, char **data, size_t *bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? MB_STATUS_NOT_FOUND : MB_STATUS_IO;
    mb_status st = MB_STATUS_OK;
    char *buf = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = MB_STATUS_IO;
        goto done;
    }
    if ((uint64_t)sb.st_size > MB_TOKENIZER_MAX_FILE_BYTES) {
        st = MB_STATUS_FORMAT;
        goto done;
    }
    size_t n = (size_t)sb.st_size;
    buf = malloc(n + 1);
    if (!buf) {
        st = MB_STATUS_NOMEM;
        goto done;
    }
    if (fread(buf, 1, n, f) != n) {
        st = MB_STATUS_IO;
        goto done;
    }
    buf[n] = '\0';
    *data = buf;
    *bytes = n;
    buf = NULL;
done:
    free(buf);
    fclose(f);
    return st;
}

mb_status mb_tokenizer_load(const char *path, mb_tokenizer **out, char *err, size_t err_cap)
{
    if (!path || !out) return MB_STATUS_INVALID_ARG;
    struct stat sb;
    char *json_path = NULL, *cfg_path = NULL, *json = NULL, *cfg = NULL;
    size_t json_bytes = 0, cfg_bytes = 0;
    mb_status st = MB_STATUS_NOMEM;
    int is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    size_t n = strlen(path);
    json_path = malloc(n + 32);
    cfg_path = malloc(n + 32);
    if (!json_path || !cfg_path) goto done;
    if (is_dir) {
        snprintf(json_path, n + 32, "%s/tokenizer.json", path);
    } else {
        snprintf(json_path, n + 32, "%s", path);
    }
    snprintf(cfg_path, n + 32, "%s", json_path);
    char *slash = strrchr(cfg_path, '/');
    snprintf(slash ? slash + 1 : cfg_path, n + 32 - (size_t)(slash ? slash + 1 - cfg_path : 0),
             "tokenizer_config.json");

    st = read_file(json_path, &json, &json_bytes);
    if (st != MB_STATUS_OK) {
        mb_tok_errf(err, err_cap, "%s: %s", json_path,
                    st == MB_STATUS_FORMAT ? "larger than the tokenizer file limit"
                    : st == MB_STATUS_NOMEM ? "out of memory"
                                            : strerror(errno ? errno : EIO));
        if (st == MB_STATUS_NOT_FOUND) st = MB_STATUS_IO;
        goto done;
    }
    st = read_file(cfg_path, &cfg, &cfg_bytes);
    if (st == MB_STATUS_NOT_FOUND) {
        st = MB_STATUS_OK; /* the config is optional */
    } else if (st != MB_STATUS_OK) {
        mb_tok_errf(err, err_cap, "%s: cannot read", cfg_path);
        goto done;
    }
    char why[400] = "";
    st = mb_tokenizer_load_json(json, json_bytes, cfg, cfg_bytes, out, why, sizeof why);
    if (st != MB_STATUS_OK) mb_tok_errf(err, err_cap, "%s: %s", json_path, why);
done:
    free(json_path);
    free(cfg_path);
    free(json);
    free(cfg);
    return st;
}

static void free_stages(mb_tokenizer *tok)
{
    for (uint32_t i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].a);
        free(tok->norm[i].b);
        pcre2_code_free(tok->norm[i].re);
    }
    for (uint32_t i = 0; i < tok->n_pre; i++) {
        free(tok->pre[i].a);
        pcre2_code_free(tok->pre[i].re);
    }
    for (uint32_t i = 0; i < tok->n_dec; i++) {
        free(tok->dec[i].a);
        free(tok->dec[i].b);
    }
}

void mb_tokenizer_destroy(mb_tokenizer *tok)
{
    if (!tok) return;
    free_stages(tok);
    for (uint32_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].text);
    free(tok->added);
    free(tok->raw_set.order);
    free(tok->norm_set.order);
    free(tok->added_of_id);
    free(tok->arena);
    free(tok->text_ref);
    free(tok->slots);
    free(tok->merge_keys);
    free(tok->merge_vals);
    free(tok->post_pre);
    free(tok->post_post);
    free(tok);
}

uint32_t mb_tokenizer_n_vocab(const mb_tokenizer *tok)
{
    return tok ? tok->n_ids : 0;
}

int32_t mb_tokenizer_bos_id(const mb_tokenizer *tok)
{
    return tok ? tok->bos_id : -1;
}

int32_t mb_tokenizer_eos_id(const mb_tokenizer *tok)
{
    return tok ? tok->eos_id : -1;
}

int mb_tokenizer_is_added(const mb_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && (uint32_t)id < tok->n_ids && tok->added_of_id[id] >= 0;
}

const char *mb_tokenizer_token_text(const mb_tokenizer *tok, int32_t id, size_t *bytes)
{
    if (!tok || id < 0 || (uint32_t)id >= tok->n_ids) return NULL;
    size_t len = 0;
    const char *t;
    if (tok->added_of_id[id] >= 0) {
        const mb_tok_added *a = &tok->added[tok->added_of_id[id]];
        t = a->text;
        len = a->len;
    } else {
        t = token_text(tok, id, &len);
    }
    if (t && bytes) *bytes = len;
    return t;
}
