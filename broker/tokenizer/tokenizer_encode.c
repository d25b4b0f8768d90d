/* Encoding: repairs the text's UTF-8, splits out added tokens (those matched
 * on raw text, then those matched on normalized text), normalizes and
 * pre-tokenizes the rest, runs BPE on each piece and wraps the result with
 * the post-processor's ids, in Hugging Face's order. */
#include <stdlib.h>
#include <string.h>

#include "broker/tokenizer/tokenizer_impl.h"

void mb_tok_scratch_fini(mb_tok_scratch *sc)
{
    pcre2_match_data_free(sc->md);
    for (int i = 0; i < 3; i++)
        mb_tok_pieces_free(&sc->pieces[i]);
    for (int i = 0; i < 4; i++)
        free(sc->buf[i].data);
    free(sc->segs);
    free(sc->sym);
    free(sc->heap);
    free(sc->cache);
    free(sc->cache_keys.data);
    free(sc->cache_ids.data);
    memset(sc, 0, sizeof *sc);
}

/* Hugging Face's word characters for single_word added tokens: ASCII
 * letters, digits and '_', and any non-ASCII character. */
static int is_word_byte(unsigned char c)
{
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

/* The leftmost-longest added token at or after *pos in s[0..n); advances
 * *pos past it. Returns the index into tok->added, or -1 when none. */
static int added_next(const mb_tokenizer *tok, const mb_tok_added_set *set, const char *s,
                      size_t n, size_t *pos, size_t *start)
{
    for (size_t i = *pos; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
            const mb_tok_added *a = &tok->added[set->order[k]];
            if (a->len <= n - i && memcmp(s + i, a->text, a->len) == 0) {
                *start = i;
                *pos = i + a->len;
                return (int)set->order[k];
            }
        }
    }
    *pos = n;
    return -1;
}

/* Start of the run of white space ending at s[end] (end when none). */
static size_t space_run_start(const char *s, size_t end)
{
    while (end > 0) {
        size_t p = end - 1, l;
        while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80)
            p--;
        if (!mb_tok_is_space(mb_tok_utf8_decode(s + p, end - p, &l))) break;
        end = p;
    }
    return end;
}

static size_t space_run_end(const char *s, size_t n, size_t at)
{
    size_t l;
    while (at < n && mb_tok_is_space(mb_tok_utf8_decode(s + at, n - at, &l)))
        at += l;
    return at;
}

typedef struct {
    const mb_tokenizer *tok;
    mb_tok_scratch *sc;
    mb_tok_ids *out;
} encode_ctx;

typedef mb_status (*segment_fn)(encode_ctx *c, const char *s, size_t n, int at_origin);

/* Splits s on the set's tokens: text between them goes to fn, tokens to the
 * output, with lstrip / rstrip / single_word applied as Hugging Face's
 * AddedVocabulary::find_matches does. */
static mb_status split_added(encode_ctx *c, const mb_tok_added_set *set, const char *s, size_t n,
                             int at_origin, segment_fn fn)
{
    size_t pos = 0, done = 0, start;
    mb_status st = MB_STATUS_OK;
    int k;
    while (st == MB_STATUS_OK && set->first[256] &&
           (k = added_next(c->tok, set, s, n, &pos, &start)) >= 0) {
        const mb_tok_added *a = &c->tok->added[k];
        size_t stop = pos;
        if (a->single_word && ((start > 0 && is_word_byte((unsigned char)s[start - 1])) ||
                               (stop < n && is_word_byte((unsigned char)s[stop]))))
            continue;
        if (a->lstrip) {
            size_t left = space_run_start(s, start);
            start = left > done ? left : done;
        }
        if (a->rstrip) stop = space_run_end(s, n, stop);
        if (start > done) st = fn(c, s + done, start - done, at_origin && done == 0);
        if (st == MB_STATUS_OK && mb_tok_ids_put(c->out, a->id)) st = MB_STATUS_NOMEM;
        done = stop;
    }
    if (st == MB_STATUS_OK && done < n) st = fn(c, s + done, n - done, at_origin && done == 0);
    return st;
}

/* Normalized text without added tokens: pre-tokenize, then BPE each piece. */
static mb_status encode_words(encode_ctx *c, const char *s, size_t n, int at_origin)
{
    mb_tok_pieces *p;
    mb_status st = mb_tok_pretokenize(c->tok, c->sc, s, n, at_origin, &p);
    for (size_t i = 0; i < p->n && st == MB_STATUS_OK; i++)
        st = mb_tok_bpe_word(c->tok, c->sc, p->text.data + p->spans[i].off, p->spans[i].len,
                             c->out);
    return st;
}

/* Raw text between raw-matched added tokens. */
static mb_status encode_segment(encode_ctx *c, const char *s, size_t n, int at_origin)
{
    mb_tok_buf *norm = &c->sc->buf[3];
    mb_status st = mb_tok_normalize(c->tok, c->sc, s, n, norm);
    if (st != MB_STATUS_OK) return st;
    return split_added(c, &c->tok->norm_set, norm->data, norm->len, at_origin, encode_words);
}

mb_status mb_tokenizer_encode(const mb_tokenizer *tok, const char *text, size_t bytes,
                              int add_special, int32_t **ids, size_t *n_ids)
{
    if (!tok || (!text && bytes) || !ids || !n_ids) return MB_STATUS_INVALID_ARG;
    if (bytes > INT32_MAX) return MB_STATUS_OVERFLOW;
    mb_tok_scratch sc = {0};
    mb_tok_ids out = {0};
    encode_ctx c = {tok, &sc, &out};
    mb_status st = MB_STATUS_NOMEM;
    sc.md = pcre2_match_data_create(1, NULL);
    if (!sc.md) goto done;
    mb_tok_buf *clean = &sc.buf[0];
    if (mb_tok_buf_put(clean, "", 0) || (bytes && mb_tok_utf8_lossy(text, bytes, 1, clean) == SIZE_MAX))
        goto done;
    st = MB_STATUS_OK;
    for (uint32_t i = 0; add_special && i < tok->n_post_pre && st == MB_STATUS_OK; i++)
        if (mb_tok_ids_put(&out, tok->post_pre[i])) st = MB_STATUS_NOMEM;
    if (st == MB_STATUS_OK) st = split_added(&c, &tok->raw_set, clean->data, clean->len, 1, encode_segment);
    for (uint32_t i = 0; add_special && i < tok->n_post_post && st == MB_STATUS_OK; i++)
        if (mb_tok_ids_put(&out, tok->post_post[i])) st = MB_STATUS_NOMEM;
done:
    mb_tok_scratch_fini(&sc);
    if (st != MB_STATUS_OK) {
        free(out.data);
        return st;
    }
    *ids = out.data;
    *n_ids = out.len;
    return MB_STATUS_OK;
}
