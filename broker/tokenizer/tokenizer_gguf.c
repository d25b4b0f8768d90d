/* A tokenizer from a GGUF file's metadata (tokenizer.ggml.*), for a GGUF
 * alone to be enough to chat. The metadata is turned into the tokenizer.json
 * a Hugging Face checkpoint would carry (model, added tokens and the
 * pipeline stages the model and pre-tokenizer family imply), which the one
 * loader in tokenizer_load.c then builds: one BPE, one set of checks.
 *
 * tokenizer.ggml.model "gpt2" is byte-level BPE with .merges; "llama" is
 * SentencePiece: when .merges is absent they are derived from .scores the
 * way Hugging Face's converter derives them (every split of a piece into
 * two pieces, ranked by the whole piece's score). .token_type says which
 * tokens are added: CONTROL and UNKNOWN ones special, USER_DEFINED ones not;
 * UNUSED ones (padding) are left out. .pre names the pre-tokenizer family
 * as llama.cpp's converter writes it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/gguf.h"
#include "broker/tokenizer/tokenizer_impl.h"

/* llama.cpp's token types (llama_token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* The Split pattern before ByteLevel of each pre-tokenizer family, as the
 * family's tokenizer.json spells it; NULL: ByteLevel's own GPT-2 pattern. */
typedef struct {
    const char *name;
    const char *split; /* Regex of a Split (Isolated) stage, or NULL */
    int nfc;           /* the family's tokenizer.json normalizes NFC first */
} gguf_pre_family;

static const gguf_pre_family pre_families[] = {
    {"default", NULL, 0},
    {"gpt2", NULL, 0},
    {"qwen2",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     1},
    {"llama-bpe",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     0},
};

/* One token array entry read from the metadata. */
typedef struct {
    const char *text;
    size_t len;
} gguf_str;

/* Reads a string array into *out (n entries; malloc'd views into the
 * mapping). FORMAT when the key is not an array of strings or an entry
 * runs past the array's bytes. */
static mb_status read_strings(const mb_gguf *g, const char *key, gguf_str **out, uint64_t *n,
                              char *err, size_t err_cap)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    if (!kv) return MB_STATUS_NOT_FOUND;
    if (kv->type != MB_GGUF_ARRAY || kv->elem_type != MB_GGUF_STRING || kv->n_elems > MB_TOKENIZER_MAX_ID) {
        mb_tok_errf(err, err_cap, "%s: not an array of at most %d strings", key, MB_TOKENIZER_MAX_ID);
        return MB_STATUS_FORMAT;
    }
    gguf_str *s = calloc(kv->n_elems ? kv->n_elems : 1, sizeof *s);
    if (!s) return MB_STATUS_NOMEM;
    const uint8_t *p = kv->elems;
    uint64_t left = kv->elems_bytes;
    for (uint64_t i = 0; i < kv->n_elems; i++) {
        uint64_t len;
        if (left < 8) goto bad;
        memcpy(&len, p, 8);
        if (len > left - 8 || len >= (1u << 24)) goto bad;
        s[i] = (gguf_str){(const char *)p + 8, (size_t)len};
        p += 8 + len;
        left -= 8 + len;
    }
    *out = s;
    *n = kv->n_elems;
    return MB_STATUS_OK;
bad:
    free(s);
    mb_tok_errf(err, err_cap, "%s: an entry runs past the array", key);
    return MB_STATUS_FORMAT;
}

/* Element i of a numeric array as a double; the caller checked the type. */
static double array_num(const mb_gguf_kv *kv, uint64_t i)
{
    const uint8_t *p = kv->elems;
    int32_t i32;
    float f32;
    switch (kv->elem_type) {
    case MB_GGUF_I32: memcpy(&i32, p + 4 * i, 4); return i32;
    case MB_GGUF_U32: memcpy(&i32, p + 4 * i, 4); return (uint32_t)i32;
    case MB_GGUF_F32: memcpy(&f32, p + 4 * i, 4); return f32;
    default: return 0;
    }
}

/* A numeric array of exactly n I32/U32/F32 elements; NULL when absent.
 * FORMAT for another shape. */
static mb_status read_numbers(const mb_gguf *g, const char *key, uint64_t n, const mb_gguf_kv **out,
                              char *err, size_t err_cap)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    *out = NULL;
    if (!kv) return MB_STATUS_OK;
    if (kv->type != MB_GGUF_ARRAY || kv->n_elems != n ||
        (kv->elem_type != MB_GGUF_I32 && kv->elem_type != MB_GGUF_U32 && kv->elem_type != MB_GGUF_F32)) {
        mb_tok_errf(err, err_cap, "%s: not an array of %llu numbers (one per token)", key,
                    (unsigned long long)n);
        return MB_STATUS_FORMAT;
    }
    *out = kv;
    return MB_STATUS_OK;
}

/* A bool key, dflt when absent. */
static int read_flag(const mb_gguf *g, const char *key, int dflt)
{
    const mb_gguf_kv *kv = mb_gguf_kv_find(g, key);
    return kv && kv->type == MB_GGUF_BOOL ? (int)kv->v.u : dflt;
}

/* A token id key (bos, eos, unknown); -1 when absent. */
static mb_status read_id(const mb_gguf *g, const char *key, uint64_t n_tokens, int32_t *id, char *err,
                         size_t err_cap)
{
    uint32_t v = 0;
    *id = -1;
    mb_status st = mb_gguf_get_u32(g, key, &v, err, err_cap);
    if (st == MB_STATUS_NOT_FOUND) return MB_STATUS_OK;
    if (st != MB_STATUS_OK) return MB_STATUS_FORMAT;
    if (v >= n_tokens) {
        mb_tok_errf(err, err_cap, "%s: id %u is not a token (%llu tokens)", key, v, (unsigned long long)n_tokens);
        return MB_STATUS_FORMAT;
    }
    *id = (int32_t)v;
    return MB_STATUS_OK;
}

/* The tokens as they go into the JSON: NUL-terminated copies (cJSON keys
 * and strings are C strings, so a token holding a NUL is refused). */
typedef struct {
    gguf_str *tokens;
    uint64_t n;
    const mb_gguf_kv *types, *scores;
    char **text; /* [n] */
} gguf_vocab;

static int token_type(const gguf_vocab *v, uint64_t i)
{
    return v->types ? (int)array_num(v->types, i) : TT_NORMAL;
}

static void vocab_free(gguf_vocab *v)
{
    for (uint64_t i = 0; v->text && i < v->n; i++)
        free(v->text[i]);
    free(v->text);
    free(v->tokens);
}

static cJSON *json_str(const char *s)
{
    return cJSON_CreateString(s);
}

/* model.vocab: every token but UNUSED ones (padding that fills id gaps). */
static mb_status build_vocab(const gguf_vocab *v, cJSON *model)
{
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    if (!vocab) return MB_STATUS_NOMEM;
    for (uint64_t i = 0; i < v->n; i++) {
        if (token_type(v, i) == TT_UNUSED) continue;
        cJSON *id = cJSON_CreateNumber((double)i);
        if (!id || !cJSON_AddItemToObject(vocab, v->text[i], id)) return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

/* added_tokens: CONTROL and UNKNOWN special, USER_DEFINED not; none
 * normalized (they match the raw text, as the converters mark them). */
static mb_status build_added(const gguf_vocab *v, cJSON *root)
{
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    if (!added) return MB_STATUS_NOMEM;
    for (uint64_t i = 0; i < v->n; i++) {
        const int tt = token_type(v, i);
        if ((tt != TT_CONTROL && tt != TT_UNKNOWN && tt != TT_USER_DEFINED) || !v->tokens[i].len) continue;
        cJSON *a = cJSON_CreateObject();
        if (!a || !cJSON_AddItemToArray(added, a) || !cJSON_AddNumberToObject(a, "id", (double)i) ||
            !cJSON_AddStringToObject(a, "content", v->text[i]) ||
            !cJSON_AddBoolToObject(a, "special", tt != TT_USER_DEFINED) ||
            !cJSON_AddBoolToObject(a, "normalized", 0))
            return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

/* A candidate merge derived from scores. */
typedef struct {
    uint32_t left, right, whole;
    float score;
} gguf_merge;

static int merge_cmp(const void *a, const void *b)
{
    const gguf_merge *x = a, *y = b;
    /* Higher score first; within a piece (and between equal scores) by
     * the halves' ids, then by the piece's: the converter's order. */
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->whole != y->whole) return x->whole < y->whole ? -1 : 1;
    if (x->left != y->left) return x->left < y->left ? -1 : 1;
    return x->right < y->right ? -1 : x->right > y->right;
}

/* SentencePiece merges from scores: every split of a NORMAL piece at a
 * character boundary into two pieces of the vocabulary. Needs the loader's
 * text -> id lookup, so it runs on a vocabulary-only tokenizer. */
static mb_status derive_merges(const gguf_vocab *v, cJSON *merges, char *err, size_t err_cap)
{
    cJSON *vroot = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(vroot, "model");
    mb_tokenizer *lookup = NULL;
    gguf_merge *m = NULL;
    size_t n = 0, cap = 0;
    mb_status st = vroot && model && cJSON_AddArrayToObject(model, "merges") ? build_vocab(v, model) : MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK) st = mb_tok_build(vroot, &lookup, err, err_cap);
    for (uint64_t i = 0; st == MB_STATUS_OK && i < v->n; i++) {
        if (token_type(v, i) != TT_NORMAL) continue;
        const char *t = v->tokens[i].text;
        const size_t len = v->tokens[i].len;
        for (size_t at = mb_tok_utf8_len((unsigned char)t[0]); at < len; at += mb_tok_utf8_len((unsigned char)t[at])) {
            const int32_t l = mb_tok_vocab_find(lookup, t, at), r = mb_tok_vocab_find(lookup, t + at, len - at);
            if (l < 0 || r < 0) continue;
            if (n == cap) {
                gguf_merge *grown = realloc(m, (cap = cap ? 2 * cap : 4096) * sizeof *m);
                if (!grown) {
                    st = MB_STATUS_NOMEM;
                    break;
                }
                m = grown;
            }
            m[n++] = (gguf_merge){(uint32_t)l, (uint32_t)r, (uint32_t)i, (float)array_num(v->scores, i)};
        }
    }
    if (st == MB_STATUS_OK) qsort(m, n, sizeof *m, merge_cmp);
    for (size_t k = 0; st == MB_STATUS_OK && k < n; k++) {
        cJSON *pair = cJSON_CreateArray();
        if (!pair || !cJSON_AddItemToArray(merges, pair) ||
            !cJSON_AddItemToArray(pair, json_str(v->text[m[k].left])) ||
            !cJSON_AddItemToArray(pair, json_str(v->text[m[k].right])))
            st = MB_STATUS_NOMEM;
    }
    free(m);
    mb_tokenizer_destroy(lookup);
    cJSON_Delete(vroot);
    return st;
}

/* model.merges from .merges ("A B" strings, as tokenizer.json spells them). */
static mb_status copy_merges(const mb_gguf *g, cJSON *merges, char *err, size_t err_cap)
{
    gguf_str *s = NULL;
    uint64_t n = 0;
    mb_status st = read_strings(g, "tokenizer.ggml.merges", &s, &n, err, err_cap);
    for (uint64_t i = 0; st == MB_STATUS_OK && i < n; i++) {
        char *text = strndup(s[i].text, s[i].len);
        cJSON *j = text ? json_str(text) : NULL;
        if (!j || !cJSON_AddItemToArray(merges, j)) st = MB_STATUS_NOMEM;
        free(text);
    }
    free(s);
    return st;
}

/* The stages of a byte-level BPE ("gpt2") of pre-tokenizer family pre. */
static mb_status stages_gpt2(cJSON *root, const char *pre, char *err, size_t err_cap)
{
    const gguf_pre_family *f = NULL;
    for (size_t i = 0; i < sizeof pre_families / sizeof pre_families[0]; i++)
        if (!strcmp(pre, pre_families[i].name)) f = &pre_families[i];
    if (!f) {
        mb_tok_errf(err, err_cap, "tokenizer.ggml.pre \"%.60s\" is not supported (known: default, gpt2, "
                    "qwen2, llama-bpe)", pre);
        return MB_STATUS_UNSUPPORTED;
    }
    cJSON *bl = cJSON_CreateObject();
    if (!bl || !cJSON_AddStringToObject(bl, "type", "ByteLevel") || !cJSON_AddBoolToObject(bl, "add_prefix_space", 0) ||
        !cJSON_AddBoolToObject(bl, "use_regex", !f->split) || !cJSON_AddItemToObject(root, "decoder", bl))
        return MB_STATUS_NOMEM;
    cJSON *pre_tok = cJSON_Duplicate(bl, 1);
    if (!pre_tok) return MB_STATUS_NOMEM;
    if (f->split) {
        cJSON *seq = cJSON_CreateObject(), *list = seq ? cJSON_AddArrayToObject(seq, "pretokenizers") : NULL;
        cJSON *split = cJSON_CreateObject(), *pat = split ? cJSON_AddObjectToObject(split, "pattern") : NULL;
        if (!list || !pat || !cJSON_AddStringToObject(seq, "type", "Sequence") ||
            !cJSON_AddStringToObject(split, "type", "Split") || !cJSON_AddStringToObject(pat, "Regex", f->split) ||
            !cJSON_AddStringToObject(split, "behavior", "Isolated") || !cJSON_AddItemToArray(list, split) ||
            !cJSON_AddItemToArray(list, pre_tok)) {
            cJSON_Delete(seq);
            return MB_STATUS_NOMEM;
        }
        pre_tok = seq;
    }
    if (!cJSON_AddItemToObject(root, "pre_tokenizer", pre_tok)) return MB_STATUS_NOMEM;
    if (f->nfc && !cJSON_AddItemToObject(root, "normalizer", cJSON_Parse("{\"type\":\"NFC\"}")))
        return MB_STATUS_NOMEM;
    return MB_STATUS_OK;
}

/* The stages of a SentencePiece BPE ("llama"): spaces as U+2581, a prefix
 * space unless .add_space_prefix is false, byte fallback. */
static mb_status stages_llama(const mb_gguf *g, cJSON *root, cJSON *model)
{
    const int prefix = read_flag(g, "tokenizer.ggml.add_space_prefix", 1);
    char norm[200], dec[300];
    snprintf(norm, sizeof norm,
             "{\"type\":\"Sequence\",\"normalizers\":[%s{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
             "\"content\":\"\\u2581\"}]}",
             prefix ? "{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"}," : "");
    snprintf(dec, sizeof dec,
             "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
             "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}%s]}",
             prefix ? ",{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}" : "");
    if (!cJSON_AddItemToObject(root, "normalizer", cJSON_Parse(norm)) ||
        !cJSON_AddItemToObject(root, "decoder", cJSON_Parse(dec)) || !cJSON_AddBoolToObject(model, "byte_fallback", 1) ||
        !cJSON_AddBoolToObject(model, "fuse_unk", 1))
        return MB_STATUS_NOMEM;
    return MB_STATUS_OK;
}

/* post_processor: BOS before / EOS after the text when the metadata asks
 * (add_bos_token defaults to on for SentencePiece, off for byte-level). */
static mb_status build_post(const gguf_vocab *v, cJSON *root, int32_t bos, int32_t eos, int add_bos, int add_eos)
{
    if ((!add_bos || bos < 0) && (!add_eos || eos < 0)) return MB_STATUS_OK;
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON *single = post ? cJSON_AddArrayToObject(post, "single") : NULL;
    cJSON *specials = post ? cJSON_AddObjectToObject(post, "special_tokens") : NULL;
    if (!single || !specials || !cJSON_AddStringToObject(post, "type", "TemplateProcessing")) return MB_STATUS_NOMEM;
    const int32_t ids[2] = {add_bos ? bos : -1, add_eos ? eos : -1};
    for (int k = 0; k < 3; k++) {
        cJSON *item = cJSON_CreateObject();
        if (!item || !cJSON_AddItemToArray(single, item)) return MB_STATUS_NOMEM;
        if (k == 1) {
            if (!cJSON_AddObjectToObject(item, "Sequence")) return MB_STATUS_NOMEM;
            continue;
        }
        const int32_t id = ids[k / 2];
        if (id < 0) {
            cJSON_DeleteItemFromArray(single, cJSON_GetArraySize(single) - 1);
            continue;
        }
        cJSON *sp = cJSON_AddObjectToObject(item, "SpecialToken"), *entry = cJSON_CreateObject();
        cJSON *list = entry ? cJSON_AddArrayToObject(entry, "ids") : NULL;
        if (!sp || !list || !cJSON_AddStringToObject(sp, "id", v->text[id]) ||
            !cJSON_AddItemToArray(list, cJSON_CreateNumber(id)) ||
            !cJSON_AddItemToObject(specials, v->text[id], entry))
            return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

/* Reads the token arrays and makes NUL-terminated copies. */
static mb_status read_vocab(const mb_gguf *g, gguf_vocab *v, char *err, size_t err_cap)
{
    mb_status st = read_strings(g, "tokenizer.ggml.tokens", &v->tokens, &v->n, err, err_cap);
    if (st == MB_STATUS_NOT_FOUND) {
        mb_tok_errf(err, err_cap, "no tokenizer.ggml.tokens: the file carries no tokenizer");
        return MB_STATUS_UNSUPPORTED;
    }
    if (st == MB_STATUS_OK && v->n == 0) {
        mb_tok_errf(err, err_cap, "tokenizer.ggml.tokens is empty");
        st = MB_STATUS_FORMAT;
    }
    if (st == MB_STATUS_OK) st = read_numbers(g, "tokenizer.ggml.token_type", v->n, &v->types, err, err_cap);
    if (st == MB_STATUS_OK) st = read_numbers(g, "tokenizer.ggml.scores", v->n, &v->scores, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    if (!(v->text = calloc(v->n, sizeof *v->text))) return MB_STATUS_NOMEM;
    for (uint64_t i = 0; i < v->n; i++) {
        if (memchr(v->tokens[i].text, 0, v->tokens[i].len)) {
            mb_tok_errf(err, err_cap, "tokenizer.ggml.tokens[%llu] holds a NUL byte", (unsigned long long)i);
            return MB_STATUS_FORMAT;
        }
        if (!(v->text[i] = strndup(v->tokens[i].text, v->tokens[i].len))) return MB_STATUS_NOMEM;
    }
    return MB_STATUS_OK;
}

/* Fills root (a tokenizer.json object) from the metadata. */
static mb_status build_json(const mb_gguf *g, gguf_vocab *v, cJSON *root, int32_t *bos, int32_t *eos, char *err,
                            size_t err_cap)
{
    char *kind = NULL, *pre = NULL;
    mb_status st = mb_gguf_get_str(g, "tokenizer.ggml.model", &kind, err, err_cap);
    if (st == MB_STATUS_NOT_FOUND) mb_tok_errf(err, err_cap, "no tokenizer.ggml.model: the file carries no tokenizer");
    if (st != MB_STATUS_OK) return st == MB_STATUS_NOT_FOUND ? MB_STATUS_UNSUPPORTED : MB_STATUS_FORMAT;
    const int spm = !strcmp(kind, "llama"), bpe = !strcmp(kind, "gpt2");
    int32_t unk = -1;
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON *merges = model ? cJSON_AddArrayToObject(model, "merges") : NULL;
    if (!spm && !bpe) {
        mb_tok_errf(err, err_cap, "tokenizer.ggml.model \"%.40s\" is not supported (gpt2 or llama)", kind);
        st = MB_STATUS_UNSUPPORTED;
    } else if (!merges || !cJSON_AddStringToObject(model, "type", "BPE")) {
        st = MB_STATUS_NOMEM;
    }
    if (st == MB_STATUS_OK) st = read_vocab(g, v, err, err_cap);
    if (st == MB_STATUS_OK) st = read_id(g, "tokenizer.ggml.bos_token_id", v->n, bos, err, err_cap);
    if (st == MB_STATUS_OK) st = read_id(g, "tokenizer.ggml.eos_token_id", v->n, eos, err, err_cap);
    if (st == MB_STATUS_OK) st = read_id(g, "tokenizer.ggml.unknown_token_id", v->n, &unk, err, err_cap);
    if (st == MB_STATUS_OK) st = build_vocab(v, model);
    if (st == MB_STATUS_OK) st = build_added(v, root);
    if (st == MB_STATUS_OK && unk >= 0 && !cJSON_AddStringToObject(model, "unk_token", v->text[unk]))
        st = MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK && mb_gguf_kv_find(g, "tokenizer.ggml.merges")) {
        st = copy_merges(g, merges, err, err_cap);
    } else if (st == MB_STATUS_OK && spm && v->scores) {
        st = derive_merges(v, merges, err, err_cap);
    } else if (st == MB_STATUS_OK) {
        mb_tok_errf(err, err_cap, "no tokenizer.ggml.merges%s", spm ? " and no .scores to derive them from" : "");
        st = MB_STATUS_FORMAT;
    }
    if (st == MB_STATUS_OK && bpe) {
        st = mb_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err, err_cap);
        if (st == MB_STATUS_OK || st == MB_STATUS_NOT_FOUND) st = stages_gpt2(root, pre ? pre : "default", err, err_cap);
    }
    if (st == MB_STATUS_OK && spm) st = stages_llama(g, root, model);
    if (st == MB_STATUS_OK)
        st = build_post(v, root, *bos, *eos, read_flag(g, "tokenizer.ggml.add_bos_token", spm),
                        read_flag(g, "tokenizer.ggml.add_eos_token", 0));
    free(kind);
    free(pre);
    return st;
}

mb_status mb_tokenizer_load_gguf(const mb_gguf *g, mb_tokenizer **out, char *err, size_t err_cap)
{
    if (!g || !out) return MB_STATUS_INVALID_ARG;
    if (err && err_cap) err[0] = '\0';
    gguf_vocab v = {0};
    int32_t bos = -1, eos = -1;
    cJSON *root = cJSON_CreateObject();
    mb_status st = root ? build_json(g, &v, root, &bos, &eos, err, err_cap) : MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK) st = mb_tok_build(root, out, err, err_cap);
    if (st == MB_STATUS_OK) {
        (*out)->bos_id = bos;
        (*out)->eos_id = eos;
    }
    if (st == MB_STATUS_NOMEM && err && err_cap && !err[0]) mb_tok_errf(err, err_cap, "out of memory");
    cJSON_Delete(root);
    vocab_free(&v);
    return st;
}

mb_status mb_tokenizer_chat_template_gguf(const mb_gguf *g, char **text, char *err, size_t err_cap)
{
    if (!g || !text) return MB_STATUS_INVALID_ARG;
    *text = NULL;
    mb_status st = mb_gguf_get_str(g, "tokenizer.chat_template", text, err, err_cap);
    return st == MB_STATUS_NOT_FOUND ? MB_STATUS_OK : st;
}
