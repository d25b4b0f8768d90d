/* Parsing of tokenizer.json's pipeline stages: normalizer, pre_tokenizer,
 * post_processor and decoder, each into a flat list of steps (a Sequence's
 * members in order). An unknown type is refused with its name rather than
 * ignored, so a tokenizer either matches Hugging Face's or does not load. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "broker/tokenizer/tokenizer_impl.h"

/* The GPT-2 pattern ByteLevel applies when use_regex is set. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static const char *type_of(const cJSON *j)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static const char *str_of(const cJSON *obj, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

static int flag_of(const cJSON *obj, const char *name, int dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}

static mb_status dup_str(const char *s, char **out, size_t *len)
{
    *out = strdup(s);
    if (!*out) return MB_STATUS_NOMEM;
    *len = strlen(s);
    return MB_STATUS_OK;
}

static mb_status compile(const char *pattern, int literal, pcre2_code **out, char *err,
                         size_t err_cap)
{
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &code, &at,
                                   NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        mb_tok_errf(err, err_cap, "regex rejected by PCRE2 at offset %zu: %s", (size_t)at,
                    (const char *)msg);
        return MB_STATUS_UNSUPPORTED;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT it still matches, slower */
    *out = re;
    return MB_STATUS_OK;
}

/* {"Regex": "..."} or {"String": "..."}. */
static mb_status compile_pattern(const cJSON *pattern, pcre2_code **out, char *err, size_t err_cap)
{
    const char *rx = str_of(pattern, "Regex"), *lit = str_of(pattern, "String");
    if (!rx && !lit) {
        mb_tok_errf(err, err_cap, "pattern needs \"Regex\" or \"String\"");
        return MB_STATUS_FORMAT;
    }
    return compile(rx ? rx : lit, rx == NULL, out, err, err_cap);
}

static mb_status too_many(char *err, size_t err_cap, const char *what)
{
    mb_tok_errf(err, err_cap, "more than %d %s steps", MB_TOK_MAX_STAGES, what);
    return MB_STATUS_UNSUPPORTED;
}

mb_status mb_tok_parse_normalizer(mb_tokenizer *tok, const cJSON *j, char *err, size_t err_cap)
{
    if (!j || cJSON_IsNull(j)) return MB_STATUS_OK;
    const char *type = type_of(j);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "normalizers"), *m;
        if (!cJSON_IsArray(list)) {
            mb_tok_errf(err, err_cap, "normalizer Sequence needs \"normalizers\"");
            return MB_STATUS_FORMAT;
        }
        cJSON_ArrayForEach(m, list)
        {
            mb_status st = mb_tok_parse_normalizer(tok, m, err, err_cap);
            if (st != MB_STATUS_OK) return st;
        }
        return MB_STATUS_OK;
    }
    if (tok->n_norm == MB_TOK_MAX_STAGES) return too_many(err, err_cap, "normalizer");
    mb_tok_norm *n = &tok->norm[tok->n_norm];
    memset(n, 0, sizeof *n);
    static const char *const simple[] = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(type, simple[i]) == 0) {
            n->kind = (mb_tok_norm_kind)(MB_TOK_NORM_NFC + i);
            tok->n_norm++;
            return MB_STATUS_OK;
        }
    }
    mb_status st = MB_STATUS_OK;
    if (strcmp(type, "Prepend") == 0) {
        const char *p = str_of(j, "prepend");
        if (!p) goto malformed;
        n->kind = MB_TOK_NORM_PREPEND;
        st = dup_str(p, &n->a, &n->a_len);
    } else if (strcmp(type, "Replace") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
        const char *content = str_of(j, "content"), *lit = str_of(pat, "String");
        if (!content || (!lit && !str_of(pat, "Regex"))) goto malformed;
        n->kind = MB_TOK_NORM_REPLACE;
        st = dup_str(content, &n->b, &n->b_len);
        if (st == MB_STATUS_OK && lit && lit[0] == '\0') goto malformed;
        if (st == MB_STATUS_OK) st = lit ? dup_str(lit, &n->a, &n->a_len)
                                         : compile_pattern(pat, &n->re, err, err_cap);
    } else if (strcmp(type, "Strip") == 0) {
        n->kind = MB_TOK_NORM_STRIP;
        n->left = flag_of(j, "strip_left", 1);
        n->right = flag_of(j, "strip_right", 1);
    } else {
        mb_tok_errf(err, err_cap, "normalizer type \"%.40s\" is not supported", type);
        return MB_STATUS_UNSUPPORTED;
    }
    tok->n_norm++; /* counted even on failure: destroy frees what was set */
    return st;
malformed:
    tok->n_norm++;
    mb_tok_errf(err, err_cap, "normalizer %s is missing a field", type);
    return MB_STATUS_FORMAT;
}

static int behavior_of(const char *s, mb_tok_split_behavior *out)
{
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    for (int i = 0; s && i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (mb_tok_split_behavior)i;
            return 0;
        }
    }
    return -1;
}

/* Metaspace's prepend_scheme, or the older add_prefix_space flag. */
static mb_tok_prepend_scheme scheme_of(const cJSON *j)
{
    const char *s = str_of(j, "prepend_scheme");
    if (s && strcmp(s, "never") == 0) return MB_TOK_PREPEND_NEVER;
    if (s && strcmp(s, "first") == 0) return MB_TOK_PREPEND_FIRST;
    if (s) return MB_TOK_PREPEND_ALWAYS;
    return flag_of(j, "add_prefix_space", 1) ? MB_TOK_PREPEND_ALWAYS : MB_TOK_PREPEND_NEVER;
}

mb_status mb_tok_parse_pre_tokenizer(mb_tokenizer *tok, const cJSON *j, char *err, size_t err_cap)
{
    if (!j || cJSON_IsNull(j)) return MB_STATUS_OK;
    const char *type = type_of(j);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers"), *m;
        if (!cJSON_IsArray(list)) {
            mb_tok_errf(err, err_cap, "pre_tokenizer Sequence needs \"pretokenizers\"");
            return MB_STATUS_FORMAT;
        }
        cJSON_ArrayForEach(m, list)
        {
            mb_status st = mb_tok_parse_pre_tokenizer(tok, m, err, err_cap);
            if (st != MB_STATUS_OK) return st;
        }
        return MB_STATUS_OK;
    }
    if (tok->n_pre == MB_TOK_MAX_STAGES) return too_many(err, err_cap, "pre_tokenizer");
    mb_tok_pre *p = &tok->pre[tok->n_pre++];
    memset(p, 0, sizeof *p);
    if (strcmp(type, "Split") == 0) {
        p->kind = MB_TOK_PRE_SPLIT;
        p->invert = flag_of(j, "invert", 0);
        if (behavior_of(str_of(j, "behavior"), &p->behavior)) {
            mb_tok_errf(err, err_cap, "pre_tokenizer Split: unknown \"behavior\"");
            return MB_STATUS_FORMAT;
        }
        return compile_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), &p->re, err,
                               err_cap);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        p->kind = MB_TOK_PRE_BYTE_LEVEL;
        p->add_prefix_space = flag_of(j, "add_prefix_space", 1);
        p->behavior = MB_TOK_SPLIT_ISOLATED;
        return flag_of(j, "use_regex", 1) ? compile(gpt2_pattern, 0, &p->re, err, err_cap)
                                          : MB_STATUS_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        const char *r = str_of(j, "replacement");
        p->kind = MB_TOK_PRE_METASPACE;
        p->prepend_scheme = scheme_of(j);
        p->split = flag_of(j, "split", 1);
        p->behavior = MB_TOK_SPLIT_MERGED_WITH_NEXT;
        mb_status st = dup_str(r ? r : "\xe2\x96\x81", &p->a, &p->a_len);
        if (st == MB_STATUS_OK && p->a_len == 0) {
            mb_tok_errf(err, err_cap, "pre_tokenizer Metaspace: empty replacement");
            return MB_STATUS_FORMAT;
        }
        return st == MB_STATUS_OK && p->split ? compile(p->a, 1, &p->re, err, err_cap) : st;
    }
    if (strcmp(type, "Digits") == 0) {
        p->kind = MB_TOK_PRE_DIGITS;
        p->behavior = flag_of(j, "individual_digits", 0) ? MB_TOK_SPLIT_ISOLATED
                                                         : MB_TOK_SPLIT_CONTIGUOUS;
        return compile("\\p{N}", 0, &p->re, err, err_cap);
    }
    if (strcmp(type, "Whitespace") == 0 || strcmp(type, "WhitespaceSplit") == 0) {
        int ws = type[10] == 'S';
        p->kind = MB_TOK_PRE_SPLIT;
        p->behavior = MB_TOK_SPLIT_REMOVED;
        p->invert = !ws; /* Whitespace keeps the matches of \w+|[^\w\s]+ */
        return compile(ws ? "\\s+" : "\\w+|[^\\w\\s]+", 0, &p->re, err, err_cap);
    }
    tok->n_pre--;
    mb_tok_errf(err, err_cap, "pre_tokenizer type \"%.40s\" is not supported", type);
    return MB_STATUS_UNSUPPORTED;
}

mb_status mb_tok_parse_decoder(mb_tokenizer *tok, const cJSON *j, char *err, size_t err_cap)
{
    if (!j || cJSON_IsNull(j)) return MB_STATUS_OK;
    tok->has_decoder = 1;
    const char *type = type_of(j);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "decoders"), *m;
        if (!cJSON_IsArray(list)) {
            mb_tok_errf(err, err_cap, "decoder Sequence needs \"decoders\"");
            return MB_STATUS_FORMAT;
        }
        cJSON_ArrayForEach(m, list)
        {
            mb_status st = mb_tok_parse_decoder(tok, m, err, err_cap);
            if (st != MB_STATUS_OK) return st;
        }
        return MB_STATUS_OK;
    }
    if (tok->n_dec == MB_TOK_MAX_STAGES) return too_many(err, err_cap, "decoder");
    mb_tok_dec *d = &tok->dec[tok->n_dec++];
    memset(d, 0, sizeof *d);
    if (strcmp(type, "ByteLevel") == 0) {
        d->kind = MB_TOK_DEC_BYTE_LEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        d->kind = MB_TOK_DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        d->kind = MB_TOK_DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        const char *lit = str_of(cJSON_GetObjectItemCaseSensitive(j, "pattern"), "String");
        const char *content = str_of(j, "content");
        d->kind = MB_TOK_DEC_REPLACE;
        if (!lit || !lit[0] || !content) {
            mb_tok_errf(err, err_cap, "decoder Replace needs a non-empty String pattern "
                                      "and a content");
            return str_of(cJSON_GetObjectItemCaseSensitive(j, "pattern"), "Regex")
                       ? MB_STATUS_UNSUPPORTED
                       : MB_STATUS_FORMAT;
        }
        mb_status st = dup_str(lit, &d->a, &d->a_len);
        return st == MB_STATUS_OK ? dup_str(content, &d->b, &d->b_len) : st;
    } else if (strcmp(type, "Strip") == 0) {
        const char *content = str_of(j, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(j, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(j, "stop");
        d->kind = MB_TOK_DEC_STRIP;
        if (!content || mb_tok_utf8_len((unsigned char)content[0]) != strlen(content) ||
            !cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valuedouble < 0 ||
            stop->valuedouble < 0 || start->valuedouble > 1e6 || stop->valuedouble > 1e6) {
            mb_tok_errf(err, err_cap, "decoder Strip needs one content character, start, stop");
            return MB_STATUS_FORMAT;
        }
        d->start = (uint32_t)start->valuedouble;
        d->stop = (uint32_t)stop->valuedouble;
        return dup_str(content, &d->a, &d->a_len);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = str_of(j, "replacement");
        d->kind = MB_TOK_DEC_METASPACE;
        d->prepend_scheme = scheme_of(j);
        mb_status st = dup_str(r ? r : "\xe2\x96\x81", &d->a, &d->a_len);
        if (st == MB_STATUS_OK && d->a_len == 0) {
            mb_tok_errf(err, err_cap, "decoder Metaspace: empty replacement");
            return MB_STATUS_FORMAT;
        }
        return st;
    } else {
        tok->n_dec--;
        mb_tok_errf(err, err_cap, "decoder type \"%.40s\" is not supported", type);
        return MB_STATUS_UNSUPPORTED;
    }
    return MB_STATUS_OK;
}

static mb_status append_ids(int32_t **list, uint32_t *n, const int32_t *ids, uint32_t count)
{
    int32_t *grown = realloc(*list, ((size_t)*n + count + 1) * sizeof *grown);
    if (!grown) return MB_STATUS_NOMEM;
    memcpy(grown + *n, ids, count * sizeof *ids);
    *list = grown;
    *n += count;
    return MB_STATUS_OK;
}

/* ["<s>", 1] as Roberta and Bert processors spell cls and sep. */
static int pair_id(const cJSON *j, int32_t *id)
{
    const cJSON *v = cJSON_GetArrayItem(j, 1);
    if (!cJSON_IsArray(j) || !cJSON_IsNumber(v) || v->valuedouble < 0 ||
        v->valuedouble > MB_TOKENIZER_MAX_ID)
        return -1;
    *id = (int32_t)v->valuedouble;
    return 0;
}

static mb_status parse_template(mb_tokenizer *tok, const cJSON *j, char *err, size_t err_cap)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single"), *item;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single)) goto malformed;
    int seen_sequence = 0;
    cJSON_ArrayForEach(item, single)
    {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(item, "Sequence")) {
            seen_sequence = 1;
            continue;
        }
        const char *name = str_of(sp, "id");
        const cJSON *entry = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids"), *v;
        if (!cJSON_IsArray(ids)) goto malformed;
        cJSON_ArrayForEach(v, ids)
        {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > MB_TOKENIZER_MAX_ID)
                goto malformed;
            int32_t id = (int32_t)v->valuedouble;
            mb_status st = seen_sequence ? append_ids(&tok->post_post, &tok->n_post_post, &id, 1)
                                         : append_ids(&tok->post_pre, &tok->n_post_pre, &id, 1);
            if (st != MB_STATUS_OK) return st;
        }
    }
    return MB_STATUS_OK;
malformed:
    mb_tok_errf(err, err_cap, "post_processor TemplateProcessing: malformed \"single\" or "
                              "\"special_tokens\"");
    return MB_STATUS_FORMAT;
}

mb_status mb_tok_parse_post_processor(mb_tokenizer *tok, const cJSON *j, char *err,
                                      size_t err_cap)
{
    if (!j || cJSON_IsNull(j)) return MB_STATUS_OK;
    const char *type = type_of(j);
    if (strcmp(type, "ByteLevel") == 0) return MB_STATUS_OK; /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(tok, j, err, err_cap);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "processors"), *m;
        if (!cJSON_IsArray(list)) {
            mb_tok_errf(err, err_cap, "post_processor Sequence needs \"processors\"");
            return MB_STATUS_FORMAT;
        }
        cJSON_ArrayForEach(m, list)
        {
            mb_status st = mb_tok_parse_post_processor(tok, m, err, err_cap);
            if (st != MB_STATUS_OK) return st;
        }
        return MB_STATUS_OK;
    }
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        if (pair_id(cJSON_GetObjectItemCaseSensitive(j, "cls"), &cls) ||
            pair_id(cJSON_GetObjectItemCaseSensitive(j, "sep"), &sep)) {
            mb_tok_errf(err, err_cap, "post_processor %s needs cls and sep", type);
            return MB_STATUS_FORMAT;
        }
        mb_status st = append_ids(&tok->post_pre, &tok->n_post_pre, &cls, 1);
        return st == MB_STATUS_OK ? append_ids(&tok->post_post, &tok->n_post_post, &sep, 1) : st;
    }
    mb_tok_errf(err, err_cap, "post_processor type \"%.40s\" is not supported", type);
    return MB_STATUS_UNSUPPORTED;
}
